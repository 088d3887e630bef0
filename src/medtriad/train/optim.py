"""AdamW with parameter groups, per-modality learning rates, freezing, warmup + cosine."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

NO_DECAY_HINTS = ("bias", "norm", "bn", "logit_scale", "cls_token", "register_tokens", "pos_embed", "pos_emb", "embeddings.LayerNorm")


def freeze_by_glob(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Set ``requires_grad=False`` on every parameter whose name matches a glob; returns them."""
    patterns = list(patterns)
    frozen = []
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim <= 1 or any(h in name for h in NO_DECAY_HINTS)


def _modality(name: str, modalities: Iterable[str]) -> str | None:
    parts = name.split(".")
    for m in modalities:
        if m in parts[:3]:
            return m
    return None


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, lr_mult: Mapping[str, float] | None = None
) -> list[dict[str, object]]:
    """Trainable parameters split by (modality, decay): no decay on norms, biases, the logit
    scale, tokens and position embeddings; each modality's learning rate times its multiplier."""
    lr_mult = dict(lr_mult or {})
    groups: dict[tuple[str, bool], dict[str, object]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        m = _modality(name, lr_mult) or "other"
        decay = not _no_decay(name, p)
        g = groups.setdefault(
            (m, decay),
            {"params": [], "names": [], "lr": lr * lr_mult.get(m, 1.0), "weight_decay": weight_decay if decay else 0.0,
             "group": f"{m}/{'decay' if decay else 'no_decay'}"},
        )
        g["params"].append(p)  # type: ignore[union-attr]
        g["names"].append(name)  # type: ignore[union-attr]
    for g in groups.values():
        g["base_lr"] = g["lr"]
    return list(groups.values())


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.98),
    lr_mult: Mapping[str, float] | None = None,
) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, lr, weight_decay, lr_mult), lr=lr, betas=betas, eps=1e-6)


def lr_factor(step: int, warmup: int, total: int, min_factor: float = 0.0) -> float:
    """Linear warmup for `warmup` steps, then cosine decay to `min_factor` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor
