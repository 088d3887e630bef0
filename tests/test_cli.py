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
    proc = subprocess.run(
        [sys.executable, "-m", "medtriad", "validate", str(tmp_path / "missing.parquet")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "missing.parquet" in proc.stderr and "manifest not found" in proc.stderr
