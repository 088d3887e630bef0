"""`prepare mimic` on a tiny tree in the official MIMIC-CXR-JPG / MIMIC-CXR / MIMIC-IV-ECG layout:
views, one image per study, the pairing window's edges, nearest vs all, the admission rule,
missing files and reports, labels, splits, text, idempotence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtriad.data.manifest import read_manifest
from medtriad.data.sources import prepare_dataset
from medtriad.data.sources.mimic import prepare_mimic
from medtriad.data.validate import validate_manifest
from medtriad.errors import ConfigError, DataError

METADATA_COLUMNS = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
    "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]  # fmt: skip
LABELS = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
]  # fmt: skip
MM_COLUMNS = [
    "subject_id", "study_id", "cart_id", "ecg_time", *[f"report_{i}" for i in range(18)], "bandwidth",
    "filtering", "rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end", "t_end", "p_axis", "qrs_axis", "t_axis",
]  # fmt: skip
T = pd.Timestamp
DAY = pd.Timedelta(days=1)
SEC = pd.Timedelta(seconds=1)
ADMIT = T("2180-06-01 10:00:00")

# dicom, subject, study, view, time, official split, write image, write report
XRAYS = [
    ("d1", 10000001, 50000001, "PA", T("2180-05-06 12:00:00"), "train", True, True),
    ("d2", 10000002, 50000002, "AP", T("2180-01-01 08:23:47"), "train", True, True),
    ("d3", 10000003, 50000003, "PA", T("2180-02-10 09:00:00"), "train", True, True),
    ("d4", 10000004, 50000004, "LATERAL", T("2180-02-10 09:00:00"), "train", True, True),
    ("d4b", 10000004, 50000004, "PA", T("2180-02-10 09:01:00"), "train", True, True),
    ("d5a", 10000005, 50000005, "AP", T("2180-03-01 10:00:00"), "test", True, True),
    ("d5b", 10000005, 50000005, "PA", T("2180-03-01 11:00:00"), "test", True, True),
    ("d6", 10000006, 50000006, "PA", T("2180-03-01 11:00:00"), "validate", True, True),
    ("d7", 10000007, 50000007, "PA", T("2180-03-01 11:00:00"), "train", True, False),
    ("d8", 10000008, 50000008, "PA", T("2180-03-01 11:00:00"), "train", False, True),
    ("d9", 10000009, 50000009, "PA", T("2180-03-01 11:00:00"), "train", True, True),
    ("d10", 10000010, 50000010, "PA", T("2180-03-01 11:00:00"), "train", True, True),
    ("d11a", 10000011, 50000011, "PA", ADMIT + pd.Timedelta(hours=72), "train", True, True),
    ("d11b", 10000011, 50000012, "PA", ADMIT + pd.Timedelta(hours=24) - SEC, "train", True, True),
]
# ecg study, subject, time, write record, write machine statements
ECGS = [
    (40000001, 10000001, T("2180-05-06 12:00:00") - 60 * DAY, True, True),  # exactly -60 d: in
    (40000002, 10000001, T("2180-05-06 12:00:00") + 60 * DAY + SEC, True, True),  # 60 d + 1 s: out
    (40000003, 10000002, T("2180-01-01 08:23:47") + 60 * DAY, True, True),  # exactly +60 d: in
    (40000004, 10000002, T("2180-01-01 08:23:47") - 60 * DAY - SEC, True, True),  # out
    (40000005, 10000003, T("2180-02-10 09:00:00") - DAY, True, True),  # tie: the earlier wins
    (40000006, 10000003, T("2180-02-10 09:00:00") + DAY, True, True),
    (40000007, 10000005, T("2180-03-01 13:00:00"), True, True),
    (40000008, 10000006, T("2180-03-02 11:00:00"), True, True),
    (40000009, 10000007, T("2180-03-02 11:00:00"), True, True),
    (40000010, 10000008, T("2180-03-02 11:00:00"), True, True),
    (40000011, 10000009, T("2180-03-02 11:00:00"), False, True),
    (40000012, 10000010, T("2180-03-02 11:00:00"), True, False),
    (40000013, 10000011, ADMIT + pd.Timedelta(hours=24), True, True),  # admission rule: in
    (40000014, 10000011, ADMIT - SEC, True, True),  # before admission: out
]


def study_time_value(t: pd.Timestamp) -> str:
    """StudyTime as MIMIC writes it: HHMMSS.fff as a number (leading zeros lost)."""
    return f"{int(t.strftime('%H%M%S'))}.{t.microsecond // 1000:03d}"


def build(base: Path, make) -> dict[str, Path]:
    """PhysioNet download folder: physionet.org/files/{mimic-cxr-jpg,mimic-cxr,mimic-iv-ecg}/..."""
    files = base / "physionet.org" / "files"
    jpg, rep, ecg = (
        files / "mimic-cxr-jpg" / "2.0.0",
        files / "mimic-cxr" / "2.0.0",
        files / "mimic-iv-ecg" / "1.0",
    )
    meta, split = [], []
    for dicom, subj, study, view, t, sp, has_img, has_rep in XRAYS:
        meta.append({
            "dicom_id": dicom, "subject_id": subj, "study_id": study, "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
            "ViewPosition": view, "Rows": 3056, "Columns": 2544, "StudyDate": t.strftime("%Y%m%d"),
            "StudyTime": study_time_value(t), "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
            "ViewCodeSequence_CodeMeaning": "postero-anterior", "PatientOrientationCodeSequence_CodeMeaning": "Erect",
        })  # fmt: skip
        split.append({"dicom_id": dicom, "study_id": study, "subject_id": subj, "split": sp})
        s = str(subj)
        if has_img:
            make.image(jpg / "files" / f"p{s[:2]}" / f"p{s}" / f"s{study}" / f"{dicom}.jpg")
        if has_rep:
            p = rep / "files" / f"p{s[:2]}" / f"p{s}" / f"s{study}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(
                f"                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
                f" INDICATION:  ___F with cough\n\n FINDINGS:\n \n Lungs clear in study {study}.\n\n"
                f" IMPRESSION:\n \n No acute process.\n"
            )
    make.csv(jpg / "mimic-cxr-2.0.0-metadata.csv.gz", meta, METADATA_COLUMNS)
    make.csv(
        jpg / "mimic-cxr-2.0.0-split.csv.gz", split, ["dicom_id", "study_id", "subject_id", "split"]
    )
    chex = [
        {
            "subject_id": 10000001,
            "study_id": 50000001,
            "Cardiomegaly": 1.0,
            "Edema": -1.0,
            "Pleural Effusion": 0.0,
        }
    ]
    chex += [
        {"subject_id": x[1], "study_id": x[2], "No Finding": 1.0}
        for x in XRAYS[1:]
        if x[2] != 50000012
    ]
    make.csv(jpg / "mimic-cxr-2.0.0-chexpert.csv.gz", chex, ["subject_id", "study_id", *LABELS])
    negbio = [dict(chex[0], Cardiomegaly=0.0)] + chex[1:]
    make.csv(jpg / "mimic-cxr-2.0.0-negbio.csv.gz", negbio, ["subject_id", "study_id", *LABELS])

    records, mm = [], []
    for study, subj, t, has_rec, has_mm in ECGS:
        rel = f"files/p{str(subj)[:4]}/p{subj}/s{study}/{study}"
        records.append(
            {
                "subject_id": subj,
                "study_id": study,
                "file_name": study,
                "ecg_time": t.strftime("%Y-%m-%d %H:%M:%S"),
                "path": rel,
            }
        )
        if has_rec:
            make.record((ecg / rel).parent, str(study))
        if has_mm:
            mm.append({"subject_id": subj, "study_id": study, "cart_id": 6848296, "ecg_time": t.strftime("%Y-%m-%d %H:%M:%S"),
                       "report_0": "Sinus rhythm", "report_1": "Sinus rhythm", "report_2": "Normal ECG", "rr_interval": 659})  # fmt: skip
    make.csv(
        ecg / "record_list.csv",
        records,
        ["subject_id", "study_id", "file_name", "ecg_time", "path"],
    )
    make.csv(ecg / "machine_measurements.csv", mm, MM_COLUMNS)
    adm = base / "mimiciv" / "3.1" / "hosp" / "admissions.csv.gz"
    make.csv(adm, [{"subject_id": 10000011, "hadm_id": 20000011, "admittime": ADMIT.strftime("%Y-%m-%d %H:%M:%S"),
                    "dischtime": (ADMIT + 5 * DAY).strftime("%Y-%m-%d %H:%M:%S"), "admission_type": "URGENT"}],
             ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type"])  # fmt: skip
    return {"files": files, "jpg": jpg, "ecg": ecg, "reports": rep, "admissions": adm.parent}


@pytest.fixture
def tree(tmp_path: Path, make) -> dict[str, Path]:
    return build(tmp_path, make)


def by_id(df: pd.DataFrame) -> pd.DataFrame:
    return df.set_index("sample_id")


def test_default_rules_row_by_row(tree, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = prepare_mimic(tree["files"], out)
    df = by_id(read_manifest(out / "manifest.parquet"))
    assert sorted(df.index) == sorted(
        [
            "d1_40000001",
            "d2_40000003",
            "d3_40000005",
            "d5b_40000007",
            "d6_40000008",
            "d10_40000012",
            "d11a_40000013",
            "d11b_40000013",
        ]
    )
    dropped = summary.dropped_rows
    assert dropped["view LATERAL not PA/AP"]["ids"] == ["d4"]
    assert dropped["no ECG within 60 days"]["ids"] == ["d4b"]
    assert dropped["another image of the study kept (one image per study)"]["ids"] == ["d5a"]
    assert dropped["no report file"]["ids"] == ["d7_40000009"]
    assert dropped["image file missing"]["ids"] == ["d8_40000010"]
    assert dropped["ECG file missing"]["ids"] == ["d9_40000011"]
    assert summary.n_dropped == 6 and summary.n_rows == 8
    # window edges: exactly 60 days on either side is in
    assert df.loc["d1_40000001", "meta_ecg_minus_cxr_hours"] == -60 * 24
    assert df.loc["d2_40000003", "meta_ecg_minus_cxr_hours"] == 60 * 24
    assert df.loc["d2_40000003", "meta_cxr_time"] == "2180-01-01 08:23:47.000"  # StudyTime 82347
    # splits: official test / validate kept, patient-level
    assert df.loc["d5b_40000007", "split"] == "test" and df.loc["d6_40000008", "split"] == "val"
    assert set(df.drop(["d5b_40000007", "d6_40000008"])["split"]) == {"train"}
    # paths relative to the manifest's folder, pointing at the image and the WFDB header
    row = df.loc["d1_40000001"]
    assert (out / row["cxr_path"]).resolve() == (
        tree["jpg"] / "files/p10/p10000001/s50000001/d1.jpg"
    ).resolve()
    assert (out / row["ecg_path"]).resolve() == (
        tree["ecg"] / "files/p1000/p10000001/s40000001/40000001.hea"
    ).resolve()
    # text: report sections + de-duplicated machine statements; no statements -> radiology only
    assert (
        row["report_text"]
        == "[RAD] Lungs clear in study 50000001. No acute process. [ECG] Sinus rhythm. Normal ECG."
    )
    assert (
        df.loc["d10_40000012", "report_text"]
        == "[RAD] Lungs clear in study 50000010. No acute process."
    )
    assert summary.dropped_values["no machine_measurements row for the ECG (no cardiology text)"][
        "ids"
    ] == ["d10_40000012"]
    # labels: 1 / 0 / -1 kept / not mentioned empty
    assert (
        row["label_cardiomegaly"] == 1
        and row["label_pleural_effusion"] == 0
        and row["label_edema"] == -1
    )
    assert np.isnan(row["label_pneumonia"])
    assert validate_manifest(out / "manifest.parquet", workers=1, progress=False).ok
    saved = json.loads((out / "prepare_summary.json").read_text())
    assert saved["dropped_rows"]["ECG file missing"]["count"] == 1 and saved["n_rows"] == 8


def test_all_pairs_and_nearest_tie(tree, tmp_path: Path) -> None:
    nearest = by_id(read_manifest(prepare_mimic(tree["files"], tmp_path / "n").manifest))
    assert (
        "d3_40000005" in nearest.index and "d3_40000006" not in nearest.index
    )  # tie -> earlier ECG
    every = by_id(
        read_manifest(prepare_mimic(tree["files"], tmp_path / "a", pairing="all").manifest)
    )
    assert {"d3_40000005", "d3_40000006"} <= set(every.index)
    assert (
        "d1_40000002" not in every.index and "d2_40000004" not in every.index
    )  # one second past the edge
    assert set(every.index) == set(nearest.index) | {
        "d3_40000006",
        "d11a_40000014",
        "d11b_40000014",
    }


def test_narrower_window_excludes_the_edge(tree, tmp_path: Path) -> None:
    s = prepare_mimic(tree["files"], tmp_path / "o", window_days=59.99)
    df = by_id(read_manifest(s.manifest))
    assert not any(i.startswith(("d1_", "d2_")) for i in df.index)
    assert set(s.dropped_rows["no ECG within 59.99 days"]["ids"]) == {"d1", "d2", "d4b"}


def test_admission_rule(tree, tmp_path: Path) -> None:
    s = prepare_mimic(tree["files"], tmp_path / "o", admissions=tree["admissions"])
    df = read_manifest(s.manifest)
    assert df["sample_id"].tolist() == [
        "d11a_40000013"
    ]  # ECG at +24 h and X-ray at +72 h: both edges in
    assert df["meta_hadm_id"].tolist() == ["20000011"]
    reason = "no admission with the ECG within 24 h and the X-ray 24-72 h after admission"
    assert "d11b" in s.dropped_rows[reason]["ids"]  # X-ray one second before +24 h


def test_keep_unpaired_and_all_images(tree, tmp_path: Path) -> None:
    s = prepare_mimic(tree["files"], tmp_path / "o", keep_unpaired=True, one_image_per_study=False)
    df = by_id(read_manifest(s.manifest))
    assert pd.isna(df.loc["d4b", "ecg_path"]) and df.loc["d4b", "report_text"].startswith("[RAD]")
    assert "d5a_40000007" in df.index and "d5b_40000007" in df.index
    assert s.dropped_values["no ECG within 60 days"]["ids"] == ["d4b"]


def test_label_options(tree, tmp_path: Path) -> None:
    ones = by_id(
        read_manifest(prepare_mimic(tree["files"], tmp_path / "a", uncertain="ones").manifest)
    )
    assert ones.loc["d1_40000001", "label_edema"] == 1
    neg = by_id(
        read_manifest(prepare_mimic(tree["files"], tmp_path / "b", labeler="negbio").manifest)
    )
    assert neg.loc["d1_40000001", "label_cardiomegaly"] == 0


def test_val_fraction_redraws_val_but_keeps_test(tree, tmp_path: Path) -> None:
    df = by_id(
        read_manifest(
            prepare_mimic(tree["files"], tmp_path / "o", val_fraction=0.5, seed=3).manifest
        )
    )
    assert df.loc["d5b_40000007", "split"] == "test"
    assert set(df["split"]) == {"train", "val", "test"}


def test_idempotent_and_explicit_roots(tree, tmp_path: Path) -> None:
    out = tmp_path / "o"
    prepare_dataset("mimic", tree["jpg"], out, ecg_root=tree["ecg"], reports_root=tree["reports"])
    first = (out / "manifest.parquet").read_bytes()
    prepare_dataset("mimic", tree["jpg"], out, ecg_root=tree["ecg"], reports_root=tree["reports"])
    assert (out / "manifest.parquet").read_bytes() == first
    auto = prepare_mimic(tree["files"], tmp_path / "auto")
    assert (
        read_manifest(auto.manifest)["sample_id"].tolist()
        == read_manifest(out)["sample_id"].tolist()
    )


def test_bad_input(tree, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="MIMIC-IV-ECG"):
        prepare_mimic(tree["jpg"], tmp_path / "o", ecg_root=tmp_path)
    with pytest.raises(ConfigError, match="pairing"):
        prepare_mimic(tree["files"], tmp_path / "o", pairing="closest")
    (tree["ecg"] / "record_list.csv").write_text("subject_id,study_id,time\n1,2,3\n")
    with pytest.raises(DataError, match="missing columns"):
        prepare_mimic(tree["files"], tmp_path / "o")
