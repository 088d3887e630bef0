"""Metric functions against scikit-learn; patient bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

from medtriad.evaluate.metrics import (
    accuracy,
    auprc,
    auroc,
    best_f1_threshold,
    bootstrap_classification,
    bootstrap_weights,
    f1,
    roc_points,
)


def _data(seed: int, n: int = 300, ties: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rng.uniform(0.1, 0.6)).astype(float)
    s = rng.normal(size=n) + y * rng.uniform(0, 2)
    if ties:
        s = np.round(s, 1)  # many tied scores
    w = rng.integers(0, 4, n).astype(float)
    return y, s, w


@pytest.mark.parametrize("seed", range(6))
def test_ranking_metrics_equal_sklearn(seed: int) -> None:
    y, s, w = _data(seed)
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auprc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert auroc(y, s, w) == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    assert auprc(y, s, w) == pytest.approx(
        average_precision_score(y, s, sample_weight=w), abs=1e-12
    )


@pytest.mark.parametrize("seed", range(4))
def test_threshold_metrics_equal_sklearn(seed: int) -> None:
    y, s, w = _data(seed)
    t = float(np.median(s))
    assert f1(y, s, t) == pytest.approx(f1_score(y, s >= t))
    assert accuracy(y, s, t) == pytest.approx(accuracy_score(y, s >= t))
    assert f1(y, s, t, w) == pytest.approx(f1_score(y, s >= t, sample_weight=w))
    assert accuracy(y, s, t, w) == pytest.approx(accuracy_score(y, s >= t, sample_weight=w))


def test_replicates_scored_at_once_equal_one_by_one() -> None:
    y, s, _ = _data(7, n=120)
    groups = np.repeat(np.arange(40), 3)
    w = bootstrap_weights(groups, 25, seed=3)
    many = auroc(y, s, w)
    ap = auprc(y, s, w)
    for b in range(25):
        assert many[b] == pytest.approx(roc_auc_score(y, s, sample_weight=w[b]), abs=1e-12)
        assert ap[b] == pytest.approx(average_precision_score(y, s, sample_weight=w[b]), abs=1e-12)


def test_undefined_auroc_is_nan() -> None:
    assert np.isnan(auroc(np.ones(5), np.arange(5.0)))
    assert np.isnan(auprc(np.zeros(5), np.arange(5.0)))


def test_bootstrap_weights_resample_patients() -> None:
    groups = np.array(["a", "a", "b", "c", "c", "c", "d"])
    w = bootstrap_weights(groups, 200, seed=0)
    # every row of one patient carries the same count; each replicate draws 4 patients
    for g in np.unique(groups):
        rows = w[:, groups == g]
        assert np.all(rows == rows[:, :1])
    firsts = w[:, [0, 2, 3, 6]]
    assert np.all(firsts.sum(1) == 4)
    assert (firsts == 0).any() and (firsts >= 2).any()
    assert np.array_equal(w, bootstrap_weights(groups, 200, seed=0))


def _intervals(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 2)) < 0.3).astype(float)
    s = rng.normal(size=(n, 2)) + y
    groups = np.arange(n) // 2  # two rows per patient
    return bootstrap_classification(y, s, groups, ["a", "b"], n_boot=400, seed=1)


def test_bootstrap_interval_contains_point_and_shrinks_with_n() -> None:
    small, large = _intervals(100, 0), _intervals(3000, 0)
    for res in (small, large):
        for entry in [*res["per_class"].values(), res["macro"]]:
            for m in ("auroc", "auprc", "f1", "accuracy"):
                lo, p, hi = entry[m]
                assert lo <= p <= hi
    for m in ("auroc", "auprc", "accuracy"):
        w_small = small["macro"][m][2] - small["macro"][m][0]
        w_large = large["macro"][m][2] - large["macro"][m][0]
        assert w_large < w_small / 2


def test_unknown_labels_are_left_out_per_class() -> None:
    rng = np.random.default_rng(2)
    y = (rng.random((60, 2)) < 0.5).astype(float)
    s = rng.normal(size=(60, 2)) + y
    y_missing = y.copy()
    y_missing[:20, 0] = np.nan
    y_missing[20:25, 0] = -1.0  # uncertain counts as unknown
    res = bootstrap_classification(y_missing, s, np.arange(60), ["a", "b"], n_boot=10)
    assert res["per_class"]["a"]["n"] == 35
    assert res["per_class"]["b"]["n"] == 60
    assert res["per_class"]["a"]["auroc"][1] == pytest.approx(roc_auc_score(y[25:, 0], s[25:, 0]))


def test_best_f1_threshold_maximises_f1() -> None:
    y, s, _ = _data(11, n=200)
    t = best_f1_threshold(y, s)
    best = max(f1_score(y, s >= c) for c in np.unique(s))
    assert f1_score(y, s >= t) == pytest.approx(best)


def test_roc_points_integrate_to_auroc() -> None:
    y, s, _ = _data(5)
    fpr, tpr = roc_points(y, s)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(y, s))
