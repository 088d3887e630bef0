"""Alignment and uniformity regularisers, addable with weights to any loss.

* ``uniformity``: ``U(X) = log mean_{i<j} exp(-2 ||x_i - x_j||^2)`` per modality over its
  present rows, averaged over modalities;
* ``cross_uniformity``: ``log mean_{i != j} exp(-2 ||x_i - y_j||^2)`` per pair of modalities
  over the rows where both are present, averaged over pairs;
* ``alignment``: ``mean_i ||x_i - y_i||^2`` per pair of modalities over the rows where both are
  present, averaged over pairs.

Squared distances are expanded as ``|x|^2 + |y|^2 - 2 x.y`` (no unit-norm assumption); the
uniformity terms are log-sum-exps, so they never underflow. A term with fewer than two rows
(one for alignment) is skipped.

Attach with ``get_loss("clip", regularizers={"uniformity": 0.1, "alignment": 0.5})``: the total
becomes ``loss + sum weight * value`` and ``parts[name]`` holds each unweighted value.

Distributed: the uniformity terms are logs of global sums, not means of row terms. Each rank
sums its rows against all columns (``S_r``), the global log-sum ``lse_g`` comes from a gather
of the ranks' scalars (no gradient), and the rank returns
``U + W * (S_r / S_g - stop_gradient(S_r / S_g))``: the value is the full-batch U on every rank
and the gradients summed over ranks are W times the full-batch gradient, as for the losses.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from medtriad.errors import ConfigError
from medtriad.losses.base import ContrastiveLoss, LossOutput
from medtriad.losses.distributed import GlobalBatch, RowSet, all_gather_no_grad

__all__ = ["REGULARIZERS", "RegularizedLoss", "alignment", "cross_uniformity", "uniformity"]


def _squared_distances(x: Tensor, y: Tensor) -> Tensor:
    return (x * x).sum(-1)[:, None] + (y * y).sum(-1)[None, :] - 2 * (x @ y.T)


def _log_mean_exp_off_diagonal(batch: GlobalBatch, rows: RowSet, x: Tensor, y: Tensor) -> Tensor:
    """This rank's share of ``log mean_{i != j} exp(-2 ||x_i - y_j||^2)`` over selected rows."""
    labels = rows.labels(x.device)
    logits = (-2.0 * _squared_distances(rows.mine(x), y)).scatter(1, labels[:, None], float("-inf"))
    lse_local = logits.logsumexp(dim=(0, 1))
    lse_global = all_gather_no_grad(lse_local.detach().reshape(1)).logsumexp(dim=0)
    value = lse_global - math.log(rows.count * (rows.count - 1))
    ratio = torch.exp(lse_local - lse_global)
    return value + batch.world * (ratio - ratio.detach())


def _mean(values: list[Tensor]) -> Tensor | None:
    return torch.stack(values).mean() if values else None


def uniformity(batch: GlobalBatch) -> Tensor | None:
    """Mean over modalities of U(X) over each modality's present rows."""
    values = []
    for m in batch.names:
        rows = batch.rows_with(m)
        if rows.count >= 2:
            x = rows.take(batch.emb[m])
            values.append(_log_mean_exp_off_diagonal(batch, rows, x, x))
    return _mean(values)


def cross_uniformity(batch: GlobalBatch) -> Tensor | None:
    """Mean over modality pairs of ``log mean_{i != j} exp(-2 ||x_i - y_j||^2)``."""
    values = []
    for a, b in itertools.combinations(batch.names, 2):
        rows = batch.rows_with(a, b)
        if rows.count >= 2:
            values.append(
                _log_mean_exp_off_diagonal(
                    batch, rows, rows.take(batch.emb[a]), rows.take(batch.emb[b])
                )
            )
    return _mean(values)


def alignment(batch: GlobalBatch) -> Tensor | None:
    """Mean over modality pairs of ``mean_i ||x_i - y_i||^2`` over rows with both present."""
    values = []
    for a, b in itertools.combinations(batch.names, 2):
        rows = batch.rows_with(a, b)
        if rows.count >= 1:
            diff = rows.mine(rows.take(batch.emb[a])) - rows.mine(rows.take(batch.emb[b]))
            values.append(batch.share(diff.square().sum(), rows.count))
    return _mean(values)


REGULARIZERS: dict[str, Callable[[GlobalBatch], Tensor | None]] = {
    "uniformity": uniformity,
    "cross_uniformity": cross_uniformity,
    "alignment": alignment,
}


class RegularizedLoss(ContrastiveLoss):
    """A loss plus weighted regularisers; ``parts`` gains each regulariser's unweighted value."""

    def __init__(self, base: ContrastiveLoss, weights: Mapping[str, float]) -> None:
        super().__init__(gather=base.gather)
        if not isinstance(weights, Mapping):
            raise ConfigError(
                "loss.regularizers", f"expected a mapping name -> weight, got {weights!r}"
            )
        for name, weight in weights.items():
            if name not in REGULARIZERS:
                raise ConfigError(
                    f"loss.regularizers.{name}",
                    f"unknown regulariser; available: {', '.join(REGULARIZERS)}",
                )
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
                raise ConfigError(
                    f"loss.regularizers.{name}",
                    f"weight must be a non-negative number, got {weight!r}",
                )
        self.base = base
        self.weights = {name: float(w) for name, w in weights.items()}

    def compute(self, batch: GlobalBatch, logit_scale: Tensor, **options: Any) -> LossOutput:
        out = self.base.compute(batch, logit_scale, **options)
        total, parts = out.total, dict(out.parts)
        for name, weight in self.weights.items():
            value = REGULARIZERS[name](batch)
            if value is not None:
                parts[name] = value
                total = total + weight * value
        return LossOutput(total, parts)
