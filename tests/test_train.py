"""Training: loss goes down, the registered model loads by alias and predicts like the saved policy, seeds
reproduce, resume equals uninterrupted, early stopping, config and data-spec errors, DDP on CPU (gloo)."""

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from atc_il.errors import ConfigError, ModelError
from models.config import load_model_config
from models.data import BatchLoader, IndexBatchSampler, load_data
from models.train import CHECKPOINT, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "configs" / "tiny.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """The quickstart chain on the embedded sample (3 days: train/val/test), plus the same data set with a
    shorter history (a different feature spec)."""
    from atc_il.config import PipelineConfig
    from pipelines.dataset import build
    from pipelines.sample import radar_chain

    ws = tmp_path_factory.mktemp("train_ws")
    cfg = PipelineConfig()
    radar_chain(ws, config=cfg)
    build(ws, ws / "dataset_h12", cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"history_steps": 12})}))
    return ws


def tiny(**train):
    return load_model_config(TINY, train=train)


def weights(out: Path) -> dict:
    return torch.load(out / CHECKPOINT, weights_only=True)["model"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_index_batches_cover_the_split_once_per_epoch_and_shard_by_rank():
    one = torch.cat(list(IndexBatchSampler(103, 10, seed=3)))
    assert sorted(one.tolist()) == list(range(103))
    shards = [list(IndexBatchSampler(103, 10, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(IndexBatchSampler(103, 10, rank=1, world_size=2))
    both = torch.cat([torch.cat(s) for s in shards])
    assert len(both) == 104 and set(both.tolist()) == set(range(103))          # padded by one, like DistributedSampler
    s = IndexBatchSampler(103, 10, seed=3)
    s.set_epoch(1)
    assert not torch.equal(torch.cat(list(s)), one)


def test_loader_yields_observations_and_decisions(data):
    split = load_data(data / "dataset", "train")
    obs, dec = next(iter(BatchLoader(split, 64, seed=0)))
    assert obs.pair.shape[1:] == tuple(split.spec["tensors"]["pair"]["shape"]) and obs.batch_size == 64
    assert dec.act.dtype == torch.long and dec.value.dtype == torch.float32


def test_cli_trains_registers_and_the_alias_loads_the_same_policy(data, tmp_path, monkeypatch):
    import mlflow

    from atc_il_cli.cli import app
    from models.interface import OBS_KEYS
    from models.policy import load_policy
    from models.registry import load_policy_uri, predict_frame

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = tmp_path / "ws"
    res = CliRunner().invoke(app, ["train", "-c", str(TINY), "--data", str(data / "dataset"), "--workspace", str(ws),
                                   "--epochs", "3"])
    assert res.exit_code == 0, res.output
    assert "models:/tiny@champion" in res.output and (ws / "mlflow.db").exists()
    summary = json.loads((ws / "runs" / "tiny" / "summary.json").read_text())
    hist = summary["history"]
    losses = [h["train_loss"] for h in hist]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]

    uri = f"sqlite:///{ws / 'mlflow.db'}"
    saved = load_policy(ws / "runs" / "tiny" / "best")
    registered = load_policy_uri("models:/tiny@champion", tracking_uri=uri)
    test = load_data(data / "dataset", "test", expect=registered.spec)
    obs, _ = test.batch()
    a, b = registered.predict(obs), saved.predict(obs)
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("act", "aircraft", "type"))
    assert torch.equal(a.value.nan_to_num(), b.value.nan_to_num())

    mlflow.set_tracking_uri(uri)
    pyfunc = mlflow.pyfunc.load_model("models:/tiny@champion")
    frame = pyfunc.predict({k: getattr(obs, k).numpy() for k in OBS_KEYS})
    expected = predict_frame(saved, {k: getattr(obs, k).numpy() for k in OBS_KEYS})
    assert len(frame) == len(test) and list(frame.columns) == ["act", "aircraft", "type", "value"]
    assert frame.equals(expected)
    run = mlflow.get_run(summary["run_id"])
    assert {"train_loss", "val_loss", "lr", "samples_per_s", "val_nll_act"} <= set(run.data.metrics)
    assert run.data.params["encoder.name"] == "gru"
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"config.yaml", "feature_spec.json", "loss_curve.png"} <= arts


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_a")
    summary = train(tiny(epochs=4, batch_size=256), data / "dataset", out, tracking_uri=False)
    return out, summary


def test_same_seed_same_weights(data, uninterrupted, tmp_path):
    out, summary = uninterrupted
    assert summary["epochs"] == 4 and summary["device"] == "cpu"
    train(tiny(epochs=4, batch_size=256), data / "dataset", tmp_path, tracking_uri=False)
    assert same(weights(out), weights(tmp_path))
    train(tiny(epochs=4, batch_size=256, seed=1), data / "dataset", tmp_path / "other", tracking_uri=False)
    assert not same(weights(out), weights(tmp_path / "other"))


def test_resume_after_interruption_equals_uninterrupted(data, uninterrupted, tmp_path):
    out, summary = uninterrupted

    class Crash(Exception):
        pass

    def crash_after_two(rec):
        if rec["epoch"] == 2:
            raise Crash

    with pytest.raises(Crash):
        train(tiny(epochs=4, batch_size=256), data / "dataset", tmp_path, tracking_uri=False, callback=crash_after_two)
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["epoch"] == 2
    resumed = train(tiny(epochs=4, batch_size=256), data / "dataset", tmp_path, tracking_uri=False)
    assert resumed["resumed"] and resumed["epochs"] == 4 and resumed["steps"] == summary["steps"]
    assert same(weights(out), weights(tmp_path))
    assert [h["val_loss"] for h in resumed["history"]] == [h["val_loss"] for h in summary["history"]]
    again = train(tiny(epochs=4, batch_size=256), data / "dataset", tmp_path, tracking_uri=False)  # nothing left to do
    assert again["resumed"] and again["steps"] == summary["steps"] and same(weights(out), weights(tmp_path))


def test_early_stopping(data, tmp_path):
    # a learning rate too small to move float32 weights: the validation loss never improves after epoch 1
    s = train(tiny(epochs=10, batch_size=512, lr=1e-12, weight_decay=0.0, patience=2), data / "dataset", tmp_path,
              tracking_uri=False)
    assert s["early_stopped"] and s["epochs"] == 3 and (tmp_path / "best" / "weights.pt").exists()


@pytest.mark.parametrize("select_on", ["nll_discrete", "nll", "loss"])
def test_the_best_epoch_is_picked_on_the_chosen_validation_figure(data, tmp_path, select_on):
    from models.train import selection_score
    s = train(tiny(epochs=4, batch_size=512, patience=4, select_on=select_on), data / "dataset", tmp_path,
              tracking_uri=False)
    scores = [selection_score(h, select_on) for h in s["history"]]
    assert s["selected_on"] == select_on and s["best_val_loss"] == min(scores)
    if select_on == "nll_discrete":
        h = s["history"][0]
        assert scores[0] == pytest.approx(h["val_nll_act"] + h["val_nll_aircraft"] + h["val_nll_type"])
        assert scores[0] < h["val_nll"] <= h["val_loss"] or h["val_nll_value"] <= 0


def test_invalid_config_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: -1}\nencoder: {name: gru}\n")
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_model_config(bad)
    bad.write_text("head: {compnents: 3}\n")
    from atc_il_cli.cli import app
    res = CliRunner().invoke(app, ["train", "-c", str(bad)])
    lines = [s for s in res.output.splitlines() if s.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "head.compnents" in lines[0]


def test_mismatched_data_spec_is_a_model_error(data, uninterrupted):
    from models.policy import load_policy
    out, _ = uninterrupted
    policy = load_policy(out / "best")
    with pytest.raises(ModelError, match="does not match"):
        load_data(data / "dataset_h12", "test", expect=policy.spec)
    with pytest.raises(ModelError, match="does not match"):  # resuming a run on another data set
        train(tiny(epochs=5, batch_size=256), data / "dataset_h12", out, tracking_uri=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, data_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = load_model_config(TINY, train={"batch_size": 64, "max_steps": 3, "epochs": 1},
                            vae={"enabled": False})
    train(cfg, data_dir, out, tracking_uri=False)


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process_with_the_global_batch(data, tmp_path):
    """2 gloo ranks with batch 64 each see the same global batches as 1 process with batch 128 (deterministic
    model: no VAE sampling), and DDP averages gradients, so the weights agree to float precision."""
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(data / "dataset"), str(tmp_path / "ddp")), nprocs=2, join=True)
    cfg = load_model_config(TINY, train={"batch_size": 128, "max_steps": 3, "epochs": 1}, vae={"enabled": False})
    train(cfg, data / "dataset", tmp_path / "single", tracking_uri=False)
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    assert torch.load(tmp_path / "ddp" / CHECKPOINT, weights_only=True)["step"] == 3
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 1e-4, f"DDP and single-process weights differ by {diff}"
