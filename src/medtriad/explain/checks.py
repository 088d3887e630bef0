"""Do the maps point at what the demo generator drew? Pointing game, ECG windows, randomisation.

On a cohort from `medtriad synth` (its annotations hold each finding's region mask and each
beat's wave boundaries), with a trained model:

* Pointing game: for each X-ray finding, the query is the finding's positive sentences
  (`class_prompts`, radiology part), embedded and averaged (``contrast``: minus the mean of the
  negative sentences). Each map (similarity, relevance, occlusion; `cxr_maps`) of each
  positive image is upsampled to the PNG's native pixels and hits when its maximum (a
  plateau's centre, `image_peak`) lies in the mask (strict, and with the mask dilated by
  `tolerance` pixels). Hit rates carry 95% Wilson intervals. Baselines: a uniform random
  point (the mask's area share), the image centre, the location prior (the peak of the mean
  training mask: one fixed point per finding) and the same maps from a re-initialised model.
* ECG windows: for atrial-fibrillation ECGs queried with the AF statements, the share of each
  map on the T-end-to-QRS-onset windows (f waves; no P waves in AF) and on the QRS complexes,
  against the share of time those windows cover; sinus-rhythm ECGs with the sinus statements
  are the control (there the first window holds the P wave). Similarity maps (cosines, any
  sign) are min-max scaled per record first; relevance is non-negative as it is.
* Randomisation check: mean Spearman correlation between each map and the same method's map
  from the architecture re-initialised with another seed (maps that explain the model should
  change with its weights).

The demo runs this on its test split (`medtriad demo`); `medtriad explain-check` runs it on any
generated cohort, e.g. a fresh one the model never saw, whose every split is held out.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medtriad.data.cxr import read_cxr
from medtriad.data.ecg import CANONICAL_LEADS, read_ecg_input
from medtriad.data.synthetic.reports import class_prompts
from medtriad.data.text import combine_report
from medtriad.errors import ConfigError, DataError
from medtriad.explain.attribution import (
    DEFAULT_OCCLUSION,
    MatchScore,
    Occlusion,
    resolve_fill,
    unit_embeddings,
)
from medtriad.explain.explain import CXR_METHODS, TOKEN_METHODS, cxr_maps, ecg_maps
from medtriad.explain.maps import grid_to_native, image_peak, upsample_time
from medtriad.explain.quality import (
    dilate,
    ecg_windows,
    pointing_hit,
    random_hit_rate,
    spearman,
    wilson_interval,
    window_fraction,
)
from medtriad.progress import track

__all__ = [
    "CXR_FINDINGS",
    "METHODS",
    "check_explanations",
    "plot_pointing",
    "to_markdown",
]

CXR_FINDINGS = ("cardiomegaly", "effusion", "edema", "pneumothorax", "consolidation")
METHODS = CXR_METHODS
QUERIES = ("positive", "contrast")
CHUNK = 32
_ANNOTATIONS = 500.0  # Hz of the generator's ECG wave annotations

MapFn = Callable[[Any, torch.Tensor, MatchScore, int], dict[str, np.ndarray]]
log = logging.getLogger(__name__)
# what an unreadable image, record or annotation raises
_BAD_FILE = (DataError, OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


def query_embedding(model: Any, label: str, part: str, query: str = "positive") -> torch.Tensor:
    """Mean unit embedding of a label's positive sentences, as a radiology (``rad``) or
    cardiology (``ecg``) report; ``contrast``: minus the mean of its negative sentences."""

    def mean(sentences: list[str]) -> torch.Tensor:
        texts = [combine_report(s, None) if part == "rad" else combine_report(None, s) for s in sentences]
        return unit_embeddings(model, {"report": texts})["report"].mean(0)

    positive, negative = class_prompts()[label]
    return mean(positive) - mean(negative) if query == "contrast" else mean(positive)


def _batched(fn: Callable[..., dict[str, np.ndarray]], x: torch.Tensor, *rest: torch.Tensor) -> dict[str, np.ndarray]:
    """Concatenate `fn` over chunks of the first axis."""
    outs = [fn(x[i : i + CHUNK], *(r[i : i + CHUNK] for r in rest)) for i in range(0, len(x), CHUNK)]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def _annotation(root: Path, row: Any) -> Path:
    """The annotation file of a manifest row (a DataError naming the study when it has none)."""
    rel = getattr(row, "meta_annotation_path", None)
    if not isinstance(rel, str) or not rel:
        raise DataError(root / "manifest.parquet", f"study {getattr(row, 'sample_id', '?')} has no annotation file")
    return root / rel


def _mask(path: Path, finding: str) -> np.ndarray:
    with np.load(path) as ann:
        if f"mask_{finding}" not in ann:
            raise DataError(path, f"no mask_{finding} although the study is labelled {finding}")
        return ann[f"mask_{finding}"]


def _readable(
    rows: pd.DataFrame, load: Callable[[Any], Any], skipped: dict[str, str], fail_fast: bool
) -> list[Any]:
    """`load` of every row; a row whose files cannot be read is skipped and its problem kept in
    `skipped` (by study), or with `fail_fast` the error is raised."""
    out = []
    for row in rows.itertuples(index=False):
        try:
            out.append(load(row))
        except _BAD_FILE as exc:
            if fail_fast:
                raise
            skipped.setdefault(str(getattr(row, "sample_id", "?")), str(exc))
            log.warning("skipped %s: %s", getattr(row, "sample_id", "?"), exc)
    return out


def _rate(hits: Sequence[bool]) -> dict[str, Any]:
    k, n = int(np.sum(hits)), len(hits)
    return {"rate": k / n if n else float("nan"), "ci": list(wilson_interval(k, n))}


def pointing_game(
    model: Any,
    fresh: Any,
    rows: pd.DataFrame,
    root: Path,
    prior_rows: pd.DataFrame,
    prior_root: Path,
    *,
    tolerance: int = 8,
    query: str = "positive",
    shifts: int = 1,
    map_fn: MapFn = cxr_maps,
    progress: bool = True,
    skipped: dict[str, str] | None = None,
    fail_fast: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per finding: ``n``, and ``{model}/{method}/{strict|tolerant}`` -> {rate, ci} for the
    trained and re-initialised models, the baselines' rates, and ``spearman/{method}`` (mean,
    se) between the two models' maps. Studies whose files cannot be read go to `skipped`."""
    c = model.config.data.cxr
    skipped = {} if skipped is None else skipped
    results: dict[str, dict[str, Any]] = {}
    for finding in track(CXR_FINDINGS, total=len(CXR_FINDINGS), description="pointing game", enabled=progress):
        pos = rows[(rows[f"label_{finding}"] == 1) & rows.cxr_path.notna()]

        def load(row: Any, finding: str = finding) -> tuple[np.ndarray, np.ndarray]:
            mask = _mask(_annotation(root, row), finding)
            return read_cxr(root / row.cxr_path, size=c.size, fit=c.fit, clahe=c.clahe), mask

        pairs = _readable(pos, load, skipped, fail_fast)
        n = len(pairs)
        res: dict[str, Any] = {"n": n}
        results[finding] = res
        if not n:
            continue
        x = torch.from_numpy(np.stack([p[0] for p in pairs]))
        masks = [p[1] for p in pairs]
        native = masks[0].shape
        train_pos = prior_rows[(prior_rows[f"label_{finding}"] == 1) & prior_rows.cxr_path.notna()]
        prior_masks = _readable(
            train_pos, lambda row, f=finding: _mask(_annotation(prior_root, row), f), skipped, fail_fast
        )
        prior_peak = image_peak(np.mean(prior_masks, axis=0)) if prior_masks else None
        centre = (native[0] // 2, native[1] // 2)
        maps: dict[str, dict[str, np.ndarray]] = {}
        for tag, m in (("trained", model), ("reinit", fresh)):
            score = MatchScore((query_embedding(m, finding, "rad", query),))
            maps[tag] = _batched(lambda xb, m=m, score=score: map_fn(m, xb, score, shifts), x)
            for method in maps[tag]:
                full = grid_to_native(maps[tag][method], native, c.size, c.fit)
                for name, tol in (("strict", 0), ("tolerant", tolerance)):
                    res[f"{tag}/{method}/{name}"] = _rate([pointing_hit(f, k, tol) for f, k in zip(full, masks)])
        for method in maps["trained"]:
            rho = [spearman(a, b) for a, b in zip(maps["trained"][method], maps["reinit"][method])]
            rho = np.array([v for v in rho if np.isfinite(v)])  # constant maps have no ranking
            se = float(rho.std(ddof=1) / np.sqrt(len(rho))) if len(rho) > 1 else float("nan")
            res[f"spearman/{method}"] = {"mean": float(rho.mean()) if len(rho) else float("nan"), "se": se}
        for name, tol in (("strict", 0), ("tolerant", tolerance)):
            dil = [dilate(mk, tol) for mk in masks]
            res[f"random/{name}"] = float(np.mean([random_hit_rate(d) for d in dil]))
            res[f"centre/{name}"] = float(np.mean([d[centre] for d in dil]))
            res[f"prior/{name}"] = float(np.mean([d[prior_peak] for d in dil])) if prior_peak else float("nan")
    return results


def ecg_window_study(
    model: Any,
    fresh: Any,
    rows: pd.DataFrame,
    root: Path,
    label: str,
    *,
    query: str = "positive",
    skipped: dict[str, str] | None = None,
    fail_fast: bool = False,
) -> dict[str, Any]:
    """Share of each ECG map on the TP (T end to QRS onset) and QRS windows of `label` records."""
    e = model.config.data.ecg
    skipped = {} if skipped is None else skipped
    pos = rows[(rows[f"label_{label}"] == 1) & rows.ecg_path.notna()]

    def load(row: Any) -> tuple[Any, dict[str, np.ndarray]]:
        rec = read_ecg_input(root / row.ecg_path, e)
        with np.load(_annotation(root, row)) as ann:
            return rec, ecg_windows(ann, rec.signal.shape[-1], _ANNOTATIONS, e.fs)

    loaded = _readable(pos, load, skipped, fail_fast)
    res: dict[str, Any] = {"n": len(loaded)}
    if not loaded:
        return res
    recs = [r for r, _ in loaded]
    wins = [w for _, w in loaded]
    x = torch.from_numpy(np.stack([r.signal for r in recs]))
    lead_mask = torch.from_numpy(np.stack([r.lead_mask for r in recs]))
    n = x.shape[-1]
    for kind in ("tp", "qrs"):
        res[f"time_share/{kind}"] = float(np.mean([w[kind].mean() for w in wins]))
    out = {}
    for tag, m in (("trained", model), ("reinit", fresh)):
        score = MatchScore((query_embedding(m, label, "ecg", query),))
        out[tag] = _batched(lambda xb, mb, m=m, score=score: ecg_maps(m, xb, score, mb), x, lead_mask)
    for tag in out:
        for method in TOKEN_METHODS:
            maps = upsample_time(out[tag][method], n)
            if method == "similarity":
                lo, hi = maps.min(1, keepdims=True), maps.max(1, keepdims=True)
                maps = (maps - lo) / np.maximum(hi - lo, 1e-12)
            for kind in ("tp", "qrs"):
                res[f"{tag}/{method}/{kind}"] = float(np.nanmean([window_fraction(r, w[kind]) for r, w in zip(maps, wins)]))
    for method in TOKEN_METHODS:
        rho = [v for a, b in zip(out["trained"][method], out["reinit"][method]) if np.isfinite(v := spearman(a, b))]
        res[f"spearman/{method}"] = float(np.mean(rho)) if rho else float("nan")
    occ = out["trained"]["occlusion"].mean(0)
    res["occlusion/top_leads"] = [CANONICAL_LEADS[i] for i in np.argsort(-occ)[:3]]
    return res


def check_explanations(
    run_dir: str | Path,
    data_dir: str | Path,
    *,
    splits: Sequence[str] = ("test",),
    prior_data: str | Path | None = None,
    tolerance: int = 8,
    query: str = "positive",
    shifts: int = 1,
    occlusion: Occlusion | None = DEFAULT_OCCLUSION,
    reinit_seed: int = 1,
    out: str | Path | None = None,
    map_fn: MapFn | None = None,
    progress: bool = True,
    fail_fast: bool = False,
) -> dict[str, Any]:
    """Pointing game, ECG windows and randomisation check of `run_dir`'s model on a generated
    cohort. `splits`: the cohort's splits to score, or ``("all",)`` for a cohort the model never
    saw; the location prior comes from the training split of `prior_data` (default: the same
    cohort). ``occlusion``: the X-ray occlusion map's settings (None leaves it out; it costs
    about ``((S - window) / stride + 1) ** 2`` forwards per image and model). `map_fn` replaces
    `cxr_maps` (it returns the X-ray maps to score by method). A study whose image, record or
    annotation cannot be read is skipped and listed under ``skipped`` (with `fail_fast`, its
    error is raised). With `out`, writes ``checks.json``, ``checks.md`` and ``pointing.png``
    there."""
    from medtriad.explain.explain import load_explain_model
    from medtriad.models import build_model

    if query not in QUERIES:
        raise ConfigError("explain.query", f"must be one of {QUERIES}, got {query!r}")
    root = Path(data_dir)
    manifest_path = root / "manifest.parquet"
    if not manifest_path.is_file():
        raise DataError(manifest_path, "no manifest: point --data at a cohort written by `medtriad synth`")
    manifest = pd.read_parquet(manifest_path)
    if "meta_annotation_path" not in manifest or manifest.meta_annotation_path.isna().all():
        raise DataError(manifest_path, "no annotations (meta_annotation_path): the checks need the generator's region masks")
    rows = manifest if list(splits) == ["all"] else manifest[manifest.split.isin(list(splits))]
    if rows.empty:
        raise DataError(manifest_path, f"no studies in split(s) {list(splits)}")
    prior_root = Path(prior_data) if prior_data is not None else root
    prior = pd.read_parquet(prior_root / "manifest.parquet")
    model = load_explain_model(run_dir).eval()
    fresh = build_model(replace(model.config, seed=model.config.seed + reinit_seed)).eval()
    fresh.reference_cxr = model.reference_cxr  # the re-initialised maps use the same fill
    skipped: dict[str, str] = {}
    occ_settings = None
    if occlusion is not None:
        c = model.config.data.cxr
        window, stride = occlusion.resolve(model.encoders["cxr"].patch_size, (c.size, c.size))
        occ_settings = {"window": window, "stride": stride, "fill": resolve_fill(occlusion.fill, model)}
    if map_fn is None:
        def map_fn(m: Any, x: torch.Tensor, score: MatchScore, k: int) -> dict[str, np.ndarray]:
            return cxr_maps(m, x, score, k, occlusion)
    pointing = pointing_game(
        model, fresh, rows, root, prior[prior.split == "train"], prior_root, tolerance=tolerance,
        query=query, shifts=shifts, map_fn=map_fn, progress=progress, skipped=skipped, fail_fast=fail_fast,
    )
    ecg = {
        label: ecg_window_study(model, fresh, rows, root, label, query=query, skipped=skipped, fail_fast=fail_fast)
        for label in ("afib", "sinus")
    }
    scored = [r for r in pointing.values() if r["n"]]
    randomisation: dict[str, dict[str, float]] = {}
    for method in [m for m in METHODS if scored and f"spearman/{m}" in scored[0]]:
        means = [r[f"spearman/{method}"]["mean"] for r in scored]
        ses = [r[f"spearman/{method}"]["se"] for r in scored]
        # the mean of the findings' means; its standard error from theirs
        randomisation[f"cxr/{method}"] = {
            "mean": float(np.mean(means)) if means else float("nan"),
            "se": float(np.sqrt(np.nansum(np.square(ses))) / len(ses)) if ses else float("nan"),
        }
    for method in TOKEN_METHODS:
        ecg_means = [e[f"spearman/{method}"] for e in ecg.values() if e["n"]]
        randomisation[f"ecg/{method}"] = {"mean": float(np.mean(ecg_means)) if ecg_means else float("nan")}
    results = {
        "settings": {"splits": list(splits), "tolerance": tolerance, "query": query, "shifts": shifts,
                     "occlusion": occ_settings,
                     "data": str(root), "prior_data": str(prior_root), "run": str(run_dir)},
        "pointing": pointing,
        "ecg": ecg,
        "randomisation": randomisation,
        "skipped": skipped,
    }
    if out is not None:
        out_p = Path(out)
        out_p.mkdir(parents=True, exist_ok=True)
        (out_p / "checks.json").write_text(json.dumps(results, indent=2))
        (out_p / "checks.md").write_text(to_markdown(results))
        plot_pointing(results, out_p / "pointing.png")
    return results


def _cell(r: dict[str, Any], key: str) -> str:
    if key not in r:
        return "-"
    return f"{r[key]['rate']:.2f}" if isinstance(r[key], dict) else f"{r[key]:.2f}"


def _ci(r: dict[str, Any], key: str) -> str:
    if key not in r:
        return "-"
    lo, hi = r[key]["ci"]
    return f"{r[key]['rate']:.2f} [{lo:.2f}, {hi:.2f}]"


def _methods(results: dict[str, Any]) -> list[str]:
    """The X-ray methods that were scored, in `METHODS` order."""
    keys = {k for r in results["pointing"].values() for k in r}
    return [m for m in METHODS if f"trained/{m}/strict" in keys]


def to_markdown(results: dict[str, Any]) -> str:
    """The checks as Markdown tables (what `medtriad explain-check` prints and writes)."""
    s, tol = results["settings"], results["settings"]["tolerance"]
    title = (
        f"Pointing game ({', '.join(s['splits'])} split(s), {s['query']} query, shifts {s['shifts']}): "
        f"hit rate of the map's maximum, strict [95% Wilson interval] / within {tol} px"
    )
    methods = _methods(results)
    head = ["finding", "n", *methods, "random", "centre", "prior", *(f"re-init {m[:3]}." for m in methods)]
    lines = [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f, r in results["pointing"].items():
        def both(key: str, r: dict[str, Any] = r) -> str:
            return f"{_cell(r, key + '/strict')} / {_cell(r, key + '/tolerant')}"

        cells = [f, str(r["n"])]
        cells += [f"{_ci(r, f'trained/{m}/strict')} / {_cell(r, f'trained/{m}/tolerant')}" for m in methods]
        cells += [both("random"), both("centre"), both("prior"), *(both(f"reinit/{m}") for m in methods)]
        lines.append("| " + " | ".join(cells) + " |")
    occ = s.get("occlusion")
    if occ and "occlusion" in methods:
        lines += ["", f"Occlusion: window {occ['window']} px, stride {occ['stride']} px (model input), fill {occ['fill']}."]
    lines += [
        "",
        "ECG: share of each map on the T-end-to-QRS-onset (TP; f waves in AF) and QRS windows",
        "",
        "| records | n | window | time share | similarity | relevance | re-init sim. | re-init rel. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results["ecg"].items():
        if not r["n"]:
            continue
        for kind in ("tp", "qrs"):
            lines.append(
                f"| {label} | {r['n']} | {kind.upper()} | {r[f'time_share/{kind}']:.3f} | "
                + " | ".join(f"{r[f'{t}/{m}/{kind}']:.3f}" for t in ("trained", "reinit") for m in TOKEN_METHODS)
                + " |"
            )
    lines += ["", "Randomisation check: mean Spearman correlation of trained and re-initialised maps", ""]
    for k, v in results["randomisation"].items():
        ci = f" [{v['mean'] - 1.96 * v['se']:+.3f}, {v['mean'] + 1.96 * v['se']:+.3f}]" if "se" in v else ""
        lines.append(f"- {k}: {v['mean']:+.3f}{ci}")
    skipped = results.get("skipped", {})
    if skipped:
        lines += ["", f"Skipped {len(skipped)} studies whose files could not be read:", ""]
        lines += [f"- {study}: {problem}" for study, problem in list(skipped.items())[:20]]
        if len(skipped) > 20:
            lines.append(f"- ... and {len(skipped) - 20} more (checks.json lists them all)")
    return "\n".join(lines) + "\n"


def plot_pointing(results: dict[str, Any], path: str | Path) -> Path:
    """Strict hit rates per finding and method with their 95% intervals, beside the random point
    and the location prior."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f, r) for f, r in results["pointing"].items() if r["n"]]
    methods = _methods(results)
    colours = {"similarity": "tab:blue", "relevance": "tab:orange", "occlusion": "tab:purple"}
    fig, ax = plt.subplots(figsize=(7.5, 1.6 + 0.3 * (len(methods) + 0.5) * max(len(rows), 1)))
    y = np.arange(len(rows))
    bar = 0.8 / max(len(methods), 1)
    for k, method in enumerate(methods):
        rates = np.array([r[f"trained/{method}/strict"]["rate"] for _, r in rows])
        cis = np.array([r[f"trained/{method}/strict"]["ci"] for _, r in rows]).reshape(-1, 2)
        yy = y + (k - (len(methods) - 1) / 2) * bar
        ax.barh(yy, rates, height=bar * 0.93, color=colours.get(method, f"C{k}"), label=f"{method} (trained)")
        ax.errorbar(rates, yy, xerr=np.clip([rates - cis[:, 0], cis[:, 1] - rates], 0, None), fmt="none", ecolor="black", capsize=2, lw=0.8)
    ax.scatter([r["random/strict"] for _, r in rows], y, marker="|", s=250, color="black", label="random point", zorder=3)
    ax.scatter([r["prior/strict"] for _, r in rows], y, marker="D", s=25, color="tab:green", label="location prior", zorder=3)
    ax.set_yticks(y, [f"{f} (n={r['n']})" for f, r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("share of positive images whose map maximum lies in the finding's region")
    s = results["settings"]
    ax.set_title(f"Pointing game ({', '.join(s['splits'])}; {s['query']} query; 95% intervals)", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
