"""``ptbxl``: PTB-XL 1.0.3 (PhysioNet): ``ptbxl_database.csv``, ``scp_statements.csv`` and the
WFDB records at 100 Hz (``records100/``, ``filename_lr``) or 500 Hz (``records500/``,
``filename_hr``).

Labels: the diagnostic statements of ``scp_codes`` (a Python-dict string ``{'NORM': 100.0,
'SR': 0.0}``, statement -> likelihood in %) whose ``scp_statements.csv`` row has diagnostic = 1
and whose likelihood is at least ``min_likelihood`` (default 0: every statement, as PTB-XL's own
example; 0 in the file means "not given", so any threshold above 0 drops those) are aggregated
to their ``diagnostic_class`` (NORM, MI, STTC, CD, HYP -> ``label_norm`` ...) and, with
``subclasses``, their ``diagnostic_subclass`` (``label_sub_<snake_case>``, e.g.
``label_sub_lafb_lpfb``). A record with no such statement has all labels empty (unknown), not 0.

Split: ``strat_fold`` 9 is val, 10 test, 1-8 train (the folds are patient-level by design; a
patient found in two folds would take its most held-out one, with a note).

Text: the ``report`` column as cardiology text (``[ECG] ...``); with ``strip_edits`` a trailing
annotator note starting with "Edit:" is cut. ``meta_language`` is the report's language by
:func:`report_language`. Rows: a record whose header file is missing is dropped ("ECG file
missing"); a record without report text keeps its row with no text.
"""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medtriad.data.sources.common import (
    Drops,
    PrepareSummary,
    check_choice,
    files_exist,
    find_file,
    finish,
    most_held_out,
    read_csv_filtered,
    rel_prefix,
    require_columns,
    slug,
)
from medtriad.data.text import clean_report, combine_report
from medtriad.errors import ConfigError, DataError

DATABASE = ("ptbxl_database.csv",)
STATEMENTS = ("scp_statements.csv",)
SUPERCLASSES = ("NORM", "MI", "STTC", "CD", "HYP")
FOLD_SPLIT = {9: "val", 10: "test"}
RATE_COLUMN = {100: "filename_lr", 500: "filename_hr"}
_META = ("age", "sex", "recording_date", "heart_axis", "validated_by_human", "site", "device")

HELP = {
    "sampling_rate": "Records to use: 100 (records100, filename_lr) or 500 Hz (records500, filename_hr).",
    "subclasses": "Also write the diagnostic subclasses as label_sub_<name>.",
    "min_likelihood": "Smallest statement likelihood (%) that counts as positive.",
    "strip_edits": "Cut a trailing 'Edit: ...' annotator note from the report.",
    "check_files": "Check that every record's header exists (drop the row if not).",
}

# --- language ------------------------------------------------------------------------------
_DE_WORDS = frozenset(
    [
        "und",
        "mit",
        "der",
        "die",
        "das",
        "den",
        "dem",
        "des",
        "nicht",
        "kein",
        "keine",
        "keine",
        "ist",
        "im",
        "bei",
        "sonst",
        "normales",
        "normaler",
        "lagetyp",
        "linkstyp",
        "rechtstyp",
        "steiltyp",
        "indifferenztyp",
        "überdrehter",
        "ueberdrehter",
        "sinusrhythmus",
        "sinustachykardie",
        "sinusbradykardie",
        "sinusarrhythmie",
        "vorhofflimmern",
        "vorhofflattern",
        "ekg",
        "unbestätigter",
        "unbestaetigter",
        "bericht",
        "verdacht",
        "auf",
        "vermutlich",
        "wahrscheinlich",
        "möglich",
        "moeglich",
        "pathologisch",
        "linksschenkelblock",
        "rechtsschenkelblock",
        "inkompletter",
        "kompletter",
        "niedervoltage",
        "extrasystolen",
        "extrasystole",
        "ventrikuläre",
        "ventrikulaere",
        "supraventrikuläre",
        "linkshypertrophie",
        "infarkt",
        "vorderwandinfarkt",
        "hinterwandinfarkt",
        "alter",
        "abgelaufener",
        "periphere",
    ]
)
_EN_WORDS = frozenset(
    [
        "the",
        "and",
        "with",
        "of",
        "in",
        "is",
        "no",
        "not",
        "otherwise",
        "possible",
        "probable",
        "consider",
        "sinus",
        "rhythm",
        "ecg",
        "normal",
        "abnormal",
        "borderline",
        "left",
        "right",
        "axis",
        "deviation",
        "ventricular",
        "hypertrophy",
        "block",
        "bundle",
        "branch",
        "infarction",
        "myocardial",
        "anterior",
        "inferior",
        "lateral",
        "septal",
        "age",
        "undetermined",
        "unconfirmed",
        "report",
        "wave",
        "waves",
        "changes",
        "nonspecific",
        "non-specific",
        "premature",
        "complexes",
        "atrial",
        "fibrillation",
    ]
)
_SV_WORDS = frozenset(
    ["och", "med", "sinusrytm", "vänster", "höger", "normalt", "ej", "eller", "kammarkomplex"]
)
_DE_SUFFIX = re.compile(
    r"\w{3,}(?:ung|ungen|typ|rhythmus|kardie|störung|stoerung|veränderungen|bild)$"
)
_TOKEN = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")


def report_language(text: object) -> str:
    """ "de", "en" or "sv" by counting marker words, "unknown" on a tie, "" for no text.

    German scores its function words, cardiology terms (``lagetyp``, ``sinusrhythmus``, ``ekg``),
    typical compound endings (-ung, -typ, -kardie) and the letters ü and ß; English its function
    words and terms (``the``, ``sinus``, ``rhythm``, ``ecg``); Swedish a few words (``och``,
    ``sinusrytm``) and the letter å.
    """
    if not isinstance(text, str) or not text.strip():
        return ""
    lower = text.lower()
    tokens = _TOKEN.findall(lower)
    de = (
        sum(t in _DE_WORDS or bool(_DE_SUFFIX.match(t)) for t in tokens)
        + lower.count("ü")
        + lower.count("ß")
    )
    en = sum(t in _EN_WORDS for t in tokens)
    sv = sum(t in _SV_WORDS for t in tokens) + lower.count("å")
    scores = {"de": de, "en": en, "sv": sv}
    best = max(scores.values())
    winners = [k for k, v in scores.items() if v == best]
    return winners[0] if best > 0 and len(winners) == 1 else "unknown"


_EDIT = re.compile(r"\s*\bEdit:.*$", re.IGNORECASE | re.DOTALL)


def _parse_codes(text: object, path: Path, ecg_id: object) -> dict[str, float]:
    if not isinstance(text, str) or not text.strip():
        return {}
    try:
        codes = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise DataError(path, f"ecg_id {ecg_id}: scp_codes is not a dict literal ({exc})") from exc
    if not isinstance(codes, dict):
        raise DataError(path, f"ecg_id {ecg_id}: scp_codes is not a dict literal")
    return {str(k): float(v) for k, v in codes.items()}


def _aggregate(
    codes: list[dict[str, float]], mapping: pd.Series, names: list[str], min_likelihood: float
) -> np.ndarray:
    """(n, len(names)) float: 1 where a qualifying statement maps to the name, 0 else, NaN for
    records without any qualifying diagnostic statement."""
    index = {n: i for i, n in enumerate(names)}
    out = np.zeros((len(codes), len(names)))
    any_diag = np.zeros(len(codes), dtype=bool)
    for r, c in enumerate(codes):
        for code, likelihood in c.items():
            target = mapping.get(code)
            if isinstance(target, str) and likelihood >= min_likelihood:
                out[r, index[target]] = 1.0
                any_diag[r] = True
    out[~any_diag] = np.nan
    return out


def prepare_ptbxl(
    root: Path,
    out: Path,
    *,
    sampling_rate: int = 500,
    subclasses: bool = False,
    min_likelihood: float = 0.0,
    strip_edits: bool = True,
    check_files: bool = True,
) -> PrepareSummary:
    """Write the PTB-XL manifest into `out` (rules in the module docstring)."""
    started = time.perf_counter()
    options = {k: v for k, v in locals().items() if k not in ("root", "out", "started")}
    check_choice("sampling_rate", sampling_rate, (100, 500))  # type: ignore[arg-type]
    if not 0 <= min_likelihood <= 100:
        raise ConfigError("min_likelihood", f"must be in [0, 100], got {min_likelihood}")
    root, out = Path(root), Path(out)
    db_path = find_file(root, DATABASE, "PTB-XL ptbxl_database.csv")
    st_path = find_file(root, STATEMENTS, "PTB-XL scp_statements.csv")
    rows, values, notes = Drops(), Drops(), []

    require_columns(st_path, ["diagnostic", "diagnostic_class", "diagnostic_subclass"])
    statements = pd.read_csv(st_path, index_col=0)
    diagnostic = statements[statements["diagnostic"] == 1]
    file_col = RATE_COLUMN[sampling_rate]
    header = require_columns(
        db_path, ["ecg_id", "patient_id", "report", "scp_codes", "strat_fold", file_col]
    )
    cols = [
        "ecg_id",
        "patient_id",
        "report",
        "scp_codes",
        "strat_fold",
        file_col,
        *[c for c in _META if c in header],
    ]
    df = read_csv_filtered(db_path, cols, dtype={"report": str, "scp_codes": str, file_col: str})
    df["sample_id"] = pd.to_numeric(df["ecg_id"], errors="raise").astype("int64").astype(str)
    df["ecg_rel"] = df[file_col].astype(str) + ".hea"
    if check_files:
        df = rows.filter(df, files_exist(root, df["ecg_rel"]), "ECG file missing", "sample_id")
    df = df.reset_index(drop=True)

    codes = [_parse_codes(t, db_path, i) for t, i in zip(df["scp_codes"], df["ecg_id"])]
    super_vals = _aggregate(
        codes, diagnostic["diagnostic_class"], list(SUPERCLASSES), min_likelihood
    )
    label_cols = {f"label_{slug(n)}": super_vals[:, i] for i, n in enumerate(SUPERCLASSES)}
    if subclasses:
        subs = sorted(diagnostic["diagnostic_subclass"].dropna().unique())
        sub_vals = _aggregate(codes, diagnostic["diagnostic_subclass"], subs, min_likelihood)
        label_cols |= {f"label_sub_{slug(n)}": sub_vals[:, i] for i, n in enumerate(subs)}
    unknown = np.isnan(super_vals).all(axis=1)
    values.add("no diagnostic statement (labels empty)", df.loc[unknown, "sample_id"])

    report = df["report"].map(clean_report)
    if strip_edits:
        report = report.str.replace(_EDIT, "", regex=True)
    values.add("no report text", df.loc[report == "", "sample_id"])
    subject = pd.to_numeric(df["patient_id"], errors="coerce").astype("Int64").astype("string")
    subject = subject.fillna("ecg" + df["sample_id"])
    fold = pd.to_numeric(df["strat_fold"], errors="coerce")
    if fold.isna().any():
        raise DataError(db_path, f"{int(fold.isna().sum())} records without strat_fold")
    split, moved = most_held_out(subject, fold.astype(int).map(FOLD_SPLIT).fillna("train"))
    if moved:
        notes.append(
            f"{moved} patients found in several strat_folds; each took its most held-out split"
        )
    prefix = rel_prefix(root, out)
    manifest = pd.DataFrame(
        {
            "sample_id": df["sample_id"],
            "subject_id": subject,
            "split": split,
            "cxr_path": pd.NA,
            "ecg_path": prefix + df["ecg_rel"],
            "report_text": [combine_report(None, r) or None for r in report],
            **label_cols,
            "meta_language": report.map(report_language),
            "meta_scp_codes": df["scp_codes"],
            "meta_strat_fold": fold.astype(int),
            **{f"meta_{c}": df[c] for c in _META if c in df.columns},
        }
    )
    return finish(
        manifest,
        dataset="ptbxl",
        root=root,
        out=out,
        options=options,
        rows=rows,
        values=values,
        notes=notes,
        started=started,
    )
