"""The manifest: one Parquet row per study, the single description of a dataset.

Columns
-------
``sample_id``   unique study id (str)
``subject_id``  patient id (str); a patient belongs to exactly one split
``split``       ``train`` | ``val`` | ``test``
``cxr_path``    image or DICOM file, relative to the manifest's folder (nullable)
``ecg_path``    WFDB ``.hea`` file or ``.npy`` (12 rows, canonical lead order) (nullable)
``report_text`` the report: radiology and/or cardiology text with section markers (nullable)
``label_<name>`` float: 1 positive, 0 negative, NaN unknown, -1 uncertain (where the source has it)
``meta_<name>`` free columns, carried along untouched
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from medtriad.errors import DataError

REQUIRED_COLUMNS: tuple[str, ...] = ("sample_id", "subject_id", "split", "cxr_path", "ecg_path", "report_text")
PATH_COLUMNS: dict[str, str] = {"cxr": "cxr_path", "ecg": "ecg_path"}
SPLITS: tuple[str, ...] = ("train", "val", "test")
LABEL_PREFIX = "label_"
META_PREFIX = "meta_"
ALLOWED_LABEL_VALUES = (0.0, 1.0, -1.0)


def label_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(LABEL_PREFIX)]


def label_names(df: pd.DataFrame) -> list[str]:
    return [c[len(LABEL_PREFIX) :] for c in label_columns(df)]


def empty_manifest(labels: Iterable[str] = ()) -> pd.DataFrame:
    """A manifest with no rows but every required column, typed."""
    cols: dict[str, pd.Series] = {c: pd.Series([], dtype="string") for c in REQUIRED_COLUMNS}
    cols.update({f"{LABEL_PREFIX}{n}": pd.Series([], dtype="float64") for n in labels})
    return pd.DataFrame(cols)


def normalise_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """Coerce column types: ids/paths/text as nullable strings, labels as float64."""
    df = df.copy()
    for col in REQUIRED_COLUMNS:
        if col in df.columns:
            s = df[col].astype("string")
            if col in ("cxr_path", "ecg_path", "report_text"):
                s = s.mask(s.str.strip() == "", pd.NA)
            df[col] = s
    for col in label_columns(df):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


def schema_problems(df: pd.DataFrame) -> list[str]:
    """Everything wrong with the table itself (not the files it points to), one line each."""
    problems: list[str] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        problems.append(f"missing required columns: {missing}")
        return problems
    if df["sample_id"].isna().any():
        problems.append(f"{int(df['sample_id'].isna().sum())} rows have no sample_id")
    dup = df["sample_id"][df["sample_id"].duplicated(keep=False)].dropna().unique()
    if len(dup):
        problems.append(f"duplicate sample_id ({len(dup)}): {', '.join(map(str, dup[:10]))}")
    if df["subject_id"].isna().any():
        problems.append(f"{int(df['subject_id'].isna().sum())} rows have no subject_id")
    bad_split = sorted(set(df["split"].dropna().astype(str)) - set(SPLITS))
    if bad_split or df["split"].isna().any():
        problems.append(f"split must be one of {list(SPLITS)}; found {bad_split or ['<null>']}")
    per_subject = df.dropna(subset=["subject_id", "split"]).groupby("subject_id")["split"].nunique()
    leaking = per_subject[per_subject > 1].index.tolist()
    if leaking:
        problems.append(f"subjects in more than one split ({len(leaking)}): {', '.join(map(str, leaking[:10]))}")
    for col in label_columns(df):
        values = pd.to_numeric(df[col], errors="coerce")
        non_numeric = values.isna() & df[col].notna()
        bad = values.notna() & ~values.isin(ALLOWED_LABEL_VALUES)
        if non_numeric.any() or bad.any():
            problems.append(f"{col} holds values other than 1, 0, -1 or empty ({int(non_numeric.sum() + bad.sum())} rows)")
    for col in PATH_COLUMNS.values():
        absolute = df[col].dropna().astype(str).map(os.path.isabs)
        if absolute.any():
            problems.append(f"{col} must be relative to the manifest's folder ({int(absolute.sum())} absolute paths)")
    none = df[["cxr_path", "ecg_path", "report_text"]].isna().all(axis=1)
    if none.any():
        problems.append(f"{int(none.sum())} rows have no modality at all")
    return problems


def read_manifest(path: str | os.PathLike[str], check: bool = True) -> pd.DataFrame:
    """Read a manifest; with `check`, a broken schema raises DataError listing every problem."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.parquet"
    if not p.is_file():
        raise DataError(p, "manifest not found")
    try:
        df = pd.read_parquet(p)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(p, f"not a readable Parquet file ({exc.__class__.__name__}: {exc})") from exc
    df = normalise_manifest(df)
    if check:
        problems = schema_problems(df)
        if problems:
            raise DataError(p, "invalid manifest: " + "; ".join(problems))
    df.attrs["root"] = str(p.parent.resolve())
    df.attrs["path"] = str(p.resolve())
    return df


def write_manifest(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write atomically (temporary file then rename) after normalising the column types."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    normalise_manifest(df).to_parquet(tmp, index=False)
    os.replace(tmp, p)
    return p


def resolve(root: str | os.PathLike[str], rel: object) -> Path | None:
    """Absolute path of a manifest path cell (None for a missing modality)."""
    if rel is None or rel is pd.NA or (isinstance(rel, float) and np.isnan(rel)):
        return None
    return Path(root) / str(rel)


def assign_splits(
    subject_ids: pd.Series, seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> pd.Series:
    """Patient-level split: every study of a subject lands in the same split, deterministically."""
    subjects = pd.Index(subject_ids.astype(str).unique()).sort_values()
    order = np.random.default_rng(seed).permutation(len(subjects))
    edges = np.cumsum(np.asarray(fractions) / sum(fractions)) * len(subjects)
    names = np.array(SPLITS)[np.searchsorted(edges, np.arange(len(subjects)), side="right").clip(0, 2)]
    mapping = pd.Series(names, index=subjects[order])
    return subject_ids.astype(str).map(mapping).astype("string")
