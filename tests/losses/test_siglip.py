"""SigLIP against a slow loop over every (i, j) pair; chunking changes nothing."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from medtriad.errors import ConfigError
from medtriad.losses import get_loss
from medtriad.losses.siglip import softplus_logit_sum

from ._helpers import NAMES, rows_with, scattered_missing, unit_batch


def ref_siglip(emb, present, s, b):
    terms = []
    for m1, m2 in itertools.combinations(emb, 2):
        idx = rows_with(present, m1, m2)
        if len(idx) < 2:
            continue
        total = 0
        for i in idx:
            for j in idx:
                z = 1.0 if i == j else -1.0
                total = total - F.logsigmoid(z * (s * torch.dot(emb[m1][i], emb[m2][j]) + b))
        terms.append(total / len(idx))
    return sum(terms) / len(terms)


def run(loss, emb, present, scale):
    leaves = {m: t.detach().clone().requires_grad_() for m, t in emb.items()}
    s = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    loss.zero_grad()
    value = loss(leaves, present, s).total
    value.backward()
    return value.detach(), {m: t.grad for m, t in leaves.items()}, s.grad, loss.bias.grad.clone()


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_siglip_matches_reference_for_any_chunk(missing: bool, chunk: int) -> None:
    emb = unit_batch(7, 5, seed=7)
    present = (
        scattered_missing(7) if missing else {m: torch.ones(7, dtype=torch.bool) for m in NAMES}
    )
    loss = get_loss("siglip", chunk_size=chunk, bias_init=-2.0).double()
    value, grads, s_grad, b_grad = run(loss, emb, present, 4.0)

    leaves = {m: t.detach().clone().requires_grad_() for m, t in emb.items()}
    s = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    expected = ref_siglip(leaves, present, s, b)
    expected.backward()
    torch.testing.assert_close(value, expected.detach(), atol=1e-6, rtol=1e-6)
    for m in emb:
        torch.testing.assert_close(grads[m], leaves[m].grad, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(s_grad, s.grad, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(b_grad, b.grad, atol=1e-6, rtol=1e-6)


def test_chunked_sum_passes_gradcheck() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-0.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: softplus_logit_sum(*t, chunk=2), (x, y, s, b))


def test_bias_starts_at_minus_ten_and_is_learnable() -> None:
    loss = get_loss("siglip")
    assert loss.bias.item() == -10.0
    assert [n for n, p in loss.named_parameters() if p.requires_grad] == ["bias"]


def test_bad_chunk_size_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as exc:
        get_loss("siglip", chunk_size=0)
    assert exc.value.key == "loss.chunk_size"
