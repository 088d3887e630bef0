"""Projection heads from encoder features to the shared embedding space.

``more`` is MoRE's head: Linear -> BatchNorm -> ReLU -> Linear -> BatchNorm. The linear layers
carry no bias, since each is followed by a BatchNorm whose shift makes a bias redundant.
``linear`` is one Linear layer (as CLIP).
"""

from __future__ import annotations

from torch import Tensor, nn

from medtriad.config import HeadConfig

__all__ = ["LinearHead", "MoreHead", "build_head"]


class MoreHead(nn.Module):
    """Linear-BN-ReLU-Linear-BN on (N, in_dim) features."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or in_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, out_dim, bias=False),
            nn.BatchNorm1d(out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class LinearHead(nn.Module):
    """One Linear layer on (N, in_dim) features."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


def build_head(cfg: HeadConfig, in_dim: int, out_dim: int) -> nn.Module:
    """The head a config names, from `in_dim` encoder features to `out_dim` embeddings."""
    if cfg.type == "more":
        return MoreHead(in_dim, out_dim, cfg.hidden)
    return LinearHead(in_dim, out_dim)
