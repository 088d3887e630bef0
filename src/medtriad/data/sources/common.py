"""Shared machinery of the dataset preparers: bookkeeping of dropped rows, streaming CSV reads,
relative paths, label policies, splits, and the final manifest + ``prepare_summary.json``.

Every preparer follows one pattern: read the official files (checking their headers), filter
rows with :meth:`Drops.filter` so that every removed row is counted under a reason, build the
manifest columns, and hand the table to :func:`finish`, which writes ``manifest.parquet``
atomically, summarises it and writes ``prepare_summary.json``.

Dropped rows are kept per reason as a count plus the first :data:`KEEP_IDS` ids (in source
order), so a MIMIC-scale run stays small on disk; the printed summary shows the first
:data:`PRINT_IDS` of them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtriad.data.manifest import (
    LABEL_PREFIX,
    META_PREFIX,
    REQUIRED_COLUMNS,
    SPLITS,
    assign_splits,
    normalise_manifest,
    schema_problems,
    write_manifest,
)
from medtriad.errors import ConfigError, DataError
from medtriad.progress import track

log = logging.getLogger(__name__)

KEEP_IDS = 1000
"""Ids kept per drop reason in ``prepare_summary.json`` (the count is always exact)."""
PRINT_IDS = 10
"""Ids shown per drop reason in the printed summary."""
CHUNK_ROWS = 250_000
"""Rows per chunk when streaming a CSV: bounded memory whatever the file size."""
SUMMARY_NAME = "prepare_summary.json"
MANIFEST_NAME = "manifest.parquet"
UNCERTAINTY_POLICIES = ("keep", "ones", "zeros", "ignore")
_HELD_OUT_RANK = {"train": 0, "val": 1, "test": 2}


# --- options --------------------------------------------------------------------------------
def check_choice(option: str, value: str, allowed: Sequence[str]) -> str:
    """`value` if it is one of `allowed`, else ConfigError naming the option."""
    if value not in allowed:
        raise ConfigError(option, f"must be one of {list(allowed)}, got {value!r}")
    return value


def split_list(option: str, value: str | Sequence[str] | None) -> list[str]:
    """A comma-separated option (or a list of strings) as a list of stripped, non-empty items."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    out = [v.strip() for v in items if v.strip()]
    if not out:
        raise ConfigError(option, "must name at least one item")
    return out


# --- dropped rows ---------------------------------------------------------------------------
@dataclass
class Drops:
    """Rows (or values) removed, grouped by reason: exact counts plus the first ids."""

    keep: int = KEEP_IDS
    reasons: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, reason: str, ids: Iterable[object]) -> None:
        ids = [
            str(i)
            for i in (ids.tolist() if isinstance(ids, (pd.Series, pd.Index, np.ndarray)) else ids)
        ]
        if not ids:
            return
        entry = self.reasons.setdefault(reason, {"count": 0, "ids": []})
        entry["count"] += len(ids)
        room = self.keep - len(entry["ids"])
        if room > 0:
            entry["ids"].extend(ids[:room])

    def add_each(self, ids: pd.Series, reasons: pd.Series) -> None:
        """Record rows whose reasons differ (one reason per row), in source order per reason."""
        if len(ids) == 0:
            return
        frame = pd.DataFrame(
            {"id": np.asarray(ids, dtype=object), "reason": np.asarray(reasons, dtype=object)}
        )
        for reason, part in frame.groupby("reason", sort=True):
            self.add(str(reason), part["id"])

    def filter(
        self, df: pd.DataFrame, keep: pd.Series | np.ndarray, reason: str, id_col: str
    ) -> pd.DataFrame:
        """`df[keep]`, recording the other rows' ids under `reason`."""
        keep = np.asarray(keep, dtype=bool)
        self.add(reason, df.loc[~keep, id_col])
        return df.loc[keep]

    @property
    def total(self) -> int:
        return sum(e["count"] for e in self.reasons.values())

    def merge(self, other: Drops) -> None:
        for reason, entry in other.reasons.items():
            mine = self.reasons.setdefault(reason, {"count": 0, "ids": []})
            mine["count"] += entry["count"]
            mine["ids"].extend(entry["ids"][: max(self.keep - len(mine["ids"]), 0)])


# --- files ----------------------------------------------------------------------------------
def find_file(folder: Path, names: Sequence[str], what: str) -> Path:
    """The first of `names` (relative to `folder`) that exists, else DataError saying what."""
    for name in names:
        p = folder / name
        if p.is_file():
            return p
    raise DataError(folder, f"{what} not found (looked for {', '.join(names)})")


def locate_folder(
    root: Path, explicit: Path | None, marker: Sequence[str], candidates: Sequence[str], what: str
) -> Path:
    """The folder of a release: `explicit` if given (it must hold one of `marker`), else the
    first of `root` and `root/<candidate>` that holds one of `marker`."""
    if explicit is not None:
        explicit = Path(explicit)
        find_file(explicit, marker, f"{what} ({marker[0]})")
        return explicit
    for base in (root, *(root / c for c in candidates)):
        if any((base / m).is_file() for m in marker):
            return base
    raise DataError(root, f"{what} not found: no {marker[0]} in it or in {', '.join(candidates)}")


def csv_header(path: Path) -> list[str]:
    try:
        return list(pd.read_csv(path, nrows=0).columns)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(path, f"unreadable CSV ({exc.__class__.__name__}: {exc})") from exc


def require_columns(
    path: Path, columns: Iterable[str], header: Sequence[str] | None = None
) -> list[str]:
    """The file's header, or DataError listing the official columns it lacks."""
    header = csv_header(path) if header is None else list(header)
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(path, f"missing columns {missing} (found {header[:20]})")
    return header


def read_csv_chunks(
    path: Path,
    usecols: Sequence[str],
    dtype: dict[str, Any] | None = None,
    chunksize: int = CHUNK_ROWS,
    **kwargs: Any,
) -> Iterator[pd.DataFrame]:
    """Stream the `usecols` of a (possibly gzipped) CSV in chunks after checking its header."""
    require_columns(path, usecols)
    try:
        reader = pd.read_csv(
            path, usecols=list(usecols), dtype=dtype, chunksize=chunksize, **kwargs
        )
        with reader:
            yield from reader
    except (ValueError, pd.errors.ParserError, EOFError, OSError) as exc:
        raise DataError(path, f"unreadable CSV ({exc.__class__.__name__}: {exc})") from exc


def read_csv_filtered(
    path: Path,
    usecols: Sequence[str],
    keep: Callable[[pd.DataFrame], pd.DataFrame] = lambda c: c,
    dtype: dict[str, Any] | None = None,
    chunksize: int = CHUNK_ROWS,
    **kwargs: Any,
) -> pd.DataFrame:
    """Concatenation of `keep(chunk)` over the streamed chunks: memory bounded by what is kept."""
    parts = [keep(c) for c in read_csv_chunks(path, usecols, dtype, chunksize, **kwargs)]
    if not parts:
        return pd.DataFrame(
            {c: pd.Series([], dtype=(dtype or {}).get(c, "object")) for c in usecols}
        )
    return pd.concat(parts, ignore_index=True)


def rel_prefix(base: Path, out: Path) -> str:
    """Prefix turning a path relative to `base` into one relative to `out` (POSIX, ends in "/")."""
    rel = os.path.relpath(Path(base).resolve(), Path(out).resolve())
    rel = rel.replace(os.sep, "/")
    return "" if rel == "." else rel + "/"


def _threaded(
    fn: Callable[[str], Any], items: list[str], workers: int, description: str
) -> Iterator[Any]:
    """`map(fn, items)` in order, on threads for long lists (the cost is file-system latency),
    with a progress bar on a terminal."""
    if len(items) < 256:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from track(
            pool.map(fn, items, chunksize=256), total=len(items), description=description
        )


def files_exist(
    base: Path,
    rel_paths: Sequence[str] | pd.Series,
    workers: int = 8,
    description: str = "checking files",
) -> np.ndarray:
    """Whether each `base/rel` is a file."""
    paths = [os.path.join(base, p) for p in rel_paths]
    return np.fromiter(
        _threaded(os.path.isfile, paths, workers, description), dtype=bool, count=len(paths)
    )


def read_text_files(
    base: Path, rel_paths: Sequence[str], workers: int = 8, description: str = "reading reports"
) -> list[str | None]:
    """Text of each `base/rel` (None where the file is missing or unreadable)."""

    def one(rel: str) -> str | None:
        try:
            with open(os.path.join(base, rel), encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            return None

    return list(_threaded(one, list(rel_paths), workers, description))


# --- labels ---------------------------------------------------------------------------------
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def slug(name: str) -> str:
    """Label name in the manifest's style: lowercase, runs of other characters as "_"."""
    return _NON_ALNUM.sub("_", str(name).lower()).strip("_")


def apply_uncertainty(labels: pd.DataFrame, policy: str) -> pd.DataFrame:
    """CheXpert-style uncertain (-1) labels: keep, map to 1 (ones), 0 (zeros) or NaN (ignore)."""
    check_choice("uncertain", policy, UNCERTAINTY_POLICIES)
    if policy == "keep":
        return labels
    value = {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[policy]
    return labels.mask(labels == -1.0, value)


# --- splits ---------------------------------------------------------------------------------
def most_held_out(subject_ids: pd.Series, splits: pd.Series) -> tuple[pd.Series, int]:
    """Per-row split made patient-level: each subject takes its most held-out split
    (test > val > train). Returns the new splits and the number of subjects that moved."""
    rank = splits.map(_HELD_OUT_RANK)
    if rank.isna().any():
        bad = sorted(set(splits[rank.isna()].astype(str)))
        raise ValueError(f"unknown split values {bad}")
    per_subject = rank.groupby(subject_ids.to_numpy()).agg(["max", "min"])
    moved = int((per_subject["max"] != per_subject["min"]).sum())
    names = np.array(list(_HELD_OUT_RANK))
    best = pd.Series(names[per_subject["max"].to_numpy(dtype=int)], index=per_subject.index)
    return subject_ids.map(best).astype("string"), moved


def random_splits(
    subject_ids: pd.Series, seed: int, fractions: tuple[float, float, float]
) -> pd.Series:
    """Deterministic patient-level split (`assign_splits`) with the fractions checked."""
    if any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ConfigError(
            "split fractions", f"must be non-negative and not all zero, got {fractions}"
        )
    return assign_splits(subject_ids, seed, fractions)


def fixed_split(option: str, value: str | None) -> str | None:
    if value is None:
        return None
    return check_choice(option, value, SPLITS)


# --- summary --------------------------------------------------------------------------------
@dataclass
class PrepareSummary:
    """What a preparer wrote and what it dropped (also written as ``prepare_summary.json``)."""

    dataset: str
    root: str
    out: str
    manifest: str
    options: dict[str, Any]
    n_rows: int
    counts: dict[str, dict[str, int]]
    prevalence: dict[str, dict[str, float]]
    coverage: dict[str, float]
    dropped_rows: dict[str, dict[str, Any]]
    dropped_values: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_dropped(self) -> int:
        return sum(e["count"] for e in self.dropped_rows.values())

    def to_json(self) -> str:
        d = asdict(self)
        d["n_dropped"] = self.n_dropped
        return json.dumps(d, indent=2, default=str)


def _json_safe(options: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, Path):
            v = str(v)
        elif isinstance(v, (list, tuple)):
            v = [str(x) if isinstance(x, Path) else x for x in v]
        out[k] = v
    return out


def order_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Required columns first, then labels, then meta columns (each group in its given order)."""
    labels = [c for c in df.columns if c.startswith(LABEL_PREFIX)]
    meta = [c for c in df.columns if c.startswith(META_PREFIX)]
    other = [
        c for c in df.columns if c not in REQUIRED_COLUMNS and c not in labels and c not in meta
    ]
    if other:
        raise ValueError(f"columns outside the manifest schema: {other}")
    return df[list(REQUIRED_COLUMNS) + labels + meta].reset_index(drop=True)


def finish(
    df: pd.DataFrame,
    *,
    dataset: str,
    root: Path,
    out: Path,
    options: dict[str, Any],
    rows: Drops,
    values: Drops,
    notes: list[str],
    started: float,
) -> PrepareSummary:
    """Write ``manifest.parquet`` and ``prepare_summary.json`` atomically into `out`."""
    from medtriad.data.validate import summarise

    out = Path(out)
    df = normalise_manifest(order_columns(df))
    problems = schema_problems(df)
    if problems:  # a preparer bug, never the user's data: refuse to write a broken manifest
        raise DataError(out / MANIFEST_NAME, "prepared manifest is invalid: " + "; ".join(problems))
    if df.empty:
        notes = [*notes, "no row survived the rules: the manifest is empty"]
        log.warning("%s: no row survived the rules; see %s", dataset, out / SUMMARY_NAME)
    path = write_manifest(df, out / MANIFEST_NAME)
    counts, prevalence = summarise(df)
    n = max(len(df), 1)
    coverage = {
        m: float(df[c].notna().sum() / n)
        for m, c in (("cxr", "cxr_path"), ("ecg", "ecg_path"), ("report", "report_text"))
    }
    summary = PrepareSummary(
        dataset=dataset,
        root=str(Path(root)),
        out=str(out),
        manifest=str(path),
        options=_json_safe(options),
        n_rows=len(df),
        counts=counts,
        prevalence=prevalence,
        coverage=coverage,
        dropped_rows=rows.reasons,
        dropped_values=values.reasons,
        notes=list(notes),
        seconds=round(time.perf_counter() - started, 3),
    )
    tmp = out / (SUMMARY_NAME + ".tmp")
    tmp.write_text(summary.to_json())
    os.replace(tmp, out / SUMMARY_NAME)
    log.info("%s: %d rows written to %s, %d dropped", dataset, len(df), path, rows.total)
    return summary


def summary_table(summary: PrepareSummary, max_ids: int = PRINT_IDS) -> Any:
    """rich renderables of a summary: splits x modalities, coverage, labels, drops with ids."""
    from rich.console import Group
    from rich.table import Table

    parts: list[Any] = []
    t = Table(title=f"{summary.dataset}: {summary.n_rows} rows -> {summary.manifest}")
    for col in ("split", "rows", "cxr", "ecg", "report"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for split, c in summary.counts.items():
        t.add_row(split, *(str(c[k]) for k in ("studies", "cxr", "ecg", "report")))
    t.add_row(
        "coverage", "", *(f"{100 * summary.coverage[m]:.1f}%" for m in ("cxr", "ecg", "report"))
    )
    parts.append(t)
    if summary.prevalence:
        lt = Table(title="labels")
        for col in ("label", "positive", "negative", "uncertain", "unknown"):
            lt.add_column(col, justify="left" if col == "label" else "right")
        for name, p in summary.prevalence.items():
            lt.add_row(
                name,
                *(f"{100 * p[k]:.1f}%" for k in ("positive", "negative", "uncertain", "unknown")),
            )
        parts.append(lt)
    for title, table in (
        ("dropped rows", summary.dropped_rows),
        ("dropped values (row kept)", summary.dropped_values),
    ):
        if not table:
            continue
        total = sum(e["count"] for e in table.values())
        dt = Table(title=f"{title}: {total}", style="yellow")
        for col in ("reason", "count", "ids"):
            dt.add_column(col, justify="right" if col == "count" else "left")
        for reason, entry in sorted(table.items(), key=lambda kv: -kv[1]["count"]):
            shown = entry["ids"][:max_ids]
            more = entry["count"] - len(shown)
            dt.add_row(
                reason,
                str(entry["count"]),
                ", ".join(shown) + (f" (+{more} more)" if more > 0 else ""),
            )
        parts.append(dt)
    for note in summary.notes:
        parts.append(f"[yellow]note:[/yellow] {note}")
    return Group(*parts)
