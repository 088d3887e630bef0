"""DHN-NCE: decoupled InfoNCE with hardness-weighted negatives.

For a pair (v, t) over n rows, with ``l_ij = v_i . t_j / tau``::

    L_{v->t} = -(1/n) sum_i log[ e^{l_ii} / sum_{j != i} w_ij e^{l_ij} ]
    w_ij     = (n - 1) e^{beta l_ij} / sum_{k != i} e^{beta l_ik}

plus the symmetric ``L_{t->v}`` (same with ``l^T``); the loss is the sum of both directions,
averaged over modality pairs. In log space each row term is::

    -l_ii + log(n - 1) + logsumexp_{j != i}((1 + beta) l_ij) - logsumexp_{j != i}(beta l_ij)

The positive is not in the denominator (decoupled) and the weights are part of the formula, so
the gradient flows through them. ``tau`` (default 0.6) and ``beta`` (default 0.15) belong to the
loss; the passed ``logit_scale`` is not used.
"""

from __future__ import annotations

import itertools
import math

from torch import Tensor

from medtriad.errors import ConfigError
from medtriad.losses.base import (
    ContrastiveLoss,
    LossOutput,
    TermSum,
    check_positive,
    pair_name,
    register_loss,
)
from medtriad.losses.distributed import GlobalBatch

__all__ = ["DhnNceLoss", "dhn_nce_rows"]


def dhn_nce_rows(logits: Tensor, labels: Tensor, beta: float) -> Tensor:
    """Per-row DHN-NCE terms of (rows, n) logits ``l = v . t / tau``, positives at ``labels``."""
    n = logits.shape[1]
    index = labels[:, None]
    positive = logits.gather(1, index).squeeze(1)
    # the scaled copies are fresh and unused by backward, so the diagonal is masked in place
    hard = ((1 + beta) * logits).scatter_(1, index, float("-inf")).logsumexp(dim=1)
    norm = (beta * logits).scatter_(1, index, float("-inf")).logsumexp(dim=1)
    return -positive + math.log(n - 1) + hard - norm


@register_loss("dhn_nce")
class DhnNceLoss(ContrastiveLoss):
    """DHN-NCE over every pair of modalities (fixed temperature ``tau``, hardness ``beta``)."""

    def __init__(self, tau: float = 0.6, beta: float = 0.15, gather: bool = True) -> None:
        super().__init__(gather=gather)
        self.tau = check_positive(tau, "loss.tau")
        if not isinstance(beta, (int, float)) or beta < 0:
            raise ConfigError("loss.beta", f"must be a non-negative number, got {beta!r}")
        self.beta = float(beta)

    def compute(self, batch: GlobalBatch, logit_scale: Tensor) -> LossOutput:
        terms = TermSum(batch)
        for a, b in itertools.combinations(batch.names, 2):
            rows = batch.rows_with(a, b)
            if rows.count < 2:
                terms.add(pair_name(a, b), None)
                continue
            v, t = rows.take(batch.emb[a]), rows.take(batch.emb[b])
            labels = rows.labels(v.device)
            logits = (rows.mine(v) / self.tau) @ t.T
            logits_t = logits.T if rows.is_whole else (rows.mine(t) / self.tau) @ v.T
            total = (
                dhn_nce_rows(logits, labels, self.beta).sum()
                + dhn_nce_rows(logits_t, labels, self.beta).sum()
            )
            terms.add(pair_name(a, b), batch.share(total, rows.count))
        return terms.mean()
