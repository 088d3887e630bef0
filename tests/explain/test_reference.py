"""The reference X-ray: which training X-rays it averages, the mean itself, and its file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtriad.data.cxr import read_cxr
from medtriad.data.dataset import ManifestDataset
from medtriad.errors import DataError
from medtriad.explain.reference import (
    REFERENCE_FILE,
    ReferenceXray,
    build_reference_cxr,
    load_reference,
    no_finding_rows,
    save_reference,
)

from .conftest import tiny_config

NAN = np.nan


def test_no_finding_column_decides_where_the_data_has_one() -> None:
    names = ["no_finding", "cardiomegaly"]
    labels = np.array([[1, 0], [0, 1], [NAN, 0], [1, NAN]])
    rows, rule = no_finding_rows(labels, names)
    assert rule == "no_finding" and rows.tolist() == [True, False, False, True]


def test_xray_findings_must_all_be_absent_and_ecg_labels_do_not_count() -> None:
    # sinus rhythm is an ECG label: a normal rhythm does not make the X-ray abnormal
    names = ["cardiomegaly", "edema", "sinus", "afib"]
    labels = np.array([[0, 0, 1, 0], [0, 1, 1, 0], [0, NAN, 0, 1], [0, 0, 0, 1]])
    rows, rule = no_finding_rows(labels, names)
    assert rule == "findings" and rows.tolist() == [True, False, False, True]
    # a severity-0 column marks absence: oedema grade 0 is no finding
    names = ["edema_severity_0", "edema_severity_1", "pneumothorax"]
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1]])
    rows, rule = no_finding_rows(labels, names)
    assert rule == "findings" and rows.tolist() == [True, False, False]


def test_without_xray_labels_or_a_qualifying_row_every_xray_counts(caplog) -> None:
    rows, rule = no_finding_rows(np.array([[1.0], [0.0]]), ["afib"])
    assert rule == "all" and rows.all()
    rows, rule = no_finding_rows(np.zeros((3, 0)), [])
    assert rule == "all" and rows.shape == (3,) and rows.all()
    rows, rule = no_finding_rows(np.array([[1.0], [1.0]]), ["effusion"])
    assert rule == "all" and rows.all() and "no training X-ray" in caplog.text


def _rooted(cohort: Path) -> pd.DataFrame:
    df = pd.read_parquet(cohort / "manifest.parquet").assign(split="train")
    df.attrs["root"] = str(cohort)
    return df


def test_the_reference_is_the_mean_of_the_chosen_xrays(cohort: Path) -> None:
    cfg = tiny_config("data.cxr.size=64")
    df = _rooted(cohort)
    findings = ["cardiomegaly", "effusion", "edema", "pneumothorax", "consolidation"]
    df.loc[df.index[0], "cxr_path"] = None  # an absent X-ray is left out
    ds = ManifestDataset(df, cfg.data, split="train")
    ref = build_reference_cxr(ds, batch=2)
    keep = df[(df[[f"label_{f}" for f in findings]] == 0).all(axis=1) & df.cxr_path.notna()]
    assert 0 < len(keep) < len(df) and ref.rule == "findings" and ref.count == len(keep)
    c = cfg.data.cxr
    want = np.mean([read_cxr(cohort / p, size=c.size, fit=c.fit, clahe=c.clahe) for p in keep.cxr_path], axis=0)
    assert ref.image.shape == (1, 64, 64) and np.allclose(ref.image, want, atol=1e-6)
    # a limit draws a seeded sample of that many
    one = build_reference_cxr(ds, limit=1)
    assert one.count == 1 and any(
        np.allclose(one.image, read_cxr(cohort / p, size=c.size, fit=c.fit, clahe=c.clahe), atol=1e-6) for p in keep.cxr_path
    )
    with pytest.raises(ValueError):
        build_reference_cxr(ds, limit=0)


def test_the_reference_file_round_trips_and_bad_files_are_named(tmp_path: Path) -> None:
    ref = ReferenceXray(np.random.default_rng(0).random((1, 8, 8), dtype=np.float32), 12, "no_finding")
    save_reference(ref, tmp_path)
    back = load_reference(tmp_path, 8)
    assert back is not None and np.array_equal(back.image, ref.image) and (back.count, back.rule) == (12, "no_finding")
    assert load_reference(tmp_path / "elsewhere") is None
    with pytest.raises(DataError, match=REFERENCE_FILE) as err:
        load_reference(tmp_path, 16)
    assert "(1, 16, 16)" in str(err.value)
    (tmp_path / REFERENCE_FILE).write_bytes(b"not an npz")
    with pytest.raises(DataError, match=REFERENCE_FILE):
        load_reference(tmp_path, 8)


def test_a_saved_model_keeps_its_reference(tmp_path: Path) -> None:
    from medtriad.models import MultiModalModel, build_model

    model = build_model(tiny_config())
    size = model.config.data.cxr.size
    model.reference_cxr = ReferenceXray(np.full((1, size, size), 0.25, np.float32), 3, "findings")
    model.save_pretrained(tmp_path / "m")
    back = MultiModalModel.from_pretrained(tmp_path / "m")
    assert back.reference_cxr.count == 3 and np.all(back.reference_cxr.image == 0.25)
