"""``mimic``: MIMIC-CXR-JPG 2.0.0 X-rays + MIMIC-CXR 2.0.0 reports + MIMIC-IV-ECG 1.0 ECGs,
paired by subject and time (MoRE's tri-modal set).

Rules, in the order they apply (each failure drops the row under the reason shown):

1. X-rays: ViewPosition in ``views`` (default PA, AP: "view LATERAL not PA/AP"), a StudyDate and
   StudyTime, listed in the official split file; optionally one image per study.
2. ECGs: every ``record_list.csv`` record of the X-ray subjects with an ``ecg_time``.
3. Pairing by subject: an ECG pairs with an X-ray when ``|ecg_time - cxr_time| <= window_days``
   (edges inclusive). ``pairing="nearest"`` keeps the nearest ECG per X-ray (a tie goes to the
   earlier ECG), ``"all"`` keeps every pair. With ``admissions`` (MIMIC-IV hosp
   ``admissions.csv``) the Symile-MIMIC rule replaces the window: the ECG within 24 h after
   ``admittime`` and the X-ray 24-72 h after it, of the same admission (edges inclusive).
   X-rays without an ECG are dropped ("no ECG within 60 days"), or kept without one with
   ``keep_unpaired``.
4. Files: the JPEG and the ECG header must exist ("image file missing", "ECG file missing").
5. Report: ``files/pXX/pSUBJECT/sSTUDY.txt`` must exist ("no report file"); its ``sections``
   (default findings + impression, falling back to the whole report) must leave words
   ("report empty after cleaning").

Text: ``[RAD]`` the report sections, ``[ECG]`` the machine statements ``report_0..report_17`` of
``machine_measurements.csv`` joined into sentences (an ECG without statements keeps its row).
Labels: the CheXpert (or NegBio) labeler's 14 labels of the X-ray's study, uncertain -1 handled
by ``uncertain``. Split: patient-level; a subject with any image in the official test split is
test, else with any in validate is val, else train (``val_fraction`` re-draws val from the
non-test subjects instead).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medtriad.data.sources import mimic_cxr as mc
from medtriad.data.sources.common import (
    UNCERTAINTY_POLICIES,
    Drops,
    PrepareSummary,
    check_choice,
    files_exist,
    find_file,
    finish,
    locate_folder,
    most_held_out,
    random_splits,
    read_csv_filtered,
    rel_prefix,
    require_columns,
    split_list,
)
from medtriad.data.sources.pairing import pair_events
from medtriad.data.text import SECTION_SYNONYMS, combine_report, join_statements
from medtriad.errors import ConfigError, DataError

log = logging.getLogger(__name__)

RECORD_LIST = ("record_list.csv", "record_list.csv.gz")
MEASUREMENTS = ("machine_measurements.csv", "machine_measurements.csv.gz")
STATEMENT_COLUMNS = tuple(f"report_{i}" for i in range(18))
ECG_FOLDERS = ("mimic-iv-ecg/1.0", "mimic-iv-ecg", "../../mimic-iv-ecg/1.0", "../mimic-iv-ecg")
ADMISSIONS = (
    "admissions.csv.gz",
    "admissions.csv",
    "hosp/admissions.csv.gz",
    "hosp/admissions.csv",
)
ECG_AFTER_ADMISSION = (pd.Timedelta(0), pd.Timedelta(hours=24))
CXR_AFTER_ADMISSION = (pd.Timedelta(hours=24), pd.Timedelta(hours=72))

HELP = {
    "ecg_root": "MIMIC-IV-ECG 1.0 folder (record_list.csv, machine_measurements.csv, files/); default: found beside or below --root.",
    "reports_root": "MIMIC-CXR 2.0.0 folder holding the reports files/pXX/pSUBJECT/sSTUDY.txt; default: found beside or below --root, else --root itself.",
    "admissions": "MIMIC-IV hosp admissions.csv(.gz) (or its folder): pair by the Symile-MIMIC rule (ECG within 24 h of admission, X-ray 24-72 h after) instead of the window.",
    "window_days": "Largest |ECG time - X-ray time| in days for a pair (inclusive).",
    "pairing": "'nearest': the nearest ECG per X-ray; 'all': every ECG in the window.",
    "views": "Comma-separated ViewPosition values to keep.",
    "labeler": "Label file: 'chexpert' or 'negbio'.",
    "uncertain": "Uncertain (-1) labels: keep, ones, zeros or ignore (empty).",
    "one_image_per_study": "Keep one image per study (PA before AP, then the earliest).",
    "keep_unpaired": "Keep X-rays without an ECG (no ecg_path) instead of dropping them.",
    "sections": "Comma-separated report sections for the radiology text.",
    "val_fraction": "Re-draw val as this fraction of the non-test subjects (default: the official validate split).",
    "seed": "Seed of the val re-draw.",
    "check_files": "Check that every image and ECG header exists (drop the row if not).",
}


def _admissions_file(path: Path) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    return find_file(path, ADMISSIONS, "MIMIC-IV admissions")


def _read_ecgs(ecg_root: Path, subjects: set[int], values: Drops) -> pd.DataFrame:
    path = find_file(ecg_root, RECORD_LIST, "MIMIC-IV-ECG record_list.csv")
    dtype = {"subject_id": "int64", "study_id": "int64", "ecg_time": str, "path": str}
    ecg = read_csv_filtered(
        path, list(dtype), lambda c: c[c["subject_id"].isin(subjects)], dtype=dtype
    )
    ecg["ecg_time"] = pd.to_datetime(ecg["ecg_time"], errors="coerce")
    no_time = ecg["ecg_time"].isna()
    values.add("ECG record without ecg_time (not paired)", ecg.loc[no_time, "study_id"])
    return ecg.loc[~no_time].drop_duplicates("study_id").reset_index(drop=True)


def _read_admissions(path: Path, subjects: set[int]) -> pd.DataFrame:
    dtype = {"subject_id": "int64", "hadm_id": "int64", "admittime": str}
    adm = read_csv_filtered(
        path, list(dtype), lambda c: c[c["subject_id"].isin(subjects)], dtype=dtype
    )
    adm["admittime"] = pd.to_datetime(adm["admittime"], errors="coerce")
    return adm.dropna(subset=["admittime"]).drop_duplicates("hadm_id").reset_index(drop=True)


def _pair(
    cxr: pd.DataFrame, ecg: pd.DataFrame, adm: pd.DataFrame | None, window: pd.Timedelta, mode: str
) -> pd.DataFrame:
    """(cxr, ecg[, hadm_id]) positional pairs following the window or the admission rule."""
    if adm is None:
        ci, ei = pair_events(
            cxr["subject_id"],
            cxr["cxr_time"],
            ecg["subject_id"],
            ecg["ecg_time"],
            -window,
            window,
            mode,
        )  # type: ignore[arg-type]
        return pd.DataFrame({"cxr": ci, "ecg": ei})
    ai, ei = pair_events(
        adm["subject_id"],
        adm["admittime"],
        ecg["subject_id"],
        ecg["ecg_time"],
        *ECG_AFTER_ADMISSION,
        "all",
    )
    aj, cj = pair_events(
        adm["subject_id"],
        adm["admittime"],
        cxr["subject_id"],
        cxr["cxr_time"],
        *CXR_AFTER_ADMISSION,
        "all",
    )
    cand = pd.DataFrame({"adm": aj, "cxr": cj}).merge(
        pd.DataFrame({"adm": ai, "ecg": ei}), on="adm"
    )
    cand["dt"] = (
        (ecg["ecg_time"].to_numpy()[cand["ecg"]] - cxr["cxr_time"].to_numpy()[cand["cxr"]])
        .astype("timedelta64[ms]")
        .astype(np.int64)
    )
    cand["abs_dt"] = np.abs(cand["dt"])
    cand["admit"] = adm["admittime"].to_numpy()[cand["adm"]]
    cand["hadm_id"] = adm["hadm_id"].to_numpy()[cand["adm"]]
    if mode == "nearest":
        cand = cand.sort_values(
            ["cxr", "abs_dt", "dt", "ecg", "admit"], kind="stable"
        ).drop_duplicates("cxr")
    else:
        cand = cand.sort_values(["cxr", "dt", "ecg", "admit"], kind="stable").drop_duplicates(
            ["cxr", "ecg"]
        )
    return cand[["cxr", "ecg", "hadm_id"]].reset_index(drop=True)


def _statements(ecg_root: Path, study_ids: pd.Series) -> pd.Series:
    """Joined machine statements per ECG study_id (streamed; only the wanted studies kept)."""
    path = find_file(ecg_root, MEASUREMENTS, "MIMIC-IV-ECG machine_measurements.csv")
    header = require_columns(path, ["study_id", "report_0"])
    cols = ["study_id", *[c for c in STATEMENT_COLUMNS if c in header]]
    wanted = set(study_ids)
    dtype = {c: str for c in cols} | {"study_id": "int64"}
    mm = read_csv_filtered(path, cols, lambda c: c[c["study_id"].isin(wanted)], dtype=dtype)
    mm = mm.drop_duplicates("study_id")
    texts = [join_statements(r) for r in mm[cols[1:]].itertuples(index=False, name=None)]
    return pd.Series(texts, index=mm["study_id"].to_numpy(), dtype=object)


def prepare_mimic(
    root: Path,
    out: Path,
    *,
    ecg_root: Path | None = None,
    reports_root: Path | None = None,
    admissions: Path | None = None,
    window_days: float = 60.0,
    pairing: str = "nearest",
    views: str = "PA,AP",
    labeler: str = "chexpert",
    uncertain: str = "keep",
    one_image_per_study: bool = True,
    keep_unpaired: bool = False,
    sections: str = "findings,impression",
    val_fraction: float | None = None,
    seed: int = 0,
    check_files: bool = True,
) -> PrepareSummary:
    """Write the paired MIMIC manifest into `out` (see the module docstring for every rule).

    `root` is the MIMIC-CXR-JPG 2.0.0 folder, or a PhysioNet download folder holding
    ``mimic-cxr-jpg/2.0.0``, ``mimic-iv-ecg/1.0`` and ``mimic-cxr/2.0.0``.
    """
    started = time.perf_counter()
    options = {k: v for k, v in locals().items() if k not in ("root", "out", "started")}
    check_choice("pairing", pairing, ("nearest", "all"))
    check_choice("labeler", labeler, tuple(mc.LABEL_FILES))
    check_choice("uncertain", uncertain, UNCERTAINTY_POLICIES)
    if not window_days >= 0:
        raise ConfigError("window_days", f"must be >= 0, got {window_days}")
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise ConfigError("val_fraction", f"must be in [0, 1), got {val_fraction}")
    view_list = split_list("views", views)
    section_list = split_list("sections", sections)
    unknown = [s for s in section_list if s not in SECTION_SYNONYMS and s != "preamble"]
    if unknown:
        raise ConfigError(
            "sections", f"unknown sections {unknown}; known: {sorted(SECTION_SYNONYMS)}"
        )
    root, out = Path(root), Path(out)
    cxr_root = locate_folder(root, None, mc.METADATA, mc.CXR_JPG_FOLDERS, "MIMIC-CXR-JPG 2.0.0")
    ecg_root = locate_folder(root, ecg_root, RECORD_LIST, ECG_FOLDERS, "MIMIC-IV-ECG 1.0")
    rows, values, notes = Drops(), Drops(), []

    # 1. X-rays
    cxr = mc.read_metadata(cxr_root, view_list, rows)
    cxr = mc.attach_official_split(cxr_root, cxr, rows)
    if one_image_per_study:
        cxr = mc.one_image_per_study(cxr, view_list, rows)
    cxr = cxr.reset_index(drop=True)
    subjects = set(cxr["subject_id"])

    # 2-3. ECGs and pairing
    ecg = _read_ecgs(ecg_root, subjects, values)
    window = pd.Timedelta(days=window_days)
    adm = None
    if admissions is not None:
        adm = _read_admissions(_admissions_file(admissions), subjects)
        unpaired_reason = (
            "no admission with the ECG within 24 h and the X-ray 24-72 h after admission"
        )
    else:
        unpaired_reason = f"no ECG within {window_days:g} days"
    pairs = _pair(cxr, ecg, adm, window, pairing)
    paired = np.zeros(len(cxr), dtype=bool)
    paired[pairs["cxr"].to_numpy()] = True
    if keep_unpaired:
        values.add(unpaired_reason, cxr.loc[~paired, "dicom_id"])
        lone = pd.DataFrame({"cxr": np.flatnonzero(~paired), "ecg": -1})
        pairs = pd.concat([pairs, lone], ignore_index=True).sort_values(["cxr"], kind="stable")
    else:
        rows.add(unpaired_reason, cxr.loc[~paired, "dicom_id"])
    df = cxr.iloc[pairs["cxr"].to_numpy()].reset_index(drop=True)
    picked = ecg.reindex(pairs["ecg"].to_numpy()).reset_index(drop=True)  # -1 (no ECG): empty row
    df["ecg_study_id"] = picked["study_id"].astype("Int64")
    df["ecg_time"] = picked["ecg_time"]
    df["ecg_rel"] = picked["path"]
    df["hadm_id"] = pairs["hadm_id"].astype("Int64").to_numpy() if "hadm_id" in pairs else pd.NA
    ecg_tag = ("_" + df["ecg_study_id"].astype("string")).fillna("")
    df["sample_id"] = df["dicom_id"] + ecg_tag

    # 4. files
    df["image_rel"] = mc.image_rel(df)
    df["ecg_rel"] = df["ecg_rel"] + ".hea"
    if check_files:
        df = rows.filter(
            df,
            files_exist(cxr_root, df["image_rel"], description="checking images"),
            "image file missing",
            "sample_id",
        )
        ok = np.ones(len(df), dtype=bool)
        with_ecg = df["ecg_rel"].notna().to_numpy()
        ok[with_ecg] = files_exist(
            ecg_root, df.loc[with_ecg, "ecg_rel"], description="checking ECGs"
        )
        df = rows.filter(df, ok, "ECG file missing", "sample_id")

    # 5. reports
    studies = df.drop_duplicates("study_id")[["subject_id", "study_id"]]
    rad = mc.study_reports(studies, [root, cxr_root], reports_root, section_list)
    missing = df["study_id"].map(rad.isna())
    df = rows.filter(df, ~missing.to_numpy(dtype=bool), "no report file", "sample_id")
    df["radiology"] = df["study_id"].map(rad)
    df = rows.filter(df, df["radiology"].str.len() > 0, "report empty after cleaning", "sample_id")

    # ECG statements
    with_ecg = df["ecg_study_id"].notna()
    cardio = (
        _statements(ecg_root, df.loc[with_ecg, "ecg_study_id"].astype("int64"))
        if with_ecg.any()
        else pd.Series(dtype=object)
    )
    df["cardiology"] = df["ecg_study_id"].map(cardio).where(with_ecg)
    no_mm = with_ecg & df["cardiology"].isna()
    values.add(
        "no machine_measurements row for the ECG (no cardiology text)", df.loc[no_mm, "sample_id"]
    )
    empty = with_ecg & (df["cardiology"] == "")
    values.add("ECG without machine statements (no cardiology text)", df.loc[empty, "sample_id"])

    # labels and split
    labels = mc.read_labels(cxr_root, labeler, uncertain)
    label_cols = [c for c in labels.columns if c != "study_id"]
    df = df.merge(labels, on="study_id", how="left")
    no_labels = df[label_cols].isna().all(axis=1)
    values.add(
        f"study not in the {labeler} label file (labels empty)", df.loc[no_labels, "sample_id"]
    )
    subject = df["subject_id"].astype(str)
    split, moved = most_held_out(subject, df["official_split"])
    if moved:
        notes.append(
            f"{moved} subjects had images in several official splits; each took its most held-out split"
        )
    if val_fraction is not None:
        redraw = split != "test"
        split = split.copy()
        split[redraw] = random_splits(subject[redraw], seed, (1 - val_fraction, val_fraction, 0.0))

    cxr_prefix, ecg_prefix = rel_prefix(cxr_root, out), rel_prefix(ecg_root, out)
    reports = [
        combine_report(r, c if isinstance(c, str) else None)
        for r, c in zip(df["radiology"], df["cardiology"])
    ]
    dt_hours = (df["ecg_time"] - df["cxr_time"]) / pd.Timedelta(hours=1)
    manifest = pd.DataFrame(
        {
            "sample_id": df["sample_id"],
            "subject_id": subject,
            "split": split,
            "cxr_path": cxr_prefix + df["image_rel"],
            "ecg_path": (ecg_prefix + df["ecg_rel"]).where(df["ecg_rel"].notna()),
            "report_text": reports,
            **{c: df[c] for c in label_cols},
            "meta_cxr_study_id": df["study_id"].astype(str),
            "meta_dicom_id": df["dicom_id"],
            "meta_view": df["view"],
            "meta_cxr_time": df["cxr_time"].dt.strftime("%Y-%m-%d %H:%M:%S.%f").str[:-3],
            "meta_ecg_study_id": df["ecg_study_id"].astype("string"),
            "meta_ecg_time": df["ecg_time"].dt.strftime("%Y-%m-%d %H:%M:%S"),
            "meta_ecg_minus_cxr_hours": dt_hours,
            "meta_official_split": df["official_split"],
        }
    )
    if admissions is not None:
        manifest["meta_hadm_id"] = df["hadm_id"].astype("Int64").astype("string")
    if manifest["sample_id"].duplicated().any():  # cannot happen by construction; guard anyway
        raise DataError(out, "duplicate sample ids after pairing")
    return finish(
        manifest,
        dataset="mimic",
        root=root,
        out=out,
        options=options,
        rows=rows,
        values=values,
        notes=notes,
        started=started,
    )
