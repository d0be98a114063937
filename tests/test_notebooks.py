"""The notebooks run, top to bottom, on small data (so they never rot)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("nb")


@pytest.mark.parametrize("name", ["01_tracks_conflicts_predictions.ipynb", "02_policy_heads.ipynb"])
def test_notebook_runs(name, work, monkeypatch):
    monkeypatch.setenv("ATC_IL_NB_WORK", str(work))
    monkeypatch.setenv("ATC_IL_ROOT", str(ROOT))
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
