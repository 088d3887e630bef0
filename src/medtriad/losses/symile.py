"""Symile: contrastive loss on the multilinear inner product of all modalities.

``MIP(a, b, c, ...) = sum_k a_k b_k c_k ...``. For each anchor modality m and each row i,
the logits over candidate tuples j are ``s * MIP(r_i^m, other modalities of tuple j)`` and the
term is the cross-entropy with the true tuple as target; the total is the mean over anchors.

Negatives:

* ``"n"`` (default): for each anchor, one independent random permutation of the rows per
  non-anchor modality builds N candidate tuples; the diagonal candidate is replaced by the true
  tuple, so ``logits_ii = s * MIP(true tuple i)``. O(N^2 d) per anchor, any number of modalities.
* ``"n_squared"`` (exactly three modalities): every combination (j, k) of the two other
  modalities is a candidate, N^2 per row; the target is (i, i). Computed in anchor chunks by a
  custom autograd function that recomputes each chunk in the backward pass, so memory is
  O(chunk_elements) rather than O(N^3).

Missing modalities: only rows with every modality present take part (a tuple term needs the
whole tuple); there is no pairwise fallback, so prefer ``clip`` or ``more`` when much of the
data is only partially paired.

Randomness: permutations come from ``generator`` if given, else from a private generator seeded
with ``seed``; both advance with each call. They are drawn over the *global* batch, so every
rank must use the same seed (the default, 0, is the same everywhere) and the distributed result
equals the single-process one. The generator state is not part of ``state_dict``. For
reproducible comparisons, ``loss(emb, present, s, permutations=p)`` uses the permutations
``p[anchor][other]`` (over the rows holding every modality) instead of drawing them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from medtriad.errors import ConfigError
from medtriad.losses.base import ContrastiveLoss, LossOutput, TermSum, check_positive, register_loss
from medtriad.losses.distributed import GlobalBatch, RowSet

__all__ = ["SymileLoss", "mip"]

Permutations = Mapping[str, Mapping[str, Tensor]]


def _product(tensors: Sequence[Tensor]) -> Tensor:
    out = tensors[0]
    for t in tensors[1:]:
        out = out * t
    return out


def mip(*vectors: Tensor) -> Tensor:
    """Row-wise multilinear inner product of equally shaped (..., d) tensors."""
    return _product(vectors).sum(-1)


class _AllPairsLse(torch.autograd.Function):
    """sum_i logsumexp_{j,k} s * MIP(r_i, u_j, v_k), rows in chunks, recomputed in backward.

    Nothing of size O(rows * n^2) outlives a chunk, so memory is O(chunk * n * max(n, d)).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, r: Tensor, u: Tensor, v: Tensor, scale: Tensor, chunk: int
    ) -> Tensor:
        total = r.new_zeros(())
        for r_c in r.split(chunk):
            total += _chunk_logits(r_c, u, v, scale).flatten(1).logsumexp(dim=1).sum()
        ctx.save_for_backward(r, u, v, scale)
        ctx.chunk = chunk
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        r, u, v, scale = ctx.saved_tensors
        gr, gu, gv, gs = [], torch.zeros_like(u), torch.zeros_like(v), r.new_zeros(())
        for r_c in r.split(ctx.chunk):
            ru = r_c[:, None, :] * u[None, :, :]  # (c, n, d)
            dots = ru @ v.T  # (c, n, n): r_i . (u_j * v_k)
            logits = scale * dots
            p = torch.softmax(logits.flatten(1), dim=1).view_as(logits) * grad
            pv = p @ v  # (c, n, d): sum_k p_ijk v_k
            gr.append(scale * (pv * u[None]).sum(1))
            gu += scale * (pv * r_c[:, None, :]).sum(0)
            gv += scale * (p.flatten(0, 1).T @ ru.flatten(0, 1))
            gs += (p * dots).sum()
        gr_all = torch.cat(gr) if gr else torch.zeros_like(r)
        return gr_all, gu, gv, gs.reshape(scale.shape), None


def _chunk_logits(r: Tensor, u: Tensor, v: Tensor, scale: Tensor) -> Tensor:
    """(c, n, n) logits s * MIP(r_i, u_j, v_k)."""
    return scale * ((r[:, None, :] * u[None, :, :]) @ v.T)


@register_loss("symile")
class SymileLoss(ContrastiveLoss):
    """Symile with ``n`` or ``n_squared`` negatives (see the module docstring)."""

    def __init__(
        self,
        negatives: str = "n",
        seed: int = 0,
        generator: torch.Generator | None = None,
        chunk_elements: int = 1 << 22,
        gather: bool = True,
    ) -> None:
        super().__init__(gather=gather)
        if negatives not in ("n", "n_squared"):
            raise ConfigError("loss.negatives", f"must be 'n' or 'n_squared', got {negatives!r}")
        self.negatives = negatives
        self.chunk_elements = int(check_positive(chunk_elements, "loss.chunk_elements"))
        self.generator = (
            generator if generator is not None else torch.Generator().manual_seed(int(seed))
        )

    def draw_permutations(self, names: Sequence[str], n: int) -> dict[str, dict[str, Tensor]]:
        """One permutation of ``range(n)`` per (anchor, other modality), in name order."""
        return {
            a: {m: torch.randperm(n, generator=self.generator) for m in names if m != a}
            for a in names
        }

    def compute(
        self, batch: GlobalBatch, logit_scale: Tensor, permutations: Permutations | None = None
    ) -> LossOutput:
        names = batch.names
        if self.negatives == "n_squared" and len(names) != 3:
            raise ConfigError(
                "loss.negatives", f"'n_squared' needs exactly 3 modalities, got {len(names)}"
            )
        terms = TermSum(batch)
        rows = batch.rows_with(*names)
        if rows.count < 2:
            return terms.mean()
        emb = {m: rows.take(batch.emb[m]) for m in names}
        if self.negatives == "n":
            perms = (
                permutations
                if permutations is not None
                else self.draw_permutations(names, rows.count)
            )
            for a in names:
                terms.add(a, self._term_n(batch, rows, emb, a, perms[a], logit_scale))
        else:
            for a in names:
                terms.add(a, self._term_n_squared(batch, rows, emb, a, logit_scale))
        return terms.mean()

    @staticmethod
    def _term_n(
        batch: GlobalBatch,
        rows: RowSet,
        emb: dict[str, Tensor],
        anchor: str,
        perms: Mapping[str, Tensor],
        scale: Tensor,
    ) -> Tensor:
        others = [m for m in emb if m != anchor]
        device = emb[anchor].device
        r = rows.mine(emb[anchor])
        candidates = _product([emb[m][perms[m].to(device)] for m in others])
        true = rows.mine(_product([emb[m] for m in others]))
        labels = rows.labels(device)
        logits = (scale * r) @ candidates.T
        positive = scale * (r * true).sum(-1)
        logits = logits.scatter(1, labels[:, None], positive[:, None])
        return batch.share(F.cross_entropy(logits, labels, reduction="sum"), rows.count)

    def _term_n_squared(
        self, batch: GlobalBatch, rows: RowSet, emb: dict[str, Tensor], anchor: str, scale: Tensor
    ) -> Tensor:
        u, v = (emb[m] for m in emb if m != anchor)
        r = rows.mine(emb[anchor])
        n, d = u.shape
        chunk = max(1, self.chunk_elements // (n * max(n, d)))
        lse = _AllPairsLse.apply(r, u, v, scale, chunk)
        positive = scale * mip(r, rows.mine(u), rows.mine(v))
        return batch.share(lse - positive.sum(), rows.count)
