"""Input corruptions at five severities, and re-evaluation under them.

Every corruption takes a whole batch, a severity 1..5 and a ``torch.Generator`` (so a seed
gives the same result) and returns a new tensor; nothing loops over samples except the JPEG
round trip, which Pillow encodes one image at a time.

X-ray corruptions act on model inputs (B, 1, H, W) in [0, 1] and clip to [0, 1]:

=============  =========================================================  ====================
name           operation                                                  severity 1..5
=============  =========================================================  ====================
gaussian_noise x + N(0, sigma^2)                                          sigma 0.02 .. 0.20
speckle_noise  x + x * N(0, sigma^2)                                      sigma 0.05 .. 0.40
blur           Gaussian blur, sigma as a fraction of the image side       0.5% .. 4.5% of side
contrast       mean + c (x - mean), per image                             c 0.75 .. 0.2
gamma          x ** g (darker mid-tones)                                  g 1.25 .. 3.0
jpeg           JPEG encode/decode at quality q (Pillow)                   q 80 .. 8
downsample     area down-sampling by f, bilinear back to the input size   f 1.5 .. 6
=============  =========================================================  ====================

ECG corruptions act on model inputs (B, leads, T) in mV at the model's sampling rate ``fs``:

=================  ===================================================  ======================
name               operation                                            severity 1..5
=================  ===================================================  ======================
baseline_wander    sum of 3 sinusoids at 0.05-0.5 Hz, random phase,     amplitude 0.1 .. 1.0 mV
                   per record and lead
powerline_50hz     50 Hz sinusoid, random phase per record (aliased     amplitude 0.05 .. 0.5 mV
powerline_60hz     as sampling would alias it when fs <= 2f); 60 Hz
muscle_noise       Gaussian noise high-passed above 20 Hz (or 0.4 x     rms 0.02 .. 0.3 mV
                   Nyquist when that is lower), per record and lead
lead_dropout       k random leads per record set to zero (the lead      k 1, 2, 4, 6, 9
                   mask is unchanged, as for a disconnected electrode)
amplitude_scaling  whole record times a or 1/a (random per record)      a 1.25 .. 3.0
=================  ===================================================  ======================
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = [
    "CORRUPTIONS",
    "CXR_CORRUPTIONS",
    "ECG_CORRUPTIONS",
    "LEVELS",
    "SEVERITIES",
    "corrupt",
    "corrupted_embeddings",
    "corruption_levels",
]

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

LEVELS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.02, 0.05, 0.10, 0.15, 0.20),
    "speckle_noise": (0.05, 0.10, 0.20, 0.30, 0.40),
    "blur": (0.005, 0.01, 0.02, 0.03, 0.045),
    "contrast": (0.75, 0.6, 0.45, 0.3, 0.2),
    "gamma": (1.25, 1.5, 2.0, 2.5, 3.0),
    "jpeg": (80, 50, 30, 15, 8),
    "downsample": (1.5, 2.0, 3.0, 4.0, 6.0),
    "baseline_wander": (0.1, 0.2, 0.4, 0.7, 1.0),
    "powerline": (0.05, 0.1, 0.2, 0.3, 0.5),
    "muscle_noise": (0.02, 0.05, 0.1, 0.2, 0.3),
    "lead_dropout": (1, 2, 4, 6, 9),
    "amplitude_scaling": (1.25, 1.5, 2.0, 2.5, 3.0),
}
"""The parameter of each corruption at severities 1..5 (units in the module doc)."""

Corruption = Callable[[Tensor, int, torch.Generator, float], Tensor]


def _level(values: Sequence[float], severity: int) -> float:
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {list(SEVERITIES)}, got {severity}")
    return float(values[severity - 1])


def _randn(x: Tensor, gen: torch.Generator, shape: Sequence[int] | None = None) -> Tensor:
    return torch.randn(tuple(shape or x.shape), generator=gen, dtype=torch.float32).to(x.dtype)


def _rand(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(shape, generator=gen)


# --------------------------------------------------------------------------- X-ray


def gaussian_noise(x: Tensor, severity: int, gen: torch.Generator, fs: float = 0.0) -> Tensor:
    sigma = _level(LEVELS["gaussian_noise"], severity)
    return (x + sigma * _randn(x, gen)).clamp(0, 1)


def speckle_noise(x: Tensor, severity: int, gen: torch.Generator, fs: float = 0.0) -> Tensor:
    sigma = _level(LEVELS["speckle_noise"], severity)
    return (x + x * sigma * _randn(x, gen)).clamp(0, 1)


def _gaussian_kernel(sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def blur(x: Tensor, severity: int, gen: torch.Generator, fs: float = 0.0) -> Tensor:
    sigma = _level(LEVELS["blur"], severity) * x.shape[-1]
    k = _gaussian_kernel(max(sigma, 1e-3)).to(x.dtype)
    r = (len(k) - 1) // 2
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(b, c, h, w).clamp(0, 1)


def contrast(x: Tensor, severity: int, gen: torch.Generator, fs: float = 0.0) -> Tensor:
    c = _level(LEVELS["contrast"], severity)
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return (mean + c * (x - mean)).clamp(0, 1)


def gamma(x: Tensor, severity: int, gen: torch.Generator, fs: float = 0.0) -> Tensor:
    g = _level(LEVELS["gamma"], severity)
    return x.clamp(0, 1).pow(g)


def jpeg(x: Tensor, severity: int, gen: torch.Generator, fs: float = 0.0) -> Tensor:
    from PIL import Image

    quality = int(_level(LEVELS["jpeg"], severity))
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    out = np.empty_like(arr)
    for i in range(arr.shape[0]):  # Pillow encodes one image at a time
        for c in range(arr.shape[1]):
            buf = io.BytesIO()
            Image.fromarray(arr[i, c]).save(buf, format="JPEG", quality=quality)
            buf.seek(0)
            out[i, c] = np.asarray(Image.open(buf).convert("L"))
    return torch.from_numpy(out).to(x.dtype) / 255.0


def downsample(x: Tensor, severity: int, gen: torch.Generator, fs: float = 0.0) -> Tensor:
    f = _level(LEVELS["downsample"], severity)
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, round(h / f)), max(1, round(w / f))), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


CXR_CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "speckle_noise": speckle_noise,
    "blur": blur,
    "contrast": contrast,
    "gamma": gamma,
    "jpeg": jpeg,
    "downsample": downsample,
}

# --------------------------------------------------------------------------- ECG


def _time(x: Tensor, fs: float) -> Tensor:
    if fs <= 0:
        raise ValueError("ECG corruptions need the sampling rate fs")
    return torch.arange(x.shape[-1], dtype=torch.float32) / fs


def baseline_wander(x: Tensor, severity: int, gen: torch.Generator, fs: float = 0.0) -> Tensor:
    amp = _level(LEVELS["baseline_wander"], severity)
    t = _time(x, fs)
    b, leads, _ = x.shape
    freq = 0.05 + 0.45 * _rand(gen, b, 1, 3)  # Hz, shared by a record's leads (breathing, motion)
    phase = 2 * math.pi * _rand(gen, b, leads, 3)
    weight = _rand(gen, b, leads, 3)
    weight = weight / weight.sum(-1, keepdim=True)
    waves = torch.sin(2 * math.pi * freq[..., None] * t + phase[..., None])  # (b, leads, 3, T)
    return x + amp * (weight[..., None] * waves).sum(-2).to(x.dtype)


def _powerline(freq: float) -> Corruption:
    def hum(x: Tensor, severity: int, gen: torch.Generator, fs: float = 0.0) -> Tensor:
        amp = _level(LEVELS["powerline"], severity)
        t = _time(x, fs)
        phase = 2 * math.pi * _rand(gen, x.shape[0], 1, 1)
        return x + amp * torch.sin(2 * math.pi * freq * t + phase).to(x.dtype)

    hum.__name__ = f"powerline_{int(freq)}hz"
    hum.__doc__ = f"Additive {freq:g} Hz mains interference (same on every lead of a record)."
    return hum


def muscle_noise(x: Tensor, severity: int, gen: torch.Generator, fs: float = 0.0) -> Tensor:
    rms = _level(LEVELS["muscle_noise"], severity)
    n = x.shape[-1]
    cutoff = min(20.0, 0.4 * fs / 2) if fs > 0 else 20.0
    _time(x, fs)  # checks fs
    spec = torch.fft.rfft(_randn(x, gen).float(), dim=-1)
    freqs = torch.fft.rfftfreq(n, d=1.0 / fs)
    spec[..., freqs < cutoff] = 0
    noise = torch.fft.irfft(spec, n=n, dim=-1)
    noise = noise / noise.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
    return x + rms * noise.to(x.dtype)


def lead_dropout(x: Tensor, severity: int, gen: torch.Generator, fs: float = 0.0) -> Tensor:
    k = min(int(_level(LEVELS["lead_dropout"], severity)), x.shape[1])
    ranks = _rand(gen, x.shape[0], x.shape[1]).argsort(dim=1).argsort(dim=1)
    return x * (ranks >= k).to(x.dtype)[..., None]


def amplitude_scaling(x: Tensor, severity: int, gen: torch.Generator, fs: float = 0.0) -> Tensor:
    a = _level(LEVELS["amplitude_scaling"], severity)
    up = _rand(gen, x.shape[0]) < 0.5
    factor = torch.where(up, torch.tensor(a), torch.tensor(1.0 / a)).to(x.dtype)
    return x * factor[:, None, None]


ECG_CORRUPTIONS: dict[str, Corruption] = {
    "baseline_wander": baseline_wander,
    "powerline_50hz": _powerline(50.0),
    "powerline_60hz": _powerline(60.0),
    "muscle_noise": muscle_noise,
    "lead_dropout": lead_dropout,
    "amplitude_scaling": amplitude_scaling,
}

CORRUPTIONS: dict[str, dict[str, Corruption]] = {"cxr": CXR_CORRUPTIONS, "ecg": ECG_CORRUPTIONS}


def corrupt(
    modality: str,
    name: str,
    x: Tensor,
    severity: int,
    seed: int | torch.Generator = 0,
    fs: float = 0.0,
) -> Tensor:
    """Apply corruption `name` of `modality` ("cxr" or "ecg") at `severity` to a batch."""
    table = CORRUPTIONS.get(modality)
    if table is None or name not in table:
        known = {m: sorted(t) for m, t in CORRUPTIONS.items()}
        raise ValueError(f"unknown corruption {modality}/{name}; known: {known}")
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    return table[name](x, severity, gen, fs)


# --------------------------------------------------------------------------- re-embedding


@torch.no_grad()
def corrupted_embeddings(
    model: Any,
    dataset: Any,
    modality: str,
    name: str,
    severity: int,
    seed: int = 0,
    batch_size: int = 128,
    rows: np.ndarray | None = None,
) -> Tensor:
    """(n, d) embeddings of `modality` for `rows` of `dataset` (default: all) after corruption;
    only that modality is re-encoded. Batch i uses the generator seeded with (seed, i)."""
    model.eval()
    fs = float(model.config.data.ecg.fs)
    idx = np.arange(len(dataset)) if rows is None else np.asarray(rows)
    out = []
    for i, s in enumerate(range(0, len(idx), batch_size)):
        batch = dataset[idx[s : s + batch_size]]
        gen = torch.Generator().manual_seed(
            int(np.random.SeedSequence([seed, severity, i]).generate_state(1)[0])
        )
        x = corrupt(modality, name, batch.inputs[modality], severity, gen, fs)
        inputs: dict[str, Any] = {modality: x}
        if modality == "ecg" and "ecg_lead_mask" in batch.inputs:
            inputs["ecg_lead_mask"] = batch.inputs["ecg_lead_mask"]
        out.append(model.encode(inputs)[modality].cpu())
    return torch.cat(out) if out else torch.zeros(0, model.config.model.embed_dim)


def corruption_levels(modality: str, name: str) -> list[float]:
    """The parameter values of corruption `name` at severities 1..5 (for reports)."""
    key = "powerline" if name.startswith("powerline") else name
    if modality not in CORRUPTIONS or name not in CORRUPTIONS[modality]:
        raise ValueError(f"unknown corruption {modality}/{name}")
    return [float(v) for v in LEVELS[key]]
