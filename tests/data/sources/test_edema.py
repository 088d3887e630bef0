"""`prepare edema`: severity grades joined to MIMIC-CXR-JPG images, study- and image-level."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medtriad.data.manifest import read_manifest
from medtriad.data.sources.edema import prepare_edema
from medtriad.errors import DataError

META = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
    "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]  # fmt: skip
# dicom, subject, study, view, split, image written
IMAGES = [
    ("a1", 11000001, 51000001, "PA", "train", True),
    ("a2", 11000001, 51000001, "LATERAL", "train", True),
    ("b1", 11000002, 51000002, "AP", "test", True),
    ("c1", 11000003, 51000003, "LL", "train", True),
    ("d1", 11000004, 51000004, "PA", "validate", False),
    ("e1", 11000005, 51000005, "PA", "train", True),
    ("e2", 11000005, 51000005, "AP", "train", True),
]
GRADES = [
    (11000001, 51000001, 2),
    (11000002, 51000002, 0),
    (11000002, 51000002, 0),  # an identical repeat counts once
    (11000003, 51000003, 1),  # lateral only
    (11000004, 51000004, 3),  # image missing
    (11000005, 51000005, 3),
    (11000006, 51000006, 5),  # not a grade
    (11000007, 51000007, 1),
    (11000007, 51000007, 2),  # conflicting
    (11000008, 51000008, 1),  # no such study in MIMIC-CXR-JPG
]


@pytest.fixture
def tree(tmp_path: Path, make) -> dict[str, Path]:
    jpg = tmp_path / "mimic-cxr-jpg" / "2.0.0"
    meta = [
        {
            "dicom_id": d,
            "subject_id": s,
            "study_id": st,
            "ViewPosition": v,
            "StudyDate": 21500101,
            "StudyTime": 93000.5,
        }
        for d, s, st, v, _, _ in IMAGES
    ]
    make.csv(jpg / "mimic-cxr-2.0.0-metadata.csv.gz", meta, META)
    make.csv(
        jpg / "mimic-cxr-2.0.0-split.csv.gz",
        [
            {"dicom_id": d, "study_id": st, "subject_id": s, "split": sp}
            for d, s, st, _, sp, _ in IMAGES
        ],
        ["dicom_id", "study_id", "subject_id", "split"],
    )
    for d, s, st, _, _, has in IMAGES:
        if has:
            make.image(jpg / "files" / f"p{str(s)[:2]}" / f"p{s}" / f"s{st}" / f"{d}.jpg")
    report = jpg / "files" / "p11" / "p11000001" / "s51000001.txt"
    report.write_text(
        "FINDINGS: Moderate interstitial edema.\nIMPRESSION: Moderate pulmonary edema.\n"
    )
    sev = tmp_path / "edema-severity" / "1.0.1"
    make.csv(
        sev / "regex_report_edema_severity.csv",
        [dict(zip(["subject_id", "study_id", "edema_severity"], g)) for g in GRADES],
        ["subject_id", "study_id", "edema_severity"],
    )
    return {"jpg": jpg, "sev": sev}


def test_study_level_grades(tree, tmp_path: Path) -> None:
    s = prepare_edema(tree["sev"], tmp_path / "o", cxr_root=tree["jpg"])
    df = read_manifest(s.manifest).set_index("sample_id")
    assert sorted(df.index) == ["a1", "b1", "e1", "e2"]
    assert df.loc["a1", "meta_edema_severity"] == 2
    onehot = df[[f"label_edema_severity_{g}" for g in range(4)]]
    assert (onehot.sum(axis=1) == 1).all() and onehot.loc["a1"].tolist() == [0, 0, 1, 0]
    assert df.loc["b1", "split"] == "test" and df.loc["a1", "split"] == "train"
    assert (
        df.loc["a1", "report_text"]
        == "[RAD] Moderate interstitial edema. Moderate pulmonary edema."
    )
    assert pd.isna(df.loc["b1", "report_text"])
    d = s.dropped_rows
    assert d["edema_severity 5 not in 0-3"]["ids"] == ["51000006"]
    assert d["conflicting edema severity grades"]["count"] == 2
    assert d["no PA/AP image of the study"]["ids"] == ["51000003"]
    assert d["view LATERAL not PA/AP"]["ids"] == ["a2"]
    assert d["image file missing"]["ids"] == ["d1"]
    assert d["study_id not in the MIMIC-CXR-JPG metadata"]["ids"] == ["51000008"]
    one = read_manifest(
        prepare_edema(
            tree["sev"], tmp_path / "p", cxr_root=tree["jpg"], one_image_per_study=True
        ).manifest
    )
    assert sorted(one["sample_id"]) == ["a1", "b1", "e1"]  # PA before AP


def test_image_level_file(tree, tmp_path: Path, make) -> None:
    f = make.csv(tmp_path / "consensus_image_dataset.csv", [
        {"subject_id": 11000001, "study_id": 51000001, "dicom_id": "a1", "edema_severity": 1},
        {"subject_id": 11000001, "study_id": 51000001, "dicom_id": "a2", "edema_severity": 1},
        {"subject_id": 11000005, "study_id": 51000005, "dicom_id": "e2", "edema_severity": 0},
        {"subject_id": 11000009, "study_id": 51000009, "dicom_id": "zz", "edema_severity": 0},
    ], ["subject_id", "study_id", "dicom_id", "edema_severity"])  # fmt: skip
    s = prepare_edema(tree["sev"], tmp_path / "o", cxr_root=tree["jpg"], labels_file=f)
    df = read_manifest(s.manifest).set_index("sample_id")
    assert sorted(df.index) == ["a1", "e2"] and df.loc["e2", "meta_edema_severity"] == 0
    assert set(df["meta_label_level"]) == {"image"}
    assert s.dropped_rows["view LATERAL not PA/AP"]["ids"] == ["a2"]
    assert s.dropped_rows["dicom_id not in the MIMIC-CXR-JPG metadata"]["ids"] == ["zz"]


def test_missing_label_table(tmp_path: Path, tree) -> None:
    with pytest.raises(DataError, match="edema severity table"):
        prepare_edema(tmp_path / "nothing", tmp_path / "o", cxr_root=tree["jpg"])
