"""GRAM: closed-form Gram determinants against torch.linalg.det, the loss against a slow loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medtriad.errors import ConfigError
from medtriad.losses import get_loss, gram_determinant

from ._helpers import NAMES, assert_matches_reference, rows_with, scattered_missing, unit_batch


def det_by_linalg(anchor, others):
    """det(A A^T) for every (i, j) by building A explicitly."""
    out = torch.empty(anchor.shape[0], others[0].shape[0], dtype=anchor.dtype)
    for i in range(anchor.shape[0]):
        for j in range(others[0].shape[0]):
            a = torch.stack([anchor[i]] + [o[j] for o in others])
            out[i, j] = torch.linalg.det(a @ a.T)
    return out


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_closed_forms_match_linalg_det(k: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(k)
    anchor = torch.randn(5, 6, generator=g, dtype=dtype) * 0.8
    others = [torch.randn(4, 6, generator=g, dtype=dtype) * 0.8 for _ in range(k - 1)]
    expected = det_by_linalg(anchor, others)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(gram_determinant(anchor, others), expected, atol=tol, rtol=tol)


def test_two_vector_volume_is_abs_sine_for_unit_vectors() -> None:
    theta = torch.linspace(0.1, 3.0, 7, dtype=torch.float64)
    a = torch.stack([torch.ones_like(theta), torch.zeros_like(theta)], 1)
    b = torch.stack([theta.cos(), theta.sin()], 1)
    det = torch.diagonal(gram_determinant(a, [b]))
    torch.testing.assert_close(det.sqrt(), theta.sin().abs())


def ref_gram(emb, present, s, anchor="report", eps=1e-6):
    idx = rows_with(present, *emb)
    others = [m for m in emb if m != anchor]
    vol = [[None] * len(idx) for _ in idx]
    for p, i in enumerate(idx):
        for q, j in enumerate(idx):
            a = torch.stack([emb[anchor][i]] + [emb[m][j] for m in others])
            vol[p][q] = torch.linalg.det(a @ a.T).clamp_min(eps).sqrt()
    total = 0
    for p in range(len(idx)):
        row = torch.stack(vol[p])
        col = torch.stack([vol[q][p] for q in range(len(idx))])
        total = total + 0.5 * (torch.logsumexp(-s * row, 0) + s * row[p])
        total = total + 0.5 * (torch.logsumexp(-s * col, 0) + s * col[p])
    return total / len(idx)


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("names", [NAMES, ("report", "cxr"), ("report", "cxr", "ecg", "lab")])
def test_gram_matches_reference(missing: bool, names: tuple[str, ...]) -> None:
    emb = unit_batch(7, 5, names=names, seed=4)
    present = (
        scattered_missing(7, names)
        if missing
        else {m: torch.ones(7, dtype=torch.bool) for m in names}
    )
    loss = get_loss("gram")
    assert_matches_reference(
        lambda e, s: loss(e, present, s).total, lambda e, s: ref_gram(e, present, s), emb
    )


def test_tau_fixes_the_scale_instead_of_logit_scale() -> None:
    emb = unit_batch(6, 4, seed=5)
    fixed = get_loss("gram", tau=0.25)(emb, {}, 1.0).total
    torch.testing.assert_close(fixed, get_loss("gram")(emb, {}, 4.0).total)


def test_anchor_setting_changes_the_loss_and_must_exist() -> None:
    emb = unit_batch(6, 4, seed=6)
    a = get_loss("gram", anchor="cxr")(emb, {}, 3.0).total
    full = {m: torch.ones(6, dtype=torch.bool) for m in NAMES}
    torch.testing.assert_close(a, ref_gram(emb, full, 3.0, anchor="cxr"))
    with pytest.raises(ConfigError) as exc:
        get_loss("gram", anchor="ct")(emb, {}, 3.0)
    assert exc.value.key == "loss.anchor"


def test_collinear_tuple_keeps_a_finite_gradient() -> None:
    x = F.normalize(torch.randn(4, 3, dtype=torch.float64), dim=-1)
    emb = {m: x.clone().requires_grad_() for m in NAMES}
    get_loss("gram")(emb, {}, 10.0).total.backward()
    assert all(torch.isfinite(t.grad).all() for t in emb.values())
