"""DHN-NCE against a slow loop that forms the weights w_ij literally."""

from __future__ import annotations

import itertools

import pytest
import torch

from medtriad.errors import ConfigError
from medtriad.losses import get_loss

from ._helpers import NAMES, assert_matches_reference, rows_with, scattered_missing, unit_batch


def ref_direction(v, t, idx, tau, beta):
    n = len(idx)
    total = 0
    for i in idx:
        sims = {j: torch.dot(v[i], t[j]) / tau for j in idx}
        weight_norm = sum(torch.exp(beta * sims[k]) for k in idx if k != i)
        denominator = 0
        for j in idx:
            if j != i:
                w = (n - 1) * torch.exp(beta * sims[j]) / weight_norm
                denominator = denominator + w * torch.exp(sims[j])
        total = total - torch.log(torch.exp(sims[i]) / denominator)
    return total / n


def ref_dhn(emb, present, tau=0.6, beta=0.15):
    terms = []
    for a, b in itertools.combinations(emb, 2):
        idx = rows_with(present, a, b)
        if len(idx) >= 2:
            terms.append(
                ref_direction(emb[a], emb[b], idx, tau, beta)
                + ref_direction(emb[b], emb[a], idx, tau, beta)
            )
    return sum(terms) / len(terms)


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize(("tau", "beta"), [(0.6, 0.15), (0.2, 0.5)])
def test_dhn_nce_matches_reference(missing: bool, tau: float, beta: float) -> None:
    emb = unit_batch(7, 5, seed=8)
    present = (
        scattered_missing(7) if missing else {m: torch.ones(7, dtype=torch.bool) for m in NAMES}
    )
    loss = get_loss("dhn_nce", tau=tau, beta=beta)
    assert_matches_reference(
        lambda e, s: loss(e, present, s).total, lambda e, s: ref_dhn(e, present, tau, beta), emb
    )


def test_beta_zero_is_decoupled_infonce() -> None:
    emb = unit_batch(6, 4, names=("cxr", "ecg"), seed=9)
    got = get_loss("dhn_nce", tau=0.5, beta=0.0)(emb, {}, 1.0).total
    logits = emb["cxr"] @ emb["ecg"].T / 0.5
    off = ~torch.eye(6, dtype=torch.bool)

    def decoupled(lg):
        return (-lg.diagonal() + lg.masked_fill(~off, float("-inf")).logsumexp(1)).mean()

    torch.testing.assert_close(got, decoupled(logits) + decoupled(logits.T))


def test_logit_scale_is_not_used() -> None:
    emb = unit_batch(5, 4, seed=10)
    loss = get_loss("dhn_nce")
    torch.testing.assert_close(loss(emb, {}, 1.0).total, loss(emb, {}, 50.0).total)


@pytest.mark.parametrize(
    ("key", "settings"), [("loss.tau", {"tau": 0.0}), ("loss.beta", {"beta": -0.1})]
)
def test_bad_settings_are_config_errors(key: str, settings: dict) -> None:
    with pytest.raises(ConfigError) as exc:
        get_loss("dhn_nce", **settings)
    assert exc.value.key == key
