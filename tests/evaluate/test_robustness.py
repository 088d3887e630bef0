"""Corruptions: each grows with severity, is deterministic for a seed, and does what it names."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

from medtriad.evaluate.robustness import (
    CXR_CORRUPTIONS,
    ECG_CORRUPTIONS,
    LEVELS,
    SEVERITIES,
    corrupt,
)


def _image(b: int = 4, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = 0.3 + 0.4 * (torch.sin(12 * xx) * torch.cos(9 * yy) > 0).float()  # sharp edges
    return (base + 0.05 * torch.rand(b, 1, size, size, generator=g)).clamp(0, 1)


def _ecg(b: int = 3, fs: int = 500, seconds: float = 4.0) -> torch.Tensor:
    t = torch.arange(int(fs * seconds)) / fs
    beat = torch.exp(-(((t % 0.8) - 0.4) ** 2) / (2 * 0.01**2))  # a spike every 0.8 s
    return beat.repeat(b, 12, 1) * torch.linspace(0.5, 1.5, 12)[None, :, None]


def _by_severity(modality: str, name: str, x: torch.Tensor, fs: float = 0.0) -> list[torch.Tensor]:
    return [corrupt(modality, name, x, s, seed=1, fs=fs) for s in SEVERITIES]


def _increasing(values: list[float]) -> bool:
    return all(a < b for a, b in pairwise(values))


def test_gaussian_noise_std_follows_the_level() -> None:
    x = torch.full((8, 1, 64, 64), 0.5)
    stds = [float((y - x).std()) for y in _by_severity("cxr", "gaussian_noise", x)]
    assert _increasing(stds)
    assert np.allclose(stds, LEVELS["gaussian_noise"], rtol=0.05)


@pytest.mark.parametrize(
    "name", ["speckle_noise", "jpeg", "downsample", "blur", "gamma", "contrast"]
)
def test_cxr_change_grows_with_severity(name: str) -> None:
    x = _image()
    outs = _by_severity("cxr", name, x)
    change = [float((y - x).abs().mean()) for y in outs]
    assert _increasing(change), change
    for y in outs:
        assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_blur_and_downsampling_remove_fine_detail() -> None:
    x = _image()

    def high_freq(img: torch.Tensor) -> float:
        return float((img[..., 1:] - img[..., :-1]).abs().mean())

    for name in ("blur", "downsample"):
        energy = [high_freq(y) for y in _by_severity("cxr", name, x)]
        assert high_freq(x) > energy[0] and all(a > b for a, b in pairwise(energy))


def test_contrast_shrinks_the_spread() -> None:
    x = _image()
    spread = [float(y.std()) for y in _by_severity("cxr", "contrast", x)]
    assert np.allclose(np.array(spread) / float(x.std()), LEVELS["contrast"], rtol=0.02)


def test_lead_dropout_zeroes_the_right_number_of_leads() -> None:
    x = _ecg(b=6) + 0.1
    for s, y in zip(SEVERITIES, _by_severity("ecg", "lead_dropout", x, fs=500)):
        zero = (y == 0).all(dim=-1)  # (B, leads)
        assert zero.sum(dim=1).tolist() == [int(LEVELS["lead_dropout"][s - 1])] * 6
        kept = ~zero
        assert torch.equal(y[kept], x[kept])
    picks = [(corrupt("ecg", "lead_dropout", x, 2, seed=k, fs=500) == 0).all(-1) for k in range(2)]
    assert not torch.equal(picks[0], picks[1])  # the leads dropped depend on the seed


def test_ecg_noises_grow_with_severity_and_sit_in_their_band() -> None:
    fs = 500
    x = _ecg(fs=fs)
    freqs = np.fft.rfftfreq(x.shape[-1], 1 / fs)
    for name, band in (
        ("baseline_wander", (0.0, 1.0)),
        ("powerline_50hz", (49.0, 51.0)),
        ("powerline_60hz", (59.0, 61.0)),
        ("muscle_noise", (20.0, 250.0)),
    ):
        added = [y - x for y in _by_severity("ecg", name, x, fs=fs)]
        rms = [float(a.pow(2).mean().sqrt()) for a in added]
        assert _increasing(rms), name
        power = np.abs(np.fft.rfft(added[-1].numpy(), axis=-1)) ** 2
        inside = power[..., (freqs >= band[0]) & (freqs <= band[1])].sum()
        assert inside / power.sum() > 0.95, name
    hum = [float((y - x).abs().amax()) for y in _by_severity("ecg", "powerline_50hz", x, fs=fs)]
    assert np.allclose(hum, LEVELS["powerline"], rtol=0.02)
    muscle = [
        float((y - x).pow(2).mean().sqrt()) for y in _by_severity("ecg", "muscle_noise", x, fs=fs)
    ]
    assert np.allclose(muscle, LEVELS["muscle_noise"], rtol=1e-3)


def test_amplitude_scaling_multiplies_each_record() -> None:
    x = _ecg(b=16)
    for s, y in zip(SEVERITIES, _by_severity("ecg", "amplitude_scaling", x, fs=500)):
        ratio = (y.amax(dim=(1, 2)) / x.amax(dim=(1, 2))).numpy()
        a = LEVELS["amplitude_scaling"][s - 1]
        assert np.all(np.isclose(ratio, a) | np.isclose(ratio, 1 / a))
        assert np.isclose(ratio, a).any() and np.isclose(ratio, 1 / a).any()


@pytest.mark.parametrize(
    ("modality", "name"),
    [*(("cxr", n) for n in CXR_CORRUPTIONS), *(("ecg", n) for n in ECG_CORRUPTIONS)],
)
def test_corruptions_are_deterministic_for_a_seed(modality: str, name: str) -> None:
    x = _image(b=2, size=32) if modality == "cxr" else _ecg(b=2, fs=100, seconds=2)
    a = corrupt(modality, name, x, 3, seed=7, fs=100)
    assert torch.equal(a, corrupt(modality, name, x, 3, seed=7, fs=100))
    assert not torch.equal(a, x)


def test_bad_requests_raise() -> None:
    with pytest.raises(ValueError, match="severity"):
        corrupt("cxr", "blur", _image(), 6)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt("cxr", "baseline_wander", _image(), 1)
    with pytest.raises(ValueError, match="fs"):
        corrupt("ecg", "powerline_50hz", _ecg(), 1)
