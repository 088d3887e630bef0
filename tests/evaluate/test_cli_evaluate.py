"""`medtriad evaluate RUN_DIR --data ...` writes both outputs through the command line."""

import json
from pathlib import Path

from typer.testing import CliRunner

from medtriad.cli import app


def test_evaluate_command_writes_results_and_report(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    res = CliRunner().invoke(app, ["evaluate", str(tiny_run), "--data", str(tiny_data), "--out", str(out),
                                   "--tasks", "zeroshot,retrieval", "--bootstrap", "50"])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"zeroshot", "retrieval"}
    assert "zero-shot" in res.output and (out / "report.html").stat().st_size > 1000
