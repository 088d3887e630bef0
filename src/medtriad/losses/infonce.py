"""Symmetric InfoNCE losses: ``clip`` (every pair of modalities) and ``more`` (report-anchored).

For a pair (x, y) over the n rows where both are present, with logits ``s * x_i . y_j``::

    InfoNCE(x, y) = 1/2 [ CE(logits, diag) + CE(logits^T, diag) ]      (each CE a mean over rows)

* ``clip``: mean of InfoNCE over every unordered pair of modalities (terms with < 2 rows are
  skipped and not counted);
* ``more``: the anchor (default ``report``) against every other modality, summed.

``label_smoothing`` (in [0, 1)) mixes the one-hot target with a uniform one over the n
candidates, as in ``torch.nn.functional.cross_entropy``. The logit scale is the model's
parameter; the trainer keeps ``ln s`` in ``[0, ln 100]`` with :func:`clamp_logit_scale_` after
each optimiser step.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtriad.errors import ConfigError
from medtriad.losses.base import (
    ContrastiveLoss,
    LossOutput,
    TermSum,
    check_anchor,
    pair_name,
    register_loss,
)
from medtriad.losses.distributed import GlobalBatch

__all__ = ["ClipLoss", "MoreLoss", "clamp_logit_scale_", "symmetric_infonce"]


def clamp_logit_scale_(log_scale: nn.Parameter | Tensor, max_scale: float = 100.0) -> None:
    """Clamp a learnable ``ln s`` in place to ``[0, ln max_scale]`` (call after each step)."""
    if max_scale < 1:
        raise ConfigError("model.logit_scale_max", f"must be at least 1, got {max_scale}")
    with torch.no_grad():
        log_scale.clamp_(0.0, math.log(max_scale))


def symmetric_infonce(
    batch: GlobalBatch, a: str, b: str, scale: Tensor, label_smoothing: float = 0.0
) -> Tensor | None:
    """This rank's share of InfoNCE(a, b); ``None`` when fewer than two rows hold both."""
    rows = batch.rows_with(a, b)
    if rows.count < 2:
        return None
    x, y = rows.take(batch.emb[a]), rows.take(batch.emb[b])
    labels = rows.labels(x.device)
    # the scale multiplies the (rows, d) operand, so no extra (rows, n) tensor is kept for its gradient
    logits = (scale * rows.mine(x)) @ y.T
    # one process holds every row: the reverse direction is the transpose
    logits_t = logits.T if rows.is_whole else (scale * rows.mine(y)) @ x.T
    ce = F.cross_entropy(logits, labels, reduction="sum", label_smoothing=label_smoothing)
    ce_t = F.cross_entropy(logits_t, labels, reduction="sum", label_smoothing=label_smoothing)
    return batch.share((ce + ce_t) / 2, rows.count)


def _check_smoothing(value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError("loss.label_smoothing", f"must be in [0, 1), got {value!r}")
    return float(value)


@register_loss("clip")
class ClipLoss(ContrastiveLoss):
    """Mean symmetric InfoNCE over every pair of present modalities."""

    def __init__(self, label_smoothing: float = 0.0, gather: bool = True) -> None:
        super().__init__(gather=gather)
        self.label_smoothing = _check_smoothing(label_smoothing)

    def compute(self, batch: GlobalBatch, logit_scale: Tensor) -> LossOutput:
        terms = TermSum(batch)
        for a, b in itertools.combinations(batch.names, 2):
            terms.add(
                pair_name(a, b), symmetric_infonce(batch, a, b, logit_scale, self.label_smoothing)
            )
        return terms.mean()


@register_loss("more")
class MoreLoss(ContrastiveLoss):
    """Anchor-centred symmetric InfoNCE (MoRE): anchor<->m for every other modality, summed."""

    def __init__(
        self, anchor: str = "report", label_smoothing: float = 0.0, gather: bool = True
    ) -> None:
        super().__init__(gather=gather)
        self.anchor = anchor
        self.label_smoothing = _check_smoothing(label_smoothing)

    def compute(self, batch: GlobalBatch, logit_scale: Tensor) -> LossOutput:
        check_anchor(self.anchor, batch.names)
        terms = TermSum(batch)
        for m in batch.names:
            if m != self.anchor:
                value = symmetric_infonce(batch, self.anchor, m, logit_scale, self.label_smoothing)
                terms.add(pair_name(self.anchor, m), value)
        return terms.sum()
