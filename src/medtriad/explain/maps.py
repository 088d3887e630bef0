"""From token scores to maps over the inputs: patch grids, image pixels, ECG samples.

X-ray token maps live on the ViT's patch grid over the model input (S x S pixels, the image
resized with ``data.cxr.fit``). `upsample_grid` samples them bilinearly at the input's pixel
centres; `grid_to_native` samples them at the pixel centres of the *original* image, inverting
the aspect-kept resize (``pad``: letterbox bars; ``crop``: pixels cut off get NaN), so an
overlay lines up with the file the user gave. ECG token maps (one value per patch of samples)
are interpolated linearly to every sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "grid_to_native",
    "image_peak",
    "input_to_native_coords",
    "shift_image",
    "time_peak",
    "to_grid",
    "upsample_grid",
    "upsample_time",
]


def shift_image(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(..., H, W) images moved so that output pixel (r, c) shows input pixel (r + dy, c + dx),
    edge pixels repeated where that falls outside."""
    h, w = x.shape[-2:]
    rows = (torch.arange(h, device=x.device) + dy).clamp(0, h - 1)
    cols = (torch.arange(w, device=x.device) + dx).clamp(0, w - 1)
    return x[..., rows[:, None], cols[None, :]]


def to_grid(values: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """(..., h*w) token values, row-major, -> (..., h, w)."""
    h, w = grid
    values = np.asarray(values)
    if values.shape[-1] != h * w:
        raise ValueError(f"{values.shape[-1]} tokens do not fill a {h} x {w} grid")
    return values.reshape(*values.shape[:-1], h, w)


def _sample(
    grid_map: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    """Bilinear samples of (..., h, w) maps spanning an image of `size` pixels at pixel
    coordinates ``rows`` (H,) x ``cols`` (W,) of that image (edges clamped)."""
    g = torch.as_tensor(np.asarray(grid_map, dtype=np.float32))
    lead = g.shape[:-2]
    g = g.reshape(-1, 1, *g.shape[-2:])
    # normalised coordinates with align_corners=False: -1 and 1 are the outer pixel edges
    gy = torch.as_tensor((rows + 0.5) / size[0] * 2 - 1, dtype=torch.float32)
    gx = torch.as_tensor((cols + 0.5) / size[1] * 2 - 1, dtype=torch.float32)
    yy, xx = torch.meshgrid(gy, gx, indexing="ij")
    coords = torch.stack([xx, yy], dim=-1)[None].expand(len(g), -1, -1, -1)
    out = F.grid_sample(g, coords, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(*lead, len(rows), len(cols)).numpy()


def upsample_grid(grid_map: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Bilinear upsampling of (..., h, w) patch maps to the model input's (H, W) pixels."""
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return _sample(
        grid_map, np.arange(hw[0], dtype=np.float64), np.arange(hw[1], dtype=np.float64), hw
    )


def input_to_native_coords(
    native: Sequence[int], size: int | Sequence[int], fit: str = "pad"
) -> tuple[np.ndarray, np.ndarray]:
    """For each row and column of an original (H0, W0) image, its position in model-input pixels.

    Mirrors `medtriad.data.cxr.resize_cxr`: ``pad`` scales by min(H/H0, W/W0) and centres the
    result (offsets floored); ``crop`` scales by the max and keeps the centre.
    """
    h0, w0 = int(native[0]), int(native[1])
    out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    r, c = np.arange(h0, dtype=np.float64) + 0.5, np.arange(w0, dtype=np.float64) + 0.5
    if fit == "pad":
        scale = min(out_h / h0, out_w / w0)
        new_h, new_w = min(out_h, max(1, round(h0 * scale))), min(out_w, max(1, round(w0 * scale)))
        y0, x0 = (out_h - new_h) // 2, (out_w - new_w) // 2
        return y0 + r * new_h / h0 - 0.5, x0 + c * new_w / w0 - 0.5
    if fit == "crop":
        scale = max(out_h / h0, out_w / w0)
        cy, cx = (h0 - out_h / scale) / 2, (w0 - out_w / scale) / 2
        return (r - cy) * scale - 0.5, (c - cx) * scale - 0.5
    raise ValueError(f"fit must be 'pad' or 'crop', got {fit!r}")


def grid_to_native(
    grid_map: np.ndarray, native: Sequence[int], size: int | Sequence[int], fit: str = "pad"
) -> np.ndarray:
    """(..., h, w) patch maps over the model input -> (..., H0, W0) over the original image.

    Pixels that the model never saw (cut off by ``crop``) are NaN.
    """
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    rows, cols = input_to_native_coords(native, hw, fit)
    out = _sample(grid_map, rows, cols, hw)
    outside_r = (rows < -0.5) | (rows > hw[0] - 0.5)
    outside_c = (cols < -0.5) | (cols > hw[1] - 0.5)
    out[..., outside_r, :] = np.nan
    out[..., :, outside_c] = np.nan
    return out


def upsample_time(values: np.ndarray, length: int) -> np.ndarray:
    """(..., N) time-token values -> (..., length) samples by linear interpolation.

    Token ``i`` covers samples ``[i p, (i + 1) p)`` with ``p = length // N``; samples past the
    last full patch (the stem drops them) take the last token's value.
    """
    v = torch.as_tensor(np.asarray(values, dtype=np.float32))
    lead, n = v.shape[:-1], v.shape[-1]
    patch = max(1, length // n)
    up = F.interpolate(v.reshape(-1, 1, n), size=n * patch, mode="linear", align_corners=False)[
        :, 0
    ]
    if up.shape[-1] < length:
        up = torch.cat([up, up[:, -1:].expand(-1, length - up.shape[-1])], dim=-1)
    return up[:, :length].reshape(*lead, length).numpy()


def image_peak(map2d: np.ndarray) -> tuple[int, int]:
    """(row, col) of the largest finite value of a 2-D map; on a plateau (maps upsampled from
    a coarser grid, occlusion maps at a stride above 1) the tied pixel nearest the plateau's
    centroid, not the first in raster order, which would pull every peak up and to the left.
    A constant (or all-NaN) map has no peak: (0, 0), a corner, which no finding claims."""
    finite = np.isfinite(map2d)
    m = np.where(finite, map2d, -np.inf)
    top = float(m.max())
    span = top - float(np.min(m, initial=top, where=finite)) if finite.any() else 0.0
    tied = finite & (m >= top - 1e-6 * span)
    n = int(tied.sum())
    if n == 0 or (n > 1 and span <= 0):
        return 0, 0
    rows, cols = np.nonzero(tied)
    k = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    return int(rows[k]), int(cols[k])


def time_peak(map1d: np.ndarray, fs: float) -> float:
    """Time in seconds of the largest value of a per-sample map."""
    return float(np.argmax(np.asarray(map1d))) / float(fs)


def normalise(map_: np.ndarray) -> np.ndarray:
    """Min-max scaling of the finite values to [0, 1] (a constant map becomes zeros; NaN stays)."""
    m = np.asarray(map_, dtype=np.float64)
    finite = np.isfinite(m)
    if not finite.any():
        return m
    lo, hi = m[finite].min(), m[finite].max()
    return (m - lo) / (hi - lo) if hi > lo and math.isfinite(hi - lo) else np.where(finite, 0.0, m)
