"""The report: plots and tables from whatever the workspace holds."""

from pipelines.report import build_report
from tests.helpers import workspace


def test_report_from_a_workspace(tmp_path):
    ws = workspace(tmp_path)
    index = build_report(ws)
    text = index.read_text()
    assert "<h2>Conflicts</h2>" in text and "conflicts.png" in text
    assert (ws / "report" / "conflicts.png").stat().st_size > 5000
    assert "Closed loop" not in text            # no closed-loop results in this workspace: no section
