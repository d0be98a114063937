"""Training: ``train(config, data_dir)`` -> a best policy folder, a resumable checkpoint and an MLflow run.

AdamW (no decay on biases and norms) with a per-step cosine schedule and gradient clipping; CUDA when
available (bf16 autocast and ``torch.compile`` of the encoder there when configured), DistributedDataParallel
when launched by torchrun (WORLD_SIZE > 1; only rank 0 logs and saves). ``out_dir/checkpoints/last.pt``
(every epoch) holds plain tensors and dicts only, loadable with ``weights_only=True``; ``out_dir/best`` is a
policy folder (:meth:`Policy.save`). Runs with the same seed on CPU give identical weights, and a run resumed
from its checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from atc_il.errors import ModelError
from atc_il.feature_spec import FeatureSpec
from atc_il.progress import track
from models.config import ModelConfig, TrainConfig
from models.data import BatchLoader, check_spec, load_data

GRAD_CLIP = 1.0
CHECKPOINT = "checkpoints/last.pt"
FORMAT = 1


@dataclass
class TrainState:
    """Where a training run stands: saved in every checkpoint (beside the weights, optimiser, scheduler and
    RNG states) and restored on resume."""
    epoch: int = 0
    step: int = 0
    best_val: float = math.inf
    bad_epochs: int = 0
    early_stopped: bool = False
    history: list[dict] = field(default_factory=list)
    run_id: str | None = None
    train_seconds: float = 0.0
    train_samples: int = 0

    def finished(self, tc: TrainConfig) -> bool:
        """Early stopped, or every epoch (or ``max_steps``) done."""
        return self.early_stopped or self.epoch >= tc.epochs or (tc.max_steps is not None and self.step >= tc.max_steps)


def selection_score(rec: dict, select_on: str) -> float:
    """The validation figure of an epoch's record that picks the best epoch (``train.select_on``)."""
    if select_on == "loss":
        return float(rec["val_loss"])
    if select_on == "nll":
        return float(rec["val_nll"])
    parts = [f"val_nll_{k}" for k in ("act", "aircraft", "type")]
    missing = [k for k in parts if k not in rec]
    if missing:
        raise ModelError(f"train.select_on = nll_discrete needs the validation terms {missing}, which this head does not "
                         "report; use select_on: nll or loss")
    return float(sum(rec[k] for k in parts))


class _LossModule(nn.Module):
    """Routes ``policy.loss`` through ``forward`` so that DistributedDataParallel sees the call."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, obs, dec):
        return self.policy.loss(obs, dec)


# -- environment ------------------------------------------------------------------------------------
def _distributed() -> tuple[int, int, int, bool]:
    """(rank, world_size, local_rank, initialised here) from the torchrun environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    import torch.distributed as dist
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    mine = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        mine = True
    return rank, world, local, mine


def _device(choice: str, local_rank: int) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ModelError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
            "python": {"version": py_state[0], "state": torch.tensor(py_state[1], dtype=torch.int64),
                       "gauss": py_state[2]}}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = s["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))


def _optimizer(policy: nn.Module, cfg) -> torch.optim.Optimizer:
    decay = [p for p in policy.parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for p in policy.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=cfg.lr)


def _model_sections(config: ModelConfig) -> dict:
    return json.loads(config.model_copy(update={"train": None}).model_dump_json(exclude={"train"}))


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _save_best(policy, out_dir: Path) -> None:
    tmp, final = out_dir / "best.tmp", out_dir / "best"
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _reduce(values: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist
        values = values.clone()
        dist.all_reduce(values)
    return values


def _mean_logs(sums: dict, n: int, prefix: str, world: int, device) -> dict:
    keys = sorted(sums)
    vec = _reduce(torch.tensor([float(n)] + [float(sums[k]) for k in keys], dtype=torch.float64, device=device), world)
    total = max(float(vec[0]), 1.0)
    return {f"{prefix}{k}": float(v) / total for k, v in zip(keys, vec[1:].tolist())}


def evaluate(policy, loader, device, autocast, world: int = 1) -> dict:
    """Mean loss and loss parts over a loader (eval mode, no gradients); summed over ranks."""
    policy.eval()
    sums: dict = {}
    n = 0
    with torch.no_grad():
        for obs, dec in loader:
            obs, dec = obs.to(device, non_blocking=True), dec.to(device, non_blocking=True)
            with autocast():
                _, logs = policy.loss(obs, dec)
            b = obs.batch_size
            n += b
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v * b
    return _mean_logs(sums, n, "val_", world, device)


def _train_epoch(model, policy, loader, optimizer, scheduler, st: TrainState, tc, device, autocast, world: int, show,
                 label: str) -> tuple[dict, float, int]:
    """One pass over the loader (or up to train.max_steps); returns (metrics, seconds, samples on this rank)."""
    policy.train()
    sums: dict = {}
    n, nb, grad = 0, 0, torch.zeros((), device=device)
    t0 = time.perf_counter()
    for obs, dec in track(loader, label, total=len(loader), show=show):
        obs, dec = obs.to(device, non_blocking=True), dec.to(device, non_blocking=True)
        with autocast():
            loss, logs = model(obs, dec)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad += torch.nn.utils.clip_grad_norm_(policy.parameters(), GRAD_CLIP).detach()
        optimizer.step()
        scheduler.step()
        st.step += 1
        b = obs.batch_size
        n, nb = n + b, nb + 1
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v * b
        if tc.max_steps is not None and st.step >= tc.max_steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    rec = {"step": st.step, "lr": scheduler.get_last_lr()[0], **_mean_logs(sums, n, "train_", world, device),
           "grad_norm": float(grad) / max(nb, 1),     # before clipping; equal on every rank under DDP
           "samples_per_s": n * world / max(seconds, 1e-9)}
    return rec, seconds, n


# -- checkpoints ---------------------------------------------------------------------------------------
def _checkpoint(path: Path, policy, optimizer, scheduler, config: ModelConfig, spec: FeatureSpec,
                st: TrainState) -> None:
    """Save everything a resume needs (plain tensors and dicts: loadable with ``weights_only=True``)."""
    _save_checkpoint(path, {
        "format": FORMAT, "model": {k: v.detach().cpu() for k, v in policy.state_dict().items()},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(),
        "model_config": _model_sections(config), "spec_hash": spec.spec_hash,
        "tensors": {k: {"shape": spec.shape(k)} for k in spec.tensors}, **asdict(st)})


def _resume(path: Path, policy, optimizer, scheduler, config: ModelConfig, spec: FeatureSpec, total_steps: int,
            data_dir: Path) -> TrainState:
    """Restore the weights, optimiser, scheduler and RNG states saved at ``path``; returns the saved state.
    A changed number of epochs or ``max_steps`` re-stretches the cosine schedule over the new length."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if ck.get("format") != FORMAT:
            raise ValueError(f"format {ck.get('format')}, expected {FORMAT}")
    except Exception as exc:
        raise ModelError(f"{path}: not a readable atc-il checkpoint ({type(exc).__name__}: {str(exc)[:160]!r}); "
                         "start over with resume=False (--no-resume) or another --out folder") from None
    check_spec(spec, {"spec_hash": ck["spec_hash"], "tensors": ck["tensors"]}, f"{data_dir} (resuming {path})")
    if ck["model_config"] != _model_sections(config):
        raise ModelError(f"{path} was trained with a different model configuration; "
                         "train into a new --out folder or start over with resume=False (--no-resume)")
    policy.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    if scheduler.T_max != max(total_steps, 1):     # epochs or max_steps changed: the cosine over the new length
        scheduler.T_max = max(total_steps, 1)
        t = min(scheduler.last_epoch, scheduler.T_max) / scheduler.T_max
        for g, base in zip(optimizer.param_groups, scheduler.base_lrs):
            g["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * t)) / 2
    _set_rng_state(ck["rng"])
    return TrainState(**{f.name: ck[f.name] for f in fields(TrainState)})


# -- the entry point --------------------------------------------------------------------------------
def _warm_start(policy: nn.Module, init: Path, spec: FeatureSpec) -> None:
    """Copy the weights of the saved policy ``init`` into ``policy`` (same architecture and features)."""
    from models.policy import load_policy
    src = load_policy(init)
    have, want = FeatureSpec.of(src.spec).hash(), spec.hash()
    if have != want:
        raise ModelError(f"warm start: {init} was trained on other features (spec {have} vs the data set's {want}); "
                         "train from scratch or rebuild the data set")
    try:
        policy.load_state_dict(src.state_dict())
    except RuntimeError as exc:
        raise ModelError(f"warm start: {init} does not fit this model config ({str(exc).splitlines()[0]}); "
                         "use the config it was trained with") from None


def train(config: ModelConfig, data_dir: str | Path, out_dir: str | Path | None = None, *, resume: bool = True,
          tracking_uri: str | None | bool = None, register_as: str | None = None, alias: str | None = "champion",
          progress: bool | None = None, callback: Callable[[dict], None] | None = None,
          init: str | Path | None = None) -> dict:
    """Train ``config`` on the data set in ``data_dir`` (splits train and val); return a summary.

    ``out_dir`` defaults to ``<data_dir>/../runs/<config.name>``; with ``resume`` an existing
    ``checkpoints/last.pt`` there is continued. ``tracking_uri``: MLflow store (default: MLFLOW_TRACKING_URI,
    else ``sqlite:///<data_dir>/../mlflow.db``; False: no tracking). ``register_as``: register the best
    policy under this name and point ``alias`` at it. ``progress``: show bars (None: on a terminal).
    ``callback(record)`` is called after each epoch's checkpoint (rank 0). Under DDP ``train.batch_size`` is
    per process. Resuming applies changed epochs, max_steps and patience; the optimiser keeps its saved state.
    ``init``: a fresh run starts from the weights of this saved policy folder (a warm start: the same model
    config and features; DAgger retrains each iteration's policy from the last one's), not from a random start.
    """
    from models.policy import build_policy
    from models.registry import Tracker
    from models.registry import tracking_uri as default_uri

    tc = config.train
    if register_as and tracking_uri is False:
        raise ModelError("register_as needs MLflow tracking; pass a tracking_uri (or None for the default) instead of False")
    data_dir = Path(data_dir)
    out_dir = Path(out_dir) if out_dir else data_dir.parent / "runs" / config.name
    rank, world, local_rank, own_group = _distributed()
    try:
        device = _device(tc.device, local_rank)
        cuda = device.type == "cuda"
        _seed_all(tc.seed)
        train_data = load_data(data_dir, "train")
        spec = train_data.feature_spec
        val_data = load_data(data_dir, "val", expect=spec)
        policy = build_policy(config, spec).to(device)
        optimizer = _optimizer(policy, tc)
        loader = BatchLoader(train_data, tc.batch_size, True, tc.seed, rank, world, cuda, tc.num_workers)
        # under DDP the val shards are padded like the train shards (a few samples count twice; every rank has data)
        val_loader = BatchLoader(val_data, max(tc.batch_size, 1024), False, 0, rank, world, cuda, 0)
        total_steps = tc.epochs * len(loader)
        if tc.max_steps:
            total_steps = min(total_steps, tc.max_steps)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1),
                                                               eta_min=tc.lr * 0.01)
        ckpt_path = out_dir / CHECKPOINT
        st, resumed = TrainState(), False
        if resume and ckpt_path.exists():
            st = _resume(ckpt_path, policy, optimizer, scheduler, config, spec, total_steps, data_dir)
            resumed = True
        elif init is not None:
            _warm_start(policy, Path(init), spec)
        elif policy.style is not None:     # a fresh run: the codes' habits start at the sessions' clusters
            policy.style.init_habits(train_data.tensors["geometry"], seed=tc.seed)
        bf16 = cuda and tc.bf16
        compiled = cuda and tc.compile
        if compiled:
            policy.compile_encoder()

        def autocast():
            return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16) if cuda else torch.autocast(
                "cpu", enabled=False)

        model: nn.Module = _LossModule(policy)
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel
            model = DistributedDataParallel(model, device_ids=[local_rank] if cuda else None)
        finished = st.finished(tc)
        if resumed and finished and (out_dir / "summary.json").exists():  # nothing left: no second model version
            return {**json.loads((out_dir / "summary.json").read_text()), "resumed": True, "rank": rank}
        tracker = None
        if rank == 0 and tracking_uri is not False:
            tracker = Tracker(tracking_uri or default_uri(data_dir.parent))
            st.run_id = tracker.start(config, spec, st.run_id)
        show = progress if rank == 0 else False
        status = "FAILED"
        try:
            epoch, done = st.epoch, finished
            while not done:
                loader.set_epoch(epoch)
                rec, seconds, n = _train_epoch(model, policy, loader, optimizer, scheduler, st, tc, device, autocast,
                                               world, show, f"epoch {epoch + 1}/{tc.epochs}")
                rec = {"epoch": epoch + 1, **rec}
                rec.update(evaluate(policy, val_loader, device, autocast, world))
                epoch += 1
                if not math.isfinite(rec.get("train_loss", math.nan)):
                    raise ModelError(f"training diverged: the train loss is {rec.get('train_loss')} at epoch {epoch}; "
                                     "lower train.lr or check the data")
                st.train_seconds += seconds
                st.train_samples += n * world
                score = selection_score(rec, tc.select_on)
                if score < st.best_val:
                    st.best_val, st.bad_epochs = score, 0
                    if rank == 0:
                        _save_best(policy, out_dir)
                else:
                    st.bad_epochs += 1
                st.early_stopped = st.bad_epochs >= tc.patience
                st.history.append(rec)
                st.epoch = epoch
                done = st.finished(tc)
                if rank == 0:
                    _checkpoint(ckpt_path, policy, optimizer, scheduler, config, spec, st)
                    if tracker:
                        tracker.log_epoch(rec)
                    if callback:
                        callback(rec)
            summary = {"name": config.name, "epochs": st.epoch, "steps": st.step,
                       "best_val_loss": st.best_val, "selected_on": tc.select_on, "early_stopped": st.early_stopped,
                       "samples_per_s": st.train_samples / max(st.train_seconds, 1e-9),
                       "device": str(device), "world_size": world, "rank": rank, "bf16": bf16, "compiled": compiled,
                       "resumed": resumed, "train_samples": len(train_data), "val_samples": len(val_data),
                       "out_dir": str(out_dir), "best_dir": str(out_dir / "best"), "run_id": st.run_id,
                       "model_uri": None, "tracking_uri": tracker.uri if tracker else None,
                       "history": st.history}
            if rank == 0:
                if not (out_dir / "best").exists():
                    raise ModelError(f"{out_dir}: no epoch finished, there is no best policy to log")
                if tracker:
                    summary.update(tracker.finish(st.history, out_dir / "best", out_dir, spec, register_as, alias))
                (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
            status = "FINISHED"
            return summary
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if tracker:
                tracker.end(status)
    finally:
        if own_group:
            import torch.distributed as dist
            # every rank leaves together: rank 0 still writes the best policy and the summary after the last
            # collective, and a gloo group torn down under a peer that is still connected can abort the process
            dist.barrier()
            dist.destroy_process_group()
