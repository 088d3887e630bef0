"""`prepare cinc`: #Dx as SNOMED codes or abbreviations named by the mapping tables, labels,
statement text, splits; and the real CinC 2021 and CPSC 2018 records in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtriad.data.manifest import read_manifest
from medtriad.data.sources import prepare_dataset
from medtriad.data.sources.cinc import prepare_cinc
from medtriad.data.validate import validate_manifest
from medtriad.errors import ConfigError, DataError

SCORED = """Dx,SNOMEDCTCode,Abbreviation,CPSC,CPSC_Extra,StPetersburg,PTB,PTB_XL,Georgia,Chapman_Shaoxing,Ningbo,Total,Notes
atrial fibrillation,164889003,AF,1221,153,2,15,1514,570,1780,0,5255,
complete right bundle branch block,713427006,CRBBB,0,113,0,0,542,28,0,1096,1779,We score 713427006 and 59118001 as the same diagnosis.
1st degree av block,270492004,IAVB,722,106,0,0,797,769,247,893,3534,
sinus rhythm,426783006,NSR,918,4,0,80,18092,1752,1826,6299,28971,
right bundle branch block,59118001,RBBB,1857,1,2,0,0,542,454,195,3051,We score 713427006 and 59118001 as the same diagnosis.
"""
# the CinC 2020 spelling of the code column
UNSCORED = """Dx,SNOMED CT Code,Abbreviation,CPSC,CPSC-Extra,StPetersburg,PTB,PTB-XL,Georgia,Total
st depression,429622005,STD,869,57,4,0,0,0,930
"""
# folder, record, comments, signal written
RECORDS = [
    ("training/cpsc_2018/g1", "A0001", ["Age: 74", "Sex: Male", "Dx: RBBB", "Rx: Unknown"], True),
    ("training/cpsc_2018/g1", "A0002", ["Age: 49", "Sex: Female", "Dx: Normal"], True),
    ("training/cpsc_2018/g1", "A0003", ["Age: 81", "Sex: Female", "Dx: AF,I-AVB,STD"], True),
    (
        "training/georgia/g1",
        "E0001",
        [" Age: 59", " Sex: Female", " Dx: 426783006,164889003"],
        True,
    ),
    ("training/georgia/g1", "E0002", [" Age: 60", " Sex: Male", " Dx: 713427006"], True),
    ("training/georgia/g1", "E0003", [" Age: 61", " Sex: Male", " Dx: 999999999"], True),
    ("training/georgia/g1", "E0004", [" Age: 62", " Sex: Male"], True),
    ("training/georgia/g1", "E0005", [" Age: 63", " Sex: Male", " Dx: 164889003"], False),
]


@pytest.fixture
def root(tmp_path: Path, make) -> Path:
    import wfdb

    root = tmp_path / "cinc"
    for folder, name, comments, signal in RECORDS:
        hea = make.record(root / folder, name)
        text = hea.read_text().rstrip("\n") + "\n" + "".join(f"#{c}\n" for c in comments)
        hea.write_text(text)
        if not signal:
            (root / folder / f"{name}.dat").unlink()
    (root / "training/georgia/g1/E0009.hea").write_text("# Dx: 164889003\n")
    (root / "dx_mapping_scored.csv").write_text(SCORED)
    (root / "dx_mapping_unscored.csv").write_text(UNSCORED)
    assert wfdb.rdheader(str(root / "training/cpsc_2018/g1/A0001")).comments[2] == "Dx: RBBB"
    return root


def test_rows_labels_text(root: Path, tmp_path: Path) -> None:
    s = prepare_cinc(root, tmp_path / "o", split_all="test")
    df = read_manifest(s.manifest).set_index("sample_id")
    assert list(df.index) == ["A0001", "A0002", "A0003", "E0001", "E0002", "E0003", "E0004"]
    assert s.dropped_rows["signal file missing"]["ids"] == ["E0005"]
    assert any(r.startswith("unreadable header") for r in s.dropped_rows)
    labels = sorted(c for c in df.columns if c.startswith("label_"))
    assert labels == [
        "label_af",
        "label_crbbb",
        "label_iavb",
        "label_nsr",
        "label_rbbb",
        "label_std",
    ]
    assert df.loc["A0003", ["label_af", "label_iavb", "label_std", "label_nsr"]].tolist() == [
        1,
        1,
        1,
        0,
    ]
    assert df.loc["A0002", "label_nsr"] == 1 and df.loc["A0001", "label_rbbb"] == 1
    assert df.loc["E0001", "report_text"] == "[ECG] Sinus rhythm. Atrial fibrillation."
    assert (
        df.loc["A0003", "report_text"]
        == "[ECG] Atrial fibrillation. 1st degree av block. St depression."
    )
    assert (
        df.loc[["E0003", "E0004"], labels].isna().all().all()
        and df.loc[["E0003", "E0004"], "report_text"].isna().all()
    )
    assert s.dropped_values["Dx 999999999 not in the mapping tables"]["ids"] == ["E0003"]
    assert set(df["split"]) == {"test"} and (df.index == df["subject_id"]).all()
    assert df.loc["A0001", "meta_source"] == "CPSC 2018" and df.loc["E0001", "meta_age"] == 59
    assert df.loc["A0001", "ecg_path"].endswith("training/cpsc_2018/g1/A0001.hea")
    assert validate_manifest(s.manifest, workers=1, progress=False).ok


def test_label_options(root: Path, tmp_path: Path) -> None:
    df = read_manifest(prepare_cinc(root, tmp_path / "a", labels="AF,426783006").manifest)
    assert sorted(c for c in df.columns if c.startswith("label_")) == ["label_af", "label_nsr"]
    assert set(df["split"]) <= {"train", "val", "test"}
    merged = read_manifest(
        prepare_cinc(root, tmp_path / "b", merge_equivalent=True).manifest
    ).set_index("sample_id")
    assert "label_crbbb" not in merged.columns and merged.loc["E0002", "label_rbbb"] == 1
    with pytest.raises(ConfigError, match="labels"):
        prepare_cinc(root, tmp_path / "c", labels="XYZ")
    with pytest.raises(ConfigError, match="split_all"):
        prepare_cinc(root, tmp_path / "c", split_all="holdout")
    with pytest.raises(ConfigError, match="not an option"):
        prepare_dataset("cinc", root, tmp_path / "c", window_days=3)


def test_mapping_required(tmp_path: Path, make) -> None:
    make.record(tmp_path / "r", "A0001")
    with pytest.raises(DataError, match="mapping"):
        prepare_cinc(tmp_path / "r", tmp_path / "o")


def mapping(shared: Path) -> list[Path]:
    return [
        shared / "ecg" / "cinc2021" / "dx_mapping_scored.csv",
        shared / "ecg" / "cinc2021" / "dx_mapping_unscored.csv",
    ]


def test_real_cinc2021(shared: Path, tmp_path: Path) -> None:
    s = prepare_cinc(
        shared / "ecg" / "cinc2021" / "records",
        tmp_path / "o",
        mapping=mapping(shared),
        split_all="test",
    )
    df = read_manifest(s.manifest).set_index("sample_id")
    truth = pd.read_csv(shared / "ecg" / "cinc2021" / "labels.csv", dtype=str).set_index("record")
    assert len(df) == 50 and set(df["split"]) == {"test"} and s.n_dropped == 0
    assert df["meta_dx_codes"].tolist() == truth.loc[df.index, "dx"].str.replace(" ", "").tolist()
    first_name = truth.loc["E07500", "dx_names"].split("|")[0]
    assert df.loc["E07500", "report_text"].lower().startswith(f"[ecg] {first_name}")
    report = validate_manifest(s.manifest, workers=1, progress=False)
    assert report.ok, (report.schema, report.bad[:3])
    first = Path(s.manifest).read_bytes()
    records = shared / "ecg" / "cinc2021" / "records"
    again = prepare_cinc(records, tmp_path / "o", mapping=mapping(shared), split_all="test")
    assert Path(again.manifest).read_bytes() == first  # idempotent


def test_real_cpsc2018_abbreviations(shared: Path, tmp_path: Path) -> None:
    s = prepare_cinc(
        shared / "ecg" / "cpsc2018" / "records", tmp_path / "o", mapping=mapping(shared)
    )
    df = read_manifest(s.manifest).set_index("sample_id")
    truth = pd.read_csv(shared / "ecg" / "cpsc2018" / "labels.csv", dtype=str).set_index("record")[
        "dx"
    ]
    alias = {"Normal": "nsr", "I-AVB": "iavb"}
    for rec, dx in truth.items():
        want = {alias.get(d, d.lower()) for d in dx.split(",")}
        got = {
            c[len("label_") :] for c in df.columns if c.startswith("label_") and df.loc[rec, c] == 1
        }
        assert got == want, rec
    assert not s.dropped_values and len(df) == 150
    assert set(np.unique(df["split"])) == {"train", "val", "test"}
    report = validate_manifest(s.manifest, workers=1, progress=False)
    assert report.ok, (report.schema, report.bad[:3])
