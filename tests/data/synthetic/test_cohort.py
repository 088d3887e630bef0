"""The demo cohort is written in the real formats, deterministically, and resumes."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb
from PIL import Image
from typer.testing import CliRunner

from medtriad.cli import app
from medtriad.data.manifest import read_manifest
from medtriad.data.synthetic import cohort
from medtriad.data.synthetic.cohort import generate_cohort
from medtriad.data.validate import validate_manifest


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, n=60, seed=7, missing_fraction=0.3, workers=2, progress=False)
    return out


def test_files_are_real_wfdb_and_png_and_validate(small: Path) -> None:
    df = read_manifest(small / "manifest.parquet")
    assert len(df) == 60 and set(df["split"]) <= {"train", "val", "test"}
    row = df.dropna(subset=["ecg_path", "cxr_path"]).iloc[0]
    rec = wfdb.rdrecord(str(small / row["ecg_path"]).removesuffix(".hea"))
    assert rec.fs == 500 and rec.p_signal.shape == (5000, 12)
    assert rec.sig_name[:3] == ["I", "II", "III"] and rec.sig_name[-1] == "V6"
    img = Image.open(small / row["cxr_path"])
    assert img.mode == "L" and img.size == (256, 256)
    assert validate_manifest(small / "manifest.parquet", workers=1, progress=False).ok


def test_missing_modalities_follow_the_rules(small: Path) -> None:
    df = read_manifest(small / "manifest.parquet")
    missing = df["meta_missing"]
    assert 0.1 < (missing != "").mean() < 0.55
    assert df.loc[missing == "cxr", "cxr_path"].isna().all()
    assert df.loc[missing == "ecg", "ecg_path"].isna().all()
    assert df.loc[missing == "report", "report_text"].isna().all()
    assert df.loc[missing == "", ["cxr_path", "ecg_path", "report_text"]].notna().all().all()
    # a study without an X-ray has no radiology part in its report, one without an ECG no statements
    from medtriad.data.text import split_combined

    for text, miss in zip(df["report_text"], missing):
        if text is pd.NA:
            continue
        rad, card = split_combined(text)
        assert (rad is None) == (miss == "cxr") and (card is None) == (miss == "ecg")


def test_labels_drive_the_ground_truth_annotations(small: Path) -> None:
    df = read_manifest(small / "manifest.parquet")
    for _, row in df.dropna(subset=["cxr_path"]).iterrows():
        ann = np.load(small / row["meta_annotation_path"])
        for finding in ("cardiomegaly", "effusion", "edema", "pneumothorax", "consolidation"):
            assert (f"mask_{finding}" in ann.files) == bool(row[f"label_{finding}"] == 1)
    # cardiothoracic ratio follows the label
    cm = df.dropna(subset=["cxr_path"])
    assert (cm.loc[cm["label_cardiomegaly"] == 1, "meta_ctr"] > 0.5).all()
    assert (cm.loc[cm["label_cardiomegaly"] == 0, "meta_ctr"] < 0.5).all()


def test_deterministic_for_a_seed_whatever_the_workers(small: Path, tmp_path: Path) -> None:
    generate_cohort(tmp_path, n=60, seed=7, missing_fraction=0.3, workers=1, progress=False)
    a = pd.read_parquet(small / "manifest.parquet")
    b = pd.read_parquet(tmp_path / "manifest.parquet")
    pd.testing.assert_frame_equal(a, b)
    sid = a.dropna(subset=["cxr_path"])["cxr_path"].iloc[3]
    assert (small / sid).read_bytes() == (tmp_path / sid).read_bytes()
    ecg = a.dropna(subset=["ecg_path"])["ecg_path"].iloc[3].replace(".hea", ".dat")
    assert (small / ecg).read_bytes() == (tmp_path / ecg).read_bytes()


def test_interrupted_run_resumes_from_finished_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = cohort._chunk

    def failing(args):
        calls.append(args[1])
        if args[1] >= 50:
            raise KeyboardInterrupt
        return real(args)

    monkeypatch.setattr(cohort, "_chunk", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_cohort(tmp_path, n=120, seed=1, workers=1, progress=False)
    assert (tmp_path / ".parts" / f"{0:08d}.parquet").exists()
    calls.clear()
    monkeypatch.setattr(cohort, "_chunk", lambda args: (calls.append(args[1]), real(args))[1])
    generate_cohort(tmp_path, n=120, seed=1, workers=1, progress=False)
    assert calls == [50, 100]
    assert len(pd.read_parquet(tmp_path / "manifest.parquet")) == 120


def test_cli_synth_then_validate(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["synth", "--n", "20", "--out", str(tmp_path), "--workers", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["validate", str(tmp_path / "manifest.parquet"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["synth", "--n", "0", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0
