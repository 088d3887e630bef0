"""GRAM: contrastive loss on the volume of the parallelotope spanned by all modalities.

For anchor row i and candidate tuple j (the other modalities of row j), ``A = [a_i; v_j; w_j;
...]`` is k x d and ``Vol_ij = sqrt(det(A A^T))``. Logits are ``-s * Vol`` with s the passed
logit scale (``tau`` fixes ``s = 1 / tau`` instead), and::

    loss = 1/2 [ CE(-s Vol, diag) + CE(-s Vol^T, diag) ]

(anchor -> tuples and tuple -> anchors). The Gram determinant is written in closed form from
dot products, for vectors of any norm:

* k = 2: ``|a|^2 |b|^2 - (a.b)^2`` (= sin^2 of the angle for unit vectors);
* k = 3: ``aa bb cc + 2 ab ac bc - aa bc^2 - bb ac^2 - cc ab^2``;
* k >= 4: batched ``torch.linalg.det`` of the k x k Gram matrices (built from dot products).

The determinant is clamped at ``eps`` before the square root so the gradient stays finite when
the vectors become collinear (the true tuple at convergence). Only rows with every modality
present take part.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from medtriad.losses.base import (
    ContrastiveLoss,
    LossOutput,
    TermSum,
    check_anchor,
    check_positive,
    register_loss,
)
from medtriad.losses.distributed import GlobalBatch

__all__ = ["GramLoss", "gram_determinant", "gram_volume"]


def gram_determinant(anchor: Tensor, others: Sequence[Tensor]) -> Tensor:
    """det(A A^T) for every anchor row i (n_a, d) and candidate j of ``others`` (each (n_c, d)).

    Returns (n_a, n_c); row j of every tensor in ``others`` belongs to candidate j.
    """
    aa = (anchor * anchor).sum(-1)[:, None]
    cross = [anchor @ o.T for o in others]  # a . o_p, (n_a, n_c)
    if len(others) == 1:
        bb = (others[0] * others[0]).sum(-1)[None, :]
        return aa * bb - cross[0].square()
    if len(others) == 2:
        b, c = others
        bb = (b * b).sum(-1)[None, :]
        cc = (c * c).sum(-1)[None, :]
        bc = (b * c).sum(-1)[None, :]
        ab, ac = cross
        return (
            aa * bb * cc + 2 * ab * ac * bc - aa * bc.square() - bb * ac.square() - cc * ab.square()
        )
    k = len(others) + 1
    n_a, n_c = anchor.shape[0], others[0].shape[0]
    gram = anchor.new_empty(n_a, n_c, k, k)
    gram[..., 0, 0] = aa.expand(n_a, n_c)
    for p, o in enumerate(others, start=1):
        gram[..., 0, p] = cross[p - 1]
        gram[..., p, 0] = cross[p - 1]
        for q, o2 in enumerate(others[p - 1 :], start=p):
            dots = (o * o2).sum(-1)[None, :].expand(n_a, n_c)
            gram[..., p, q] = dots
            gram[..., q, p] = dots
    return torch.linalg.det(gram)


def gram_volume(anchor: Tensor, others: Sequence[Tensor], eps: float = 1e-6) -> Tensor:
    """``sqrt(max(det(A A^T), eps))`` for every anchor/candidate pair, (n_a, n_c)."""
    return gram_determinant(anchor, others).clamp_min(eps).sqrt()


@register_loss("gram")
class GramLoss(ContrastiveLoss):
    """GRAM volume loss anchored on ``anchor`` (default ``report``)."""

    def __init__(
        self,
        anchor: str = "report",
        tau: float | None = None,
        eps: float = 1e-6,
        gather: bool = True,
    ) -> None:
        super().__init__(gather=gather)
        self.anchor = anchor
        self.tau = None if tau is None else check_positive(tau, "loss.tau")
        self.eps = check_positive(eps, "loss.eps")

    def compute(self, batch: GlobalBatch, logit_scale: Tensor) -> LossOutput:
        check_anchor(self.anchor, batch.names)
        scale = logit_scale if self.tau is None else logit_scale.new_tensor(1.0 / self.tau)
        terms = TermSum(batch)
        rows = batch.rows_with(*batch.names)
        if rows.count >= 2:
            a = rows.take(batch.emb[self.anchor])
            others = [rows.take(batch.emb[m]) for m in batch.names if m != self.anchor]
            labels = rows.labels(a.device)
            vol = gram_volume(rows.mine(a), others, self.eps)  # my anchors x all tuples
            if rows.is_whole:
                vol_t = vol.T
            else:  # my tuples x all anchors
                vol_t = gram_volume(a, [rows.mine(o) for o in others], self.eps).T
            ce = F.cross_entropy(-scale * vol, labels, reduction="sum")
            ce_t = F.cross_entropy(-scale * vol_t, labels, reduction="sum")
            terms.add("gram", batch.share((ce + ce_t) / 2, rows.count))
        return terms.mean()
