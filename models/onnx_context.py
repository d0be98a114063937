"""An ONNX Runtime copy of a policy's context network, for serving on CPUs.

The context network (normaliser, encoder, posterior mean of the history VAE) is most of a request's forward
pass, and at the REST service's batch sizes (1 to a few conflicts) PyTorch's eager per-operator overhead is
most of its cost: ONNX Runtime runs the same graph about 4x faster at batch 1 on a CPU (bench/RESULTS.md).
The head stays in PyTorch (its sampling takes the request's ``torch.Generator``).

:func:`onnx_context` exports the network with ``torch.onnx.export`` (dynamo exporter, dynamic batch), opens it
with one intra-op thread, and checks it against the PyTorch network on the examples it is given; it returns
None with the reason when ONNX Runtime or the exporter is missing or the check fails, so the caller keeps
PyTorch. The exported file is written to a private temporary folder (never read from a request or a model
folder), parsed by ONNX Runtime (protobuf, no code execution) and removed once the session holds it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from models.interface import OBS_KEYS, Context, Observations, PolicyInterface

log = logging.getLogger("atc_il.models")
ATOL = 1e-4     # the largest context difference accepted from the export check


class OnnxContext:
    """``ctx = OnnxContext(...)(obs)``: the policy's :class:`Context` (B, C), float32, as ``policy.encode(obs)``."""

    def __init__(self, session, model_bytes: bytes = b""):
        self.session = session
        self.inputs = [i.name for i in session.get_inputs()]
        self.model_bytes = model_bytes      # the exported graph: other processes open it without exporting again

    def __call__(self, obs: Observations) -> Context:
        feed = {name: np.ascontiguousarray(getattr(obs, name).detach().cpu().numpy(), dtype=np.float32)
                for name in self.inputs}
        return Context(torch.from_numpy(self.session.run(None, feed)[0]))


def onnx_context(policy: PolicyInterface, examples: list[dict],
                 model_bytes: bytes | None = None) -> tuple[OnnxContext | None, str]:
    """(the ONNX Runtime context network, "") or (None, why not). ``examples``: feature dicts (numpy arrays
    per observation tensor) it must reproduce within :data:`ATOL`; the first is also the export example.
    ``model_bytes``: a graph this function exported for the same policy in another process (its
    ``OnnxContext.model_bytes``, e.g. batch prediction's driver for its workers): opened instead of exporting
    again (the export takes ~10-20 s), and checked against PyTorch all the same."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return None, f"onnxruntime is not installed ({exc})"
    policy.eval()
    net = policy.context_module().eval()
    first = examples[0]
    # an example batch of at least 2: a batch dimension of size 1 would be specialised to 1
    ex = tuple(torch.as_tensor(np.concatenate([first[k]] * 2), dtype=torch.float32) for k in OBS_KEYS)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    path = Path(tempfile.mkdtemp(prefix="atc-il-onnx-")) / "context.onnx"
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [q.level for q in quiet]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if model_bytes:
        try:
            session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:   # noqa: BLE001
            return None, f"the exported graph did not open ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        return _checked(OnnxContext(session, model_bytes), policy, examples)
    try:
        for q in quiet:
            q.setLevel(logging.ERROR)
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(net, ex, str(path), input_names=list(OBS_KEYS), output_names=["context"],
                              dynamic_shapes={"pair": {0: batch}, "neighbours": {0: batch}, "geometry": {0: batch},
                                              "clearances": {0: batch}}, dynamo=True, verbose=False,
                              external_data=False)   # one self-contained graph (opened from bytes elsewhere)
        model_bytes = path.read_bytes()
        session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:   # noqa: BLE001  (any exporter or runtime failure: keep PyTorch, say why)
        return None, f"the export to ONNX failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    finally:
        for q, lv in zip(quiet, levels):
            q.setLevel(lv)
        shutil.rmtree(path.parent, ignore_errors=True)     # the session holds the graph in memory
    return _checked(OnnxContext(session, model_bytes), policy, examples)


def _checked(fast: OnnxContext, policy: PolicyInterface, examples: list[dict]) -> tuple[OnnxContext | None, str]:
    """``fast`` if it reproduces the PyTorch context network on ``examples`` and perturbed copies of them."""
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for f in [g for e in examples for g in (e, _perturbed(e, rng))]:
            obs = Observations.from_dict(f)
            diff = float((fast(obs).tensor - policy.encode(obs).tensor.float()).abs().max())
            if not diff <= ATOL:
                return None, f"the ONNX context differs from PyTorch's by {diff:.2e} (> {ATOL:g})"
    return fast, ""


def _perturbed(f: dict, rng: np.random.Generator) -> dict:
    """``f`` with noise on every feature and random validity flags (the last feature of every tensor), so the
    check also covers padding and partly observed histories."""
    out = {}
    for k, x in f.items():
        y = np.array(x, dtype=np.float32, copy=True)
        if y.size:
            y[..., :-1] = y[..., :-1] * (1 + 0.1 * rng.standard_normal(y[..., :-1].shape)) + \
                rng.standard_normal(y[..., :-1].shape)
            y[..., -1] = rng.random(y[..., -1].shape) < 0.7
        out[k] = y
    return out
