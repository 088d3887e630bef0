"""Chest X-ray reader: PNG/JPEG (any Pillow mode) and DICOM to float32 greyscale in [0, 1].

Conventions, chosen once so every caller (shards, augmentation, the server) sees the same pixels:

* Output is float32, 0 = black, 1 = white, never NaN. ``read_cxr`` returns ``(1, H, W)``.
* The file type is detected on content (DICOM preamble, Pillow's signatures, then a forced DICOM
  parse), never on the file name.
* RGB, RGBA, LA and palette images become ITU-R BT.601 luminance (0.299 R + 0.587 G + 0.114 B,
  the same weights as JPEG's Y channel); alpha is composited over black, because transparent
  pixels carry no signal and a radiograph's background (air) is dark.
* 8-bit images are divided by 255. 16-bit images (``I;16``, ``I`` within 0..65535) are divided
  by ``2**b - 1`` where ``b`` (8..16) is the smallest bit depth that holds the image's maximum:
  a 12-bit acquisition stored in a 16-bit PNG spans [0, 1] like a native one, full precision is
  kept, and the image is not stretched per pixel range. Other integer or float images are
  min-max scaled.
* DICOM: modality LUT (rescale slope/intercept), then the first VOI LUT or the first window
  (centre/width, LINEAR / LINEAR_EXACT / SIGMOID per PS3.3 C.11.2) to [0, 1]; without either,
  min-max scaling. MONOCHROME1 is inverted last. Multi-frame objects use their first frame.
* EXIF orientation is honoured, as image viewers do.
* Resizing keeps the aspect ratio: ``fit="pad"`` letterboxes with black, ``fit="crop"`` crops
  the centre. A size given as a tuple is ``(height, width)``.
"""

from __future__ import annotations

import io
import logging
import math
import struct
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi

from medtriad.errors import DataError

__all__ = ["clahe", "decode_cxr", "read_cxr", "read_cxr_bytes", "resize_cxr"]

logger = logging.getLogger(__name__)

Size = int | tuple[int, int]
Box = tuple[float, float, float, float]  # (left, top, right, bottom) in pixels, Pillow's order

_FITS = ("pad", "crop")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_NOT_IMAGE = "not an image or DICOM file"
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_ORIENTATION_TAG = 0x0112
# EXIF orientation -> (transpose, flip rows, flip columns), applied in that order, that turns
# the stored pixels into the displayed picture.
_ORIENTATIONS = {
    1: (False, False, False),
    2: (False, False, True),
    3: (False, True, True),
    4: (False, True, False),
    5: (True, False, False),
    6: (True, False, True),
    7: (True, True, True),
    8: (True, True, False),
}
_RESAMPLE = Image.Resampling.BILINEAR
# Reduce by an integer factor (box filter) first when shrinking more than 3x; Pillow documents
# 3.0 as practically indistinguishable from a full convolution, and it is several times faster.
_REDUCING_GAP = 3.0
# JPEGs are decoded at reduced scale down to twice the resized size, no less: libjpeg's scaled
# inverse DCT aliases fine detail, and the antialiased resize then does the last >= 2x step.
# Entropy decoding dominates the cost, so this margin adds only ~20% over the tightest draft.
_DRAFT_MARGIN = 2.0


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def read_cxr(
    path: str | Path,
    size: Size | None = None,
    fit: str = "pad",
    clahe: bool = False,
    clahe_clip: float = 2.0,
) -> np.ndarray:
    """Read a chest X-ray file as float32 ``(1, H, W)`` in [0, 1].

    ``size`` None keeps the native size; otherwise the image is resized keeping its aspect
    ratio (``fit`` "pad" or "crop"). JPEGs are decoded directly at a reduced scale when that
    still covers the target. ``clahe`` equalises the decoded image before resizing, so the
    padding never enters its tile histograms. Raises DataError for unreadable files.
    """
    target = _check_args(size, fit, clahe_clip)
    img, box = _decode_bytes(_read_file(path), str(path), target, fit)
    return _finish(img, box, target, fit, clahe, clahe_clip)


def read_cxr_bytes(
    data: bytes,
    name: str = "<upload>",
    size: Size | None = None,
    fit: str = "pad",
    clahe: bool = False,
    clahe_clip: float = 2.0,
) -> np.ndarray:
    """Like ``read_cxr`` for in-memory bytes (e.g. an upload); ``name`` only labels errors."""
    target = _check_args(size, fit, clahe_clip)
    img, box = _decode_bytes(bytes(data), name, target, fit)
    return _finish(img, box, target, fit, clahe, clahe_clip)


def decode_cxr(path: str | Path) -> np.ndarray:
    """Decode a chest X-ray at native size to float32 ``(H, W)`` in [0, 1] (no resizing)."""
    return _decode_bytes(_read_file(path), str(path), None, "pad")[0]


def resize_cxr(img2d: np.ndarray, size: Size, fit: str = "pad") -> np.ndarray:
    """Resize a 2-D image to ``size`` keeping its aspect ratio; returns float32 ``(H, W)``.

    "pad" scales the whole image into the target and centres it on black; "crop" scales it to
    cover the target and keeps the centre. Uses Pillow's antialiased bilinear filter in float
    mode, so values stay within the input's range.
    """
    target = _check_args(size, fit, 1.0)
    if target is None:
        raise ValueError("resize_cxr needs a size")
    return _resize(_as_2d_float(img2d), target, fit, None)


def clahe(img2d: np.ndarray, clip: float = 2.0, tiles: int = 8, bins: int = 256) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a [0, 1] image; float32, same shape.

    The image is split into ``tiles x tiles`` regions. Each region's histogram is clipped at
    ``clip`` times the mean bin count, the clipped excess spread evenly over all bins, and its
    cumulative distribution becomes that region's intensity mapping. Every pixel blends the
    mappings of its four nearest region centres bilinearly, which avoids seams at region
    borders. Higher ``clip`` gives stronger local contrast.
    """
    if not clip > 0:
        raise ValueError(f"clahe clip must be > 0, got {clip}")
    if tiles < 1 or bins < 2:
        raise ValueError(f"clahe needs tiles >= 1 and bins >= 2, got {tiles}, {bins}")
    img = np.clip(_as_2d_float(img2d), 0.0, 1.0)
    h, w = img.shape
    ty, tx = min(tiles, h), min(tiles, w)
    th, tw = -(-h // ty), -(-w // tx)
    q = np.minimum((img * bins).astype(np.intp), bins - 1)

    # Per-tile histograms in one bincount: pad to whole tiles by mirroring, offset each tile's
    # bin indices by tile number * bins.
    qp = np.pad(q, ((0, ty * th - h), (0, tx * tw - w)), mode="symmetric")
    tile_no = np.arange(ty)[:, None, None, None] * tx + np.arange(tx)[None, None, :, None]
    keys = qp.reshape(ty, th, tx, tw) + tile_no * bins
    hist = np.bincount(keys.ravel(), minlength=ty * tx * bins).reshape(ty, tx, bins)

    npix = th * tw
    limit = max(clip * npix / bins, 1.0)
    excess = np.maximum(hist - limit, 0.0).sum(axis=-1, keepdims=True)
    hist = np.minimum(hist, limit) + excess / bins
    lut = (np.cumsum(hist, axis=-1) / npix).astype(np.float32)

    y0, y1, wy = _tile_neighbours(h, th, ty)
    x0, x1, wx = _tile_neighbours(w, tw, tx)
    y0, y1, wy = y0[:, None], y1[:, None], wy[:, None]
    top = lut[y0, x0, q] * (1 - wx) + lut[y0, x1, q] * wx
    bottom = lut[y1, x0, q] * (1 - wx) + lut[y1, x1, q] * wx
    return _clean(top * (1 - wy) + bottom * wy)


# --------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------


def _check_args(size: Size | None, fit: str, clip: float) -> tuple[int, int] | None:
    """Validate caller arguments before any I/O; returns the target ``(H, W)`` or None."""
    if fit not in _FITS:
        raise ValueError(f"fit must be one of {_FITS}, got {fit!r}")
    if not clip > 0:
        raise ValueError(f"clahe_clip must be > 0, got {clip}")
    if size is None:
        return None
    hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in hw):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return int(hw[0]), int(hw[1])


def _finish(
    img: np.ndarray,
    box: Box | None,
    target: tuple[int, int] | None,
    fit: str,
    use_clahe: bool,
    clip: float,
) -> np.ndarray:
    if use_clahe:
        img = clahe(img, clip)
    if target is not None:
        img = _resize(img, target, fit, box)
    return img[None]


def _resize(img: np.ndarray, target: tuple[int, int], fit: str, box: Box | None) -> np.ndarray:
    """Aspect-kept resize of the region ``box`` of ``img`` (default: all of it).

    A JPEG decoded at reduced scale covers the full picture with a fractional last row and
    column; passing that region keeps the geometry identical to a full-size decode.
    """
    out_h, out_w = target
    h, w = img.shape
    left, top, right, bottom = box if box is not None else (0.0, 0.0, float(w), float(h))
    ext_w, ext_h = right - left, bottom - top
    if box is None and (h, w) == (out_h, out_w):
        return _clean(img.copy())
    src = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32))
    if fit == "pad":
        scale = min(out_h / ext_h, out_w / ext_w)
        new_h = min(out_h, max(1, round(ext_h * scale)))
        new_w = min(out_w, max(1, round(ext_w * scale)))
        scaled = src.resize(
            (new_w, new_h), _RESAMPLE, box=(left, top, right, bottom), reducing_gap=_REDUCING_GAP
        )
        out = np.zeros((out_h, out_w), dtype=np.float32)
        y0, x0 = (out_h - new_h) // 2, (out_w - new_w) // 2
        out[y0 : y0 + new_h, x0 : x0 + new_w] = np.asarray(scaled, dtype=np.float32)
    else:
        scale = max(out_h / ext_h, out_w / ext_w)
        crop_w, crop_h = out_w / scale, out_h / scale
        cx, cy = left + (ext_w - crop_w) / 2, top + (ext_h - crop_h) / 2
        crop = (cx, cy, cx + crop_w, cy + crop_h)
        scaled = src.resize((out_w, out_h), _RESAMPLE, box=crop, reducing_gap=_REDUCING_GAP)
        out = np.asarray(scaled, dtype=np.float32)
    return _clean(out)


def _read_file(path: str | Path) -> bytes:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise DataError(p, "file not found") from None
    except IsADirectoryError:
        raise DataError(p, "is a directory, not an image file") from None
    except OSError as exc:
        raise DataError(p, f"cannot read file ({exc.strerror or exc})") from exc
    return data


def _decode_bytes(
    data: bytes, name: str, target: tuple[int, int] | None, fit: str
) -> tuple[np.ndarray, Box | None]:
    """Detect the format on content; float32 ``(H, W)`` in [0, 1] and the picture's region.

    The region is None when the array is the whole picture at native size.
    """
    if not data:
        raise DataError(name, "file is empty")
    if len(data) >= 132 and data[128:132] == b"DICM":
        return _decode_dicom(data, name, sniffed=False), None
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return _decode_dicom(data, name, sniffed=True), None
    except Image.DecompressionBombError as exc:
        raise DataError(name, f"image too large ({exc})") from exc
    except Exception as exc:  # Pillow raises many types on a damaged header
        raise DataError(name, f"truncated or corrupt image header ({exc})") from exc
    with im:
        return _decode_image(im, name, target, fit)


# --------------------------------------------------------------------------------------------
# PNG / JPEG / other Pillow formats
# --------------------------------------------------------------------------------------------


def _decode_image(
    im: Image.Image, name: str, target: tuple[int, int] | None, fit: str
) -> tuple[np.ndarray, Box | None]:
    orientation = _exif_orientation(im)
    full_w, full_h = im.size
    try:
        # JPEG only: decode the Y channel directly and, given a target, at 1/2, 1/4 or 1/8 scale
        # as long as the result still covers the resized image. A no-op for other formats.
        drafted = im.draft("L", _draft_request(im.size, target, fit, orientation))
        im.load()
    except Image.DecompressionBombError as exc:
        raise DataError(name, f"image too large ({exc})") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, zlib errors ...
        raise DataError(name, f"truncated or corrupt image data ({exc})") from exc
    box: Box | None = None
    if drafted is not None and im.size != (full_w, full_h):
        logger.debug("%s: JPEG drafted from %sx%s to %sx%s", name, full_w, full_h, *im.size)
        box = _oriented_box(drafted[1], im.size, orientation)
    try:
        img = _pil_to_grey(im)
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(name, f"unsupported image mode {im.mode!r} ({exc})") from exc
    return _clean(_apply_orientation(img, orientation)), box


def _draft_request(
    size: tuple[int, int], target: tuple[int, int] | None, fit: str, orientation: int
) -> tuple[int, int] | None:
    """The stored ``(w, h)`` a JPEG draft must cover: ``_DRAFT_MARGIN`` x the resized picture."""
    if target is None:
        return None
    transposed = _ORIENTATIONS[orientation][0]
    w, h = size
    if transposed:  # EXIF turns by 90 degrees: the displayed height is the stored width
        w, h = h, w
    out_h, out_w = target
    ratios = (out_h / h, out_w / w)
    scale = (min(ratios) if fit == "pad" else max(ratios)) * _DRAFT_MARGIN
    req_w, req_h = max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))
    return (req_h, req_w) if transposed else (req_w, req_h)


def _oriented_box(stored: tuple, size: tuple[int, int], orientation: int) -> Box:
    """Map the picture's region in the stored decoded pixels to displayed pixels."""
    transposed, flip_rows, flip_cols = _ORIENTATIONS[orientation]
    ext_w, ext_h = float(stored[2] - stored[0]), float(stored[3] - stored[1])
    width, height = size
    if transposed:
        ext_w, ext_h, width, height = ext_h, ext_w, height, width
    left = width - ext_w if flip_cols else 0.0
    top = height - ext_h if flip_rows else 0.0
    return (left, top, left + ext_w, top + ext_h)


def _pil_to_grey(im: Image.Image) -> np.ndarray:
    """Any Pillow image to float32 greyscale in [0, 1] (see the module notes for the rules)."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode == "L":
        return np.asarray(im, dtype=np.float32) / 255.0
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            bits = min(16, max(8, int(arr.max()).bit_length()))
            return arr.astype(np.float32) / float(2**bits - 1)
        return _minmax(arr)
    if mode == "F":
        return _minmax(np.asarray(im))
    if mode in ("LA", "La"):
        im = im.convert("LA")
        arr = np.asarray(im, dtype=np.float32) / 255.0
        return arr[..., 0] * arr[..., 1]
    if mode == "RGB":
        return np.asarray(im, dtype=np.float32) @ (_LUMA / 255.0)
    # RGBA, palette (with or without transparency), CMYK, YCbCr, ...: via RGBA.
    arr = np.asarray(im.convert("RGBA"), dtype=np.float32)
    return (arr[..., :3] @ (_LUMA / 255.0)) * (arr[..., 3] / 255.0)


def _exif_orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    # Damaged EXIF must not make a readable image unreadable.
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error):
        logger.debug("ignoring unreadable EXIF block")
        return 1
    return value if 1 <= value <= 8 else 1


def _apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels into the displayed picture (EXIF tag 274, values 1-8)."""
    transposed, flip_rows, flip_cols = _ORIENTATIONS[orientation]
    if transposed:
        img = img.T
    if flip_rows:
        img = img[::-1]
    if flip_cols:
        img = img[:, ::-1]
    return img


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def _decode_dicom(data: bytes, name: str, sniffed: bool) -> np.ndarray:
    """Decode DICOM bytes; ``sniffed`` marks bytes without the DICM preamble (maybe not DICOM)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many types on garbage
        if sniffed:
            raise DataError(name, _NOT_IMAGE) from exc
        raise DataError(name, f"corrupt DICOM file ({exc})") from exc
    has_pixels = any(tag in ds for tag in _PIXEL_TAGS)
    if sniffed and not (has_pixels or ("Rows" in ds and "Columns" in ds)):
        raise DataError(name, _NOT_IMAGE)
    if not has_pixels:
        meta = getattr(ds, "file_meta", None)
        if "SOPClassUID" not in ds and not (meta and "TransferSyntaxUID" in meta):
            raise DataError(name, "corrupt DICOM file (no valid attributes after the preamble)")
        raise DataError(name, "DICOM file has no pixel data")
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise DataError(name, f"corrupt or undecodable DICOM pixel data ({exc}; {syntax})") from exc

    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        logger.debug("%s: %d frames, using the first", name, frames)
        arr = arr[0]
    if samples > 1:  # colour DICOM (rare for CXR): luminance of the RGB output
        bits = int(ds.get("BitsStored", 8) or 8)
        return _clean((arr[..., :3].astype(np.float32) @ _LUMA) / float(2**bits - 1))
    if arr.ndim != 2:
        raise DataError(name, f"unexpected DICOM pixel array shape {arr.shape}")

    try:
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        out = _dicom_voi(values, ds, name)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(name, f"invalid DICOM LUT or rescale attributes ({exc})") from exc
    if out is None:
        out = _minmax(values)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        out = 1.0 - out
    return _clean(out)


def _dicom_voi(values: np.ndarray, ds: pydicom.Dataset, name: str) -> np.ndarray | None:
    """Apply the first VOI LUT, else the first window, to [0, 1]; None when there is neither."""
    seq = ds.get("VOILUTSequence")
    if seq and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]:
        n_entries, first = int(seq[0].LUTDescriptor[0]) or 2**16, int(seq[0].LUTDescriptor[1])
        lut_range = np.asarray(apply_voi(np.arange(first, first + n_entries), ds, 0), np.float64)
        lo, hi = float(lut_range.min()), float(lut_range.max())
        mapped = np.asarray(apply_voi(np.rint(values).astype(np.int64), ds, 0), np.float64)
        if hi <= lo:
            return np.zeros(values.shape, dtype=np.float32)
        return ((mapped - lo) / (hi - lo)).astype(np.float32)

    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    centre, width = _first_value(ds.WindowCenter), _first_value(ds.WindowWidth)
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    return _window(values, centre, width, function, name)


def _window(
    x: np.ndarray, centre: float, width: float, function: str, name: str
) -> np.ndarray | None:
    """DICOM PS3.3 C.11.2.1 windowing to [0, 1]; None (min-max fallback) for an unusable one."""
    if not (math.isfinite(centre) and math.isfinite(width)):
        logger.warning("%s: non-finite window %s/%s ignored", name, centre, width)
        return None
    if function == "SIGMOID" and width > 0:
        return (0.5 * (1.0 + np.tanh(2.0 * (x - centre) / width))).astype(np.float32)
    if function == "LINEAR_EXACT" and width > 0:
        return np.clip((x - centre) / width + 0.5, 0.0, 1.0).astype(np.float32)
    if function == "LINEAR" and width >= 1:
        c, w = centre - 0.5, width - 1.0
        if w == 0:
            return (x > c).astype(np.float32)
        return np.clip((x - c) / w + 0.5, 0.0, 1.0).astype(np.float32)
    logger.warning("%s: window %s/%s (%s) unusable, min-max scaling", name, centre, width, function)
    return None


def _first_value(value: object) -> float:
    """First item of a multi-valued DICOM attribute, as a float."""
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _tile_neighbours(n: int, tile: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pixel index: the two nearest tile centres along one axis and the blend weight."""
    pos = (np.arange(n) + 0.5) / tile - 0.5
    lower = np.floor(pos)
    weight = (pos - lower).astype(np.float32)
    lower = lower.astype(np.intp)
    return np.clip(lower, 0, count - 1), np.clip(lower + 1, 0, count - 1), weight


def _as_2d_float(img2d: np.ndarray) -> np.ndarray:
    img = np.asarray(img2d, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {img.shape}")
    return img


def _minmax(arr: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the finite range; a constant image becomes zeros."""
    a = np.nan_to_num(np.asarray(arr, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def _clean(img: np.ndarray) -> np.ndarray:
    """Contiguous float32 in [0, 1] with no NaN."""
    out = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0, out=out))
