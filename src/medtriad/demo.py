"""`medtriad demo`: the whole job on the built-in cohort, one step after another.

generate -> validate -> shards -> pre-train (time-boxed) -> evaluate on held-out patients
(zero-shot, retrieval, probes, robustness; results.json + report.html) -> explain one held-out
study (explain.html) -> check the maps on the held-out studies against the generator's regions
(pointing game, ECG windows, randomisation; explain/checks/).
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
# the demo's occlusion maps step 4 pixels (225 windows per image and fill) rather than the
# default 2 (841): its checks took 5 min 38 s on 2 cores, about a quarter of the default's time
DEMO_OCCLUSION_STRIDE = 4


@dataclass
class DemoResult:
    out: Path
    manifest: Path
    timings: dict[str, float] = field(default_factory=dict)
    summary: dict[str, object] = field(default_factory=dict)
    retrieval: dict[str, dict[str, float]] = field(default_factory=dict)
    zeroshot: dict[str, float] = field(default_factory=dict)
    report_html: Path | None = None
    explain_html: Path | None = None
    checks: dict[str, object] = field(default_factory=dict)


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
    from medtriad.evaluate.run import evaluate_run
    from medtriad.explain import Occlusion, explain_inputs
    from medtriad.explain.checks import check_explanations
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
    eval_dir = out_p / "evaluation"
    results = timed("evaluate", evaluate_run, run_dir, shard_dir, eval_dir, split="test", bootstrap=200)
    result.report_html = eval_dir / "report.html"
    result.zeroshot = _zeroshot_macros(results)
    example = _explain_example(manifest)
    if example is not None:
        cxr, ecg, text = example
        timed("explain", explain_inputs, run_dir, cxr=cxr, ecg=ecg, text=text, out=out_p / "explain", ig_steps=16)
        result.explain_html = out_p / "explain" / "explain.html"
    checks = timed("explain checks", check_explanations, run_dir, data_dir, splits=["test"],
                   occlusion=Occlusion(stride=DEMO_OCCLUSION_STRIDE), out=out_p / "explain" / "checks")
    result.checks = _pointing_summary(checks)
    (out_p / "demo_summary.json").write_text(
        json.dumps({"timings": result.timings, "retrieval": result.retrieval, "zeroshot_macro_auroc": result.zeroshot,
                    "pointing_game": result.checks, "summary": result.summary, "report": str(result.report_html)},
                   indent=2, default=str)
    )
    return result


def _zeroshot_macros(results: dict) -> dict[str, float]:
    """Macro AUROC point estimates per zero-shot label set and modality from results.json."""
    out: dict[str, float] = {}
    for name, per_modality in results.get("zeroshot", {}).items():
        for modality, entry in per_modality.items():
            auroc = entry.get("macro", {}).get("auroc")
            if isinstance(auroc, (list, tuple)) and len(auroc) == 3:
                out[f"{name} ({modality})"] = float(auroc[1])
    return out


def _pointing_summary(checks: dict) -> dict[str, object]:
    """Per finding, the strict hit rates of each map with intervals, and the baselines to beat."""
    out: dict[str, object] = {}
    for finding, r in checks["pointing"].items():
        if r["n"]:
            maps = {m: r[f"trained/{m}/strict"] for m in ("similarity", "relevance", "occlusion") if f"trained/{m}/strict" in r}
            out[finding] = {"n": r["n"], **maps, "random": r["random/strict"], "prior": r["prior/strict"]}
    out["randomisation_spearman"] = {k: v["mean"] for k, v in checks["randomisation"].items()}
    return out


def _explain_example(manifest: Path) -> tuple[Path, Path, str] | None:
    """A held-out study with all three modalities and at least one X-ray finding."""
    from medtriad.data.manifest import read_manifest, resolve

    df = read_manifest(manifest)
    full = df[(df["split"] == "test") & df[["cxr_path", "ecg_path", "report_text"]].notna().all(axis=1)]
    if full.empty:
        return None
    findings = full[[c for c in full.columns if c in ("label_cardiomegaly", "label_effusion")]].sum(axis=1)
    row = full.loc[findings.idxmax()] if len(findings) else full.iloc[0]
    root = df.attrs["root"]
    return resolve(root, row["cxr_path"]), resolve(root, row["ecg_path"]), str(row["report_text"])
