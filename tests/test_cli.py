import os
import subprocess
import sys

from typer.testing import CliRunner

from medtriad.cli import app


def test_help_lists_every_command_and_each_has_help() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    commands = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
    for name in commands:
        assert name in res.output
        sub = runner.invoke(app, [name, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output


def test_user_mistake_is_one_line_without_traceback(tmp_path) -> None:
    # A path longer than a terminal line: the message must still be one line, whole.
    missing = tmp_path / ("a_rather_long_folder_name_" * 4) / "missing.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "medtriad", "validate", str(missing)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {missing}: manifest not found"]


def test_log_lines_to_a_file_are_whole(capsys, monkeypatch) -> None:
    import io
    import logging

    from medtriad.cli import _root

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    path = "/data/" + "a_rather_long_folder_name/" * 5 + "checkpoints/step_00000002"
    try:
        _root(False)  # stderr is captured, not a terminal
        logging.getLogger("medtriad.test").info("resuming from %s (step 2)", path)
        later = io.StringIO()  # the stream the handler writes to is stderr at emit time
        monkeypatch.setattr("sys.stderr", later)
        logging.getLogger("medtriad.test").warning("later")
        assert later.getvalue() == "WARNING  later\n"
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert capsys.readouterr().err.splitlines() == [f"INFO     resuming from {path} (step 2)"]


def test_prepare_commands_exist_for_every_preparer_and_run(tmp_path) -> None:
    from pathlib import Path

    import pytest

    from medtriad.data.sources import PREPARERS
    from medtriad.data.validate import validate_manifest

    runner = CliRunner()
    res = runner.invoke(app, ["prepare", "--help"])
    for name in PREPARERS:
        assert name in res.output
    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ecg" / "cpsc2018"
    if not root.is_dir():
        pytest.skip("shared data not present")
    tables = root.parent / "cinc2021"
    maps = ["--mapping", str(tables / "dx_mapping_scored.csv"), "--mapping", str(tables / "dx_mapping_unscored.csv")]
    res = runner.invoke(app, ["prepare", "cinc", "--root", str(root), "--out", str(tmp_path / "m"), "--labels", "af,rbbb", *maps])
    assert res.exit_code == 0, res.output
    assert validate_manifest(tmp_path / "m" / "manifest.parquet", workers=1, progress=False).ok
    res = runner.invoke(app, ["prepare", "cinc", "--root", str(root), "--out", str(tmp_path / "x"), "--split-all", "holdout", *maps])
    assert res.exit_code != 0
