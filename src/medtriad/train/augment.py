"""Batch augmentation on the training device: one vectorised call per modality, no sample loop."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from medtriad.config import AugmentConfig


def augment_cxr(x: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    """Random resized crop (aspect kept) + rotation via one affine grid, then brightness,
    contrast and Gaussian noise; values stay in [0, 1]. x: (B, 1, H, W)."""
    b = x.shape[0]
    dev = x.device

    def u(lo: float, hi: float, n: int = b) -> Tensor:
        return (torch.rand(n, generator=gen) * (hi - lo) + lo).to(dev)

    scale = u(cfg.cxr_crop_scale, 1.0).sqrt()  # side fraction of the crop
    angle = u(-cfg.cxr_rotate_deg, cfg.cxr_rotate_deg) * (math.pi / 180.0)
    tx = u(-1.0, 1.0) * (1.0 - scale)
    ty = u(-1.0, 1.0) * (1.0 - scale)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin, tx], -1), torch.stack([sin, cos, ty], -1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    bright = u(-cfg.cxr_brightness, cfg.cxr_brightness).view(b, 1, 1, 1)
    contrast = u(1.0 - cfg.cxr_contrast, 1.0 + cfg.cxr_contrast).view(b, 1, 1, 1)
    mean = y.mean(dim=(2, 3), keepdim=True)
    y = (y - mean) * contrast + mean + bright
    if cfg.cxr_noise > 0:
        y = y + cfg.cxr_noise * torch.randn(y.shape, generator=gen).to(dev)
    return y.clamp_(0.0, 1.0)


def augment_ecg(x: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    """Amplitude scaling per record, a circular time shift (fraction of the record) and noise."""
    b, _, t = x.shape
    dev = x.device
    scale = (1.0 + (torch.rand(b, generator=gen) * 2 - 1) * cfg.ecg_scale).to(dev).view(b, 1, 1)
    shift = (torch.rand(b, generator=gen) * cfg.ecg_shift * t).long().to(dev)
    idx = (torch.arange(t, device=dev).view(1, t) + shift.view(b, 1)) % t
    y = torch.gather(x, 2, idx.view(b, 1, t).expand_as(x)) * scale
    if cfg.ecg_noise > 0:
        y = y + cfg.ecg_noise * torch.randn(y.shape, generator=gen).to(dev)
    return y
