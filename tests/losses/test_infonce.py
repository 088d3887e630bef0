"""clip and more against slow loops written from the InfoNCE formula."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from medtriad.errors import ConfigError
from medtriad.losses import clamp_logit_scale_, get_loss

from ._helpers import NAMES, assert_matches_reference, lse, rows_with, scattered_missing, unit_batch


def ref_direction(x, y, idx, s, eps):
    """mean over rows i of the (smoothed) cross-entropy of s * x_i . y_j over j in idx."""
    total = 0
    for i in idx:
        logits = [s * torch.dot(x[i], y[j]) for j in idx]
        norm = lse(logits)
        nll = [norm - l for l in logits]
        diag = idx.index(i)
        total = total + (1 - eps) * nll[diag] + eps * sum(nll) / len(idx)
    return total / len(idx)


def ref_pair(emb, present, a, b, s, eps):
    idx = rows_with(present, a, b)
    if len(idx) < 2:
        return None
    return (
        ref_direction(emb[a], emb[b], idx, s, eps) + ref_direction(emb[b], emb[a], idx, s, eps)
    ) / 2


def ref_clip(emb, present, s, eps=0.0):
    terms = [ref_pair(emb, present, a, b, s, eps) for a, b in itertools.combinations(emb, 2)]
    terms = [t for t in terms if t is not None]
    return sum(terms) / len(terms)


def ref_more(emb, present, s, anchor="report", eps=0.0):
    terms = [ref_pair(emb, present, anchor, m, s, eps) for m in emb if m != anchor]
    return sum(t for t in terms if t is not None)


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_clip_matches_reference(missing: bool, eps: float) -> None:
    emb = unit_batch(7, 5)
    present = (
        scattered_missing(7) if missing else {m: torch.ones(7, dtype=torch.bool) for m in NAMES}
    )
    loss = get_loss("clip", label_smoothing=eps)
    assert_matches_reference(
        lambda e, s: loss(e, present, s).total, lambda e, s: ref_clip(e, present, s, eps), emb
    )


@pytest.mark.parametrize("missing", [False, True])
def test_more_matches_reference(missing: bool) -> None:
    emb = unit_batch(7, 5, seed=1)
    present = scattered_missing(7) if missing else {}
    full = {m: torch.ones(7, dtype=torch.bool) for m in NAMES}
    loss = get_loss("more", label_smoothing=0.05)
    assert_matches_reference(
        lambda e, s: loss(e, present, s).total,
        lambda e, s: ref_more(e, present or full, s, eps=0.05),
        emb,
    )


def test_more_anchor_is_a_setting_and_names_are_free() -> None:
    emb = unit_batch(6, 4, names=("img", "txt", "sig", "lab"), seed=2)
    loss = get_loss("more", anchor="txt")
    out = loss(emb, {}, 3.0)
    assert set(out.parts) == {"txt-img", "txt-sig", "txt-lab"}
    full = {m: torch.ones(6, dtype=torch.bool) for m in emb}
    torch.testing.assert_close(out.total, ref_more(emb, full, 3.0, anchor="txt"))


def test_pair_with_fewer_than_two_rows_is_skipped_and_not_counted() -> None:
    emb = unit_batch(6, 4, seed=3)
    present = {"ecg": torch.tensor([True, False, False, False, False, False])}
    out = get_loss("clip")(emb, present, 4.0)
    assert set(out.parts) == {"cxr-report"}
    torch.testing.assert_close(out.total, out.parts["cxr-report"])


def test_more_without_its_anchor_is_a_config_error() -> None:
    emb = unit_batch(4, 3, names=("cxr", "ecg"))
    with pytest.raises(ConfigError) as exc:
        get_loss("more")(emb, {}, 1.0)
    assert exc.value.key == "loss.anchor"


@pytest.mark.parametrize("bad", [-0.1, 1.0, "x"])
def test_label_smoothing_out_of_range_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError) as exc:
        get_loss("clip", label_smoothing=bad)
    assert exc.value.key == "loss.label_smoothing"


def test_clamp_logit_scale_keeps_log_scale_in_range() -> None:
    p = torch.nn.Parameter(torch.tensor([-1.0, 2.0, 9.0]))
    clamp_logit_scale_(p)
    torch.testing.assert_close(p.data, torch.tensor([0.0, 2.0, math.log(100.0)]))
    clamp_logit_scale_(p, max_scale=math.e)
    assert float(p.detach().max()) == pytest.approx(1.0)
