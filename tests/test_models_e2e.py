"""The whole learning loop on CPU, tiny: simulate -> dataset -> train -> register -> evaluate -> load by
URI and predict -> the model as a controller in BlueSky."""

import json

import pytest
from typer.testing import CliRunner

from atc_il_cli.cli import app
from tests.helpers import simulated_dataset

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return simulated_dataset(tmp_path_factory.mktemp("e2e") / "sim", 3, 5, {"duration_s": 900, "density": 3.0,
                             "conflicts": 6})


def test_train_evaluate_and_fly_a_registered_model(demo, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    res = runner.invoke(app, ["train", "--config", "tiny", "--data", str(demo / "dataset"), "-w", str(tmp_path),
                              "--out", str(tmp_path / "run"), "--epochs", "2"])
    assert res.exit_code == 0, res.output
    name = "tiny"
    uri = f"models:/{name}@champion"
    res = runner.invoke(app, ["evaluate", "--model", uri, "--data", str(demo / "dataset"), "-w", str(tmp_path),
                              "--out", str(tmp_path / "eval"), "--samples", "16"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0 <= m["act_accuracy"] <= 1 and m["nll"] == m["nll"] and "ceiling" in m
    assert m["ceiling"]["act_accuracy"] >= 0.5 and (tmp_path / "eval" / "values.png").exists()

    from simulator_adapters.evaluation import simeval
    agg = simeval([f"model:{uri}"], 1, 9, tmp_path / "simeval", {"duration_s": 600, "conflicts": 2})
    assert agg.iloc[0]["controller"] == f"model:{uri}" and agg.iloc[0]["scenarios"] == 1
