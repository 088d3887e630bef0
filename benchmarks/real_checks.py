"""Real-data checks of the evaluation: what does a small model learn from 150 ECGs or 300 X-rays?

Three checks, each training a small model with the project's trainer on real data read in place
from ``../shared/data`` and evaluating it with ``evaluate_run`` on held-out *patients*:

1. ECG <-> text on CPSC-2018 (150 records, one per patient): text = the cardiology statement of
   the record's diagnoses (``medtriad.data.sources.cinc``); patient-level 60/20/20 split; model
   ``[ecg, report]`` with the ``clip`` loss; zero-shot CPSC-2018 AUROC on the held-out records,
   then the same model, untouched, on CinC-2021 (50 records from other hospitals; SNOMED names
   mapped to the CPSC classes, see `cinc_to_cpsc`). CinC-2021 is never trained or tuned on.
2. X-ray <-> notes on covid-chestxray (frontal images with clinical notes): patient-level
   60/20/20 split; model ``[cxr, report]``, ``clip``; retrieval R@K on held-out patients (and
   zero-shot "pneumonia" / "no finding" with the CheXpert prompts, the only built-in classes
   the dataset's labels share).
3. The demo model (``--demo-run``, e.g. ``make demo``'s) on its test split: zero-shot macro AUROC
   of the X-ray findings and the ECG rhythms and findings.

    python benchmarks/real_checks.py --out /tmp/real_checks [--cpsc-epochs 300] [--covid-epochs 100]
        [--only cpsc,covid,demo] [--demo-run demo_out/run --demo-data demo_out/shards]

Every step is skipped when its output exists, so an interrupted run resumes. Prints one summary
table; the full results are in ``OUT/<check>/evaluation/results.json`` and ``report.html``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medtriad.config import load_config
from medtriad.data.manifest import assign_splits, read_manifest, write_manifest
from medtriad.data.shards import prepare_shards_for_config
from medtriad.evaluate.run import evaluate_run
from medtriad.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data"
SPLIT = (0.6, 0.2, 0.2)
CPSC_COLUMNS = ("af", "iavb", "lbbb", "nsr", "pac", "pvc", "rbbb", "std", "ste")


def small_config(modalities: list[str], epochs: int, minutes: float, *extra: str):
    """configs/demo.yaml on two modalities with the CLIP loss, sized for ~100 training rows; a
    fixed number of epochs (so the result does not depend on the machine's load), `minutes` caps it."""
    mods = "[" + ",".join(modalities) + "]"
    return load_config(
        ROOT / "configs" / "demo.yaml",
        [
            f"data.modalities={mods}",
            "loss.name=clip",
            f"train.max_minutes={minutes}",
            f"train.epochs={epochs}",
            "train.batch_size=32",
            "train.warmup_steps=20",
            "train.checkpoint_every=100000",
            "train.log_every=20",
            "train.lr_mult={}",
            "train.validate_every=0",
            *extra,
        ],
    )


def resplit(manifest: Path, seed: int = 0) -> pd.DataFrame:
    """Re-draw the patient-level split 60/20/20 (larger held-out sets than the preparer's 80/10/10)."""
    df = read_manifest(manifest)
    df["split"] = assign_splits(df["subject_id"], seed, SPLIT)
    write_manifest(df, manifest)
    return df


def train_once(config, data: Path, run: Path) -> float:
    if (run / "model" / "model.safetensors").is_file():
        return 0.0
    t = time.perf_counter()
    train(config, data, run, progress=False)
    return time.perf_counter() - t


def cinc_to_cpsc(df: pd.DataFrame) -> pd.DataFrame:
    """Map CinC-2021 SNOMED diagnoses onto the CPSC-2018 classes (label columns of `CPSC_COLUMNS`).

    - ``nsr`` (CPSC "Normal"): sinus rhythm with no other diagnosis;
    - ``pac``, ``pvc``, ``rbbb``, ``af``, ``lbbb``, ``iavb``: the same SNOMED concepts (after the
      challenge's equivalences: SVPB -> PAC, VPB -> PVC, CRBBB -> RBBB); a record with only an
      incomplete RBBB is unknown for ``rbbb``;
    - ``std``/``ste``: unknown where the record has "ST changes" or "ST interval abnormal" (no
      direction given), else 0.
    A class absent from every record is 0 everywhere and drops out of the metrics (no positives).
    """
    out = df.copy()
    labels = [c for c in df.columns if c.startswith("label_")]
    codes = df[labels].fillna(0).to_numpy() == 1
    names = [c[len("label_") :] for c in labels]
    has = lambda n: codes[:, names.index(n)] if n in names else np.zeros(len(df), bool)
    others = codes.sum(axis=1) - has("nsr")
    new = {c: has(c).astype(float) for c in CPSC_COLUMNS}
    new["nsr"] = (has("nsr") & (others == 0)).astype(float)
    new["rbbb"] = np.where(has("irbbb") & ~has("rbbb"), np.nan, new["rbbb"])
    undirected = has("stc") | has("stiab")
    for c in ("std", "ste"):
        new[c] = np.where(undirected & ~has(c), np.nan, new[c])
    out = out.drop(columns=labels)
    for c in CPSC_COLUMNS:
        out[f"label_{c}"] = new[c]
    return out


def check_cpsc(out: Path, epochs: int, minutes: float, bootstrap: int) -> dict:
    from medtriad.data.sources.cinc import prepare_cinc

    out.mkdir(parents=True, exist_ok=True)
    mapping = [
        SHARED / "ecg" / "cinc2021" / f
        for f in ("dx_mapping_scored.csv", "dx_mapping_unscored.csv")
    ]
    cfg = small_config(["ecg", "report"], epochs, minutes)
    manifest = out / "cpsc" / "manifest.parquet"
    if not manifest.is_file():
        prepare_cinc(
            SHARED / "ecg" / "cpsc2018",
            out / "cpsc",
            mapping=mapping,
            merge_equivalent=True,
            seed=0,
        )
        resplit(manifest)
    shards = out / "cpsc_shards"
    if not (shards / "shards.json").is_file():
        prepare_shards_for_config(manifest, shards, cfg, workers=2, progress=False)
    seconds = train_once(cfg, shards, out / "cpsc_run")
    res = evaluate_run(
        out / "cpsc_run",
        shards,
        out=out / "cpsc_run" / "evaluation",
        label_set=["cpsc2018"],
        bootstrap=bootstrap,
        tasks=("zeroshot", "retrieval", "probe", "robustness", "embedding_map"),
    )
    cinc_manifest = out / "cinc2021" / "manifest.parquet"
    if not cinc_manifest.is_file():
        prepare_cinc(
            SHARED / "ecg" / "cinc2021", out / "cinc2021", merge_equivalent=True, split_all="test"
        )
        write_manifest(cinc_to_cpsc(read_manifest(cinc_manifest)), cinc_manifest)
    ood = evaluate_run(
        out / "cpsc_run",
        cinc_manifest,
        out=out / "cpsc_run" / "evaluation_cinc2021",
        label_set=["cpsc2018"],
        bootstrap=bootstrap,
        tasks=("zeroshot", "retrieval", "embedding_map"),
    )
    return {"train_seconds": seconds, "cpsc": res, "cinc2021": ood}


def check_covid(out: Path, epochs: int, minutes: float, bootstrap: int) -> dict:
    from medtriad.data.sources.covid_notes import prepare_covid_notes

    out.mkdir(parents=True, exist_ok=True)
    cfg = small_config(["cxr", "report"], epochs, minutes)
    manifest = out / "covid" / "manifest.parquet"
    if not manifest.is_file():
        prepare_covid_notes(SHARED / "cxr" / "covid_notes", out / "covid", seed=0)
        resplit(manifest)
    shards = out / "covid_shards"
    if not (shards / "shards.json").is_file():
        prepare_shards_for_config(manifest, shards, cfg, workers=2, progress=False)
    seconds = train_once(cfg, shards, out / "covid_run")
    res = evaluate_run(
        out / "covid_run",
        shards,
        out=out / "covid_run" / "evaluation",
        bootstrap=bootstrap,
        tasks=("zeroshot", "retrieval", "robustness", "embedding_map"),
    )
    return {"train_seconds": seconds, "covid": res}


def check_demo(run: Path, shards: Path, out: Path, bootstrap: int) -> dict:
    return {
        "demo": evaluate_run(
            run,
            shards,
            out=out / "demo_evaluation",
            label_set=["demo_cxr", "demo_ecg"],
            bootstrap=bootstrap,
        )
    }


def _ci(v: list) -> str:
    return "-" if v is None or v[1] is None else f"{v[1]:.3f} [{v[0]:.3f}, {v[2]:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--out",
        type=Path,
        required=True,
        help="working folder (manifests, shards, runs, evaluations)",
    )
    ap.add_argument(
        "--cpsc-epochs", type=int, default=300, help="training epochs of the ECG-text model"
    )
    ap.add_argument(
        "--covid-epochs", type=int, default=100, help="training epochs of the X-ray-notes model"
    )
    ap.add_argument(
        "--minutes", type=float, default=20.0, help="cap on each model's training time (minutes)"
    )
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (patients)")
    ap.add_argument(
        "--only", default="cpsc,covid,demo", help="comma-separated subset of cpsc, covid, demo"
    )
    ap.add_argument(
        "--demo-run", type=Path, default=Path("demo_out/run"), help="a trained demo run folder"
    )
    ap.add_argument(
        "--demo-data", type=Path, default=Path("demo_out/shards"), help="its shards (or manifest)"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    only = set(args.only.split(","))
    if not SHARED.is_dir() and only - {"demo"}:
        raise SystemExit(f"real data not found at {SHARED}")
    results: dict = {}
    if "cpsc" in only:
        results.update(check_cpsc(args.out, args.cpsc_epochs, args.minutes, args.bootstrap))
    if "covid" in only:
        results.update(check_covid(args.out, args.covid_epochs, args.minutes, args.bootstrap))
    if "demo" in only:
        results.update(check_demo(args.demo_run, args.demo_data, args.out, args.bootstrap))
    summary = []
    for name in ("cpsc", "cinc2021", "covid", "demo"):
        for ls, per in results.get(name, {}).get("zeroshot", {}).items():
            for m, r in per.items():
                summary.append(
                    (
                        f"{name}: zero-shot {ls} on {m}",
                        f"macro AUROC {_ci(r['macro']['auroc'])}, n={r['n']}",
                    )
                )
                for c, v in r["per_class"].items():
                    summary.append(
                        (f"    {c}", f"AUROC {_ci(v['auroc'])}, {v['n_pos']}/{v['n']} positive")
                    )
    for name in ("cpsc", "cinc2021", "covid", "demo"):
        for pair, r in results.get(name, {}).get("retrieval", {}).get("pairwise", {}).items():
            text = (
                f"R@1 {_ci(r['R@1'])}, R@5 {_ci(r['R@5'])}, R@10 {_ci(r['R@10'])}, "
                f"median rank {r['median_rank']}, n={r['n']} (chance R@5 {r['chance_R@5']:.3f})"
            )
            summary.append((f"{name}: {pair}", text))
    width = max(len(k) for k, _ in summary) if summary else 0
    for k, v in summary:
        print(f"{k:<{width}}  {v}")
    (args.out / "summary.json").write_text(json.dumps({k: v for k, v in summary}, indent=2))


if __name__ == "__main__":
    main()
