"""ECG transformer: convolutional patches over time, a class token, DropKey transformer blocks.

The stem follows MoRE: Conv1d(leads -> C, kernel = stride = patch), ReLU, BatchNorm, then
Conv1d(C -> D, kernel k, stride 1, same padding), ReLU, BatchNorm; a 12 x 1000 record (100 Hz,
10 s) with patch 5 gives 200 tokens. Position embeddings are sized from the configured input
length and resampled (linearly) when a record of another length arrives. Missing leads, given by
a (B, leads) boolean mask, are zeroed before the stem so that whatever a reader left there never
reaches the model.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtriad.config import EcgEncoderConfig
from medtriad.models.vit import POOLS, DropKeyTransformer, init_weights, pool_tokens

__all__ = ["EcgTransformer", "build_ecg_encoder"]


class EcgTransformer(nn.Module):
    """(B, leads, T) ECG -> pooled features (B, D): the class token, or the mean time token."""

    def __init__(
        self,
        length: int = 1000,
        leads: int = 12,
        patch_size: int = 5,
        stem_channels: int = 256,
        kernel_size: int = 5,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropkey: float = 0.0,
        schedule: str = "linear_decrease",
        pool: str = "cls",
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.pool = pool
        self.n_prefix = 1
        self.dim = dim
        self.leads = leads
        self.patch_size = patch_size
        self.n_tokens = length // patch_size
        self.stem = nn.Sequential(
            nn.Conv1d(leads, stem_channels, patch_size, stride=patch_size),
            nn.ReLU(),
            nn.BatchNorm1d(stem_channels),
            nn.Conv1d(stem_channels, dim, kernel_size, stride=1, padding=kernel_size // 2),
            nn.ReLU(),
            nn.BatchNorm1d(dim),
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.n_tokens, dim))
        self.transformer = DropKeyTransformer(dim, depth, heads, mlp_ratio, dropkey, schedule)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        init_weights(self.transformer)

    def _pos(self, n: int) -> Tensor:
        if n == self.n_tokens:
            return self.pos_embed
        grid = F.interpolate(
            self.pos_embed[:, 1:].transpose(1, 2), size=n, mode="linear", align_corners=False
        )
        return torch.cat([self.pos_embed[:, :1], grid.transpose(1, 2)], dim=1)

    def forward_tokens(self, x: Tensor, lead_mask: Tensor | None = None) -> Tensor:
        """(B, leads, T) -> normalised tokens (B, 1 + T // patch, D); token 0 is the class token."""
        if lead_mask is not None:
            x = x * lead_mask.to(device=x.device, dtype=x.dtype).unsqueeze(-1)
        tokens = self.stem(x).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self._pos(
            tokens.shape[1]
        )
        return self.transformer(tokens)

    def pool_tokens(self, tokens: Tensor) -> Tensor:
        """(B, 1 + N, D) tokens -> (B, D) features with this encoder's ``pool``."""
        return pool_tokens(tokens, self.pool)

    def forward(self, x: Tensor, lead_mask: Tensor | None = None) -> Tensor:
        return self.pool_tokens(self.forward_tokens(x, lead_mask))

    def capture_attention(self) -> AbstractContextManager[list[Tensor]]:
        """See `DropKeyTransformer.capture_attention`."""
        return self.transformer.capture_attention()


def build_ecg_encoder(cfg: EcgEncoderConfig, length: int, key: str = "model.ecg") -> EcgTransformer:
    """An `EcgTransformer` from its config (``length`` in samples, resolved by the caller)."""
    dim, depth, heads = cfg.dims(key)
    return EcgTransformer(
        length,
        cfg.leads,
        cfg.patch_size,
        cfg.stem_channels,
        cfg.kernel_size,
        dim,
        depth,
        heads,
        cfg.mlp_ratio,
        cfg.dropkey,
        cfg.dropkey_schedule,
        cfg.pool,
    )
