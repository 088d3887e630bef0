"""Classification metrics with patient-level bootstrap confidence intervals.

Every metric takes per-row weights, so one sorted pass scores all bootstrap replicates at
once: resampling patients with replacement is the same as weighting each row by how many
times its patient was drawn. Arrays are ``(..., n)``; leading dimensions (the replicates) are
broadcast.

* AUROC is the Mann-Whitney statistic ``P(s_pos > s_neg) + P(s_pos = s_neg) / 2`` with
  weighted pairs, computed from cumulative negative weight over the sorted scores (ties grouped).
* AUPRC is average precision as scikit-learn defines it: ``sum_t (R_t - R_{t-1}) P_t`` over the
  distinct thresholds t (no interpolation).
* F1 and accuracy use a fixed threshold (``score >= threshold`` is positive), chosen on the
  validation split by `best_f1_threshold` and applied unchanged to the test split.

A metric that is undefined for a replicate (no positives or no negatives) is NaN; intervals use
the replicates where it is defined.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "METRICS",
    "accuracy",
    "auprc",
    "auroc",
    "best_f1_threshold",
    "bootstrap_classification",
    "bootstrap_weights",
    "f1",
    "interval",
    "roc_points",
]

METRICS: tuple[str, ...] = ("auroc", "auprc", "f1", "accuracy")
"""Metric names reported per class and as the macro average, in this order."""


def _prepare(
    y: np.ndarray, s: np.ndarray, w: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    if y.shape[-1] != s.shape[-1] or y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be 1-D of one length")
    w = np.ones_like(s)[None] if w is None else np.atleast_2d(np.asarray(w, dtype=np.float64))
    if w.shape[-1] != s.shape[-1]:
        raise ValueError(f"weights {w.shape} do not match {s.shape[-1]} rows")
    return y, s, w


def _tie_groups(sorted_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group id of each sorted position and the last position of each group."""
    new = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    group = np.cumsum(new) - 1
    last = np.r_[np.flatnonzero(new)[1:] - 1, len(sorted_scores) - 1]
    return group, last


def auroc(y: np.ndarray, s: np.ndarray, w: np.ndarray | None = None) -> np.ndarray | float:
    """Area under the ROC curve of scores `s` for binary labels `y` (1-D), per weight row.

    `w` (n,) or (B, n) weights rows (bootstrap counts); None means one unit-weighted replicate,
    returned as a float. NaN where a replicate has no positive or no negative weight.
    """
    scalar = w is None or np.ndim(w) == 1
    y, s, w = _prepare(y, s, w)
    order = np.argsort(s, kind="stable")
    ys, ws = y[order], w[:, order]
    group, last = _tie_groups(s[order])
    wpos, wneg = ws * (ys == 1), ws * (ys == 0)
    cneg = np.cumsum(wneg, axis=-1)
    end = cneg[:, last]  # cumulative negatives up to the end of each tie group
    start = np.concatenate([np.zeros_like(end[:, :1]), end[:, :-1]], axis=-1)  # before each group
    below, within = start[:, group], (end - start)[:, group]
    u = (wpos * (below + 0.5 * within)).sum(-1)
    denom = wpos.sum(-1) * wneg.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(denom > 0, u / np.where(denom > 0, denom, 1.0), np.nan)
    return float(out[0]) if scalar else out


def auprc(y: np.ndarray, s: np.ndarray, w: np.ndarray | None = None) -> np.ndarray | float:
    """Average precision (scikit-learn's definition) per weight row; NaN without positives."""
    scalar = w is None or np.ndim(w) == 1
    y, s, w = _prepare(y, s, w)
    order = np.argsort(-s, kind="stable")
    ys, ws = y[order], w[:, order]
    _, last = _tie_groups(-s[order])
    tp = np.cumsum(ws * (ys == 1), axis=-1)[:, last]
    fp = np.cumsum(ws * (ys == 0), axis=-1)[:, last]
    total_pos = tp[:, -1:]
    gained = np.diff(np.concatenate([np.zeros_like(tp[:, :1]), tp], axis=-1), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1.0), 0.0)
        out = (gained * precision).sum(-1) / total_pos[:, 0]
    out = np.where(total_pos[:, 0] > 0, out, np.nan)
    return float(out[0]) if scalar else out


def _confusion(
    y: np.ndarray, s: np.ndarray, threshold: float, w: np.ndarray
) -> tuple[np.ndarray, ...]:
    pred = s >= threshold
    pos, neg = y == 1, y == 0
    tp = (w * (pred & pos)).sum(-1)
    fp = (w * (pred & neg)).sum(-1)
    fn = (w * (~pred & pos)).sum(-1)
    tn = (w * (~pred & neg)).sum(-1)
    return tp, fp, fn, tn


def f1(
    y: np.ndarray, s: np.ndarray, threshold: float, w: np.ndarray | None = None
) -> np.ndarray | float:
    """F1 of the positive class at ``score >= threshold`` per weight row (NaN with no positive and
    no positive prediction)."""
    scalar = w is None or np.ndim(w) == 1
    y, s, w = _prepare(y, s, w)
    tp, fp, fn, _ = _confusion(y, s, threshold, w)
    denom = 2 * tp + fp + fn
    out = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1.0), np.nan)
    return float(out[0]) if scalar else out


def accuracy(
    y: np.ndarray, s: np.ndarray, threshold: float, w: np.ndarray | None = None
) -> np.ndarray | float:
    """Fraction of rows classified correctly at ``score >= threshold`` per weight row."""
    scalar = w is None or np.ndim(w) == 1
    y, s, w = _prepare(y, s, w)
    tp, fp, fn, tn = _confusion(y, s, threshold, w)
    total = tp + fp + fn + tn
    out = np.where(total > 0, (tp + tn) / np.where(total > 0, total, 1.0), np.nan)
    return float(out[0]) if scalar else out


def best_f1_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """The score threshold maximising F1 on (y, s) (``score >= t`` positive); 0.5 if undefined.

    Every distinct score is a candidate; among equal F1 the highest threshold wins. The
    returned value is the midpoint between the chosen score and the next lower one, so the
    rule generalises to unseen scores lying between them.
    """
    y = np.asarray(y, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    keep = np.isfinite(y) & (y >= 0)
    y, s = y[keep], s[keep]
    if not (y == 1).any():
        return 0.5
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order], s[order]
    _, last = _tie_groups(-ss)
    tp = np.cumsum(ys == 1)[last]
    fp = np.cumsum(ys == 0)[last]
    fn = tp[-1] - tp
    score = 2 * tp / (2 * tp + fp + fn)
    best = int(np.flatnonzero(score == score.max())[0])
    here = ss[last[best]]
    below = ss[last[best] + 1] if last[best] + 1 < len(ss) else here - 1e-6
    return float((here + below) / 2)


def roc_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    y = np.asarray(y, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    ys = y[order]
    _, last = _tie_groups(-s[order])
    tp = np.r_[0.0, np.cumsum(ys == 1)[last]]
    fp = np.r_[0.0, np.cumsum(ys == 0)[last]]
    return fp / max(fp[-1], 1.0), tp / max(tp[-1], 1.0)


def bootstrap_weights(
    groups: Sequence[Any] | np.ndarray, n_boot: int, seed: int | np.random.Generator
) -> np.ndarray:
    """(n_boot, n) row weights: each replicate draws the patients (`groups`) with replacement and
    weights every row by how often its patient was drawn."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_groups = int(inverse.max()) + 1 if len(inverse) else 0
    draws = rng.integers(0, max(n_groups, 1), size=(n_boot, n_groups))
    flat = (draws + np.arange(n_boot)[:, None] * n_groups).ravel()
    counts = np.bincount(flat, minlength=n_boot * n_groups).reshape(n_boot, n_groups)
    return counts[:, inverse].astype(np.float64)


def interval(replicates: np.ndarray, point: float, level: float = 0.95) -> list[float | None]:
    """``[low, point, high]``: percentile interval of the defined replicates (None if undefined)."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if not np.isfinite(point):
        return [None, None, None]
    if len(r) == 0:
        return [None, float(point), None]
    a = (1 - level) / 2
    lo, hi = np.quantile(r, [a, 1 - a])
    return [float(lo), float(point), float(hi)]


def bootstrap_classification(
    y: np.ndarray,
    scores: np.ndarray,
    groups: Sequence[Any] | np.ndarray,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | Sequence[float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    metrics: Sequence[str] = METRICS,
) -> dict[str, Any]:
    """Per-class and macro AUROC, AUPRC, F1 and accuracy with patient-bootstrap intervals.

    `y` (n, C): 1 positive, 0 negative, NaN (or -1) unknown, so a row counts only for the
    classes it is labelled for. `scores` (n, C). `groups` (n,) patient ids. `thresholds` per
    class (default 0.5). Returns ``{"per_class": {cls: {metric: [lo, point, hi], "n": rows,
    "n_pos": positives, "threshold": t}}, "macro": {metric: [lo, point, hi]}, "n_boot": B}``;
    the macro value of each replicate is the mean over the classes defined in the full sample.
    `metrics` restricts the computation to a subset of `METRICS`.
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(METRICS)}")
    y = np.asarray(y, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if y.shape != scores.shape or y.ndim != 2 or y.shape[1] != len(classes):
        raise ValueError(f"labels {y.shape} and scores {scores.shape} must be (n, {len(classes)})")
    if thresholds is None:
        thr = [0.5] * len(classes)
    elif isinstance(thresholds, Mapping):
        thr = [float(thresholds.get(c, 0.5)) for c in classes]
    else:
        thr = [float(t) for t in thresholds]
    boot = bootstrap_weights(groups, n_boot, seed) if n_boot > 0 else np.zeros((0, len(y)))
    per_class: dict[str, Any] = {}
    points: dict[str, list[float]] = {m: [] for m in metrics}
    reps: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    compute = {
        "auroc": lambda yc, sc, t, w: auroc(yc, sc, w),
        "auprc": lambda yc, sc, t, w: auprc(yc, sc, w),
        "f1": lambda yc, sc, t, w: f1(yc, sc, t, w),
        "accuracy": lambda yc, sc, t, w: accuracy(yc, sc, t, w),
    }
    for c, name in enumerate(classes):
        known = np.isfinite(y[:, c]) & (y[:, c] >= 0)
        yc, sc = y[known, c], scores[known, c]
        wc = np.vstack([np.ones((1, known.sum())), boot[:, known]])
        entry: dict[str, Any] = {}
        for m in metrics:
            v = np.asarray(compute[m](yc, sc, thr[c], wc))
            entry[m] = interval(v[1:], float(v[0]), level)
            points[m].append(float(v[0]))
            reps[m].append(v[1:])
        entry.update(n=int(known.sum()), n_pos=int((yc == 1).sum()), threshold=thr[c])
        per_class[name] = entry
    macro: dict[str, Any] = {}
    for m in metrics:
        p = np.asarray(points[m])
        ok = np.isfinite(p)
        if not ok.any():
            macro[m] = [None, None, None]
            continue
        r = np.vstack(reps[m])[ok] if len(reps[m]) else np.zeros((0, 0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a replicate with no defined class
            rep_macro = np.nanmean(r, axis=0) if r.size else np.zeros(0)
        macro[m] = interval(rep_macro, float(p[ok].mean()), level)
    macro["n_classes"] = int(np.isfinite(np.asarray(points[metrics[0]])).sum()) if metrics else 0
    return {"per_class": per_class, "macro": macro, "n_boot": int(n_boot)}
