"""`validate` loads every file, reports every bad one with its reason, and never stops early."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb
from PIL import Image
from typer.testing import CliRunner

from medtriad.cli import app
from medtriad.data.manifest import write_manifest
from medtriad.data.validate import validate_manifest
from medtriad.errors import DataError

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def good_record(folder: Path, name: str) -> None:
    t = np.arange(5000) / 500
    sig = np.stack([0.5 * np.sin(2 * np.pi * (1 + k) * t) for k in range(12)], axis=1)
    wfdb.wrsamp(name, fs=500, units=["mV"] * 12, sig_name=LEADS, p_signal=sig, fmt=["16"] * 12, write_dir=str(folder))


def build(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A manifest whose rows each hold one kind of defect (and two good rows)."""
    d = tmp_path
    good_record(d, "ok")
    Image.fromarray((np.random.default_rng(0).random((64, 80)) * 255).astype(np.uint8)).save(d / "ok.png")
    good_record(d, "trunc")
    dat = (d / "trunc.dat").read_bytes()
    (d / "trunc.dat").write_bytes(dat[: len(dat) // 3])
    good_record(d, "empty")
    (d / "empty.dat").write_bytes(b"")
    good_record(d, "nosig")
    (d / "nosig.dat").unlink()
    np.save(d / "eight.npy", np.zeros((8, 5000), np.float32))
    nan = np.zeros((12, 5000), np.float32)
    nan[3, 100:200] = np.nan
    np.save(d / "nan.npy", nan)
    (d / "zero.png").write_bytes(b"")
    png = (d / "ok.png").read_bytes()
    (d / "cut.png").write_bytes(png[: len(png) // 2])
    (d / "text.png").write_text("this is not an image")
    rows = [
        ("good1", "ok.png", "ok.hea", "[RAD] findings: clear lungs."),
        ("good2", None, "ok.hea", "[ECG] sinus rhythm."),
        ("e_trunc", "ok.png", "trunc.hea", "fine"),
        ("e_empty", None, "empty.hea", "fine"),
        ("e_nosig", None, "nosig.hea", "fine"),
        ("e_eight", None, "eight.npy", "fine"),
        ("e_nan", None, "nan.npy", "fine"),
        ("c_zero", "zero.png", None, "fine"),
        ("c_cut", "cut.png", None, "fine"),
        ("c_text", "text.png", None, "fine"),
        ("c_missing", "nowhere.png", None, "fine"),
        ("r_empty", "ok.png", None, "XXXX. ___"),
    ]
    df = pd.DataFrame(rows, columns=["sample_id", "cxr_path", "ecg_path", "report_text"])
    df.insert(1, "subject_id", [f"p{i}" for i in range(len(df))])
    df.insert(2, "split", "train")
    df["label_x"] = 1.0
    write_manifest(df, d / "manifest.parquet")
    expected = {
        "e_trunc": "trunc", "e_empty": "empty", "e_nosig": "nosig", "e_eight": "eight.npy", "e_nan": "nan.npy",
        "c_zero": "zero.png", "c_cut": "cut.png", "c_text": "text.png", "c_missing": "nowhere.png", "r_empty": "r_empty",
    }
    return d / "manifest.parquet", expected


@pytest.mark.parametrize("workers", [1, 2])
def test_every_bad_file_is_reported_once_with_its_path(tmp_path: Path, workers: int) -> None:
    manifest, expected = build(tmp_path)
    report = validate_manifest(manifest, workers=workers, progress=False)
    assert not report.ok
    by_id = {b.sample_id: b for b in report.bad}
    assert set(by_id) == set(expected), sorted(by_id)
    for sid, needle in expected.items():
        assert needle in by_id[sid].path, (sid, by_id[sid])
        assert by_id[sid].reason
    assert report.counts["all"] == {"studies": 12, "cxr": 7, "ecg": 7, "report": 12}


def test_fail_fast_raises_the_first_error(tmp_path: Path) -> None:
    manifest, _ = build(tmp_path)
    with pytest.raises(DataError):
        validate_manifest(manifest, workers=1, fail_fast=True, progress=False)


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    manifest, expected = build(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["validate", str(manifest), "--workers", "1", "--json", str(tmp_path / "v.json")])
    assert res.exit_code == 1
    assert "bad samples" in res.output
    import json

    data = json.loads((tmp_path / "v.json").read_text())
    assert data["ok"] is False and len(data["bad"]) == len(expected)
    # a clean subset passes
    df = pd.read_parquet(manifest)
    write_manifest(df[df["sample_id"].str.startswith("good")], tmp_path / "clean.parquet")
    res = runner.invoke(app, ["validate", str(tmp_path / "clean.parquet"), "--workers", "1"])
    assert res.exit_code == 0, res.output


def test_schema_problems_fail_validation(tmp_path: Path) -> None:
    manifest, _ = build(tmp_path)
    df = pd.read_parquet(manifest)
    df = df[df["sample_id"].str.startswith("good")].copy()
    df["subject_id"] = "same"
    df["split"] = ["train", "test"]
    write_manifest(df, tmp_path / "leak.parquet")
    report = validate_manifest(tmp_path / "leak.parquet", workers=1, progress=False)
    assert not report.ok and not report.bad
    assert any("more than one split" in s for s in report.schema)
