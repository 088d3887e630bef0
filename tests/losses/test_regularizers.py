"""Uniformity, cross-modal uniformity and alignment against slow loops; the wrapper's wiring."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from medtriad.errors import ConfigError
from medtriad.losses import get_loss
from medtriad.losses.distributed import gather_batch
from medtriad.losses.regularizers import alignment, cross_uniformity, uniformity

from ._helpers import NAMES, assert_matches_reference, rows_with, scattered_missing, unit_batch


def ref_uniformity(emb, present):
    values = []
    for m in emb:
        idx = rows_with(present, m)
        pairs = [(i, j) for i, j in itertools.combinations(idx, 2)]
        if pairs:
            mean = sum(
                torch.exp(-2 * (emb[m][i] - emb[m][j]).square().sum()) for i, j in pairs
            ) / len(pairs)
            values.append(torch.log(mean))
    return sum(values) / len(values)


def ref_cross_uniformity(emb, present):
    values = []
    for a, b in itertools.combinations(emb, 2):
        idx = rows_with(present, a, b)
        pairs = [(i, j) for i in idx for j in idx if i != j]
        if pairs:
            mean = sum(
                torch.exp(-2 * (emb[a][i] - emb[b][j]).square().sum()) for i, j in pairs
            ) / len(pairs)
            values.append(torch.log(mean))
    return sum(values) / len(values)


def ref_alignment(emb, present):
    values = []
    for a, b in itertools.combinations(emb, 2):
        idx = rows_with(present, a, b)
        values.append(sum((emb[a][i] - emb[b][i]).square().sum() for i in idx) / len(idx))
    return sum(values) / len(values)


def on_batch(fn, present):
    return lambda e, s: fn(gather_batch(dict(e), present))


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize(
    ("fn", "ref"),
    [
        (uniformity, ref_uniformity),
        (cross_uniformity, ref_cross_uniformity),
        (alignment, ref_alignment),
    ],
)
def test_regularizer_matches_reference(missing: bool, fn, ref) -> None:
    present = (
        scattered_missing(7) if missing else {m: torch.ones(7, dtype=torch.bool) for m in NAMES}
    )
    emb = unit_batch(7, 5, seed=14)
    emb = {
        m: (t * 1.3).detach().requires_grad_() for m, t in emb.items()
    }  # off the sphere on purpose
    assert_matches_reference(on_batch(fn, present), lambda e, s: ref(e, present), emb)


def test_uniformity_does_not_underflow_for_far_apart_points() -> None:
    x = torch.tensor([[0.0, 0.0], [30.0, 0.0], [0.0, 30.0]], dtype=torch.float64)
    batch = gather_batch({"a": x, "b": x}, {m: torch.ones(3, dtype=torch.bool) for m in "ab"})
    expected = math.log((2 * math.exp(-1800.0 + 1800.0) + math.exp(-3600.0 + 1800.0)) / 3) - 1800.0
    assert float(uniformity(batch)) == pytest.approx(expected)


def test_regularized_loss_adds_weighted_values_and_logs_them() -> None:
    emb = unit_batch(6, 4, seed=15)
    weights = {"uniformity": 0.1, "alignment": 0.5, "cross_uniformity": 2.0}
    base = get_loss("clip")(emb, {}, 5.0)
    out = get_loss("clip", regularizers=weights)(emb, {}, 5.0)
    full = {m: torch.ones(6, dtype=torch.bool) for m in NAMES}
    refs = {
        "uniformity": ref_uniformity,
        "alignment": ref_alignment,
        "cross_uniformity": ref_cross_uniformity,
    }
    for name, ref in refs.items():
        torch.testing.assert_close(out.parts[name], ref(emb, full))
    expected = base.total + sum(w * out.parts[n] for n, w in weights.items())
    torch.testing.assert_close(out.total, expected)
    assert set(base.parts) < set(out.parts)


@pytest.mark.parametrize(
    ("weights", "key"),
    [
        ({"spread": 1.0}, "loss.regularizers.spread"),
        ({"alignment": -1.0}, "loss.regularizers.alignment"),
    ],
)
def test_bad_regularizers_are_config_errors(weights: dict, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        get_loss("more", regularizers=weights)
    assert exc.value.key == key
