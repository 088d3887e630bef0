"""``cinc``: PhysioNet/Computing in Cardiology Challenge 2020 and 2021 records (12-lead WFDB
``.hea`` + ``.mat``, found anywhere below `root`).

Diagnoses come from the header comment ``#Dx: 426783006,164889003`` (``# Dx:`` too): SNOMED CT
codes (2020/2021 releases) or abbreviations (the original CPSC 2018 headers: ``RBBB``, ``AF``;
``Normal`` and ``I-AVB`` are read as NSR and IAVB). They are named with the official mapping
tables ``dx_mapping_scored.csv`` / ``dx_mapping_unscored.csv`` (columns Dx, SNOMEDCTCode or
"SNOMED CT Code", Abbreviation), passed with ``mapping`` or found in `root`. A code the tables
do not know is left out (listed under dropped values). ``merge_equivalent`` merges the pairs
the challenge scores as one class: CRBBB into RBBB, SVPB into PAC, VPB into PVC, CLBBB into LBBB.

Labels: ``label_<abbreviation in snake_case>`` (``label_af``, ``label_iavb``) for each mapped
diagnosis present in the data, or only those named by ``labels``; 1 present, 0 absent, empty
for a record without any mapped diagnosis. Text: the diagnosis names as cardiology statements
("Atrial fibrillation. Right bundle branch block."). Rows: a record whose header is unreadable
or whose signal file is missing is dropped. The challenge data have no patient ids, so each
record is its own subject. Split: patient-level random (``seed``), or every row in ``split_all``
(use ``test`` for out-of-distribution evaluation sets). ``meta_source`` names the source
database from the record's prefix (A CPSC 2018, Q CPSC extra, I St Petersburg INCART, S PTB,
HR PTB-XL, E Georgia, JS Chapman-Shaoxing/Ningbo).
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medtriad.data.sources.common import (
    Drops,
    PrepareSummary,
    files_exist,
    finish,
    fixed_split,
    random_splits,
    rel_prefix,
    require_columns,
    slug,
    split_list,
)
from medtriad.data.text import combine_report, join_statements
from medtriad.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MAPPING_FILES = ("dx_mapping_scored.csv", "dx_mapping_unscored.csv")
CODE_COLUMNS = ("SNOMEDCTCode", "SNOMED CT Code", "SNOMED CT code")
ALIASES = {"Normal": "NSR", "I-AVB": "IAVB"}
"""CPSC 2018 header abbreviations that differ from the mapping tables'."""
EQUIVALENT = {
    "713427006": "59118001",
    "63593006": "284470004",
    "17338001": "427172004",
    "733534002": "164909002",
}
"""Codes the challenge scores as one class -> the code they are merged into."""
SOURCES = {
    "A": "CPSC 2018",
    "Q": "CPSC extra",
    "I": "St Petersburg INCART",
    "S": "PTB",
    "HR": "PTB-XL",
    "E": "Georgia",
    "JS": "Chapman-Shaoxing/Ningbo",
}

HELP = {
    "mapping": "Official Dx mapping table(s) (dx_mapping_scored.csv, dx_mapping_unscored.csv); repeatable. Default: those found in --root.",
    "labels": "Comma-separated abbreviations or SNOMED CT codes to keep as labels (default: every diagnosis present).",
    "merge_equivalent": "Merge the diagnoses the challenge scores as one (CRBBB->RBBB, SVPB->PAC, VPB->PVC, CLBBB->LBBB).",
    "split_all": "Put every row in this split (train, val or test), e.g. test for out-of-distribution evaluation.",
    "seed": "Seed of the patient-level split (when split_all is not given).",
    "check_files": "Check that every record's signal file exists (drop the row if not).",
}


class DxTable:
    """SNOMED CT code <-> name and abbreviation, from the official mapping tables."""

    def __init__(self, paths: list[Path]) -> None:
        frames = []
        for p in paths:
            header = require_columns(p, ["Dx", "Abbreviation"])
            code_col = next((c for c in CODE_COLUMNS if c in header), None)
            if code_col is None:
                raise DataError(p, f"missing a SNOMED CT code column (one of {list(CODE_COLUMNS)})")
            t = pd.read_csv(p, usecols=["Dx", code_col, "Abbreviation"], dtype=str).rename(
                columns={code_col: "code"}
            )
            frames.append(t)
        table = pd.concat(frames, ignore_index=True).dropna(subset=["code"]).drop_duplicates("code")
        table["code"] = table["code"].str.strip()
        self.name = dict(zip(table["code"], table["Dx"].str.strip()))
        self.abbrev = dict(zip(table["code"], table["Abbreviation"].str.strip()))
        self.by_abbrev = {a: c for c, a in self.abbrev.items()}
        self.by_abbrev_lower = {a.lower(): c for c, a in self.abbrev.items()}

    def code(self, token: str) -> str | None:
        """The SNOMED CT code of a header token (code or abbreviation), None if unknown."""
        token = token.strip()
        if token in self.name:
            return token
        token = ALIASES.get(token, token)
        return self.by_abbrev.get(token) or self.by_abbrev_lower.get(token.lower())


_FIELD = re.compile(r"^#\s*([A-Za-z]+)\s*:\s*(.*)$")


def read_header(path: Path) -> dict[str, str]:
    """Record name, signal file and the ``#Key: value`` comments of a WFDB header."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DataError(path, f"unreadable header ({exc})") from exc
    body = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if len(body) < 2:
        raise DataError(path, "header without a record line and signal lines")
    record = body[0].split()
    fields = {"record": record[0].split("/")[0], "signal_file": body[1].split()[0]}
    if len(record) > 2:
        fields["fs"] = record[2].split("/")[0]
    if len(record) > 3:
        fields["sig_len"] = record[3]
    for ln in lines:
        m = _FIELD.match(ln.strip())
        if m:
            fields[m.group(1).lower()] = m.group(2).strip()
    return fields


def _source(record: str) -> str:
    m = re.match(r"[A-Z]+", record)
    return SOURCES.get(m.group(), "") if m else ""


def _numeric(df: pd.DataFrame, column: str) -> pd.Series | float:
    return pd.to_numeric(df[column], errors="coerce") if column in df else np.nan


def _capitalise(name: str) -> str:
    return name[:1].upper() + name[1:]


def prepare_cinc(
    root: Path,
    out: Path,
    *,
    mapping: list[Path] | None = None,
    labels: str | None = None,
    merge_equivalent: bool = False,
    split_all: str | None = None,
    seed: int = 0,
    check_files: bool = True,
) -> PrepareSummary:
    """Write the CinC 2020/2021 manifest into `out` (rules in the module docstring)."""
    started = time.perf_counter()
    options = {k: v for k, v in locals().items() if k not in ("root", "out", "started")}
    fixed = fixed_split("split_all", split_all)
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise DataError(root, "folder not found")
    paths = (
        [Path(p) for p in mapping]
        if mapping
        else [root / n for n in MAPPING_FILES if (root / n).is_file()]
    )
    if not paths:
        raise DataError(
            root, f"no Dx mapping tables ({', '.join(MAPPING_FILES)}) in it; pass them with mapping"
        )
    table = DxTable(paths)
    rows, values, notes = Drops(), Drops(), []

    headers = sorted(root.rglob("*.hea"))
    if not headers:
        raise DataError(root, "no WFDB header (.hea) below it")
    records = []
    for h in headers:
        rel = h.relative_to(root).as_posix()
        try:
            fields = read_header(h)
        except DataError as exc:
            rows.add(f"unreadable header: {exc.reason}", [rel])
            continue
        records.append({"rel": rel, **fields})
    df = pd.DataFrame(records)
    df = rows.filter(df, ~df["record"].duplicated().to_numpy(), "duplicate record name", "rel")
    df["sample_id"] = df["record"]
    if check_files:
        sig_rel = [
            os.path.join(os.path.dirname(r), s) for r, s in zip(df["rel"], df["signal_file"])
        ]
        df = rows.filter(df, files_exist(root, sig_rel), "signal file missing", "sample_id")
    df = df.reset_index(drop=True)
    if "dx" not in df.columns:
        df["dx"] = None

    codes: list[list[str]] = []
    for sid, dx in zip(df["sample_id"], df["dx"]):
        found: list[str] = []
        for token in (dx if isinstance(dx, str) else "").split(","):
            token = token.strip()
            if not token:
                continue
            code = table.code(token)
            if code is None:
                values.add(f"Dx {token} not in the mapping tables", [sid])
                continue
            code = EQUIVALENT.get(code, code) if merge_equivalent else code
            if code not in found:
                found.append(code)
        codes.append(found)
    no_dx = [sid for sid, c in zip(df["sample_id"], codes) if not c]
    values.add("no mapped diagnosis (labels empty, no text)", no_dx)

    present = sorted({c for cs in codes for c in cs}, key=lambda c: slug(table.abbrev[c]))
    if labels is not None:
        wanted = []
        for item in split_list("labels", labels):
            code = table.code(item)
            if code is None:
                raise ConfigError(
                    "labels",
                    f"{item!r} is neither a code nor an abbreviation of the mapping tables",
                )
            wanted.append(EQUIVALENT.get(code, code) if merge_equivalent else code)
        present = list(dict.fromkeys(wanted))
    has_any = np.array([bool(c) for c in codes])
    label_cols = {}
    for code in present:
        v = np.array([float(code in cs) for cs in codes])
        v[~has_any] = np.nan
        label_cols[f"label_{slug(table.abbrev[code])}"] = v
    texts = [
        combine_report(None, join_statements(_capitalise(table.name[c]) for c in cs)) or None
        for cs in codes
    ]
    subject = df["sample_id"].astype(str)
    split = (
        pd.Series(fixed, index=df.index, dtype="string")
        if fixed
        else random_splits(subject, seed, (0.8, 0.1, 0.1))
    )
    prefix = rel_prefix(root, out)
    manifest = pd.DataFrame(
        {
            "sample_id": df["sample_id"],
            "subject_id": subject,
            "split": split,
            "cxr_path": pd.NA,
            "ecg_path": prefix + df["rel"],
            "report_text": texts,
            **label_cols,
            "meta_source": df["record"].map(_source),
            "meta_age": _numeric(df, "age"),
            "meta_sex": df.get("sex", pd.NA),
            "meta_fs": _numeric(df, "fs"),
            "meta_sig_len": _numeric(df, "sig_len"),
            "meta_dx": df["dx"],
            "meta_dx_codes": [",".join(cs) for cs in codes],
        }
    )
    return finish(
        manifest,
        dataset="cinc",
        root=root,
        out=out,
        options=options,
        rows=rows,
        values=values,
        notes=notes,
        started=started,
    )
