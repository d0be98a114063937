"""MLflow: tracking of training runs, the policy as an ``mlflow.pyfunc`` model, registration and loading.

- Tracking URI: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<workspace>/mlflow.db`` (artifacts next to
  it in ``<workspace>/mlartifacts``); experiment ``atc-il``. See the runs with
  ``mlflow ui --backend-store-uri sqlite:///workspace/mlflow.db``.
- The logged model is a "model from code" (no pickled Python object): a short script defining the
  ``PolicyModel`` pyfunc, plus one artifact, the best policy folder (weights.pt loaded with
  ``weights_only=True``, config.yaml, feature_spec.json). Loading rebuilds the policy from the project's
  registry (:func:`models.policy.load_policy`).
- Versions are registered under the config's name and an alias (``champion``) points at the newest;
  load with ``models:/NAME@champion`` (:func:`load_policy_uri`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml

from atc_il.errors import ModelError
from atc_il.feature_spec import FeatureSpec

EXPERIMENT = "atc-il"
MODEL_ARTIFACT = "model"
# the logged model's code (MLflow "model from code": no pickled object in the model)
_CODE = '''"""atc-il policy as an MLflow pyfunc model: rebuilt from the project's registry on load."""
import mlflow
from mlflow.pyfunc import PythonModel


class PolicyModel(PythonModel):
    """predict: a dict of numpy arrays (pair, neighbours, geometry, clearances; raw features as in the data
    set) -> one row per sample: act, aircraft, type (name, '' when no action), value."""

    _skip_type_hint_validation = True   # inputs are validated by the model's tensor signature

    def load_context(self, context):
        from models.policy import load_policy
        self.policy = load_policy(context.artifacts["policy"], map_location="cpu")
        self.policy.eval()

    def predict(self, context, model_input, params=None):
        from models.registry import predict_frame
        return predict_frame(self.policy, model_input)


mlflow.models.set_model(PolicyModel())
'''


def _offline_env() -> None:
    os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")   # never call pip (offline machines)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def tracking_uri(workspace: str | Path | None = "workspace") -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the workspace's sqlite store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    db = Path(workspace or "workspace").resolve() / "mlflow.db"
    return f"sqlite:///{db}"


def setup(uri: str | None = None) -> str:
    """Point MLflow at ``uri`` (default :func:`tracking_uri`) and make sure the experiment exists."""
    import mlflow
    _offline_env()
    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        location = None
        if uri.startswith("sqlite:///"):  # artifacts next to the database, not in the current folder
            location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
        try:
            mlflow.create_experiment(EXPERIMENT, artifact_location=location)
        except Exception:  # created concurrently
            if mlflow.get_experiment_by_name(EXPERIMENT) is None:
                raise
    mlflow.set_experiment(EXPERIMENT)
    return uri


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def save_loss_curve(history: list[dict], path: str | Path) -> Path:
    """Train and validation loss per epoch as a PNG (matplotlib's object API: Agg, no global pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ep = [r["epoch"] for r in history]
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ax.plot(ep, [r.get(key, float("nan")) for r in history], marker="o", label=label)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def predict_frame(policy, model_input) -> Any:
    """The policy's most likely decisions as a DataFrame (act, aircraft, type, value)."""
    import numpy as np
    import pandas as pd
    import torch

    from atc_il.schemas import ACTION_TYPES
    from models.interface import Observations

    if hasattr(model_input, "to_dict") and not isinstance(model_input, dict):
        raise ModelError("predict takes a dict of numpy arrays (pair, neighbours, geometry, clearances)")
    obs = Observations.from_dict({k: np.asarray(v, dtype=np.float32) for k, v in dict(model_input).items()})
    with torch.no_grad():
        dec = policy.predict(obs)
    types = dec.type.cpu().numpy()
    names = np.array(list(ACTION_TYPES) + [""], dtype=object)
    return pd.DataFrame({"act": dec.act.cpu().numpy().astype(np.int64),
                         "aircraft": dec.aircraft.cpu().numpy().astype(np.int64),
                         "type": names[np.where(types < 0, len(ACTION_TYPES), types)],
                         "value": dec.value.float().cpu().numpy().astype(np.float64)})


def _signature(spec: FeatureSpec | dict):
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    from models.interface import OBS_KEYS
    fs = FeatureSpec.of(spec, error=ModelError)
    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, *fs.shape(k)), k) for k in OBS_KEYS])
    outputs = Schema([ColSpec("long", "act"), ColSpec("long", "aircraft"), ColSpec("string", "type"),
                      ColSpec("double", "value")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _requirements() -> list[str]:
    import mlflow
    import numpy
    import pandas
    import torch
    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
            f"numpy=={numpy.__version__}", f"pandas=={pandas.__version__}", "pyyaml", "pydantic>=2"]


class Tracker:
    """One MLflow run of a training job: params, per-epoch metrics, artifacts, the model and its registration."""

    def __init__(self, uri: str):
        self.uri = setup(uri)
        self.run_id: str | None = None

    def start(self, config, spec: FeatureSpec | dict, run_id: str | None = None) -> str:
        import mlflow
        run = None
        if run_id:
            try:
                run = mlflow.start_run(run_id=run_id)
            except Exception:  # the run is not in this store: start a new one
                run = None
        if run is None:
            run = mlflow.start_run(run_name=config.name)
        self.run_id = run.info.run_id
        params = {k: str(v) for k, v in flatten(config.model_dump()).items()}
        fs = FeatureSpec.of(spec, error=ModelError)
        params["data.spec_hash"] = fs.spec_hash or ""
        have = run.data.params
        new = {k: v for k, v in params.items() if k not in have}
        if new:
            mlflow.log_params(new)
        changed = {f"resumed_with.{k}": v for k, v in params.items() if k in have and have[k] != v}
        if changed:
            mlflow.set_tags(changed)
        mlflow.log_text(yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False), "config.yaml")
        mlflow.log_text(json.dumps(fs.to_dict(), indent=1, sort_keys=True), "feature_spec.json")
        return self.run_id

    def log_epoch(self, record: dict) -> None:
        import mlflow
        mlflow.log_metrics({k: float(v) for k, v in record.items() if k != "epoch" and isinstance(v, (int, float))},
                           step=int(record["epoch"]))

    def finish(self, history: list[dict], policy_dir: Path, out_dir: Path, spec: FeatureSpec | dict,
               register_as: str | None, alias: str | None) -> dict:
        """Log the loss curve and the policy as a pyfunc model; register it and set the alias."""
        import mlflow
        from mlflow import MlflowClient

        if history:
            mlflow.log_artifact(str(save_loss_curve(history, out_dir / "loss_curve.png")))
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            # no input example on purpose: the explicit tensor signature validates inputs
            warnings.filterwarnings("ignore", message=".*input example.*", category=UserWarning)
            code = Path(tmp) / "atc_il_policy_model.py"
            code.write_text(_CODE)
            info = mlflow.pyfunc.log_model(name=MODEL_ARTIFACT, python_model=str(code),
                                           artifacts={"policy": str(policy_dir)}, signature=_signature(spec),
                                           pip_requirements=_requirements())
        out = {"run_id": self.run_id, "model_uri": info.model_uri, "version": None}
        if register_as:
            mv = mlflow.register_model(info.model_uri, register_as)
            out["version"] = int(mv.version)
            out["model_uri"] = f"models:/{register_as}/{mv.version}"
            if alias:
                MlflowClient().set_registered_model_alias(register_as, alias, mv.version)
                out["model_uri"] = f"models:/{register_as}@{alias}"
        mlflow.set_tag("model_uri", out["model_uri"])
        return out

    def end(self, status: str = "FINISHED") -> None:
        import mlflow
        if mlflow.active_run() is not None:
            mlflow.end_run(status=status)


def _policy_dir(path: Path) -> Path:
    """The policy folder inside a local policy dir, a pyfunc model dir or a run's artifacts."""
    if (path / "weights.pt").exists():
        return path
    mlmodel = path / "MLmodel"
    if mlmodel.exists():
        meta = yaml.safe_load(mlmodel.read_text()) or {}
        rel = (meta.get("flavors", {}).get("python_function", {}).get("artifacts", {}).get("policy", {}).get("path"))
        if rel and (path / rel / "weights.pt").exists():
            return path / rel
    found = sorted(path.rglob("weights.pt"))
    if len(found) == 1:
        return found[0].parent
    raise ModelError(f"{path}: no policy (weights.pt) found" if not found else
                     f"{path}: several policies found ({[str(f.parent) for f in found]}); point at one")


def load_policy_uri(uri: str | Path, tracking_uri: str | None = None, map_location: str = "cpu"):
    """Load the real :class:`Policy` from ``models:/NAME@alias``, ``models:/NAME/VERSION``, ``runs:/ID/model``
    or a local folder (a policy dir or a downloaded pyfunc model). Weights are read with ``weights_only``."""
    from models.policy import load_policy

    local = Path(str(uri))
    if local.exists():
        return load_policy(_policy_dir(local), map_location=map_location)
    uri = str(uri)
    if ":/" not in uri:
        raise ModelError(f"{uri}: neither a local folder nor an MLflow URI (models:/NAME@alias, runs:/ID/model)")
    import mlflow
    setup(tracking_uri)
    tmp = tempfile.mkdtemp(prefix="atc-il-model-")
    try:
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except Exception as exc:
            raise ModelError(f"{uri}: cannot be downloaded from {mlflow.get_tracking_uri()}: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        return load_policy(_policy_dir(path), map_location=map_location)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
