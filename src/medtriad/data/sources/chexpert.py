"""``chexpert``: CheXpert v1.0 (Stanford AIMI) ``train.csv`` + ``valid.csv`` and their images.

`root` is the folder that holds ``train.csv`` (``CheXpert-v1.0``, or the downsampled
``CheXpert-v1.0-small``) or the folder above it. The CSVs' ``Path`` values start with the release
folder's name (``CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg``); that first part is
replaced by the folder actually found, so a renamed folder works too.

Rules: with ``frontal_only`` (default) lateral images are dropped ("view Lateral not frontal");
an image must exist ("image file missing"). Labels: the 14 CheXpert labels as
``label_<snake_case>``; uncertain (-1) labels follow ``uncertain`` (keep, ones, zeros, ignore).
Subjects are the ``patientNNNNN`` part of the path.

Splits: ``valid.csv`` (the radiologist-labelled set) goes to ``valid_as`` (default test);
val is drawn patient-level from ``train.csv`` (``val_fraction``, ``seed``).

The 5x200 subset (``subset="5x200"``): from the frontal images of ``train.csv``, those positive
(1) for exactly one of Atelectasis, Cardiomegaly, Consolidation, Edema and Pleural Effusion and
not uncertain (-1) for any of the other four; ``per_class`` (200) drawn per label with ``seed``
(before the uncertainty policy); every row is test. Too few candidates for a label is an error.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from medtriad.data.sources.common import (
    UNCERTAINTY_POLICIES,
    Drops,
    PrepareSummary,
    apply_uncertainty,
    check_choice,
    files_exist,
    finish,
    random_splits,
    read_csv_filtered,
    rel_prefix,
    slug,
)
from medtriad.data.sources.mimic_cxr import CHEXPERT_LABELS
from medtriad.errors import ConfigError, DataError

FIVE = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
META = ("Sex", "Age", "Frontal/Lateral", "AP/PA")
RELEASE_FOLDERS = ("CheXpert-v1.0", "CheXpert-v1.0-small")

HELP = {
    "uncertain": "Uncertain (-1) labels: keep, ones, zeros or ignore (empty).",
    "frontal_only": "Keep frontal images only.",
    "valid_as": "Split of valid.csv: 'test' or 'val'.",
    "val_fraction": "Fraction of train.csv patients drawn into val.",
    "subset": "'all', or '5x200' (per_class images with exactly one of the five competition labels, all test).",
    "per_class": "Images per label in the 5x200 subset.",
    "seed": "Seed of the val split and of the 5x200 draw.",
    "check_files": "Check that every image exists (drop the row if not).",
}


def _release_folder(root: Path) -> Path:
    for base in (root, *(root / f for f in RELEASE_FOLDERS)):
        if (base / "train.csv").is_file() or (base / "valid.csv").is_file():
            return base
    raise DataError(
        root, f"CheXpert train.csv/valid.csv not found in it or in {', '.join(RELEASE_FOLDERS)}"
    )


def _read(csv: Path, rows: Drops) -> pd.DataFrame:
    cols = ["Path", *META, *CHEXPERT_LABELS]
    dtype = {"Path": str, "Sex": str, "Frontal/Lateral": str, "AP/PA": str} | {
        c: "float64" for c in CHEXPERT_LABELS
    }
    df = read_csv_filtered(csv, cols, dtype=dtype)
    parts = df["Path"].str.split("/", n=1)
    df["rel"] = parts.str[1].fillna(df["Path"])  # drop the release folder's name
    df["subject"] = df["Path"].str.extract(r"(patient\d+)", expand=False)
    bad = df["subject"].isna()
    df = rows.filter(df, ~bad.to_numpy(), "Path without a patient folder", "Path")
    df["sample_id"] = df["rel"].str.replace(r"\.[A-Za-z]+$", "", regex=True)
    return df.reset_index(drop=True)


def _five_by_200(train: pd.DataFrame, per_class: int, seed: int, csv: Path) -> pd.DataFrame:
    five = train[list(FIVE)]
    positive = five == 1.0
    single = positive.sum(axis=1) == 1
    clean = ~(five == -1.0).any(axis=1)
    rng = np.random.default_rng(seed)
    picks = []
    for name in FIVE:
        pool = np.flatnonzero((single & clean & positive[name]).to_numpy())
        if len(pool) < per_class:
            raise DataError(
                csv,
                f"5x200: only {len(pool)} frontal images with exactly one label, {name}; need {per_class}",
            )
        picks.append(np.sort(rng.choice(pool, size=per_class, replace=False)))
    return train.iloc[np.concatenate(picks)]


def prepare_chexpert(
    root: Path,
    out: Path,
    *,
    uncertain: str = "keep",
    frontal_only: bool = True,
    valid_as: str = "test",
    val_fraction: float = 0.05,
    subset: str = "all",
    per_class: int = 200,
    seed: int = 0,
    check_files: bool = True,
) -> PrepareSummary:
    """Write the CheXpert manifest (or its 5x200 subset) into `out` (rules in the module docstring)."""
    started = time.perf_counter()
    options = {k: v for k, v in locals().items() if k not in ("root", "out", "started")}
    check_choice("uncertain", uncertain, UNCERTAINTY_POLICIES)
    check_choice("valid_as", valid_as, ("val", "test"))
    check_choice("subset", subset, ("all", "5x200"))
    if not 0 <= val_fraction < 1:
        raise ConfigError("val_fraction", f"must be in [0, 1), got {val_fraction}")
    if per_class < 1:
        raise ConfigError("per_class", f"must be >= 1, got {per_class}")
    root, out = Path(root), Path(out)
    folder = _release_folder(root)
    rows, values, notes = Drops(), Drops(), []

    frames = []
    sources = (
        (("train.csv", "train"),)
        if subset == "5x200"
        else (("train.csv", "train"), ("valid.csv", "valid"))
    )
    for name, official in sources:
        csv = folder / name
        if not csv.is_file():
            raise DataError(folder, f"{name} not found")
        df = _read(csv, rows)
        df["official"] = official
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    if frontal_only or subset == "5x200":
        view = df["Frontal/Lateral"].fillna("(missing)")
        bad = view != "Frontal"
        rows.add_each(df.loc[bad, "sample_id"], "view " + view[bad] + " not frontal")
        df = df.loc[~bad]
    if check_files:
        df = rows.filter(df, files_exist(folder, df["rel"]), "image file missing", "sample_id")
    df = df.reset_index(drop=True)
    subject = df["subject"].astype(str)
    if subset == "5x200":
        df = _five_by_200(df, per_class, seed, folder / "train.csv").reset_index(drop=True)
        subject = df["subject"].astype(str)
        split = pd.Series("test", index=df.index, dtype="string")
    else:
        split = pd.Series(valid_as, index=df.index, dtype="string")
        train = (df["official"] == "train").to_numpy()
        split[train] = random_splits(subject[train], seed, (1 - val_fraction, val_fraction, 0.0))
        overlap = set(subject[train]) & set(subject[~train])
        if overlap:
            raise DataError(folder, f"{len(overlap)} patients in both train.csv and valid.csv")
    labels = apply_uncertainty(df[list(CHEXPERT_LABELS)], uncertain)
    prefix = rel_prefix(folder, out)
    manifest = pd.DataFrame(
        {
            "sample_id": df["sample_id"],
            "subject_id": subject,
            "split": split,
            "cxr_path": prefix + df["rel"],
            "ecg_path": pd.NA,
            "report_text": pd.NA,
            **{f"label_{slug(c)}": labels[c] for c in CHEXPERT_LABELS},
            "meta_sex": df["Sex"],
            "meta_age": df["Age"],
            "meta_view": df["Frontal/Lateral"],
            "meta_ap_pa": df["AP/PA"],
            "meta_official_split": df["official"],
        }
    )
    return finish(
        manifest,
        dataset="chexpert",
        root=root,
        out=out,
        options=options,
        rows=rows,
        values=values,
        notes=notes,
        started=started,
    )
