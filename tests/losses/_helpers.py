"""Shared builders and comparison helpers for the loss tests (float64 throughout)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

NAMES = ("cxr", "ecg", "report")
TOL = 1e-6


def unit_batch(
    b: int, d: int, names: Sequence[str] = NAMES, seed: int = 0, dtype: torch.dtype = torch.float64
) -> dict[str, Tensor]:
    """Independent random unit vectors per modality, as leaves requiring gradient."""
    g = torch.Generator().manual_seed(seed)
    return {
        m: torch.nn.functional.normalize(
            torch.randn(b, d, generator=g, dtype=dtype), dim=-1
        ).requires_grad_()
        for m in names
    }


def aligned_batch(b: int, d: int, names: Sequence[str] = NAMES) -> dict[str, Tensor]:
    """Every modality of sample i is the same basis vector e_i (needs d >= b)."""
    base = torch.eye(d, dtype=torch.float64)[:b]
    return {m: base.clone().requires_grad_() for m in names}


def scattered_missing(b: int, names: Sequence[str] = NAMES) -> dict[str, Tensor]:
    """Fixed holes: the first modality misses row 1, the second rows 2 and 5, the third row 3."""
    present = {m: torch.ones(b, dtype=torch.bool) for m in names}
    holes = [[1], [2, 5], [3]]
    for m, rows in zip(names, holes):
        present[m][[r for r in rows if r < b]] = False
    return present


def value_and_grads(
    fn: Callable[[Mapping[str, Tensor], Tensor], Tensor], emb: Mapping[str, Tensor], scale: float
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Evaluate ``fn(emb, scale)`` on fresh leaves; return the value and the gradients."""
    leaves = {m: t.detach().clone().requires_grad_() for m, t in emb.items()}
    s = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    value = fn(leaves, s)
    value.backward()
    grads = {m: (t.grad if t.grad is not None else torch.zeros_like(t)) for m, t in leaves.items()}
    s_grad = s.grad if s.grad is not None else torch.zeros_like(s)
    return value.detach(), grads, s_grad


def assert_matches_reference(
    ours: Callable[[Mapping[str, Tensor], Tensor], Tensor],
    reference: Callable[[Mapping[str, Tensor], Tensor], Tensor],
    emb: Mapping[str, Tensor],
    scale: float = 5.0,
    tol: float = TOL,
) -> None:
    """Value, embedding gradients and logit-scale gradient agree to ``tol``."""
    v1, g1, s1 = value_and_grads(ours, emb, scale)
    v2, g2, s2 = value_and_grads(reference, emb, scale)
    torch.testing.assert_close(v1, v2, atol=tol, rtol=tol)
    for m in emb:
        torch.testing.assert_close(
            g1[m], g2[m], atol=tol, rtol=tol, msg=lambda s, m=m: f"grad of {m}: {s}"
        )
    torch.testing.assert_close(s1, s2, atol=tol, rtol=tol)


def rows_with(present: Mapping[str, Tensor], *names: str) -> list[int]:
    """Indices of the rows where every named modality is present."""
    mask = torch.ones_like(next(iter(present.values())))
    for m in names:
        mask = mask & present[m]
    return [int(i) for i in torch.nonzero(mask).flatten()]


def lse(values: Sequence[Tensor]) -> Tensor:
    """log-sum-exp of a list of scalars (the references' only vector op)."""
    return torch.logsumexp(torch.stack(list(values)), dim=0)
