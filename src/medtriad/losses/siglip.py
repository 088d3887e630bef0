"""SigLIP: pairwise sigmoid loss, computed in column chunks.

For a pair of modalities (x, y) over the n rows where both are present::

    L = -(1/n) sum_{i,j} log sigmoid(z_ij (s x_i . y_j + b)),   z_ij = +1 if i == j else -1

averaged over modality pairs; s is the passed logit scale and b this loss's own learnable bias
(``bias_init``, default -10; the trainer must give ``loss.parameters()`` to the optimiser).

Using ``-log sigmoid(-l) = softplus(l)`` and ``-log sigmoid(l) = softplus(l) - l``::

    n L = sum_{i,j} softplus(l_ij) - sum_i l_ii

The double sum runs over column chunks of ``chunk_size`` in a custom autograd function that
recomputes each chunk in the backward pass, so memory is O(rows * chunk_size), never
O(rows * n). Under data parallelism the rows are this rank's and the columns the global batch.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from medtriad.losses.base import (
    ContrastiveLoss,
    LossOutput,
    TermSum,
    check_positive,
    pair_name,
    register_loss,
)
from medtriad.losses.distributed import GlobalBatch

__all__ = ["SigLipLoss", "softplus_logit_sum"]


class _SoftplusLogitSum(torch.autograd.Function):
    """sum_{i,j} softplus(scale * x_i . y_j + bias) without keeping the (n_x, n_y) matrix."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: Tensor, y: Tensor, scale: Tensor, bias: Tensor, chunk: int
    ) -> Tensor:
        s, zero = float(scale.detach()), x.new_zeros(())
        total = x.new_zeros(())
        for y_c in y.split(chunk):
            logits = torch.addmm(bias, x, y_c.T, alpha=s)
            total += torch.logaddexp(logits, zero).sum()
        ctx.save_for_backward(x, y, scale, bias)
        ctx.chunk = chunk
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, y, scale, bias = ctx.saved_tensors
        s = float(scale.detach())
        gx, gy = torch.zeros_like(x), []
        gs, gb = x.new_zeros(()), x.new_zeros(())
        for y_c in y.split(ctx.chunk):
            # d softplus(l) / dl = sigmoid(l), computed in place on the recomputed logits
            p = torch.addmm(bias, x, y_c.T, alpha=s).sigmoid_().mul_(grad)
            py = p @ y_c  # sum_j p_ij y_j
            gx.add_(py, alpha=s)
            gs += (x * py).sum()  # sum_ij p_ij x_i . y_j
            gb += p.sum()
            gy.append(s * (p.T @ x))
        return gx, torch.cat(gy), gs.reshape(scale.shape), gb.reshape(bias.shape), None


def softplus_logit_sum(
    x: Tensor, y: Tensor, scale: Tensor, bias: Tensor, chunk: int = 1024
) -> Tensor:
    """``sum_{i,j} softplus(scale * x_i . y_j + bias)`` in O(len(x) * chunk) memory."""
    return _SoftplusLogitSum.apply(x, y, scale, bias, int(chunk))


@register_loss("siglip")
class SigLipLoss(ContrastiveLoss):
    """Sigmoid pairwise loss with a learnable bias, averaged over modality pairs."""

    def __init__(
        self, bias_init: float = -10.0, chunk_size: int = 1024, gather: bool = True
    ) -> None:
        super().__init__(gather=gather)
        self.bias = nn.Parameter(torch.tensor(float(bias_init)))
        self.chunk_size = int(check_positive(chunk_size, "loss.chunk_size"))

    def compute(self, batch: GlobalBatch, logit_scale: Tensor) -> LossOutput:
        bias = self.bias.to(logit_scale.dtype)
        terms = TermSum(batch)
        for a, b in itertools.combinations(batch.names, 2):
            rows = batch.rows_with(a, b)
            if rows.count < 2:
                terms.add(pair_name(a, b), None)
                continue
            x, y = rows.mine(rows.take(batch.emb[a])), rows.take(batch.emb[b])
            positive = logit_scale * (x * rows.mine(y)).sum(-1) + bias
            total = softplus_logit_sum(x, y, logit_scale, bias, self.chunk_size) - positive.sum()
            terms.add(pair_name(a, b), batch.share(total, rows.count))
        return terms.mean()
