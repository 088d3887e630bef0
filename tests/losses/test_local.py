"""Local token-sentence alignment: the formula's limits, masking, and what it rewards."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medtriad.losses.local import local_alignment_loss, local_scores


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def test_small_tau_reads_the_best_token_and_large_tau_the_mean_token() -> None:
    tokens, sentences = _unit(3, 5, 8), _unit(4, 2, 8, seed=1)
    mask = torch.ones(4, 2, dtype=torch.bool)
    sims = torch.einsum("ikd,jmd->ijmk", tokens, sentences)
    sharp = local_scores(tokens, sentences, mask, tau=1e-3)
    # the soft maximum sits log(P) * tau below the maximum at worst
    assert torch.allclose(sharp, sims.max(-1).values.mean(-1), atol=2e-3 * math.log(5))
    flat = local_scores(tokens, sentences, mask, tau=1e4)
    mean_token = torch.einsum("id,jmd->ijm", tokens.mean(1), sentences).mean(-1)
    assert torch.allclose(flat, mean_token, atol=1e-4)


def test_padding_sentences_change_nothing() -> None:
    tokens, sentences = _unit(3, 5, 8), _unit(3, 2, 8, seed=1)
    mask = torch.ones(3, 2, dtype=torch.bool)
    padded = torch.cat([sentences, _unit(3, 1, 8, seed=2)], dim=1)
    pmask = torch.cat([mask, torch.zeros(3, 1, dtype=torch.bool)], dim=1)
    assert torch.allclose(
        local_scores(tokens, sentences, mask, 0.1), local_scores(tokens, padded, pmask, 0.1)
    )


def test_an_image_with_one_matching_patch_scores_its_report_highest() -> None:
    """Each report has one sentence; image i holds that sentence's direction in one patch only,
    the rest is noise: the local score finds it, the mean token hardly does."""
    d, p, b = 16, 16, 4
    sentences = torch.eye(d, dtype=torch.float64)[:b, None]  # (B, 1, d)
    tokens = _unit(b, p, d, seed=3) * 0.5
    for i in range(b):
        tokens[i, (5 * i) % p] = sentences[i, 0]
    tokens = F.normalize(tokens, dim=-1)
    mask = torch.ones(b, 1, dtype=torch.bool)
    local = local_scores(tokens, sentences, mask, tau=0.05)
    assert torch.equal(local.argmax(1), torch.arange(b))
    margin_local = (local.diag() - local.masked_fill(torch.eye(b, dtype=torch.bool), -9).max(1).values).min()
    mean = local_scores(tokens, sentences, mask, tau=1e4)
    margin_mean = (mean.diag() - mean.masked_fill(torch.eye(b, dtype=torch.bool), -9).max(1).values).min()
    assert margin_local > 2 * margin_mean


def test_absent_rows_and_padding_sentences_get_no_gradient() -> None:
    b, p, d = 4, 6, 8
    tokens = _unit(b, p, d, seed=4).requires_grad_()
    sentences = _unit(b, 2, d, seed=5).requires_grad_()
    mask = torch.tensor([[True, False]] * b)
    rows = torch.tensor([True, True, True, False])
    loss = local_alignment_loss(tokens, sentences, mask, rows, 10.0, tau=0.02)
    loss.backward()
    assert torch.all(tokens.grad[3] == 0) and torch.all(sentences.grad[3] == 0)
    assert torch.all(sentences.grad[:, 1] == 0)  # a padding sentence gets nothing


def test_a_sharp_soft_maximum_sends_a_match_gradient_to_its_best_token() -> None:
    tokens = _unit(2, 6, 8, seed=4).requires_grad_()
    sentences = _unit(2, 1, 8, seed=5)
    score = local_scores(tokens, sentences, torch.ones(2, 1, dtype=torch.bool), tau=0.02)[0, 0]
    score.backward()
    best = int(torch.einsum("kd,d->k", tokens.detach()[0], sentences[0, 0]).argmax())
    norms = tokens.grad[0].norm(dim=-1)
    assert norms[best] > 0.9 * norms.sum()
    assert torch.all(tokens.grad[1] == 0)


def test_fewer_than_two_rows_give_none_and_a_bad_tau_is_refused() -> None:
    tokens, sentences = _unit(3, 4, 8), _unit(3, 1, 8, seed=1)
    mask = torch.tensor([[True], [False], [True]])
    assert local_alignment_loss(tokens, sentences, mask, torch.tensor([True, True, False]), 10.0, 0.1) is None
    with pytest.raises(ValueError, match="tau"):
        local_scores(tokens, sentences, mask, tau=0.0)


def test_matched_pairs_give_a_lower_loss_than_shuffled_ones() -> None:
    d, b = 8, 6
    sentences = torch.eye(d, dtype=torch.float64)[:b, None]
    tokens = F.normalize(_unit(b, 4, d, seed=6) * 0.3 + sentences, dim=-1)
    mask = torch.ones(b, 1, dtype=torch.bool)
    rows = torch.ones(b, dtype=torch.bool)
    matched = local_alignment_loss(tokens, sentences, mask, rows, 10.0, 0.1)
    shuffled = local_alignment_loss(tokens, sentences[torch.roll(torch.arange(b), 1)], mask, rows, 10.0, 0.1)
    assert matched < shuffled


def test_scores_follow_the_formula_term_by_term() -> None:
    """S_ij = mean over report j's sentences m of tau * log(mean_k exp(<p_ik, s_jm> / tau)),
    written as loops; a report without sentences scores 0."""
    tokens, sentences = _unit(3, 4, 6), _unit(4, 3, 6, seed=2)
    mask = torch.tensor([[True, False, True], [False, False, False], [True, True, True], [False, True, False]])
    tau = 0.2
    got = local_scores(tokens, sentences, mask, tau)
    for i in range(3):
        for j in range(4):
            v = [
                tau * math.log(sum(math.exp(float(tokens[i, k] @ sentences[j, m]) / tau) for k in range(4)) / 4)
                for m in range(3)
                if mask[j, m]
            ]
            assert got[i, j].item() == pytest.approx(sum(v) / len(v) if v else 0.0, abs=1e-12)
