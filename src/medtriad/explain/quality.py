"""Scores that say whether explanation maps mean something.

* Pointing game: a map "hits" when its maximum falls inside the finding's ground-truth region
  (optionally dilated by a few pixels, as the pointing-game literature allows for the blur of
  upsampled patch maps). A uniform-random point hits with probability area(mask) / area(image).
* ECG windows: the fraction of (non-negative) relevance on given time windows, compared with
  the fraction of time those windows cover (what a map with no preference would give).
* Randomisation check: Spearman rank correlation between maps from a model and from the same
  architecture re-initialised; maps that explain the model should change with its weights.
* Hit rates come with Wilson score intervals: with the 30-60 positives per finding of a demo
  test split, a rate of 0.70 is only known to within about +-0.13.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage, stats

from medtriad.explain.maps import image_peak

__all__ = [
    "dilate",
    "ecg_windows",
    "pointing_hit",
    "random_hit_rate",
    "resample_indices",
    "spearman",
    "wilson_interval",
    "window_fraction",
]


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """A boolean mask grown by a disk of `radius` pixels (radius 0: unchanged)."""
    mask = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return mask
    r = np.arange(-radius, radius + 1)
    disk = (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2
    return ndimage.binary_dilation(mask, structure=disk)


def pointing_hit(map2d: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> bool:
    """Whether the map's maximum lies in `mask` (dilated by `tolerance` pixels); same shapes."""
    if np.shape(map2d) != np.shape(mask):
        raise ValueError(f"map {np.shape(map2d)} and mask {np.shape(mask)} differ in shape")
    r, c = image_peak(map2d)
    return bool(dilate(mask, tolerance)[r, c])


def random_hit_rate(mask: np.ndarray, tolerance: int = 0) -> float:
    """Hit probability of a uniformly random point: the (dilated) mask's share of the image."""
    return float(dilate(mask, tolerance).mean())


def resample_indices(indices: np.ndarray, fs_from: float, fs_to: float) -> np.ndarray:
    """Sample indices at `fs_from` -> the nearest indices at `fs_to`."""
    return np.round(np.asarray(indices, dtype=np.float64) * (fs_to / fs_from)).astype(np.int64)


def _windows(starts: np.ndarray, ends: np.ndarray, n: int) -> np.ndarray:
    """Boolean (n,) mask of ``[start, next end after start)`` for each start with such an end."""
    starts, ends = np.sort(starts), np.sort(ends)
    k = np.searchsorted(ends, starts, side="right")
    ok = k < len(ends)
    delta = np.zeros(n + 1, dtype=np.int64)
    np.add.at(delta, np.clip(starts[ok], 0, n), 1)
    np.add.at(delta, np.clip(ends[k[ok]], 0, n), -1)
    return np.cumsum(delta)[:n] > 0


def ecg_windows(
    annotations: Mapping[str, np.ndarray], n_samples: int, fs_annotations: float, fs: float
) -> dict[str, np.ndarray]:
    """Boolean (n_samples,) masks at `fs` of each beat's ``qrs`` (QRS onset to offset) and
    ``tp`` window (T-wave end to the next QRS onset: the P wave and TP segment, or the f waves
    of atrial fibrillation). Keys are the cohort's ``ecg_<wave>`` annotation names, in samples
    at `fs_annotations`; a window needs both ends inside the record."""

    def idx(name: str) -> np.ndarray:
        return resample_indices(np.asarray(annotations[f"ecg_{name}"]), fs_annotations, fs)

    return {
        "qrs": _windows(idx("qrs_onsets"), idx("qrs_offsets"), n_samples),
        "tp": _windows(idx("t_offsets"), idx("qrs_onsets"), n_samples),
    }


def window_fraction(relevance: np.ndarray, window: np.ndarray) -> float:
    """Share of the total non-negative relevance that falls inside `window` (NaN if none)."""
    r = np.clip(np.asarray(relevance, dtype=np.float64), 0.0, None)
    total = r.sum()
    return float(r[np.asarray(window, bool)].sum() / total) if total > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (flattened, NaN pixels dropped; NaN if either is
    constant)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")  # a constant map has no ranking to compare
    return float(stats.spearmanr(a, b).statistic)


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a hit rate ``hits / n`` (default 95%); (NaN, NaN) when n is 0.

    Unlike the normal approximation it stays inside [0, 1] and does not collapse to a point at
    0 or n hits, which small positive counts (a rare finding's 14-30 images) often give."""
    if not 0 <= hits <= n:
        raise ValueError(f"need 0 <= hits <= n, got {hits} hits of {n}")
    if n == 0:
        return float("nan"), float("nan")
    p, z2 = hits / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * float(np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)))
    # exact at the ends (no hits: 0, all hits: 1), where rounding would leave 1e-16
    lo = 0.0 if hits == 0 else max(0.0, centre - half)
    hi = 1.0 if hits == n else min(1.0, centre + half)
    return lo, hi
