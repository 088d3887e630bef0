"""`medtriad demo`: the whole job on the built-in cohort, one step after another.

generate -> validate -> shards -> pre-train (time-boxed) -> retrieval on held-out patients.
Each step writes into its own folder under OUT and is skipped when its output already exists,
so an interrupted demo resumes where it stopped (pre-training continues from its checkpoint).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from medtriad.errors import DataError

log = logging.getLogger(__name__)

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


@dataclass
class DemoResult:
    out: Path
    manifest: Path
    timings: dict[str, float] = field(default_factory=dict)
    summary: dict[str, object] = field(default_factory=dict)
    retrieval: dict[str, dict[str, float]] = field(default_factory=dict)


def run_demo(
    out: str | Path,
    n: int = 2000,
    seed: int = 0,
    workers: int | None = None,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
) -> DemoResult:
    """Run every step of the demo into `out` and return timings and held-out retrieval."""
    from medtriad.config import load_config
    from medtriad.data.shards import prepare_shards_for_config
    from medtriad.data.synthetic.cohort import generate_cohort
    from medtriad.data.validate import validate_manifest
    from medtriad.evaluate.heldout import heldout_retrieval
    from medtriad.train.trainer import train

    out_p = Path(out)
    cfg = load_config(config or DEMO_CONFIG, overrides or [])
    data_dir, shard_dir, run_dir = out_p / "data", out_p / "shards", out_p / "run"
    manifest = data_dir / "manifest.parquet"
    result = DemoResult(out=out_p, manifest=manifest)

    def timed(name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        result.timings[name] = time.perf_counter() - t0
        return value

    if manifest.exists():
        log.info("cohort already in %s: skipping generation", data_dir)
    else:
        timed("synth", generate_cohort, data_dir, n=n, seed=seed, workers=workers)
    report = timed("validate", validate_manifest, manifest, workers=workers)
    if not report.ok:
        raise DataError(manifest, f"demo cohort failed validation: {len(report.bad)} bad samples, schema {report.schema}")
    result.summary["studies"] = report.n_rows
    result.summary["counts"] = report.counts
    done = json.loads((shard_dir / "shards.json").read_text()).get("counts") if (shard_dir / "shards.json").exists() else None
    if not done:
        timed("shards", prepare_shards_for_config, manifest, shard_dir, cfg, workers=workers)
    if (run_dir / "model" / "model.safetensors").exists():
        log.info("model already trained in %s: skipping pre-training", run_dir)
    else:
        timed("pretrain", train, cfg, shard_dir, run_dir, resume="latest")
    result.retrieval = timed("retrieval", heldout_retrieval, run_dir / "model", shard_dir, split="test")
    (out_p / "demo_summary.json").write_text(
        json.dumps({"timings": result.timings, "retrieval": result.retrieval, "summary": result.summary}, indent=2)
    )
    return result
