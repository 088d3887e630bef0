"""Vision Transformer for 1-channel X-rays, and the DropKey transformer blocks it shares with ECG.

Written in plain PyTorch around `F.scaled_dot_product_attention`.

DropKey (Xu et al., CVPR 2023) regularises attention by masking keys *before* the softmax: in
training, each attention logit of layer ``l`` is replaced by the dtype's most negative value with
probability ``p_l``, so the softmax renormalises over the keys that remain. The mask is an
additive float mask handed to SDPA. A query's own key (the diagonal) is never masked, so no row
can lose every key; the fraction of masked off-diagonal logits is ``p_l``. The schedule over
layers (`dropkey_rates`) is ``constant``, ``linear_decrease`` (``p`` at the first layer to 0 at the
last, MoRE's intent) or ``linear_increase``. Nothing is masked in eval mode.

Attention probabilities can be captured for explanations (`DropKeyTransformer.capture_attention`):
the blocks then compute attention explicitly and store each layer's (B, heads, N, N) map, with
its gradient retained when it has one.

`load_timm_weights` reads a timm-format ViT checkpoint (``.safetensors`` or ``.pth``) by key
mapping, without importing timm: RGB patch weights are summed to one channel (a grey image
replicated to RGB gives the same response) and position embeddings are resampled (bicubic) to
this model's patch grid.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtriad.config import VitConfig
from medtriad.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = [
    "Block",
    "DropKeyTransformer",
    "VisionTransformer",
    "build_vit",
    "dropkey_mask",
    "dropkey_rates",
    "load_timm_weights",
    "locality_mask",
    "pool_tokens",
    "resample_pos_embed",
    "timm_to_vit_state",
]


# --------------------------------------------------------------------------- DropKey


def dropkey_rates(p: float, depth: int, schedule: str) -> list[float]:
    """Per-layer DropKey probabilities for `depth` layers under `schedule`."""
    if depth == 1 or schedule == "constant":
        return [float(p)] * depth
    ramp = [i / (depth - 1) for i in range(depth)]
    if schedule == "linear_decrease":
        return [p * (1.0 - r) for r in ramp]
    if schedule == "linear_increase":
        return [p * r for r in ramp]
    raise ValueError(f"unknown DropKey schedule {schedule!r}")


def dropkey_mask(
    batch: int,
    heads: int,
    n: int,
    p: float,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Additive (batch, heads, n, n) mask: the dtype's minimum with probability `p` off the diagonal, else 0."""
    drop = torch.rand(batch, heads, n, n, device=device, generator=generator) < p
    drop.diagonal(dim1=-2, dim2=-1).fill_(False)
    return drop.to(dtype) * torch.finfo(dtype).min


def locality_mask(
    grid: tuple[int, int], n_prefix: int, radius: int, *, device: torch.device | str | None = None
) -> Tensor:
    """Additive (n, n) mask, n = n_prefix + h * w, for neighbourhood attention on a patch grid.

    A patch reads the patches within `radius` rows and columns of it (Chebyshev distance) and
    nothing else, not the class token or the registers: whatever a patch token holds comes from
    its neighbourhood, which grows by `radius` per layer. The prefix tokens read every token."""
    h, w = grid
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    near = ((rows[:, None] - rows[None]).abs() <= radius) & ((cols[:, None] - cols[None]).abs() <= radius)
    n = n_prefix + h * w
    ok = torch.ones(n, n, dtype=torch.bool, device=device)
    ok[n_prefix:, :n_prefix] = False
    ok[n_prefix:, n_prefix:] = near
    return torch.zeros(n, n, device=device).masked_fill(~ok, torch.finfo(torch.float32).min)


# --------------------------------------------------------------------------- blocks


class Attention(nn.Module):
    """Multi-head self-attention through SDPA, with an optional DropKey mask."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: Tensor,
        dropkey: float = 0.0,
        store: list[Tensor] | None = None,
        allowed: Tensor | None = None,
    ) -> Tensor:
        """`allowed`: optional (n, n) additive mask (0 where a query may read a key, the dtype's
        minimum where not), combined with DropKey's."""
        b, n, d = x.shape
        q, k, v = (
            self.qkv(x)
            .reshape(b, n, 3, self.heads, d // self.heads)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        mask = None if allowed is None else allowed.to(q.dtype)
        if self.training and dropkey > 0:
            drop = dropkey_mask(b, self.heads, n, dropkey, dtype=q.dtype, device=q.device)
            mask = drop if mask is None else torch.maximum(drop + mask, drop.new_tensor(torch.finfo(q.dtype).min))
        if store is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            logits = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
            if mask is not None:
                logits = logits + mask
            probs = logits.softmax(dim=-1)
            if probs.requires_grad:
                probs.retain_grad()
            store.append(probs)
            out = probs @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self,
        x: Tensor,
        dropkey: float = 0.0,
        store: list[Tensor] | None = None,
        allowed: Tensor | None = None,
    ) -> Tensor:
        x = x + self.attn(self.norm1(x), dropkey, store, allowed)
        return x + self.mlp(self.norm2(x))


class DropKeyTransformer(nn.Module):
    """A stack of `Block`s with a per-layer DropKey schedule and a final LayerNorm."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropkey: float = 0.0,
        schedule: str = "constant",
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.dropkey_rates = dropkey_rates(dropkey, depth, schedule)
        self._store: list[Tensor] | None = None

    def forward(self, x: Tensor, allowed: Tensor | None = None) -> Tensor:
        """`allowed`: an optional (n, n) additive attention mask for every layer (see `Attention`)."""
        for block, p in zip(self.blocks, self.dropkey_rates):
            x = block(x, p, self._store, allowed)
        return self.norm(x)

    @contextmanager
    def capture_attention(self) -> Iterator[list[Tensor]]:
        """Within the block, forwards append each layer's attention probabilities to the yielded list."""
        maps: list[Tensor] = []
        previous, self._store = self._store, maps
        try:
            yield maps
        finally:
            self._store = previous


def init_weights(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) linear weights, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- stems


class PatchStem(nn.Module):
    """Non-overlapping patches: one convolution with kernel = stride = patch size."""

    def __init__(self, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class ConvStem(nn.Module):
    """log2(patch) stride-2 3x3 conv-BN-ReLU layers doubling the channels, then a 1x1 conv to `dim`.

    Early convolutions give the transformer local features and a smoother optimisation than a
    single patchifying convolution (Xiao et al., NeurIPS 2021), at the same token count.
    """

    def __init__(self, dim: int, patch_size: int) -> None:
        super().__init__()
        steps = int(math.log2(patch_size))
        layers: list[nn.Module] = []
        c_in = 1
        for i in range(steps):
            c_out = max(dim >> (steps - i), 8)
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, dim, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


# --------------------------------------------------------------------------- ViT


def resample_pos_embed(pos: Tensor, new_grid: tuple[int, int], n_prefix: int = 1) -> Tensor:
    """Bicubic resampling of (1, prefix + h*w, D) position embeddings to `new_grid`; prefix rows kept."""
    prefix, grid = pos[:, :n_prefix], pos[:, n_prefix:]
    side = math.isqrt(grid.shape[1])
    if side * side != grid.shape[1]:
        raise ValueError(f"{grid.shape[1]} position embeddings do not form a square grid")
    if (side, side) == tuple(new_grid):
        return pos
    d = grid.shape[-1]
    grid = grid.reshape(1, side, side, d).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False, antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d).to(pos.dtype)
    return torch.cat([prefix, grid], dim=1)


POOLS: tuple[str, ...] = ("cls", "mean")


def pool_tokens(tokens: Tensor, pool: str, prefix: int = 1) -> Tensor:
    """(B, prefix + N, D) -> (B, D): token 0 (``cls``) or the mean of the N patch tokens (``mean``).

    The first ``prefix`` tokens are the class token and any register tokens. With ``mean`` they
    still run through the blocks (registers the patches may read) but do not reach the embedding.
    """
    return tokens[:, 0] if pool == "cls" else tokens[:, prefix:].mean(dim=1)


class VisionTransformer(nn.Module):
    """ViT on (B, 1, H, W) images: stem -> class token + position embeddings -> DropKey blocks."""

    def __init__(
        self,
        image_size: int = 64,
        patch_size: int = 8,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        stem: str = "patch",
        dropkey: float = 0.0,
        schedule: str = "linear_decrease",
        pool: str = "cls",
        registers: int = 0,
        attention_radius: int | None = None,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if registers < 0:
            raise ValueError(f"registers must be >= 0, got {registers}")
        if attention_radius is not None and attention_radius < 0:
            raise ValueError(f"attention_radius must be >= 0 or None, got {attention_radius}")
        self.dim = dim
        self.pool = pool
        self.n_prefix = 1 + registers
        self.attention_radius = attention_radius
        self._allowed: dict[tuple[int, int, str], Tensor] = {}
        self.patch_size = patch_size
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.stem = ConvStem(dim, patch_size) if stem == "conv" else PatchStem(dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, registers, dim)) if registers else None
        self.transformer = DropKeyTransformer(dim, depth, heads, mlp_ratio, dropkey, schedule)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.register_tokens is not None:
            nn.init.trunc_normal_(self.register_tokens, std=0.02)
        init_weights(self.transformer)

    def forward_tokens(self, x: Tensor) -> Tensor:
        """(B, 1, H, W) -> normalised tokens (B, n_prefix + h*w, D).

        Token 0 is the class token, then come the register tokens (no position), then the
        patches in row-major order.
        """
        patches = self.stem(x)
        grid = tuple(patches.shape[-2:])
        tokens = patches.flatten(2).transpose(1, 2)
        pos = self.pos_embed if grid == self.grid else resample_pos_embed(self.pos_embed, grid)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + pos
        if self.register_tokens is not None:
            regs = self.register_tokens.expand(len(tokens), -1, -1)
            tokens = torch.cat([tokens[:, :1], regs, tokens[:, 1:]], dim=1)
        return self.transformer(tokens, self._locality(grid, tokens.device))

    def _locality(self, grid: tuple[int, ...], device: torch.device) -> Tensor | None:
        if self.attention_radius is None:
            return None
        key = (grid[0], grid[1], str(device))
        if key not in self._allowed:
            self._allowed[key] = locality_mask(
                (grid[0], grid[1]), self.n_prefix, self.attention_radius, device=device
            )
        return self._allowed[key]

    def pool_tokens(self, tokens: Tensor) -> Tensor:
        """(B, n_prefix + N, D) tokens -> (B, D) features with this encoder's ``pool``."""
        return pool_tokens(tokens, self.pool, self.n_prefix)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, H, W) -> pooled features (B, D): the class token, or the mean patch token."""
        return self.pool_tokens(self.forward_tokens(x))

    def capture_attention(self) -> AbstractContextManager[list[Tensor]]:
        """See `DropKeyTransformer.capture_attention`."""
        return self.transformer.capture_attention()


def build_vit(cfg: VitConfig, image_size: int, key: str = "model.cxr") -> VisionTransformer:
    """A `VisionTransformer` from its config (``image_size`` resolved by the caller)."""
    dim, depth, heads = cfg.dims(key)
    if image_size % cfg.patch_size:
        raise ConfigError(
            f"{key}.patch_size", f"{cfg.patch_size} does not divide the image size {image_size}"
        )
    model = VisionTransformer(
        image_size,
        cfg.patch_size,
        dim,
        depth,
        heads,
        cfg.mlp_ratio,
        cfg.stem,
        cfg.dropkey,
        cfg.dropkey_schedule,
        cfg.pool,
        cfg.registers,
        cfg.attention_radius,
    )
    if cfg.pretrained:
        if cfg.stem != "patch":
            raise ConfigError(f"{key}.stem", "timm weights fit the 'patch' stem only")
        load_timm_weights(model, cfg.pretrained)
    return model


# --------------------------------------------------------------------------- timm weights

_TIMM_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), repl)
    for pattern, repl in (
        (r"^patch_embed\.proj\.(weight|bias)$", r"stem.proj.\1"),
        (r"^(cls_token|pos_embed)$", r"\1"),
        (
            r"^blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$",
            r"transformer.blocks.\1.\2.\3",
        ),
        (r"^norm\.(weight|bias)$", r"transformer.norm.\1"),
    )
)
_TIMM_IGNORED = re.compile(r"^(head|head_drop|fc_norm)\.")


def _read_state(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise DataError(path, "weights file does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader failure means an unusable file
        raise DataError(path, f"cannot read weights: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataError(path, "does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def timm_to_vit_state(
    state: Mapping[str, Tensor], model: VisionTransformer, source: str | Path = "<state>"
) -> dict[str, Tensor]:
    """Map a timm ViT state dict onto `model`'s names and shapes (grey patches, resampled grid)."""
    out: dict[str, Tensor] = {}
    unexpected = []
    for name, value in state.items():
        if _TIMM_IGNORED.match(name):
            continue
        for pattern, repl in _TIMM_RENAMES:
            if pattern.match(name):
                out[pattern.sub(repl, name)] = value
                break
        else:
            unexpected.append(name)
    if unexpected:
        raise DataError(source, f"keys that this ViT has no place for: {unexpected[:5]}")
    weight = out.get("stem.proj.weight")
    if weight is not None:
        if weight.ndim != 4 or weight.shape[-1] != model.patch_size:
            raise DataError(
                source,
                f"patch weights {tuple(weight.shape)} do not match patch size {model.patch_size}",
            )
        out["stem.proj.weight"] = weight.sum(dim=1, keepdim=True)
    pos = out.get("pos_embed")
    if pos is not None:
        n_grid = pos.shape[1]
        side = math.isqrt(n_grid)
        if side * side != n_grid:  # a class-token row in front of the grid
            n_grid -= 1
            side = math.isqrt(n_grid)
            if side * side != n_grid:
                raise DataError(
                    source,
                    f"pos_embed of {pos.shape[1]} rows is not a square grid (+1 class token)",
                )
        else:  # timm's no_embed_class: the class token had no position embedding
            pos = torch.cat([pos.new_zeros(1, 1, pos.shape[-1]), pos], dim=1)
        out["pos_embed"] = resample_pos_embed(pos, model.grid)
    own = model.state_dict()
    missing = sorted(set(own) - set(out))
    if missing:
        raise DataError(source, f"missing weights for {missing[:5]}")
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in out.items()
        if v.shape != own[k].shape
    ]
    if wrong:
        raise DataError(source, f"shapes differ from the configured ViT: {wrong[:3]}")
    return out


def load_timm_weights(model: VisionTransformer, path: str | Path) -> VisionTransformer:
    """Load a timm-format ViT checkpoint (``.safetensors`` or ``.pth``) into `model` in place."""
    p = Path(path)
    model.load_state_dict(timm_to_vit_state(_read_state(p), model, p))
    log.info("loaded timm ViT weights from %s", p)
    return model
