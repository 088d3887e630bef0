"""`medtriad demo`: the whole job on the built-in cohort, one step after another.

Each step writes into its own folder under OUT and is skipped when its output already exists,
so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from medtriad.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    out: Path
    manifest: Path
    timings: dict[str, float] = field(default_factory=dict)
    summary: dict[str, object] = field(default_factory=dict)


def run_demo(out: str | Path, n: int = 2000, seed: int = 0, workers: int | None = None) -> DemoResult:
    """Generate the demo cohort and validate it."""
    from medtriad.data.synthetic.cohort import generate_cohort
    from medtriad.data.validate import validate_manifest

    out_p = Path(out)
    data_dir = out_p / "data"
    manifest = data_dir / "manifest.parquet"
    result = DemoResult(out=out_p, manifest=manifest)

    t0 = time.perf_counter()
    if manifest.exists():
        log.info("cohort already in %s: skipping generation", data_dir)
    else:
        generate_cohort(data_dir, n=n, seed=seed, workers=workers)
    result.timings["synth"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = validate_manifest(manifest, workers=workers)
    result.timings["validate"] = time.perf_counter() - t0
    if not report.ok:
        raise DataError(manifest, f"demo cohort failed validation: {len(report.bad)} bad samples, schema {report.schema}")
    result.summary["studies"] = report.n_rows
    result.summary["counts"] = report.counts
    return result
