"""`medtriad evaluate`: every evaluation of a trained model on a held-out split, one call.

``evaluate_run(run_dir, data)`` embeds the split once, runs the tasks asked for, and writes
``results.json`` and a self-contained ``report.html`` into `out` (default ``RUN_DIR/evaluation``).
Every metric carries a 95% interval from resampling *patients* (``subject_id``) with
replacement; F1/accuracy thresholds and probe regularisation are chosen on the validation
split, never on the evaluated one.

results.json (keys are stable; a metric is ``[low, point, high]``, null where undefined)::

    {
      "format": 1, "run": str, "model": str, "data": str, "split": str, "created": ISO time,
      "n_rows": int, "n_patients": int, "modalities": [..], "loss": str,
      "bootstrap": int, "seed": int, "tasks": [..], "timing_s": {task: seconds},
      "notes": [str, ...],                                   # e.g. why a task was skipped
      "zeroshot": {labelset: {modality: {
          "scoring": "pos_neg" | "softmax", "threshold_source": "val" | "default_0.5",
          "n": rows, "n_patients": int, "missing_columns": [..],
          "per_class": {class: {"auroc", "auprc", "f1", "accuracy": [lo, p, hi],
                                "n": int, "n_pos": int, "threshold": float}},
          "macro": {"auroc", "auprc", "f1", "accuracy": [lo, p, hi], "n_classes": int}}}},
      "retrieval": {
          "geometry": "cosine" | "mip" | "volume",         # from the run's loss
          "pairwise": {"a->b": {"R@1", "R@5", "R@10", "mean_rank": [lo, p, hi],
                                "median_rank": float, "n": int, "chance_R@5": float}},
          "tuple": {"(a,b)->c": {same keys, "n_candidates": int}}},
      "probe": {labelset: {modality: {"linear" | "finetune": {fraction: {
          "n_train": int, "C": [..] (linear), "per_class": {...}, "macro": {...}}}}}},
      "robustness": {modality: {
          "severities": [1..5], "levels": {corruption: [parameter at each severity]},
          "clean": {metric: [lo, p, hi]},
          "corrupted": {corruption: {metric: [[lo, p, hi] per severity]}}}},
          # metric names: "zeroshot/<labelset>/macro_auroc", "R@5/<a->b>"
      "missing_modality": {
          "zeroshot": {labelset: {"fused": [..], "n": int,
                                   "all": [lo, p, hi], "without <m>": [lo, p, hi]}},
          "retrieval": {"(a,b)->c": {"all": {R@K..}, "without <a>": {...}}}},
      "embedding_map": {"method": "pca" | "tsne", "label": str, "explained_variance": {m: [..]}}
    }
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import html
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from medtriad.data.dataset import open_dataset
from medtriad.data.manifest import LABEL_PREFIX
from medtriad.errors import DataError
from medtriad.evaluate import report as rp
from medtriad.evaluate.heldout import embed_dataset
from medtriad.evaluate.labelsets import BUILTIN, LabelSet, builtin_label_set, resolve_label_set
from medtriad.evaluate.metrics import (
    best_f1_threshold,
    bootstrap_classification,
    bootstrap_weights,
    interval,
)
from medtriad.evaluate.probe import FRACTIONS, finetune, fraction_rows, linear_probe
from medtriad.evaluate.retrieval import (
    geometry_for_loss,
    recall_curve,
    retrieval_ranks,
    tuple_ranks,
)
from medtriad.evaluate.robustness import (
    CORRUPTIONS,
    SEVERITIES,
    corrupted_embeddings,
    corruption_levels,
)
from medtriad.evaluate.zeroshot import (
    ClassEmbeddings,
    class_embeddings,
    fused_probs,
    label_matrix,
    zeroshot_scores,
)

log = logging.getLogger(__name__)

__all__ = ["TASKS", "evaluate_run", "resolve_model_dir"]

TASKS: tuple[str, ...] = (
    "zeroshot",
    "retrieval",
    "probe",
    "robustness",
    "missing",
    "embedding_map",
)
"""Everything `evaluate_run` can do; ``probe`` includes fine-tuning when ``finetune_epochs`` > 0."""

RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
_KS = (1, 5, 10)
_IMAGE_MODALITIES = ("cxr", "ecg")


# --------------------------------------------------------------------------- helpers


def resolve_model_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The saved model of a run: ``RUN_DIR/model`` or RUN_DIR itself when it holds the weights."""
    p = Path(run_dir)
    for cand in (p / "model", p):
        if (cand / "model.safetensors").is_file() and (cand / "config.yaml").is_file():
            return cand
    raise DataError(
        p, "no trained model here (expected model/model.safetensors and model/config.yaml)"
    )


class _Split:
    """One split's dataset, embeddings, presence masks, labels and patient ids."""

    def __init__(
        self,
        model: Any,
        data: str | os.PathLike[str],
        split: str,
        batch_size: int,
        modalities: Sequence[str] | None = None,
    ) -> None:
        self.name = split
        self.dataset = open_dataset(data, model.config.data, split=split)
        if modalities is not None:  # read and encode only these (e.g. no text for a probe)
            self.dataset.modalities = [m for m in self.dataset.modalities if m in modalities]
        self.n = len(self.dataset)
        df = self.dataset.df
        self.label_names: list[str] = list(self.dataset.label_names)
        cols = [f"{LABEL_PREFIX}{n}" for n in self.label_names]
        self.labels = (
            df[cols].to_numpy(dtype=np.float64, na_value=np.nan) if cols else np.zeros((self.n, 0))
        )
        self.subjects = df["subject_id"].astype(str).to_numpy()
        if self.n:
            self.emb, self.present = embed_dataset(model, self.dataset, batch_size)
            self.present = {m: p.bool() for m, p in self.present.items()}
        else:
            self.emb, self.present = {}, {}


def _check_shards(dataset: Any, model: Any, path: Any) -> None:
    """Shards must hold inputs at the model's sizes (they are not re-processed here)."""
    settings = getattr(dataset, "settings", None)
    if not settings:
        return
    d = model.config.data
    want = {"cxr.size": d.cxr.size, "ecg.fs": d.ecg.fs, "ecg.seconds": d.ecg.seconds}
    have = {
        "cxr.size": settings.get("cxr", {}).get("size"),
        "ecg.fs": settings.get("ecg", {}).get("fs"),
        "ecg.seconds": settings.get("ecg", {}).get("seconds"),
    }
    bad = [
        f"{k} {have[k]} (model expects {v})"
        for k, v in want.items()
        if have[k] is not None and have[k] != v
    ]
    if bad:
        raise DataError(path, "shards were prepared with other settings: " + ", ".join(bad))


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _auto_label_sets(model: Any, test: _Split) -> list[LabelSet]:
    """Built-in sets for a modality of the model whose label columns the data holds: those with
    every column present (and one column with both label values) or, failing that, those with
    the most columns present."""
    scored = []
    for name in BUILTIN:
        ls = builtin_label_set(name)
        if not set(ls.modalities) & set(model.modalities):
            continue
        y = label_matrix(test.labels, test.label_names, ls.columns)
        if not any(len(np.unique(y[np.isfinite(y[:, c]), c])) == 2 for c in range(y.shape[1])):
            continue
        scored.append((sum(c in test.label_names for c in ls.columns) / len(ls.columns), ls))
    full = [ls for frac, ls in scored if frac == 1.0]
    if full or not scored:
        return full
    best = max(frac for frac, _ in scored)
    return [ls for frac, ls in scored if frac == best]


def _as_list(spec: Any) -> list[Any]:
    """One label-set spec or a sequence of them, as a list."""
    if isinstance(spec, (str, os.PathLike, LabelSet)):
        return [spec]
    return list(spec)


def _pairs(modalities: Sequence[str]) -> list[tuple[str, str]]:
    return [(a, b) for a in modalities for b in modalities if a != b]


def _recall_ci(ranks: Tensor, groups: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """R@K and mean rank with patient-bootstrap intervals, median rank as a point value."""
    r = ranks.double().numpy()
    w = bootstrap_weights(groups, n_boot, seed) if n_boot else np.zeros((0, len(r)))
    tot = w.sum(1)
    out: dict[str, Any] = {}
    for k in _KS:
        hit = (r < k).astype(np.float64)
        reps = (w @ hit) / np.where(tot > 0, tot, 1.0)
        out[f"R@{k}"] = interval(reps, float(hit.mean()) if len(r) else float("nan"))
    reps = (w @ (r + 1)) / np.where(tot > 0, tot, 1.0)
    out["mean_rank"] = interval(reps, float((r + 1).mean()) if len(r) else float("nan"))
    out["median_rank"] = float(np.median(r + 1)) if len(r) else None
    out["n"] = len(r)
    return out


class _Timer:
    """Wall-clock seconds per task (``with timer("name"): ...``)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = round(self.times.get(name, 0.0) + time.perf_counter() - start, 3)


# --------------------------------------------------------------------------- tasks


class _ZeroShotTask:
    """Label sets x modalities; keeps per-task arrays for the figures and later tasks."""

    def __init__(self, model: Any, label_sets: Sequence[LabelSet]) -> None:
        self.model = model
        self.scale = float(model.logit_scale.detach())
        self.sets = list(label_sets)
        self.class_emb: dict[str, ClassEmbeddings] = {}
        self.entries: list[dict[str, Any]] = []  # per (set, modality): arrays for figures

    def classes_for(self, ls: LabelSet) -> ClassEmbeddings:
        if ls.name not in self.class_emb:
            self.class_emb[ls.name] = class_embeddings(self.model, ls)
        return self.class_emb[ls.name]

    def targets(self) -> list[tuple[LabelSet, str]]:
        return [(ls, m) for ls in self.sets for m in ls.modalities if m in self.model.modalities]

    def macro_auroc(
        self,
        ls: LabelSet,
        modality: str,
        test: _Split,
        emb: Mapping[str, Tensor],
        keep: list[int],
        thresholds: list[float],
        n_boot: int,
        seed: int,
    ) -> list[Any]:
        z = zeroshot_scores(
            emb,
            test.present,
            test.labels,
            test.label_names,
            ls,
            modality,
            self.classes_for(ls),
            self.scale,
        )
        names = [ls.class_names[i] for i in keep]
        res = bootstrap_classification(
            z.y[:, keep],
            z.scores[:, keep],
            test.subjects[z.rows],
            names,
            thresholds,
            n_boot,
            seed,
            metrics=("auroc",),
        )
        return res["macro"]["auroc"]

    def run(
        self, test: _Split, val: _Split | None, n_boot: int, seed: int, notes: list[str]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for ls, m in self.targets():
            have = [i for i, c in enumerate(ls.columns) if c in test.label_names]
            missing = [c for c in ls.columns if c not in test.label_names]
            if not have:
                notes.append(f"zero-shot {ls.name}/{m}: no label column of this set in the data")
                continue
            z = zeroshot_scores(
                test.emb,
                test.present,
                test.labels,
                test.label_names,
                ls,
                m,
                self.classes_for(ls),
                self.scale,
            )
            if len(z.rows) == 0:
                notes.append(f"zero-shot {ls.name}/{m}: no row with {m} and a known label")
                continue
            names = [ls.class_names[i] for i in have]
            thresholds, source = [0.5] * len(have), "default_0.5"
            if val is not None and val.n and m in val.present:
                zv = zeroshot_scores(
                    val.emb,
                    val.present,
                    val.labels,
                    val.label_names,
                    ls,
                    m,
                    self.classes_for(ls),
                    self.scale,
                )
                if len(zv.rows):
                    thresholds = [best_f1_threshold(zv.y[:, i], zv.scores[:, i]) for i in have]
                    source = "val"
            res = bootstrap_classification(
                z.y[:, have],
                z.scores[:, have],
                test.subjects[z.rows],
                names,
                thresholds,
                n_boot,
                seed,
            )
            res.update(
                scoring=ls.scoring,
                threshold_source=source,
                n=len(z.rows),
                n_patients=len(np.unique(test.subjects[z.rows])),
                missing_columns=missing,
            )
            out.setdefault(ls.name, {})[m] = res
            self.entries.append(
                {
                    "set": ls,
                    "modality": m,
                    "keep": have,
                    "names": names,
                    "y": z.y[:, have],
                    "scores": z.scores[:, have],
                    "thresholds": thresholds,
                    "macro": res["macro"],
                }
            )
        return out


def _retrieval(
    model: Any, test: _Split, n_boot: int, seed: int, n_distractors: int
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    geometry = geometry_for_loss(model.config.loss.name)
    mods = [m for m in model.modalities if m in test.emb]
    pairwise: dict[str, Any] = {}
    curves: dict[str, list[float]] = {}
    for a, b in _pairs(mods):
        rows = test.present[a] & test.present[b]
        if int(rows.sum()) < 2:
            continue
        ranks = retrieval_ranks(test.emb[a][rows], test.emb[b][rows])
        res = _recall_ci(ranks, test.subjects[rows.numpy()], n_boot, seed)
        res["chance_R@5"] = min(1.0, 5.0 / res["n"])
        pairwise[f"{a}->{b}"] = res
        curves[f"{a}->{b}"] = recall_curve(ranks, min(len(ranks), 100))
    tuples: dict[str, Any] = {}
    if len(mods) >= 3:
        for target in mods:
            query = [m for m in mods if m != target]
            ranks, keep, n_cand = tuple_ranks(
                test.emb, test.present, query, target, n_distractors, geometry, seed
            )
            if n_cand == 0:
                continue
            res = _recall_ci(ranks, test.subjects[keep.numpy()], n_boot, seed)
            res["n_candidates"] = n_cand
            tuples[f"({','.join(query)})->{target}"] = res
    return {"geometry": geometry, "pairwise": pairwise, "tuple": tuples}, curves


def _labelled_rows(
    s: _Split, modality: str, columns: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `s` holding `modality` and at least one known label of `columns`, and those labels."""
    y = label_matrix(s.labels, s.label_names, columns)
    keep = s.present[modality].numpy() & np.isfinite(y).any(axis=1)
    return np.flatnonzero(keep), y[keep]


def _probe(
    model: Any,
    zs: _ZeroShotTask,
    test: _Split,
    val: _Split,
    train: _Split,
    fractions: Sequence[float],
    finetune_epochs: int,
    finetune_min_steps: int,
    n_boot: int,
    seed: int,
    batch_size: int,
) -> tuple[dict[str, Any], dict[str, dict[str, dict[str, float | None]]]]:
    out: dict[str, Any] = {}
    curves: dict[str, dict[str, float | None]] = {}
    for ls, m in zs.targets():
        if m not in _IMAGE_MODALITIES:
            continue
        have = [c for c in ls.columns if c in test.label_names]
        if not have:
            continue
        names = [ls.class_names[ls.columns.index(c)] for c in have]
        tr_rows, tr_y = _labelled_rows(train, m, have)
        va_rows, va_y = _labelled_rows(val, m, have)
        te_rows, te_y = _labelled_rows(test, m, have)
        if len(tr_rows) < 2 or len(te_rows) < 2:
            continue
        entry: dict[str, Any] = {"linear": {}}
        methods = ["linear"] + (["finetune"] if finetune_epochs > 0 else [])
        if finetune_epochs > 0:
            entry["finetune"] = {}
        for f in fractions:
            sub = fraction_rows(train.subjects[tr_rows], tr_y, f, seed)
            for method in methods:
                if method == "linear":
                    pr = linear_probe(
                        train.emb[m][tr_rows[sub]].numpy(),
                        tr_y[sub],
                        val.emb[m][va_rows].numpy(),
                        va_y,
                        test.emb[m][te_rows].numpy(),
                        seed=seed,
                    )
                else:
                    pr = finetune(
                        model,
                        m,
                        (train.dataset, tr_rows[sub], tr_y[sub]),
                        (val.dataset, va_rows),
                        (test.dataset, te_rows),
                        epochs=finetune_epochs,
                        seed=seed,
                        batch_size=min(32, batch_size),
                        min_steps=finetune_min_steps,
                    )
                thr = (
                    [best_f1_threshold(va_y[:, c], pr.val_scores[:, c]) for c in range(len(have))]
                    if len(va_rows)
                    else None
                )
                res = bootstrap_classification(
                    te_y, pr.test_scores, test.subjects[te_rows], names, thr, n_boot, seed
                )
                res["n_train"] = pr.n_train
                if method == "linear":
                    res["C"] = pr.chosen
                entry[method][f"{f:g}"] = res
                curves.setdefault(f"{ls.name}/{m}/{method}", {})[f"{f:g}"] = res["macro"]["auroc"][
                    1
                ]
        out.setdefault(ls.name, {})[m] = entry
    return out, curves


def _robustness_metrics(
    emb: Mapping[str, Tensor],
    m: str,
    test: _Split,
    zs: _ZeroShotTask | None,
    keeps: Mapping[tuple[str, str], list[int]],
    thresholds: Mapping[tuple[str, str], list[float]],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Zero-shot macro AUROC of every label set on `m`, and R@5 of every pair involving `m`."""
    res: dict[str, Any] = {}
    for ls, mm in zs.targets() if zs else []:
        key = (ls.name, m)
        if mm == m and key in keeps:
            res[f"zeroshot/{ls.name}/macro_auroc"] = zs.macro_auroc(
                ls, m, test, emb, keeps[key], thresholds[key], n_boot, seed
            )  # type: ignore[union-attr]
    for o in (o for o in test.emb if o != m):
        for a, b in ((m, o), (o, m)):
            both = test.present[a] & test.present[b]
            if int(both.sum()) >= 2:
                ranks = retrieval_ranks(emb[a][both], emb[b][both])
                res[f"R@5/{a}->{b}"] = _recall_ci(ranks, test.subjects[both.numpy()], n_boot, seed)[
                    "R@5"
                ]
    return res


def _robustness(
    model: Any,
    zs: _ZeroShotTask | None,
    test: _Split,
    corruptions: Mapping[str, Sequence[str]] | None,
    severities: Sequence[int],
    n_boot: int,
    seed: int,
    batch_size: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    thresholds = {
        (e["set"].name, e["modality"]): e["thresholds"] for e in (zs.entries if zs else [])
    }
    keeps = {(e["set"].name, e["modality"]): e["keep"] for e in (zs.entries if zs else [])}
    for m in _IMAGE_MODALITIES:
        if m not in test.emb or not bool(test.present[m].any()):
            continue
        names = list(CORRUPTIONS[m]) if corruptions is None else list(corruptions.get(m, []))
        if not names:
            continue
        rows = np.flatnonzero(test.present[m].numpy())

        def metrics(emb: Mapping[str, Tensor], m: str = m) -> dict[str, Any]:
            return _robustness_metrics(emb, m, test, zs, keeps, thresholds, n_boot, seed)

        clean = metrics(test.emb)
        corrupted: dict[str, dict[str, list[Any]]] = {}
        for name in names:
            per: dict[str, list[Any]] = {}
            for sev in severities:
                e = corrupted_embeddings(model, test.dataset, m, name, sev, seed, batch_size, rows)
                emb = dict(test.emb)
                emb[m] = test.emb[m].clone()
                emb[m][torch.from_numpy(rows)] = e
                for k, v in metrics(emb).items():
                    per.setdefault(k, []).append(v)
            corrupted[name] = per
        out[m] = {
            "severities": list(severities),
            "levels": {n: corruption_levels(m, n) for n in names},
            "clean": clean,
            "corrupted": corrupted,
        }
    return out


def _missing(
    model: Any,
    zs: _ZeroShotTask | None,
    test: _Split,
    n_boot: int,
    seed: int,
    n_distractors: int,
    notes: list[str],
) -> dict[str, Any]:
    out: dict[str, Any] = {"zeroshot": {}, "retrieval": {}}
    fused = [m for m in _IMAGE_MODALITIES if m in test.emb]
    if zs is not None and len(fused) >= 2:
        for ls in zs.sets:
            have = [i for i, c in enumerate(ls.columns) if c in test.label_names]
            if not have:
                continue
            y_all = label_matrix(test.labels, test.label_names, ls.columns)
            keep = np.isfinite(y_all).any(axis=1)
            for m in fused:
                keep &= test.present[m].numpy()
            rows = np.flatnonzero(keep)
            if len(rows) < 2:
                continue
            ce = zs.classes_for(ls)
            sub = {m: test.emb[m][torch.from_numpy(rows)] for m in fused}
            names = [ls.class_names[i] for i in have]
            entry: dict[str, Any] = {"fused": fused, "n": len(rows)}
            for label, mods in [("all", fused)] + [
                (f"without {m}", [o for o in fused if o != m]) for m in fused
            ]:
                p = fused_probs(sub, mods, ce, zs.scale, ls.scoring).double().numpy()
                res = bootstrap_classification(
                    y_all[rows][:, have],
                    p[:, have],
                    test.subjects[rows],
                    names,
                    None,
                    n_boot,
                    seed,
                    metrics=("auroc",),
                )
                entry[label] = res["macro"]["auroc"]
            out["zeroshot"][ls.name] = entry
    elif zs is not None:
        notes.append(
            "missing-modality zero-shot needs two non-text modalities (late fusion of cxr and ecg)"
        )
    geometry = geometry_for_loss(model.config.loss.name)
    mods = [m for m in model.modalities if m in test.emb]
    if len(mods) >= 3:
        for target in mods:
            query = [m for m in mods if m != target]
            _, keep, n_cand = tuple_ranks(
                test.emb, test.present, query, target, n_distractors, geometry, seed
            )
            if n_cand == 0:
                continue
            entry = {}
            for label, q in [("all", query)] + [
                (f"without {m}", [o for o in query if o != m]) for m in query
            ]:
                ranks, k2, _ = tuple_ranks(
                    test.emb,
                    test.present,
                    q,
                    target,
                    n_distractors,
                    geometry if len(q) > 1 else "cosine",
                    seed,
                    rows=keep,
                )
                entry[label] = _recall_ci(ranks, test.subjects[k2.numpy()], n_boot, seed)
            out["retrieval"][f"({','.join(query)})->{target}"] = entry
    else:
        notes.append("missing-modality retrieval needs three modalities")
    return out


def _embedding_map(
    test: _Split,
    zs: _ZeroShotTask | None,
    label: str | None,
    method: str,
    seed: int,
    max_points: int = 2000,
) -> tuple[dict[str, Any], bytes | None]:
    from sklearn.decomposition import PCA

    mods = [m for m in test.emb if bool(test.present[m].any())]
    if label is None:
        label = next((e["set"].columns[e["keep"][0]] for e in (zs.entries if zs else [])), None)
        if label is None and test.label_names:
            label = test.label_names[0]
    col = test.label_names.index(label) if label in test.label_names else None
    points, colours, var = {}, {}, {}
    rng = np.random.default_rng(seed)
    for m in mods:
        rows = np.flatnonzero(test.present[m].numpy())
        if len(rows) > max_points:
            rows = np.sort(rng.choice(rows, max_points, replace=False))
        x = test.emb[m][torch.from_numpy(rows)].numpy()
        if len(rows) < 3:
            continue
        if method == "tsne":
            from sklearn.manifold import TSNE

            points[m] = TSNE(
                n_components=2, random_state=seed, perplexity=min(30.0, len(rows) - 1.0), init="pca"
            ).fit_transform(x)
        else:
            pca = PCA(n_components=2, random_state=seed).fit(x)
            points[m] = pca.transform(x)
            var[m] = [float(v) for v in pca.explained_variance_ratio_]
        c = test.labels[rows, col] if col is not None else np.full(len(rows), np.nan)
        colours[m] = np.where(c < 0, np.nan, c)
    if not points:
        return {"method": method, "label": label}, None
    info = {"method": method, "label": label, "explained_variance": var}
    return info, rp.embedding_map_figure(points, colours, label or "label", method)


# --------------------------------------------------------------------------- report


def _report_sections(
    results: dict[str, Any], figures: dict[str, tuple[bytes, str]]
) -> list[tuple[str, str]]:
    def figs(prefix: str) -> str:
        return "".join(
            rp.image(png, cap, name)
            for name, (png, cap) in figures.items()
            if name.startswith(prefix)
        )

    sections = []
    summary = rp.table(
        ["item", "value"],
        [
            ["model", results["model"]],
            ["data", results["data"]],
            ["split", results["split"]],
            ["rows", results["n_rows"]],
            ["patients", results["n_patients"]],
            ["modalities", ", ".join(results["modalities"])],
            ["loss", results["loss"]],
            ["bootstrap replicates (patients)", results["bootstrap"]],
            ["seed", results["seed"]],
        ],
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in results["notes"])
    sections.append(("Summary", summary + (f"<ul class='note'>{notes}</ul>" if notes else "")))
    metrics = ("auroc", "auprc", "f1", "accuracy")
    if results.get("zeroshot"):
        body = ""
        for ls, per_mod in results["zeroshot"].items():
            for m, res in per_mod.items():
                rows = [
                    [c, *[v[k] for k in metrics], v["n"], v["n_pos"]]
                    for c, v in res["per_class"].items()
                ]
                rows.append(["macro", *[res["macro"][k] for k in metrics], res["n"], ""])
                body += f"<h3>{html.escape(ls)} on {m} ({res['scoring']}, thresholds: {res['threshold_source']})</h3>"
                body += rp.table(
                    ["class", "AUROC", "AUPRC", "F1", "accuracy", "n", "positives"], rows
                )
                body += figs(f"roc/{ls}/{m}") + figs(f"confusion/{ls}/{m}")
        sections.append(("Zero-shot classification", body))
    if results.get("retrieval"):
        r = results["retrieval"]
        keys = ["R@1", "R@5", "R@10", "mean_rank"]
        rows = [
            [k, *[v[x] for x in keys], v["median_rank"], v["n"], v["chance_R@5"]]
            for k, v in r["pairwise"].items()
        ]
        body = rp.table(
            ["query->gallery", "R@1", "R@5", "R@10", "mean rank", "median rank", "n", "chance R@5"],
            rows,
        )
        if r["tuple"]:
            rows = [
                [k, *[v[x] for x in keys], v["median_rank"], v["n"], v["n_candidates"]]
                for k, v in r["tuple"].items()
            ]
            body += f"<h3>Tuple -> modality (1 true + distractors, {r['geometry']} scoring)</h3>"
            body += rp.table(
                [
                    "query->target",
                    "R@1",
                    "R@5",
                    "R@10",
                    "mean rank",
                    "median rank",
                    "n",
                    "candidates",
                ],
                rows,
            )
        sections.append(("Retrieval", body + figs("retrieval")))
    if results.get("probe"):
        body = ""
        for ls, per_mod in results["probe"].items():
            for m, res in per_mod.items():
                rows = []
                for method, per_f in res.items():
                    for f, v in per_f.items():
                        rows.append([method, f, v["n_train"], *[v["macro"][k] for k in metrics]])
                body += f"<h3>{html.escape(ls)} on {m}</h3>" + rp.table(
                    ["method", "fraction", "train rows", "macro AUROC", "AUPRC", "F1", "accuracy"],
                    rows,
                )
        sections.append(("Linear probe and fine-tuning", body + figs("probe")))
    if results.get("robustness"):
        body = ""
        for m, res in results["robustness"].items():
            for metric, clean in res["clean"].items():
                rows = [
                    [name, clean, *per.get(metric, [])] for name, per in res["corrupted"].items()
                ]
                body += f"<h3>{m}: {html.escape(metric)}</h3>"
                body += rp.table(
                    ["corruption", "clean", *[f"severity {s}" for s in res["severities"]]], rows
                )
            lv = [[n, *v] for n, v in res["levels"].items()]
            body += "<p class='note'>Corruption parameters per severity:</p>" + rp.table(
                ["corruption", *[str(s) for s in res["severities"]]], lv
            )
        sections.append(("Robustness", body + figs("robustness")))
    mm = results.get("missing_modality")
    if mm and (mm["zeroshot"] or mm["retrieval"]):
        body = ""
        if mm["zeroshot"]:
            rows = [
                [ls, *[v for k, v in e.items() if k not in ("fused", "n")], e["n"]]
                for ls, e in mm["zeroshot"].items()
            ]
            heads = [k for k in next(iter(mm["zeroshot"].values())) if k not in ("fused", "n")]
            body += "<h3>Zero-shot macro AUROC, late fusion of the non-text modalities</h3>"
            body += rp.table(["label set", *heads, "n"], rows)
        for task, e in mm["retrieval"].items():
            rows = [[k, v["R@1"], v["R@5"], v["R@10"], v["n"]] for k, v in e.items()]
            body += f"<h3>{html.escape(task)}</h3>" + rp.table(
                ["query", "R@1", "R@5", "R@10", "n"], rows
            )
        sections.append(("Missing modalities", body))
    if "embedding_map" in figures or any(n.startswith("embedding") for n in figures):
        sections.append(("Embedding map", figs("embedding")))
    return sections


# --------------------------------------------------------------------------- entry point


def evaluate_run(
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    split: str = "test",
    tasks: Sequence[str] = TASKS,
    label_set: str
    | os.PathLike[str]
    | LabelSet
    | Sequence[str | os.PathLike[str] | LabelSet]
    | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    fractions: Sequence[float] = FRACTIONS,
    finetune_epochs: int = 0,
    finetune_min_steps: int = 50,
    n_distractors: int = 9,
    corruptions: Mapping[str, Sequence[str]] | None = None,
    severities: Sequence[int] = SEVERITIES,
    embedding_label: str | None = None,
    embedding_method: str = "pca",
    val_split: str = "val",
    train_split: str = "train",
    batch_size: int = 128,
) -> dict[str, Any]:
    """Evaluate a run on `split` of `data` (manifest or shard folder); write results and report.

    `label_set`: a built-in name or YAML path, or a list of them (default: every built-in set whose label columns
    the data holds). `corruptions`: ``{"cxr": [...], "ecg": [...]}`` (default: all).
    `finetune_epochs` > 0 adds encoder fine-tuning to the probes (slow on CPU), for that many
    epochs and at least `finetune_min_steps` optimiser steps per label fraction. Returns the
    results dictionary written to ``results.json`` (layout in the module doc).
    """
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; known: {list(TASKS)}")
    if embedding_method not in ("pca", "tsne"):
        raise ValueError(f"embedding_method must be 'pca' or 'tsne', got {embedding_method!r}")
    from medtriad.models import MultiModalModel

    timer = _Timer()
    model_dir = resolve_model_dir(run_dir)
    out_dir = Path(out) if out is not None else Path(run_dir) / "evaluation"
    notes: list[str] = []
    with timer("load_and_embed"):
        model = MultiModalModel.from_pretrained(model_dir)
        model.eval()
        test = _Split(model, data, split, batch_size)
        if test.n == 0:
            raise DataError(data, f"no rows in split {split!r}")
        _check_shards(test.dataset, model, data)
        sets = (
            _auto_label_sets(model, test)
            if label_set is None
            else [resolve_label_set(s) for s in _as_list(label_set)]
        )
        label_sets_use_report = any("report" in ls.modalities for ls in sets)
        need_val = bool({"zeroshot", "probe"} & set(tasks))
        # thresholds and probes need the classified modalities only, not the (costly) text
        side = [m for m in model.modalities if m != "report"] + (
            ["report"] if label_sets_use_report else []
        )
        val = (
            _Split(model, data, val_split, batch_size, side)
            if need_val and val_split != split
            else None
        )
        if val is not None and val.n == 0:
            notes.append(f"no '{val_split}' rows: zero-shot thresholds default to 0.5")
            val = None
    results: dict[str, Any] = {
        "format": 1,
        "run": str(run_dir),
        "model": str(model_dir),
        "data": str(data),
        "split": split,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "n_rows": test.n,
        "n_patients": len(np.unique(test.subjects)),
        "modalities": list(model.modalities),
        "loss": model.config.loss.name,
        "bootstrap": int(bootstrap),
        "seed": int(seed),
        "tasks": list(tasks),
        "notes": notes,
    }
    figures: dict[str, tuple[bytes, str]] = {}
    zs: _ZeroShotTask | None = (
        _ZeroShotTask(model, sets) if "report" in model.modalities and sets else None
    )
    if zs is None and {"zeroshot", "probe", "robustness", "missing"} & set(tasks):
        notes.append("no label set applies (or the model has no report encoder): zero-shot skipped")

    if "zeroshot" in tasks and zs is not None:
        with timer("zeroshot"):
            results["zeroshot"] = zs.run(test, val, bootstrap, seed, notes)
            for e in zs.entries:
                key = f"{e['set'].name}/{e['modality']}"
                figures[f"roc/{key}"] = (
                    rp.roc_figure(e["y"], e["scores"], e["names"], f"ROC: {key}"),
                    f"ROC curves, {key} (AUROC in the legend)",
                )
                figures[f"confusion/{key}"] = (
                    rp.confusion_figure(
                        e["y"],
                        e["scores"],
                        e["names"],
                        e["thresholds"],
                        f"Confusion: {key}",
                        softmax=e["set"].scoring == "softmax",
                    ),
                    f"Confusion matrices, {key}",
                )
    elif zs is not None and {"robustness", "missing"} & set(tasks):
        zs.run(test, val, 0, seed, [])  # thresholds and class columns for the later tasks
    if "retrieval" in tasks:
        with timer("retrieval"):
            results["retrieval"], curves = _retrieval(model, test, bootstrap, seed, n_distractors)
            if curves:
                figures["retrieval"] = (
                    rp.retrieval_curve_figure(curves, "Retrieval: R@K"),
                    "R@K against K for every ordered pair of modalities",
                )
    if "probe" in tasks and zs is not None:
        with timer("probe"):
            train = _Split(model, data, train_split, batch_size, side)
            if train.n == 0 or val is None:
                notes.append(f"probe skipped: needs '{train_split}' and '{val_split}' rows")
            else:
                results["probe"], pcurves = _probe(
                    model,
                    zs,
                    test,
                    val,
                    train,
                    fractions,
                    finetune_epochs,
                    finetune_min_steps,
                    bootstrap,
                    seed,
                    batch_size,
                )
                if pcurves:
                    figures["probe"] = (
                        rp.probe_figure(pcurves, "Macro AUROC by label fraction"),
                        "Linear probe (and fine-tuning) macro AUROC against the fraction of training patients",
                    )
    if "robustness" in tasks:
        with timer("robustness"):
            results["robustness"] = _robustness(
                model, zs, test, corruptions, severities, bootstrap, seed, batch_size
            )
            for m, res in results["robustness"].items():
                by_metric: dict[str, dict[str, list[float | None]]] = {}
                for name, per in res["corrupted"].items():
                    for metric, values in per.items():
                        by_metric.setdefault(metric, {})[name] = [v[1] for v in values]
                if by_metric:
                    clean = {k: v[1] for k, v in res["clean"].items()}
                    png = rp.robustness_figure(
                        by_metric,
                        clean,
                        f"Robustness of {m}: each metric against corruption severity",
                    )
                    figures[f"robustness/{m}"] = (
                        png,
                        f"{m}: zero-shot macro AUROC and R@5 against corruption severity (0 = clean)",
                    )
    if "missing" in tasks:
        with timer("missing"):
            results["missing_modality"] = _missing(
                model, zs, test, bootstrap, seed, n_distractors, notes
            )
    if "embedding_map" in tasks:
        with timer("embedding_map"):
            info, png = _embedding_map(test, zs, embedding_label, embedding_method, seed)
            results["embedding_map"] = info
            if png is not None:
                figures["embedding_map"] = (
                    png,
                    f"2-D {embedding_method.upper()} map of the embeddings, coloured by {info['label']}",
                )
    results["timing_s"] = timer.times
    results["figures"] = sorted(figures)
    results = _clean(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (RESULTS_FILE + ".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out_dir / RESULTS_FILE)
    rp.write_report(
        out_dir / REPORT_FILE,
        f"medtriad evaluation: {Path(run_dir).name} ({split})",
        _report_sections(results, figures),
    )
    log.info("wrote %s and %s", out_dir / RESULTS_FILE, out_dir / REPORT_FILE)
    return results
