"""``edema``: MIMIC-CXR pulmonary-edema severity grades (0 none, 1 vascular congestion,
2 interstitial, 3 alveolar oedema) joined to MIMIC-CXR-JPG 2.0.0 images.

`root` is the folder of the severity release (PhysioNet "Pulmonary Edema Severity Grades Based
on MIMIC-CXR"). Its label table is the first found of :data:`LABEL_FILES` (or ``labels_file``)
with the columns ``subject_id, study_id, edema_severity`` and optionally ``dicom_id`` (the
image-level consensus set). The file names are the ones the release is known to use; point
``labels_file`` at another table with the same columns if yours differs.

Rules: a label row is dropped when its severity is not an integer 0-3 ("edema_severity X not in
0-3") or when one study (or image) carries two different grades ("conflicting edema severity
grades"); identical repeats count once. Images follow the MIMIC-CXR-JPG rules of
:mod:`medtriad.data.sources.mimic_cxr` (PA/AP, a study time, listed in the split file), must
exist ("image file missing") and, for study-level grades, every kept image of the study gets the
grade (or one image per study with ``one_image_per_study``). A study-level label whose study has
no kept image is dropped ("no PA/AP image of the study").

Labels: one-hot ``label_edema_severity_0`` .. ``_3`` plus ``meta_edema_severity`` (0-3).
Text: the MIMIC-CXR report's sections when the report is found (else the row keeps no text;
listed under dropped values). Split: the official MIMIC-CXR split, patient-level (most held-out).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from medtriad.data.sources import mimic_cxr as mc
from medtriad.data.sources.common import (
    Drops,
    PrepareSummary,
    files_exist,
    finish,
    locate_folder,
    most_held_out,
    rel_prefix,
    require_columns,
    split_list,
)
from medtriad.data.text import combine_report
from medtriad.errors import DataError

LABEL_FILES = (
    "edema_severity.csv",
    "regex_report_edema_severity.csv",
    "consensus_image_dataset.csv",
    "metadata.csv",
)
"""Label tables looked for in `root`, in this order."""
GRADES = (0, 1, 2, 3)
CXR_FOLDERS = (
    *mc.CXR_JPG_FOLDERS,
    "../mimic-cxr-jpg/2.0.0",
    "../../mimic-cxr-jpg/2.0.0",
    "../mimic-cxr-jpg",
)

HELP = {
    "cxr_root": "MIMIC-CXR-JPG 2.0.0 folder (metadata, split, files/); default: found beside or below --root.",
    "reports_root": "MIMIC-CXR 2.0.0 folder with the report files (optional).",
    "labels_file": "Severity table (subject_id, study_id, edema_severity[, dicom_id]); default: the first of edema_severity.csv, regex_report_edema_severity.csv, consensus_image_dataset.csv, metadata.csv in --root.",
    "views": "Comma-separated ViewPosition values to keep.",
    "one_image_per_study": "Keep one image per study for study-level grades.",
    "sections": "Comma-separated report sections for the radiology text.",
    "check_files": "Check that every image exists (drop the row if not).",
}


def _read_grades(path: Path, rows: Drops) -> pd.DataFrame:
    header = require_columns(path, ["subject_id", "study_id", "edema_severity"])
    cols = ["subject_id", "study_id", "edema_severity"] + (
        ["dicom_id"] if "dicom_id" in header else []
    )
    try:
        df = pd.read_csv(path, usecols=cols, dtype={"dicom_id": str})
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(path, f"unreadable CSV ({exc})") from exc
    key = "dicom_id" if "dicom_id" in cols else "study_id"
    df["row_id"] = df[key].astype(str)
    grade = pd.to_numeric(df["edema_severity"], errors="coerce")
    ok = grade.isin(GRADES)
    rows.add_each(
        df.loc[~ok, "row_id"],
        "edema_severity " + df.loc[~ok, "edema_severity"].astype(str) + " not in 0-3",
    )
    df = df.loc[ok].assign(edema_severity=grade[ok].astype(int))
    df = df.drop_duplicates([key, "edema_severity"])
    conflict = df[key].duplicated(keep=False)
    df = rows.filter(df, ~conflict.to_numpy(), "conflicting edema severity grades", "row_id")
    df["subject_id"] = pd.to_numeric(df["subject_id"], errors="coerce").astype("int64")
    df["study_id"] = pd.to_numeric(df["study_id"], errors="coerce").astype("int64")
    return df.reset_index(drop=True)


def prepare_edema(
    root: Path,
    out: Path,
    *,
    cxr_root: Path | None = None,
    reports_root: Path | None = None,
    labels_file: Path | None = None,
    views: str = "PA,AP",
    one_image_per_study: bool = False,
    sections: str = "findings,impression",
    check_files: bool = True,
) -> PrepareSummary:
    """Write the oedema-severity manifest into `out` (rules in the module docstring)."""
    started = time.perf_counter()
    options = {k: v for k, v in locals().items() if k not in ("root", "out", "started")}
    view_list, section_list = split_list("views", views), split_list("sections", sections)
    root, out = Path(root), Path(out)
    label_path = Path(labels_file) if labels_file is not None else None
    if label_path is None:
        label_path = next((root / n for n in LABEL_FILES if (root / n).is_file()), None)
        if label_path is None:
            raise DataError(
                root,
                f"no edema severity table (looked for {', '.join(LABEL_FILES)}); pass labels_file",
            )
    cxr_root = locate_folder(root, cxr_root, mc.METADATA, CXR_FOLDERS, "MIMIC-CXR-JPG 2.0.0")
    rows, values, notes = Drops(), Drops(), []

    grades = _read_grades(label_path, rows)
    image_level = "dicom_id" in grades.columns
    key = "dicom_id" if image_level else "study_id"
    seen: set = set()
    kept = mc.read_metadata(cxr_root, view_list, rows, subset=(key, set(grades[key])), seen=seen)
    in_metadata = grades[key].isin(seen).to_numpy()
    grades = rows.filter(grades, in_metadata, f"{key} not in the MIMIC-CXR-JPG metadata", "row_id")
    if image_level:
        df = grades.drop(columns=["subject_id", "study_id"]).merge(kept, on="dicom_id", how="inner")
    else:
        has_image = grades["study_id"].isin(set(kept["study_id"])).to_numpy()
        grades = rows.filter(
            grades, has_image, "no " + "/".join(view_list) + " image of the study", "row_id"
        )
        df = grades.drop(columns=["subject_id"]).merge(kept, on="study_id", how="inner")
    df = df.reset_index(drop=True)
    df["row_id"] = df["dicom_id"]
    df = mc.attach_official_split(cxr_root, df, rows)
    if one_image_per_study and not image_level:
        df = mc.one_image_per_study(df, view_list, rows)
    df = df.reset_index(drop=True)
    df["image_rel"] = mc.image_rel(df)
    if check_files:
        df = rows.filter(
            df, files_exist(cxr_root, df["image_rel"]), "image file missing", "dicom_id"
        )

    studies = df.drop_duplicates("study_id")[["subject_id", "study_id"]]
    rad = mc.study_reports(studies, [root, cxr_root], reports_root, section_list)
    df["radiology"] = df["study_id"].map(rad)
    values.add("no report file (no text)", df.loc[df["radiology"].isna(), "dicom_id"])
    values.add("report empty after cleaning (no text)", df.loc[df["radiology"] == "", "dicom_id"])

    subject = df["subject_id"].astype(str)
    split, moved = most_held_out(subject, df["official_split"])
    if moved:
        notes.append(
            f"{moved} subjects had images in several official splits; each took its most held-out split"
        )
    onehot = {
        f"label_edema_severity_{g}": (df["edema_severity"] == g).astype(float) for g in GRADES
    }
    prefix = rel_prefix(cxr_root, out)
    manifest = pd.DataFrame(
        {
            "sample_id": df["dicom_id"],
            "subject_id": subject,
            "split": split,
            "cxr_path": prefix + df["image_rel"],
            "ecg_path": pd.NA,
            "report_text": [
                combine_report(r, None) if isinstance(r, str) else None for r in df["radiology"]
            ],
            **onehot,
            "meta_edema_severity": df["edema_severity"].astype(np.int64),
            "meta_study_id": df["study_id"].astype(str),
            "meta_view": df["view"],
            "meta_official_split": df["official_split"],
            "meta_label_level": "image" if image_level else "study",
        }
    )
    options["labels_file"] = str(label_path)
    return finish(
        manifest,
        dataset="edema",
        root=root,
        out=out,
        options=options,
        rows=rows,
        values=values,
        notes=notes,
        started=started,
    )
