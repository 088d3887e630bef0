"""Batch normalisation over the global batch of all ranks, on any device.

torch's SyncBatchNorm refuses CPU tensors, so CPU (gloo) runs use `GlobalBatchNorm`: each rank
all-reduces its per-channel count, sum and sum of squares with a differentiable all-reduce, and
normalises with the global statistics. Training on K processes with batch B each then computes
exactly what one process computes with batch K*B. On CUDA torch's own SyncBatchNorm is used.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm (any input rank) whose training statistics span every rank's batch."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        n_local = x.numel() // x.shape[1]
        # statistics in float64: E[x^2] - E[x]^2 in float32 would lose digits that a
        # single-process BatchNorm keeps
        x64 = x.double()
        stats = torch.cat([x64.new_full((1,), float(n_local)), x64.sum(dim=dims), (x64 * x64).sum(dim=dims)])
        stats = dist_fn.all_reduce(stats)
        c = x.shape[1]
        n = stats[0]
        mean64 = stats[1 : 1 + c] / n
        var = (stats[1 + c :] / n - mean64 * mean64).clamp_min(0.0).to(x.dtype)
        mean = mean64.to(x.dtype)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * (n / (n - 1)).clamp_min(1.0) if n > 1 else var.detach()
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Replace every BatchNorm in `module` by its synchronised form for `device_type`."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            new.weight = module.weight
            new.bias = module.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(new, name, getattr(module, name))
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = convert_batchnorm(child, device_type)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


