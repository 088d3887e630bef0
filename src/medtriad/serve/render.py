"""Pictures of stored studies for the web page, drawn with Pillow (fast, no plotting stack).

Both pictures show exactly the model's view, so a map returned by a search lies on them
without any geometry on the client: the X-ray thumbnail is the image resized with the model's
``fit`` to a square (the patch grid spans the whole picture), and the ECG plot is the
preprocessed record with every lead spanning the full width (time token i covers the i-th
equal slice of the width).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from medtriad.data.ecg import CANONICAL_LEADS

__all__ = ["cxr_png", "ecg_png"]

THUMB = 256
ECG_WIDTH = 1000
ECG_ROW = 48
MIN_PEAK_MV = 0.5  # a flat record is not blown up to fill its rows
_PAPER = (255, 250, 248)
_MINOR = (250, 222, 222)
_MAJOR = (240, 180, 180)
_TRACE = (20, 20, 20)
_LABEL = (110, 40, 40)


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def cxr_png(image: np.ndarray) -> bytes:
    """A (1, S, S) or (S, S) image in [0, 1] as an 8-bit greyscale PNG."""
    arr = np.asarray(image, dtype=np.float32).reshape(np.shape(image)[-2:])
    return _png(Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8), mode="L"))


def ecg_png(signal: np.ndarray, fs: float, lead_mask: np.ndarray | None = None) -> bytes:
    """A (12, T) mV record as 12 stacked full-width traces on ECG paper, lead names at left.

    Grid lines every 0.04 s and 0.2 s, as on ECG paper; one vertical scale for all leads, set by
    the record's largest deflections and clipped to each lead's row; a missing lead is dashed.
    """
    x = np.asarray(signal, dtype=np.float64)
    leads, t = x.shape
    height = ECG_ROW * leads
    im = Image.new("RGB", (ECG_WIDTH, height), _PAPER)
    draw = ImageDraw.Draw(im)
    px_per_s = ECG_WIDTH / (t / fs)
    mask = np.ones(leads, bool) if lead_mask is None else np.asarray(lead_mask, bool)
    centred = x - np.median(x, axis=1, keepdims=True)
    # one scale for all leads, so amplitudes compare: the record's large deflections fill ~80% of a row
    peak = float(np.percentile(np.abs(centred[mask]), 99.9)) if mask.any() else 1.0
    px_per_mv = 0.4 * ECG_ROW / max(peak, MIN_PEAK_MV)
    for step, colour in ((0.04, _MINOR), (0.2, _MAJOR)):
        if px_per_s * step >= 3:
            for xs in np.arange(0, ECG_WIDTH, px_per_s * step):
                draw.line([(xs, 0), (xs, height)], fill=colour)
    xs = np.linspace(0, ECG_WIDTH - 1, t)
    for i in range(leads):
        mid = ECG_ROW * i + ECG_ROW / 2
        draw.line([(0, ECG_ROW * i), (ECG_WIDTH, ECG_ROW * i)], fill=_MAJOR)
        name = CANONICAL_LEADS[i] if leads == len(CANONICAL_LEADS) else str(i)
        if not mask[i]:
            for x0 in range(0, ECG_WIDTH, 12):
                draw.line([(x0, mid), (x0 + 6, mid)], fill=_LABEL)
            draw.text((4, ECG_ROW * i + 2), f"{name} (missing)", fill=_LABEL)
            continue
        ys = mid - np.clip(centred[i] * px_per_mv, -ECG_ROW / 2 + 1, ECG_ROW / 2 - 1)
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=_TRACE, width=1)
        draw.text((4, ECG_ROW * i + 2), name, fill=_LABEL)
    return _png(im)
