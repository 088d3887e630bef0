"""The loss contract, the registry and the helpers every loss shares.

Contract: ``loss = get_loss(name, **settings)``; ``out = loss(emb, present, logit_scale)`` with

* ``emb``: modality name -> (B, d) tensor (any names, at least two modalities, one shared d);
* ``present``: modality name -> (B,) bool tensor; a modality left out counts as present in
  every row;
* ``logit_scale``: the multiplier s itself (already exponentiated), a float or 0-dim tensor;
* ``out.total``: the scalar to back-propagate; ``out.parts``: named scalars for logging.

Missing modalities: a pairwise term (m1, m2) uses only the rows where both are present,
selected with a boolean index, so a masked-out sample is neither a row nor a negative and its
embedding receives exactly zero gradient (changing it changes nothing). A term with fewer than
two such rows is skipped: it contributes nothing and is not counted in the mean over terms.
Tuple terms (Symile, GRAM) use only rows with every modality of the tuple present. If every
term is skipped the total is a zero that is still connected to the embeddings.

Precision: half-precision embeddings (float16, bfloat16) are upcast to float32 and autocast is
switched off inside the loss, so logits, log-sum-exps and Gram determinants are always computed
in float32 or float64.

Regularisers attach through ``get_loss(name, regularizers={"uniformity": 0.1, ...})``, which
wraps the loss in :class:`~medtriad.losses.regularizers.RegularizedLoss`; the total then adds
``weight * value`` of each and ``parts`` holds each regulariser's unweighted value.

Under ``torch.distributed`` see :mod:`medtriad.losses.distributed` for the gathering and the
exact scaling of what each rank returns.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from medtriad.errors import ConfigError
from medtriad.losses.distributed import GlobalBatch, gather_batch

__all__ = [
    "ContrastiveLoss",
    "LossOutput",
    "TermSum",
    "available_losses",
    "get_loss",
    "register_loss",
]

logger = logging.getLogger(__name__)


@dataclass
class LossOutput:
    """A loss value: the scalar to back-propagate and the named pieces it was made of."""

    total: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)


class ContrastiveLoss(nn.Module):
    """Base of every registered loss: checks the inputs, gathers across ranks, then ``compute``.

    ``gather=False`` keeps a loss local to its rank even under ``torch.distributed`` (e.g. for a
    per-rank validation loss).
    """

    def __init__(self, *, gather: bool = True) -> None:
        super().__init__()
        self.gather = gather

    def forward(
        self,
        emb: Mapping[str, Tensor],
        present: Mapping[str, Tensor] | None,
        logit_scale: Tensor | float,
        **options: Any,
    ) -> LossOutput:
        emb_d, present_d = check_inputs(emb, present)
        first = next(iter(emb_d.values()))
        with torch.autocast(device_type=first.device.type, enabled=False):
            scale = as_scale(logit_scale, first)
            batch = gather_batch(emb_d, present_d, enabled=self.gather)
            return self.compute(batch, scale, **options)

    def compute(self, batch: GlobalBatch, logit_scale: Tensor) -> LossOutput:
        """The loss of this rank's rows against the global batch (see ``distributed``)."""
        raise NotImplementedError


L = TypeVar("L", bound=type[ContrastiveLoss])
_REGISTRY: dict[str, type[ContrastiveLoss]] = {}


def register_loss(name: str) -> Callable[[L], L]:
    """Class decorator adding a loss to the registry under ``name``."""

    def add(cls: L) -> L:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(
                f"loss name {name!r} is already registered to {_REGISTRY[name].__name__}"
            )
        _REGISTRY[name] = cls
        cls.registered_name = name  # type: ignore[attr-defined]
        return cls

    return add


def _load_builtin() -> None:
    importlib.import_module("medtriad.losses")


def available_losses() -> list[str]:
    """Names accepted by :func:`get_loss`, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def get_loss(name: str, **settings: Any) -> ContrastiveLoss:
    """Build the loss registered as ``name``.

    ``regularizers`` (mapping regulariser name -> weight) wraps the result in
    :class:`~medtriad.losses.regularizers.RegularizedLoss`. An unknown name or setting raises
    :class:`ConfigError` naming ``loss.<key>``.
    """
    _load_builtin()
    regularizers = settings.pop("regularizers", None)
    if name not in _REGISTRY:
        raise ConfigError(
            "loss.name", f"unknown loss {name!r}; available: {', '.join(sorted(_REGISTRY))}"
        )
    cls = _REGISTRY[name]
    accepted = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    for key in settings:
        if key not in accepted:
            raise ConfigError(
                f"loss.{key}", f"unknown setting for loss {name!r}; accepted: {', '.join(accepted)}"
            )
    loss = cls(**settings)
    if regularizers:
        from medtriad.losses.regularizers import RegularizedLoss

        loss = RegularizedLoss(loss, regularizers)
    return loss


# --------------------------------------------------------------------------- shared helpers


def check_inputs(
    emb: Mapping[str, Tensor], present: Mapping[str, Tensor] | None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Validate shapes and fill absent masks; raises ``ValueError`` on a malformed batch."""
    if len(emb) < 2:
        raise ValueError(f"a contrastive loss needs at least two modalities, got {list(emb)}")
    present = present or {}
    unknown = set(present) - set(emb)
    if unknown:
        raise ValueError(f"present masks for modalities without embeddings: {sorted(unknown)}")
    shapes = {m: tuple(t.shape) for m, t in emb.items()}
    first = next(iter(emb.values()))
    if any(len(s) != 2 for s in shapes.values()) or len(set(shapes.values())) != 1:
        raise ValueError(f"embeddings must all be (B, d) with the same B and d, got {shapes}")
    if not first.is_floating_point() or first.shape[0] == 0:
        raise ValueError("embeddings must be non-empty floating-point tensors")
    masks: dict[str, Tensor] = {}
    for m in emb:
        mask = present.get(m)
        if mask is None:
            mask = torch.ones(first.shape[0], dtype=torch.bool, device=first.device)
        elif mask.dtype != torch.bool or tuple(mask.shape) != (first.shape[0],):
            raise ValueError(
                f"present[{m!r}] must be a ({first.shape[0]},) bool tensor, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        masks[m] = mask.to(first.device)
    if first.dtype in (torch.float16, torch.bfloat16):
        return {m: t.float() for m, t in emb.items()}, masks
    return dict(emb), masks


def as_scale(logit_scale: Tensor | float, like: Tensor) -> Tensor:
    """The logit multiplier as a 0-dim tensor of the embeddings' dtype (gradient kept)."""
    if isinstance(logit_scale, Tensor):
        if logit_scale.numel() != 1:
            raise ValueError(f"logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")
        return logit_scale.reshape(()).to(device=like.device, dtype=like.dtype)
    return torch.tensor(float(logit_scale), dtype=like.dtype, device=like.device)


class TermSum:
    """Collects named terms; ``mean()`` averages the counted terms, ``sum()`` adds them."""

    def __init__(self, batch: GlobalBatch) -> None:
        self.batch = batch
        self.parts: dict[str, Tensor] = {}

    def add(self, name: str, value: Tensor | None) -> None:
        if value is None:
            logger.debug("loss term %s skipped: fewer than two usable rows", name)
            return
        self.parts[name] = value

    def _empty(self) -> LossOutput:
        logger.debug("every loss term was skipped; returning a connected zero")
        return LossOutput(self.batch.zero(), dict(self.parts))

    def mean(self) -> LossOutput:
        if not self.parts:
            return self._empty()
        return LossOutput(torch.stack(list(self.parts.values())).mean(), dict(self.parts))

    def sum(self) -> LossOutput:
        if not self.parts:
            return self._empty()
        return LossOutput(torch.stack(list(self.parts.values())).sum(), dict(self.parts))


def check_positive(value: float, key: str) -> float:
    """Raise ``ConfigError`` unless ``value`` is a positive number."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(key, f"must be a positive number, got {value!r}")
    return float(value)


def check_anchor(anchor: str, names: tuple[str, ...]) -> None:
    """Raise ``ConfigError`` when the anchor modality is not in the batch."""
    if anchor not in names:
        raise ConfigError(
            "loss.anchor", f"anchor modality {anchor!r} is not among the embeddings {list(names)}"
        )


def pair_name(a: str, b: str) -> str:
    """Key of a pairwise term in ``parts``."""
    return f"{a}-{b}"
