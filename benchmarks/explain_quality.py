"""Do the explanation maps point at the findings? Pointing game, AF ECG windows, randomisation.

On the demo cohort's held-out studies, with the demo model (``make demo``):

* Pointing game: for each X-ray finding, the query is the finding's positive sentences
  (`class_prompts`, radiology part only), embedded and averaged; each map of each positive
  image is upsampled to the PNG's native 256 x 256 pixels and scores a hit when its maximum
  lies in the generator's region mask (strict, and with the mask dilated by ``--tolerance``
  pixels). Baselines: a uniform random point (hit rate = mask area share), the image centre,
  the training-set location prior (the peak of the mean training mask), and the same maps from
  a re-initialised model.
* Atrial fibrillation: for AF ECGs and the AF statements as query, the share of each map on
  the T-end-to-QRS-onset windows (f waves; no P waves in AF) and on the QRS complexes, against
  the share of time those windows cover; sinus-rhythm ECGs with the sinus statements as a
  control (there the first window holds the P wave). Similarity maps (cosines, any sign) are
  min-max scaled per record first; relevance is used as it is (non-negative).
* Randomisation check: mean Spearman correlation between each map and the map from the same
  architecture re-initialised with another seed.

    python benchmarks/explain_quality.py [--model demo_out/run] [--data demo_out/data]
        [--splits test] [--tolerance 8] [--query positive|contrast] [--shifts 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medtriad.data.cxr import read_cxr
from medtriad.data.ecg import CANONICAL_LEADS, read_ecg_input
from medtriad.data.synthetic.reports import class_prompts
from medtriad.data.text import combine_report
from medtriad.explain import MatchScore, cxr_maps, ecg_maps, load_explain_model
from medtriad.explain.attribution import unit_embeddings
from medtriad.explain.maps import grid_to_native, image_peak, upsample_time
from medtriad.explain.quality import (
    dilate,
    ecg_windows,
    pointing_hit,
    random_hit_rate,
    spearman,
    window_fraction,
)
from medtriad.models import build_model

FINDINGS = ("cardiomegaly", "effusion", "edema", "pneumothorax", "consolidation")
METHODS = ("similarity", "relevance")
CHUNK = 32


QUERY = "positive"
SHIFTS = 1


def query(model, label: str, part: str) -> torch.Tensor:
    """Mean unit embedding of a label's positive sentences (radiology or cardiology part); with
    ``--query contrast``, minus the mean of its negative sentences (present rather than absent)."""

    def mean(sentences: list[str]) -> torch.Tensor:
        texts = [
            combine_report(s, None) if part == "rad" else combine_report(None, s) for s in sentences
        ]
        return unit_embeddings(model, {"report": texts})["report"].mean(0)

    positive, negative = class_prompts()[label]
    return mean(positive) - mean(negative) if QUERY == "contrast" else mean(positive)


def batched(fn, x, *rest):
    """Concatenate `fn` over chunks of the first axis."""
    outs = [
        fn(x[i : i + CHUNK], *(r[i : i + CHUNK] for r in rest)) for i in range(0, len(x), CHUNK)
    ]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def pointing_game(
    model, fresh, rows: pd.DataFrame, train: pd.DataFrame, root: Path, tol: int
) -> dict:
    c = model.config.data.cxr
    results = {}
    for finding in FINDINGS:
        pos = rows[(rows[f"label_{finding}"] == 1) & rows.cxr_path.notna()]
        masks = [np.load(root / a)[f"mask_{finding}"] for a in pos.meta_annotation_path]
        x = torch.from_numpy(
            np.stack(
                [read_cxr(root / p, size=c.size, fit=c.fit, clahe=c.clahe) for p in pos.cxr_path]
            )
        )
        native = masks[0].shape
        prior_masks = [
            np.load(root / a)[f"mask_{finding}"]
            for a in train[
                (train[f"label_{finding}"] == 1) & train.cxr_path.notna()
            ].meta_annotation_path
        ]
        prior_peak = image_peak(np.mean(prior_masks, axis=0))
        centre = (native[0] // 2, native[1] // 2)
        res: dict = {"n": len(pos)}
        for tag, m in (("trained", model), ("reinit", fresh)):
            score = MatchScore((query(m, finding, "rad"),))
            grids = batched(lambda xb, m=m, score=score: cxr_maps(m, xb, score, SHIFTS), x)
            for method in METHODS:
                full = grid_to_native(grids[method], native, c.size, c.fit)
                res[f"{tag}/{method}/strict"] = float(
                    np.mean([pointing_hit(f, k) for f, k in zip(full, masks)])
                )
                res[f"{tag}/{method}/tolerant"] = float(
                    np.mean([pointing_hit(f, k, tol) for f, k in zip(full, masks)])
                )
                if tag == "trained":
                    res[f"{method}/maps"] = grids[method]
                else:
                    res[f"spearman/{method}"] = float(
                        np.mean(
                            [spearman(a, b) for a, b in zip(res[f"{method}/maps"], grids[method])]
                        )
                    )
        for name, k in (("strict", 0), ("tolerant", tol)):
            dil = [dilate(mk, k) for mk in masks]
            res[f"random/{name}"] = float(np.mean([random_hit_rate(d) for d in dil]))
            res[f"centre/{name}"] = float(np.mean([d[centre] for d in dil]))
            res[f"prior/{name}"] = float(np.mean([d[prior_peak] for d in dil]))
        for method in METHODS:
            res.pop(f"{method}/maps")
        results[finding] = res
    return results


def ecg_windows_study(model, fresh, rows: pd.DataFrame, root: Path, label: str) -> dict:
    e = model.config.data.ecg
    pos = rows[(rows[f"label_{label}"] == 1) & rows.ecg_path.notna()]
    recs = [
        read_ecg_input(root / p, e)
        for p in pos.ecg_path
    ]
    x = torch.from_numpy(np.stack([r.signal for r in recs]))
    mask = torch.from_numpy(np.stack([r.lead_mask for r in recs]))
    n = x.shape[-1]
    wins = [ecg_windows(np.load(root / a), n, 500.0, e.fs) for a in pos.meta_annotation_path]
    res: dict = {"n": len(pos)}
    for kind in ("tp", "qrs"):
        res[f"time_share/{kind}"] = float(np.mean([w[kind].mean() for w in wins]))
    out = {}
    for tag, m in (("trained", model), ("reinit", fresh)):
        score = MatchScore((query(m, label, "ecg"),))
        out[tag] = batched(lambda xb, mb, m=m, score=score: ecg_maps(m, xb, score, mb), x, mask)
    for tag, method in [(t, m) for t in out for m in METHODS]:
        maps = upsample_time(out[tag][method], n)
        if method == "similarity":
            lo, hi = maps.min(1, keepdims=True), maps.max(1, keepdims=True)
            maps = (maps - lo) / np.maximum(hi - lo, 1e-12)
        prefix = method if tag == "trained" else f"reinit/{method}"
        for kind in ("tp", "qrs"):
            res[f"{prefix}/{kind}"] = float(
                np.nanmean([window_fraction(r, w[kind]) for r, w in zip(maps, wins)])
            )
    for method in METHODS:
        res[f"spearman/{method}"] = float(
            np.mean([spearman(a, b) for a, b in zip(out["trained"][method], out["reinit"][method])])
        )
    occ = out["trained"]["occlusion"].mean(0)
    res["occlusion/top_leads"] = [CANONICAL_LEADS[i] for i in np.argsort(-occ)[:3]]
    res["occlusion/mean"] = {CANONICAL_LEADS[i]: round(float(v), 4) for i, v in enumerate(occ)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo_out/run", help="run folder or model folder")
    ap.add_argument(
        "--data", default="demo_out/data", help="demo cohort folder (manifest, annotations)"
    )
    ap.add_argument("--splits", nargs="+", default=["test"], help="held-out splits to score")
    ap.add_argument(
        "--tolerance",
        type=int,
        default=8,
        help="mask dilation in native pixels for 'tolerant' hits",
    )
    ap.add_argument("--seed", type=int, default=1, help="seed of the re-initialised model")
    ap.add_argument(
        "--query",
        choices=["positive", "contrast"],
        default="positive",
        help="query text direction: positive sentences, or positive minus negative",
    )
    ap.add_argument(
        "--shifts",
        type=int,
        default=1,
        help="X-ray maps read this many times per patch along each axis (shift and stitch)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    global QUERY, SHIFTS
    QUERY, SHIFTS = args.query, args.shifts
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if not Path(args.data, "manifest.parquet").is_file() or not Path(args.model).is_dir():
        print(f"skipped: no demo model/cohort at {args.model} and {args.data} (run `make demo`)")
        return
    t0 = time.perf_counter()
    model = load_explain_model(args.model).eval()
    fresh = build_model(replace(model.config, seed=model.config.seed + args.seed)).eval()
    root = Path(args.data)
    manifest = pd.read_parquet(root / "manifest.parquet")
    rows, train = manifest[manifest.split.isin(args.splits)], manifest[manifest.split == "train"]

    pg = pointing_game(model, fresh, rows, train, root, args.tolerance)
    print(
        f"Pointing game ({', '.join(args.splits)} split, {QUERY} query, shifts {SHIFTS}; hit rate, strict / tolerant {args.tolerance} px)"
    )
    print(
        "| finding | n | similarity | relevance | random | centre | prior | re-init sim. | re-init rel. |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for f, r in pg.items():

        def cell(key: str, r: dict = r) -> str:
            return f"{r[key + '/strict']:.2f} / {r[key + '/tolerant']:.2f}"

        print(
            f"| {f} | {r['n']} | {cell('trained/similarity')} | {cell('trained/relevance')} | {cell('random')} "
            f"| {cell('centre')} | {cell('prior')} | {cell('reinit/similarity')} | {cell('reinit/relevance')} |"
        )
    af = ecg_windows_study(model, fresh, rows, root, "afib")
    sinus = ecg_windows_study(model, fresh, rows, root, "sinus")
    print("\nECG relevance share per window (T end -> QRS onset = TP/f waves | QRS)")
    print(
        "| records | n | window | time share (random) | similarity | relevance | re-init sim. | re-init rel. |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in (("AF", af), ("sinus", sinus)):
        for kind in ("tp", "qrs"):
            print(
                f"| {name} | {r['n']} | {kind.upper()} | {r[f'time_share/{kind}']:.3f} | {r[f'similarity/{kind}']:.3f} "
                f"| {r[f'relevance/{kind}']:.3f} | {r[f'reinit/similarity/{kind}']:.3f} | {r[f'reinit/relevance/{kind}']:.3f} |"
            )
    for name, r in (("AF", af), ("sinus", sinus)):
        print(
            f"  {name}: leads whose occlusion lowers the score most: {', '.join(r['occlusion/top_leads'])}"
        )
    print("\nRandomisation check (mean Spearman, trained vs re-initialised maps)")
    rand = {
        "cxr/similarity": float(np.mean([r["spearman/similarity"] for r in pg.values()])),
        "cxr/relevance": float(np.mean([r["spearman/relevance"] for r in pg.values()])),
        "ecg/similarity": float(np.mean([af["spearman/similarity"], sinus["spearman/similarity"]])),
        "ecg/relevance": float(np.mean([af["spearman/relevance"], sinus["spearman/relevance"]])),
    }
    for k, v in rand.items():
        print(f"  {k}: {v:+.3f}")
    print(f"\n{time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"pointing": pg, "afib": af, "sinus": sinus, "randomisation": rand}, indent=2
            )
        )


if __name__ == "__main__":
    main()
