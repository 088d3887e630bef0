"""``covid_notes``: the covid-chestxray-dataset (GitHub, ieee8023): ``metadata.csv`` + ``images/``,
with each image's ``clinical_notes`` as its text.

Rows: one per ``metadata.csv`` row (an image). A row is dropped when its ``modality`` is not
X-ray ("modality CT not X-ray"), when, with ``frontal_only`` (default), its ``view`` is not
frontal (PA, AP, AP Supine, AP semi erect; "view L not frontal"), or when its image
(``folder/filename``) is missing. ``sample_id`` is the file name, ``subject_id`` the
``patientid``; the split is patient-level (seeded).

Text: ``clinical_notes`` as radiology text; a note with no words left after cleaning leaves the
row without text (listed under dropped values).

Labels from ``finding``, which is either a comma-separated list of names (2020 releases:
"COVID-19, ARDS") or a "/"-path ("Pneumonia/Viral/COVID-19"); each part is looked up in
:data:`FINDINGS` and the row is 1 for every label of every part, 0 for the others:
``label_covid19``, ``label_pneumonia``, ``label_viral``, ``label_bacterial``, ``label_fungal``,
``label_ards``, ``label_no_finding``. A finding that is empty, "todo", "Unknown" or has a part
not in the table gives empty labels (listed under dropped values).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pandas as pd

from medtriad.data.sources.common import (
    Drops,
    PrepareSummary,
    files_exist,
    find_file,
    finish,
    random_splits,
    read_csv_filtered,
    rel_prefix,
    require_columns,
)
from medtriad.data.text import check_report, combine_report
from medtriad.errors import DataError

LABELS = ("covid19", "pneumonia", "viral", "bacterial", "fungal", "ards", "no_finding")
_VIRAL = ("pneumonia", "viral")
_BACTERIAL = ("pneumonia", "bacterial")
_FUNGAL = ("pneumonia", "fungal")
FINDINGS: dict[str, tuple[str, ...]] = {
    "covid-19": ("pneumonia", "viral", "covid19"),
    "sars": _VIRAL,
    "mers": _VIRAL,
    "mers-cov": _VIRAL,
    "influenza": _VIRAL,
    "varicella": _VIRAL,
    "herpes": _VIRAL,
    "herpes pneumonia": _VIRAL,
    "viral": _VIRAL,
    "streptococcus": _BACTERIAL,
    "klebsiella": _BACTERIAL,
    "mycoplasma": _BACTERIAL,
    "mycoplasma bacterial pneumonia": _BACTERIAL,
    "legionella": _BACTERIAL,
    "chlamydophila": _BACTERIAL,
    "e.coli": _BACTERIAL,
    "staphylococcus": _BACTERIAL,
    "staphylococcus aureus": _BACTERIAL,
    "nocardia": _BACTERIAL,
    "bacterial": _BACTERIAL,
    "pneumocystis": _FUNGAL,
    "aspergillosis": _FUNGAL,
    "fungal": _FUNGAL,
    "lipoid": ("pneumonia",),
    "aspiration": ("pneumonia",),
    "pneumonia": ("pneumonia",),
    "ards": ("ards",),
    "tuberculosis": ("bacterial",),
    "no finding": ("no_finding",),
}
"""Finding name (lowercase) -> labels it makes positive."""
UNKNOWN_FINDINGS = frozenset({"", "todo", "unknown"})
FRONTAL_VIEWS = ("PA", "AP", "AP Supine", "AP semi erect", "AP Erect")
_COLUMNS = ("patientid", "finding", "view", "modality", "folder", "filename", "clinical_notes")
_META = (
    "offset",
    "sex",
    "age",
    "survival",
    "intubated",
    "went_icu",
    "date",
    "location",
    "doi",
    "url",
    "license",
    "RT_PCR_positive",
    "other_notes",
)

HELP = {
    "frontal_only": "Keep frontal views only (PA, AP, AP Supine, AP semi erect, AP Erect).",
    "seed": "Seed of the patient-level split.",
    "check_files": "Check that every image exists (drop the row if not).",
}


def finding_labels(finding: object) -> dict[str, float] | None:
    """Labels of one ``finding`` value; None when it is unknown or not in the table."""
    if not isinstance(finding, str) or finding.strip().lower() in UNKNOWN_FINDINGS:
        return None
    parts = [p.strip().lower() for p in re.split(r"[,/]", finding) if p.strip()]
    positive: set[str] = set()
    for part in parts:
        if part not in FINDINGS:
            return None
        positive.update(FINDINGS[part])
    return {name: float(name in positive) for name in LABELS}


def prepare_covid_notes(
    root: Path,
    out: Path,
    *,
    frontal_only: bool = True,
    seed: int = 0,
    check_files: bool = True,
) -> PrepareSummary:
    """Write the covid-chestxray-dataset manifest into `out` (rules in the module docstring)."""
    started = time.perf_counter()
    options = {k: v for k, v in locals().items() if k not in ("root", "out", "started")}
    root, out = Path(root), Path(out)
    path = find_file(root, ("metadata.csv",), "covid-chestxray-dataset metadata.csv")
    header = require_columns(path, _COLUMNS)
    cols = [*_COLUMNS, *[c for c in _META if c in header]]
    df = read_csv_filtered(path, cols, dtype=str, keep_default_na=True)
    rows, values, notes = Drops(), Drops(), []
    df["sample_id"] = df["filename"].fillna("")
    df = rows.filter(df, (df["sample_id"] != "").to_numpy(), "no filename", "patientid")
    df = rows.filter(
        df, ~df["sample_id"].duplicated().to_numpy(), "duplicate filename", "sample_id"
    )
    modality = df["modality"].fillna("(missing)")
    bad = modality != "X-ray"
    rows.add_each(df.loc[bad, "sample_id"], "modality " + modality[bad] + " not X-ray")
    df = df.loc[~bad]
    if frontal_only:
        view = df["view"].fillna("(missing)")
        bad = ~view.isin(FRONTAL_VIEWS)
        rows.add_each(df.loc[bad, "sample_id"], "view " + view[bad] + " not frontal")
        df = df.loc[~bad]
    df["image_rel"] = df["folder"].fillna("images") + "/" + df["sample_id"]
    if check_files:
        df = rows.filter(df, files_exist(root, df["image_rel"]), "image file missing", "sample_id")
    df = df.reset_index(drop=True)

    texts = []
    for sid, note in zip(df["sample_id"], df["clinical_notes"]):
        try:
            texts.append(combine_report(check_report(note, sid), None))
        except DataError:
            texts.append(None)
            values.add("clinical_notes empty (no text)", [sid])
    parsed = [finding_labels(f) for f in df["finding"]]
    for sid, f, p in zip(df["sample_id"], df["finding"], parsed):
        if p is None:
            values.add(f"finding {f!s} unknown (labels empty)", [sid])
    labels = pd.DataFrame([p or {} for p in parsed], columns=list(LABELS), dtype="float64")
    subject = df["patientid"].astype(str)
    manifest = pd.DataFrame(
        {
            "sample_id": df["sample_id"],
            "subject_id": subject,
            "split": random_splits(subject, seed, (0.8, 0.1, 0.1)),
            "cxr_path": rel_prefix(root, out) + df["image_rel"],
            "ecg_path": pd.NA,
            "report_text": texts,
            **{f"label_{n}": labels[n] for n in LABELS},
            "meta_finding": df["finding"],
            "meta_view": df["view"],
            **{f"meta_{c.lower()}": df[c] for c in _META if c in df.columns},
        }
    )
    return finish(
        manifest,
        dataset="covid_notes",
        root=root,
        out=out,
        options=options,
        rows=rows,
        values=values,
        notes=notes,
        started=started,
    )
