"""Multi-view contrastive losses: every view (modality) of an instance is a positive.

With ``S(u, v) = s * u . v`` and ``x_i^m`` the view m of instance i, for every anchor (i, m):

* ``mv_infonce``: one term with all positives in the numerator and everything in the
  denominator::

      -log [ sum_{m' != m} e^{S(x_i^m, x_i^m')} / sum_{(j, m') != (i, m)} e^{S(x_i^m, x_j^m')} ]

  i.e. ``logsumexp(all but itself) - logsumexp(positives)``;

* ``mv_dhel`` (decoupled): alignment with the other views of the instance, uniformity against
  the *same view* of other instances only (positives are not in the denominator)::

      -(1/P_i) sum_{m' != m} S(x_i^m, x_i^m') + logsumexp_{j != i} S(x_i^m, x_j^m)

  with P_i the number of other views present for instance i.

The loss is the mean over valid anchors; ``parts`` holds the mean per anchor view. Missing
views are neither anchors, positives nor negatives: their embeddings are zeroed with
``masked_fill`` (so their gradient is exactly zero and NaNs cannot leak) and their logits are
pushed to the dtype's lowest value. An anchor counts only if it has at least one positive and
one negative.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medtriad.losses.base import ContrastiveLoss, LossOutput, register_loss
from medtriad.losses.distributed import GlobalBatch

__all__ = ["MultiViewDhelLoss", "MultiViewInfoNceLoss"]


def _views(batch: GlobalBatch) -> tuple[Tensor, Tensor]:
    """(N, M, d) embeddings with missing views zeroed, and the (N, M) presence mask."""
    present = torch.stack([batch.present[m] for m in batch.names], dim=1)
    x = torch.stack([batch.emb[m] for m in batch.names], dim=1)
    return x.masked_fill(~present[..., None], 0.0), present


def _own_similarities(
    x_local: Tensor, present_local: Tensor, scale: Tensor
) -> tuple[Tensor, Tensor]:
    """s * x_i^m . x_i^m' for this rank's instances (B, M, M) and the mask of valid positives."""
    own = scale * torch.einsum("imd,ind->imn", x_local, x_local)
    m = present_local.shape[1]
    positive = present_local[:, :, None] & present_local[:, None, :]
    positive &= ~torch.eye(m, dtype=torch.bool, device=present_local.device)
    return own, positive


def _result(batch: GlobalBatch, terms: Tensor, valid_global: Tensor) -> LossOutput:
    """Mean of the valid anchor terms (this rank's share) with one part per view."""
    lo, hi = batch.offset, batch.offset + batch.local_size
    valid = valid_global[lo:hi]
    count = int(valid_global.sum())
    if count == 0:
        return LossOutput(batch.zero(), {})
    picked = torch.where(valid, terms, torch.zeros_like(terms))
    parts = {}
    for k, name in enumerate(batch.names):
        n_view = int(valid_global[:, k].sum())
        if n_view:
            parts[name] = batch.share(picked[:, k].sum(), n_view)
    return LossOutput(batch.share(picked.sum(), count), parts)


@register_loss("mv_infonce")
class MultiViewInfoNceLoss(ContrastiveLoss):
    """MV-InfoNCE: all views of an instance are positives, all views of others negatives."""

    def compute(self, batch: GlobalBatch, logit_scale: Tensor) -> LossOutput:
        x, present = _views(batch)
        n, m, d = x.shape
        lo, hi = batch.offset, batch.offset + batch.local_size
        x_local, present_local = x[lo:hi], present[lo:hi]
        low = torch.finfo(x.dtype).min

        # the matmul keeps its inputs, not its output, so the masks can be written in place
        sims = ((logit_scale * x_local.reshape(-1, d)) @ x.reshape(-1, d).T).view(hi - lo, m, n * m)
        sims.masked_fill_(~present.reshape(1, 1, -1), low)
        itself = (
            torch.arange(lo, hi, device=x.device)[:, None] * m + torch.arange(m, device=x.device)
        )[..., None]
        denominator = sims.scatter_(2, itself, low).logsumexp(dim=-1)

        own, positive = _own_similarities(x_local, present_local, logit_scale)
        numerator = own.masked_fill(~positive, low).logsumexp(dim=-1)

        per_row = present.sum(1, keepdim=True)
        valid = present & (per_row >= 2) & (present.sum() - per_row >= 1)
        return _result(batch, denominator - numerator, valid)


@register_loss("mv_dhel")
class MultiViewDhelLoss(ContrastiveLoss):
    """MV-DHEL: alignment with the instance's views, uniformity within each view."""

    def compute(self, batch: GlobalBatch, logit_scale: Tensor) -> LossOutput:
        x, present = _views(batch)
        lo, hi = batch.offset, batch.offset + batch.local_size
        x_local, present_local = x[lo:hi], present[lo:hi]
        low = torch.finfo(x.dtype).min

        # same-view similarities, one (B, N) block per view: (M, B, N)
        sims = torch.bmm(logit_scale * x_local.transpose(0, 1), x.permute(1, 2, 0))
        sims.masked_fill_(~present.T[:, None, :], low)
        itself = torch.arange(lo, hi, device=x.device)[None, :, None].expand(sims.shape[0], -1, 1)
        uniformity = sims.scatter_(2, itself, low).logsumexp(dim=-1).T  # (B, M)

        own, positive = _own_similarities(x_local, present_local, logit_scale)
        alignment = (own * positive).sum(-1) / positive.sum(-1).clamp_min(1)

        per_row = present.sum(1, keepdim=True)
        valid = present & (per_row >= 2) & (present.sum(0, keepdim=True) >= 2)
        return _result(batch, uniformity - alignment, valid)
