"""Token maps to pixels and samples, and the scores that check maps (pointing game, ECG windows)."""

from __future__ import annotations

import numpy as np
import pytest

from medtriad.data.cxr import resize_cxr
from medtriad.explain.maps import grid_to_native, image_peak, to_grid, upsample_grid, upsample_time
from medtriad.explain.quality import (
    dilate,
    ecg_windows,
    pointing_hit,
    random_hit_rate,
    spearman,
    wilson_interval,
    window_fraction,
)


def test_to_grid_is_row_major_and_checks_the_count() -> None:
    assert to_grid(np.arange(6), (2, 3))[1, 0] == 3
    with pytest.raises(ValueError):
        to_grid(np.arange(7), (2, 3))


def test_upsampled_patch_peaks_inside_its_patch_and_keeps_constants() -> None:
    grid = np.zeros((4, 4))
    grid[1, 2] = 1.0
    up = upsample_grid(grid, 32)
    assert up.shape == (32, 32)
    r, c = image_peak(up)
    assert 8 <= r < 16 and 16 <= c < 24
    assert np.allclose(upsample_grid(np.full((2, 4, 4), 0.7), (16, 16)), 0.7)


def smooth_image(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return (0.2 + 0.6 * (y / h) * 0.5 + 0.3 * (x / w)).astype(np.float32)


@pytest.mark.parametrize("shape", [(120, 80), (80, 120)])
def test_native_mapping_inverts_the_padded_resize(shape: tuple[int, int]) -> None:
    native = smooth_image(*shape)
    model_input = resize_cxr(native, 64, "pad")  # letterboxed on black
    back = grid_to_native(model_input, shape, 64, "pad")  # a 64 x 64 "grid" = one token per pixel
    assert back.shape == shape and np.isfinite(back).all()
    inner = back[4:-4, 4:-4] - native[4:-4, 4:-4]
    assert np.abs(inner).max() < 0.02  # the bars never leak into the picture


def test_native_mapping_of_a_crop_marks_unseen_pixels() -> None:
    shape = (80, 120)
    native = smooth_image(*shape)
    model_input = resize_cxr(native, 64, "crop")
    back = grid_to_native(model_input, shape, 64, "crop")
    seen = np.isfinite(back)
    assert seen[:, 60].all() and not seen[:, 0].any() and not seen[:, -1].any()
    assert np.abs(back[4:-4][seen[4:-4]] - native[4:-4][seen[4:-4]]).max() < 0.03


def test_upsample_time_covers_every_sample_and_peaks_in_the_token() -> None:
    tokens = np.zeros(10)
    tokens[6] = 1.0
    up = upsample_time(tokens, 105)  # 5 samples past the last full patch
    assert up.shape == (105,)
    assert 60 <= int(np.argmax(up)) < 70
    assert np.allclose(upsample_time(np.full((3, 10), 2.0), 100), 2.0)


# --------------------------------------------------------------------------- quality scores


def test_pointing_hit_uses_the_maximum_and_the_tolerance() -> None:
    mask = np.zeros((20, 20), bool)
    mask[5:8, 5:8] = True
    m = np.zeros((20, 20))
    m[9, 6] = 1.0  # two pixels below the region
    assert not pointing_hit(m, mask)
    assert pointing_hit(m, mask, tolerance=2)
    assert not pointing_hit(m, mask, tolerance=1)
    m[6, 6] = 2.0
    assert pointing_hit(m, mask)


def test_random_hit_rate_is_the_area_share() -> None:
    mask = np.zeros((10, 10), bool)
    mask[:5] = True
    assert random_hit_rate(mask) == 0.5
    assert random_hit_rate(mask, tolerance=1) == 0.6
    assert dilate(mask, 0) is not None and dilate(mask, 0).sum() == 50


def test_ecg_windows_pair_each_onset_with_the_next_offset_and_resample() -> None:
    # beats at 500 Hz; an offset before the first onset belongs to a beat cut by the record start
    ann = {
        "ecg_qrs_onsets": np.array([100, 600]),
        "ecg_qrs_offsets": np.array([20, 150, 650]),
        "ecg_t_offsets": np.array([350, 850]),
    }
    w = ecg_windows(ann, n_samples=100, fs_annotations=500, fs=50)
    assert np.flatnonzero(w["qrs"]).tolist() == [*range(10, 15), *range(60, 65)]
    assert np.flatnonzero(w["tp"]).tolist() == list(range(35, 60))  # the last T has no next QRS
    assert not (w["qrs"] & w["tp"]).any()


def test_window_fraction_counts_non_negative_relevance() -> None:
    window = np.zeros(10, bool)
    window[:2] = True
    assert window_fraction(np.ones(10), window) == pytest.approx(0.2)
    r = np.zeros(10)
    r[1], r[5], r[6] = 3.0, 1.0, -5.0
    assert window_fraction(r, window) == pytest.approx(0.75)
    assert np.isnan(window_fraction(np.zeros(10), window))


def test_spearman_ignores_nan_and_sees_monotone_maps() -> None:
    a = np.arange(12.0).reshape(3, 4)
    b = a**3
    b[0, 0] = np.nan
    assert spearman(a, b) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(spearman(a, np.zeros_like(a)))


def test_wilson_interval_matches_the_closed_form_and_narrows_with_n() -> None:
    lo, hi = wilson_interval(7, 10)
    assert (lo, hi) == (pytest.approx(0.3968, abs=1e-4), pytest.approx(0.8922, abs=1e-4))
    lo0, hi0 = wilson_interval(0, 20)  # no hits: the interval still has width
    assert lo0 == 0.0 and hi0 == pytest.approx(0.1611, abs=1e-4)
    assert wilson_interval(20, 20)[1] == 1.0 and wilson_interval(20, 20)[0] == pytest.approx(1 - 0.1611, abs=1e-4)
    w_small = np.subtract(*wilson_interval(21, 30)[::-1])
    w_large = np.subtract(*wilson_interval(210, 300)[::-1])
    assert w_large < w_small / 2.5
    assert all(np.isnan(wilson_interval(0, 0)))
    with pytest.raises(ValueError, match="hits"):
        wilson_interval(5, 4)


def test_shift_image_moves_content_and_repeats_edges() -> None:
    import torch

    from medtriad.explain.maps import shift_image

    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = shift_image(x, 1, -1)
    assert y[0, 0, 0, 1] == x[0, 0, 1, 0]  # output (r, c) shows input (r + 1, c - 1)
    assert torch.equal(y[0, 0, -1], y[0, 0, -2])  # the last row repeats
    assert torch.equal(y[0, 0, :, 0], y[0, 0, :, 1])  # so does the first column
    assert torch.equal(shift_image(x, 0, 0), x)


def test_stitched_maps_move_one_fine_cell_when_the_image_moves_one_step() -> None:
    """Shift and stitch reads the same method on a finer grid: moving the picture by one step
    (patch / K pixels) moves the fine map by one cell."""
    import torch

    from medtriad.errors import ConfigError
    from medtriad.explain import MatchScore, cxr_maps
    from medtriad.explain.maps import shift_image
    from medtriad.models import build_model

    from .conftest import tiny_config

    model = build_model(tiny_config("data.cxr.size=48")).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(1, 1, 48, 48)
    x[..., 8:40, 8:40] = torch.rand(1, 1, 32, 32, generator=g)  # a flat 8 px frame
    score = MatchScore((torch.nn.functional.normalize(torch.randn(8, generator=g), dim=0),))
    k = 4
    dense = cxr_maps(model, x, score, shifts=k)
    moved = cxr_maps(model, shift_image(x, 2, 0), score, shifts=k)
    assert dense["similarity"].shape == (1, 24, 24)
    rows = np.array([r for r in range(23) if r % k != k - 1])
    for method in ("similarity", "relevance"):
        assert np.allclose(moved[method][0, rows], dense[method][0, rows + 1], atol=1e-5), method
    plain = cxr_maps(model, x, score)
    assert plain["similarity"].shape == (1, 6, 6)
    with pytest.raises(ConfigError):
        cxr_maps(model, x, score, shifts=3)


def test_peak_of_a_plateau_is_its_centre_not_its_first_pixel() -> None:
    grid = np.zeros((8, 8))
    grid[2:5, 4:7] = 1.0  # a 3 x 3 plateau, as a strided occlusion map has
    assert image_peak(grid) == (3, 5)
    grid[3, 5] = 1.0 - 1e-9  # ties within a millionth of the range count as the plateau
    assert image_peak(grid) == (3, 5)
    grid[7, 1] = 2.0  # a single maximum wins
    assert image_peak(grid) == (7, 1)
    nan = np.full((3, 3), np.nan)
    nan[1, 2] = 0.5
    assert image_peak(nan) == (1, 2)
    assert image_peak(np.full((3, 3), np.nan)) == (0, 0)
    assert image_peak(np.full((3, 3), 0.2)) == (0, 0)  # a constant map points nowhere useful
