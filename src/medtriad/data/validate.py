"""`medtriad validate`: load every file a manifest references and report what is wrong.

Every X-ray, ECG and report is run through the same readers training uses, in parallel worker
processes. A bad file never stops the run: it is counted and listed with its reason, together
with schema problems (missing columns, duplicate ids, a subject in two splits).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from medtriad.data.manifest import (
    LABEL_PREFIX,
    SPLITS,
    label_columns,
    read_manifest,
    resolve,
    schema_problems,
)
from medtriad.errors import DataError, MedtriadError

log = logging.getLogger(__name__)


@dataclass
class BadSample:
    sample_id: str
    modality: str
    path: str
    reason: str


@dataclass
class ValidationReport:
    manifest: str
    n_rows: int
    counts: dict[str, dict[str, int]]  # split -> modality -> number of studies having it
    prevalence: dict[str, dict[str, float]]  # label -> {"positive", "negative", "uncertain", "unknown"} fractions
    schema: list[str] = field(default_factory=list)
    bad: list[BadSample] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.schema and not self.bad

    def to_json(self) -> str:
        d = asdict(self)
        d["ok"] = self.ok
        return json.dumps(d, indent=2)


def _check_row(task: tuple[str, str | None, str | None, str | None, int, float]) -> list[tuple[str, str, str]]:
    """Load one study's files; return (modality, path, reason) for each failure.

    ECGs are read with ``nan_policy="raise"``: training may interpolate gaps, but a data check
    must show them."""
    sample_id, cxr, ecg, report, cxr_size, ecg_fs = task
    from medtriad.data.cxr import read_cxr
    from medtriad.data.ecg import read_ecg
    from medtriad.data.text import check_report

    failures: list[tuple[str, str, str]] = []
    for modality, path, load in (
        ("cxr", cxr, lambda p: read_cxr(p, size=cxr_size)),
        ("ecg", ecg, lambda p: read_ecg(p, fs=ecg_fs, seconds=None, nan_policy="raise")),
    ):
        if path is None:
            continue
        try:
            load(path)
        except DataError as exc:
            failures.append((modality, path, exc.reason))
        except Exception as exc:  # noqa: BLE001 - a reader bug must not stop the whole run either
            failures.append((modality, path, f"unexpected {exc.__class__.__name__}: {exc}"))
    if report is not None:
        try:
            check_report(report, sample_id)
        except DataError as exc:
            failures.append(("report", sample_id, exc.reason))
    return failures


def _tasks(df: pd.DataFrame, root: str, cxr_size: int, ecg_fs: float) -> Iterator[tuple]:
    for sid, cxr, ecg, rep in zip(df["sample_id"], df["cxr_path"], df["ecg_path"], df["report_text"]):
        c = resolve(root, cxr)
        e = resolve(root, ecg)
        yield (
            str(sid),
            None if c is None else str(c),
            None if e is None else str(e),
            None if rep is pd.NA or rep is None else str(rep),
            cxr_size,
            ecg_fs,
        )


def summarise(df: pd.DataFrame) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, float]]]:
    """Per-split modality counts and per-label prevalence of a manifest table."""
    counts: dict[str, dict[str, int]] = {}
    splits = [s for s in SPLITS if s in set(df["split"].dropna())] + ["all"]
    for split in splits:
        part = df if split == "all" else df[df["split"] == split]
        counts[split] = {
            "studies": len(part),
            "cxr": int(part["cxr_path"].notna().sum()),
            "ecg": int(part["ecg_path"].notna().sum()),
            "report": int(part["report_text"].notna().sum()),
        }
    prevalence: dict[str, dict[str, float]] = {}
    n = max(len(df), 1)
    for col in label_columns(df):
        v = df[col]
        prevalence[col[len(LABEL_PREFIX) :]] = {
            "positive": float((v == 1).sum() / n),
            "negative": float((v == 0).sum() / n),
            "uncertain": float((v == -1).sum() / n),
            "unknown": float(v.isna().sum() / n),
        }
    return counts, prevalence


def validate_manifest(
    path: str | os.PathLike[str],
    workers: int | None = None,
    cxr_size: int = 224,
    ecg_fs: float = 500.0,
    fail_fast: bool = False,
    progress: bool = True,
) -> ValidationReport:
    """Check a manifest's schema and load every referenced file; never stops on a bad file
    unless `fail_fast`, in which case the first one raises its DataError."""
    df = read_manifest(path, check=False)
    root = df.attrs["root"]
    schema = schema_problems(df)
    if any(p.startswith("missing required columns") for p in schema):
        return ValidationReport(str(path), len(df), {}, {}, schema, [])
    counts, prevalence = summarise(df)
    bad: list[BadSample] = []
    tasks = list(_tasks(df, root, cxr_size, ecg_fs))
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks) // 16 + 1))
    from medtriad.progress import track

    def consume(results: Iterator[list[tuple[str, str, str]]]) -> None:
        for (sid, *_), failures in zip(tasks, track(results, total=len(tasks), description="validating", enabled=progress)):
            for modality, p, reason in failures:
                if fail_fast:
                    raise DataError(p, reason)
                bad.append(BadSample(sid, modality, p, reason))

    if workers == 1:
        consume(map(_check_row, tasks))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            try:
                consume(pool.map(_check_row, tasks, chunksize=16))
            except MedtriadError:
                pool.shutdown(cancel_futures=True)
                raise
    if bad:
        log.warning("%d bad samples in %s", len(bad), path)
    return ValidationReport(str(path), len(df), counts, prevalence, schema, bad)


def validation_table(report: ValidationReport) -> Any:
    """rich renderables summarising a report (the CLI prints them)."""
    from rich.console import Group
    from rich.table import Table

    parts: list[Any] = []
    t = Table(title=f"{report.manifest}: {report.n_rows} studies")
    for col in ("split", "studies", "cxr", "ecg", "report"):
        t.add_column(col, justify="right" if col != "split" else "left")
    for split, c in report.counts.items():
        t.add_row(split, *(str(c[k]) for k in ("studies", "cxr", "ecg", "report")))
    parts.append(t)
    if report.prevalence:
        lt = Table(title="labels")
        for col in ("label", "positive", "negative", "uncertain", "unknown"):
            lt.add_column(col, justify="right" if col != "label" else "left")
        for name, p in report.prevalence.items():
            lt.add_row(name, *(f"{100 * p[k]:.1f}%" for k in ("positive", "negative", "uncertain", "unknown")))
        parts.append(lt)
    if report.schema:
        st = Table(title="schema problems", style="red")
        st.add_column("problem")
        for s in report.schema:
            st.add_row(s)
        parts.append(st)
    if report.bad:
        bt = Table(title=f"{len(report.bad)} bad samples", style="red")
        for col in ("sample_id", "modality", "path", "reason"):
            bt.add_column(col)
        for b in report.bad:
            bt.add_row(b.sample_id, b.modality, b.path, b.reason)
        parts.append(bt)
    return Group(*parts)
