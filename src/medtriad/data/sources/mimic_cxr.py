"""MIMIC-CXR-JPG 2.0.0 metadata, shared by the ``mimic`` and ``edema`` preparers.

Official files (PhysioNet, MIMIC-CXR-JPG 2.0.0), read streamed with only the needed columns:

* ``mimic-cxr-2.0.0-metadata.csv.gz``: dicom_id, subject_id, study_id, ViewPosition,
  StudyDate (YYYYMMDD), StudyTime (HHMMSS.fff, leading zeros lost: 82347.0 is 08:23:47);
* ``mimic-cxr-2.0.0-split.csv.gz``: dicom_id, study_id, subject_id, split (train/validate/test);
* ``mimic-cxr-2.0.0-chexpert.csv.gz`` / ``-negbio.csv.gz``: subject_id, study_id and the 14
  labels (1.0, 0.0, -1.0 uncertain, empty = not mentioned);
* images ``files/p10/p10000032/s50414267/<dicom_id>.jpg``; reports (MIMIC-CXR 2.0.0)
  ``files/p10/p10000032/s50414267.txt``.

Rules: an image is kept when its ViewPosition is one of the chosen views (default PA and AP,
compared exactly, so "AP AXIAL" or "LATERAL" are dropped), it has a StudyDate and StudyTime, and
it is listed in the split file. One image per study (optional) keeps the image whose view comes
first in the chosen views (PA before AP), then the earliest, then the smallest dicom_id.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medtriad.data.sources.common import (
    Drops,
    apply_uncertainty,
    files_exist,
    find_file,
    read_csv_filtered,
    read_text_files,
    slug,
)
from medtriad.data.text import radiology_text
from medtriad.errors import DataError

METADATA = ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv")
SPLIT = ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv")
LABEL_FILES = {
    "chexpert": ("mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv"),
    "negbio": ("mimic-cxr-2.0.0-negbio.csv.gz", "mimic-cxr-2.0.0-negbio.csv"),
}
CHEXPERT_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
CXR_JPG_FOLDERS = ("mimic-cxr-jpg/2.0.0", "mimic-cxr-jpg/2.1.0", "mimic-cxr-jpg")
"""Where the release sits below a PhysioNet download folder (``physionet.org/files``)."""
REPORT_FOLDERS = (
    "mimic-cxr/2.0.0",
    "mimic-cxr-reports",
    "../../mimic-cxr/2.0.0",
    "../mimic-cxr-reports",
)
"""Where the MIMIC-CXR reports sit relative to a PhysioNet download folder or the JPG release."""
OFFICIAL_SPLITS = {"train": "train", "validate": "val", "test": "test"}


def study_time(date: pd.Series, time: pd.Series) -> pd.Series:
    """StudyDate (YYYYMMDD) + StudyTime (HHMMSS.fff as a number) as datetimes (NaT if absent)."""
    day = pd.to_datetime(
        pd.to_numeric(date, errors="coerce").astype("Int64").astype("string"),
        format="%Y%m%d",
        errors="coerce",
    )
    t = pd.to_numeric(time, errors="coerce")
    seconds = (t // 10000) * 3600 + ((t // 100) % 100) * 60 + (t % 100)
    return day + pd.to_timedelta(seconds, unit="s")


def read_metadata(
    cxr_root: Path,
    views: list[str],
    rows: Drops,
    subset: tuple[str, set] | None = None,
    seen: set | None = None,
) -> pd.DataFrame:
    """Images with a chosen view and a study time: dicom_id, subject_id, study_id, view, cxr_time.

    With `subset` = (column, values) only those images are considered (and only their drops
    recorded); `seen` then collects the subset values found in the metadata.
    """
    path = find_file(cxr_root, METADATA, "MIMIC-CXR-JPG metadata")
    dtype = {
        "dicom_id": str,
        "subject_id": "int64",
        "study_id": "int64",
        "ViewPosition": str,
        "StudyDate": "float64",
        "StudyTime": "float64",
    }

    def keep(chunk: pd.DataFrame) -> pd.DataFrame:
        if subset is not None:
            chunk = chunk[chunk[subset[0]].isin(subset[1])]
            if seen is not None:
                seen.update(chunk[subset[0]])
        view = chunk["ViewPosition"].fillna("")
        ok = view.isin(views)
        rows.add_each(
            chunk.loc[~ok, "dicom_id"],
            "view " + view[~ok].replace("", "(missing)") + " not " + "/".join(views),
        )
        chunk = chunk.loc[ok]
        t = study_time(chunk["StudyDate"], chunk["StudyTime"])
        chunk = rows.filter(chunk, t.notna(), "no StudyDate/StudyTime", "dicom_id")
        return pd.DataFrame(
            {
                "dicom_id": chunk["dicom_id"],
                "subject_id": chunk["subject_id"],
                "study_id": chunk["study_id"],
                "view": chunk["ViewPosition"],
                "cxr_time": t[t.notna()],
            }
        )

    df = read_csv_filtered(path, list(dtype), keep, dtype=dtype)
    if df.empty:
        return df.astype({"cxr_time": "datetime64[ns]"})
    dup = df["dicom_id"].duplicated()
    return rows.filter(df, ~dup, "duplicate dicom_id in metadata", "dicom_id").reset_index(
        drop=True
    )


def attach_official_split(cxr_root: Path, df: pd.DataFrame, rows: Drops) -> pd.DataFrame:
    """Add ``official_split`` (train/val/test) from the split file; unlisted images are dropped."""
    path = find_file(cxr_root, SPLIT, "MIMIC-CXR-JPG split file")
    wanted = set(df["dicom_id"])
    split = read_csv_filtered(
        path,
        ["dicom_id", "split"],
        lambda c: c[c["dicom_id"].isin(wanted)],
        dtype={"dicom_id": str, "split": str},
    )
    split = split.drop_duplicates("dicom_id")
    unknown = ~split["split"].isin(OFFICIAL_SPLITS)
    if unknown.any():
        raise DataError(path, f"unknown split values {sorted(set(split.loc[unknown, 'split']))}")
    mapped = df["dicom_id"].map(split.set_index("dicom_id")["split"].map(OFFICIAL_SPLITS))
    df = df.assign(official_split=mapped)
    return rows.filter(df, mapped.notna(), "not in the official split file", "dicom_id")


def read_labels(cxr_root: Path, labeler: str, uncertain: str) -> pd.DataFrame:
    """Study labels (subject_id, study_id, label_<slug>...) with the uncertainty policy applied."""
    path = find_file(cxr_root, LABEL_FILES[labeler], f"MIMIC-CXR-JPG {labeler} labels")
    cols = ["subject_id", "study_id", *CHEXPERT_LABELS]
    dtype = {c: "float64" for c in CHEXPERT_LABELS} | {"subject_id": "int64", "study_id": "int64"}
    labels = read_csv_filtered(path, cols, dtype=dtype).drop_duplicates("study_id")
    values = apply_uncertainty(labels[list(CHEXPERT_LABELS)], uncertain)
    values.columns = [f"label_{slug(c)}" for c in CHEXPERT_LABELS]
    return pd.concat([labels[["study_id"]], values], axis=1)


def one_image_per_study(df: pd.DataFrame, views: list[str], rows: Drops) -> pd.DataFrame:
    """Keep one image per study: earliest-listed view first, then earliest time, then dicom_id."""
    rank = df["view"].map({v: i for i, v in enumerate(views)})
    ranked = df.assign(_rank=rank).sort_values(
        ["study_id", "_rank", "cxr_time", "dicom_id"], kind="stable"
    )
    ranked = ranked.drop(columns="_rank")
    first = ~ranked["study_id"].duplicated()
    ranked = rows.filter(
        ranked, first, "another image of the study kept (one image per study)", "dicom_id"
    )
    return ranked.sort_index()


def image_rel(df: pd.DataFrame) -> pd.Series:
    """``files/pXX/pSUBJECT/sSTUDY/DICOM.jpg`` relative to the MIMIC-CXR-JPG folder."""
    s = df["subject_id"].astype(str)
    return (
        "files/p"
        + s.str[:2]
        + "/p"
        + s
        + "/s"
        + df["study_id"].astype(str)
        + "/"
        + df["dicom_id"]
        + ".jpg"
    )


def report_rel(subject_id: pd.Series, study_id: pd.Series) -> pd.Series:
    """``files/pXX/pSUBJECT/sSTUDY.txt`` relative to the MIMIC-CXR reports folder."""
    s = subject_id.astype(str)
    return "files/p" + s.str[:2] + "/p" + s + "/s" + study_id.astype(str) + ".txt"


def study_reports(
    studies: pd.DataFrame, bases: list[Path], explicit: Path | None, sections: list[str]
) -> pd.Series:
    """Radiology text (`sections` of the report) per study_id; None where the file is missing.

    The reports folder is `explicit`, else whichever of each base's :data:`REPORT_FOLDERS` and
    the bases themselves (in that order) has a ``files/`` folder holding most of the first 50
    reports (the first such folder on a tie).
    """
    rel = report_rel(studies["subject_id"], studies["study_id"]).tolist()
    folder = Path(explicit) if explicit is not None else None
    if folder is None:
        candidates = [b / f for b in bases for f in REPORT_FOLDERS] + list(bases)
        candidates = [c for c in candidates if (c / "files").is_dir()]
        hits = [int(files_exist(c, rel[:50]).sum()) for c in candidates]
        folder = candidates[hits.index(max(hits))] if candidates else bases[0]
    texts = read_text_files(folder, rel)
    return pd.Series(
        [None if t is None else radiology_text(t, sections) for t in texts],
        index=studies["study_id"].to_numpy(),
        dtype=object,
    )
