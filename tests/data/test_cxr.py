"""Chest X-ray reader: modes, DICOM LUT pipeline, resizing, CLAHE, bad input, content sniffing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageOps
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from medtriad.data.cxr import clahe, decode_cxr, read_cxr, read_cxr_bytes, resize_cxr
from medtriad.errors import DataError

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


# ------------------------------------------------------------------------------------------
# builders
# ------------------------------------------------------------------------------------------


def _ramp8(h: int = 16, w: int = 16) -> np.ndarray:
    """A uint8 ramp that covers 0..255 exactly once over 256 pixels."""
    return np.arange(h * w, dtype=np.int64).reshape(h, w).astype(np.uint8)


def _save(img: Image.Image, path: Path, fmt: str = "PNG", **kw) -> Path:
    img.save(path, fmt, **kw)
    return path


def _dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    preamble: bool = True,
    **attrs,
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if preamble else ImplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128 if preamble else None)
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return path


def _dicom_bytes(tmp_path: Path, pixels: np.ndarray, **kw) -> bytes:
    return _dicom(tmp_path / "tmp.dcm", pixels, **kw).read_bytes()


# ------------------------------------------------------------------------------------------
# PNG / JPEG modes
# ------------------------------------------------------------------------------------------


def _palette_grey(ramp: np.ndarray) -> Image.Image:
    """Palette image whose index i maps to grey 255 - i (so the palette really is applied)."""
    pal = Image.new("P", (ramp.shape[1], ramp.shape[0]))
    pal.putpalette([c for i in range(256) for c in (255 - i,) * 3])
    pal.putdata(list(ramp.ravel()))
    return pal


@pytest.mark.parametrize(
    "mode",
    ["L", "LA", "RGB", "RGBA", "P", "1", "I;16", "I"],
)
def test_every_mode_reads_known_ramp(tmp_path: Path, mode: str) -> None:
    ramp = _ramp8()
    expected = ramp.astype(np.float32) / 255.0
    if mode == "L":
        im = Image.fromarray(ramp)
    elif mode == "LA":
        im = Image.merge("LA", (Image.fromarray(ramp), Image.new("L", (16, 16), 255)))
    elif mode == "RGB":
        im = Image.fromarray(np.stack([ramp] * 3, -1))
    elif mode == "RGBA":
        im = Image.fromarray(np.dstack([ramp, ramp, ramp, np.full_like(ramp, 255)]))
    elif mode == "P":
        im = _palette_grey(ramp)
        expected = (255 - ramp.astype(np.float32)) / 255.0
    elif mode == "1":
        im = Image.fromarray(ramp >= 128)
        expected = (ramp >= 128).astype(np.float32)
    elif mode == "I;16":
        im = Image.fromarray(ramp.astype(np.uint16) * 257)  # 0..65535
    else:  # 32-bit integer TIFF holding 16-bit data
        im = Image.fromarray(ramp.astype(np.int32) * 257)
    assert im.mode == mode
    path = _save(im, tmp_path / "x.tif", "TIFF") if mode == "I" else _save(im, tmp_path / "x.png")
    out = read_cxr(path)
    assert out.shape == (1, 16, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], expected, atol=1e-6)


def test_rgb_is_bt601_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((4, 3, 3), np.uint8)
    rgb[:, 0, 0] = 200  # pure red
    rgb[:, 1, 1] = 200  # pure green
    rgb[:, 2, 2] = 200  # pure blue
    out = read_cxr(_save(Image.fromarray(rgb), tmp_path / "c.png"))[0]
    np.testing.assert_allclose(out[0], np.array([0.299, 0.587, 0.114]) * 200 / 255, atol=1e-6)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_over_black(tmp_path: Path, mode: str) -> None:
    grey = np.full((8, 8), 200, np.uint8)
    alpha = np.tile(np.array([0, 64, 128, 255], np.uint8), (8, 2))
    bands = [grey] * (3 if mode == "RGBA" else 1) + [alpha]
    im = Image.fromarray(np.dstack(bands))
    assert im.mode == mode
    out = read_cxr(_save(im, tmp_path / "a.png"))[0]
    np.testing.assert_allclose(out, (200 / 255) * alpha / 255.0, atol=1e-6)


def test_palette_with_transparency_goes_through_alpha(tmp_path: Path) -> None:
    pal = _palette_grey(_ramp8())
    pal.info["transparency"] = 0  # index 0 (white) fully transparent
    pal.save(tmp_path / "t.png", transparency=0)
    out = read_cxr(tmp_path / "t.png")[0]
    assert out[0, 0] == 0.0  # transparent white composited over black
    assert out[0, 1] == pytest.approx(254 / 255, abs=1e-6)


def test_16bit_png_keeps_full_precision(tmp_path: Path) -> None:
    raw = np.array([[0, 30000, 30001, 65535]], np.uint16)
    out = read_cxr(_save(Image.fromarray(raw), tmp_path / "p16.png"))[0, 0]
    np.testing.assert_allclose(out, raw[0] / 65535.0, rtol=0, atol=1e-7)
    assert out[2] > out[1]  # one 16-bit step apart: still distinguishable


def test_12bit_data_in_16bit_png_scales_by_its_bit_depth(tmp_path: Path) -> None:
    raw = np.array([[0, 1000, 2047, 4095]], np.uint16)  # max needs 12 bits
    out = read_cxr(_save(Image.fromarray(raw), tmp_path / "p12.png"))[0, 0]
    np.testing.assert_allclose(out, raw[0] / 4095.0, atol=1e-7)


def test_jpeg_rgb_reads_close_to_its_grey_values(tmp_path: Path) -> None:
    x = np.tile(np.arange(64), (64, 1))
    grey = (x * 4).astype(np.uint8)  # horizontal gradient 0..252
    path = _save(Image.fromarray(np.stack([grey] * 3, -1)), tmp_path / "g.jpg", "JPEG", quality=95)
    out = read_cxr(path)[0]
    assert out.shape == (64, 64)
    assert np.abs(out - grey / 255.0).max() < 4 / 255  # lossy codec, small error only
    assert np.all(np.diff(out.mean(axis=0)) > 0)


def test_constant_images_give_no_nan(tmp_path: Path) -> None:
    flat8 = read_cxr(_save(Image.new("L", (10, 6), 128), tmp_path / "c.png"), size=32)
    assert np.isfinite(flat8).all()
    # Fixed-depth images keep their absolute level inside the picture, black padding around it.
    assert flat8[0, 16, 16] == pytest.approx(128 / 255)
    flat_dcm = read_cxr(_dicom(tmp_path / "c.dcm", np.full((6, 10), 700)))
    assert np.isfinite(flat_dcm).all() and np.all(flat_dcm == 0.0)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_transpose(tmp_path: Path, orientation: int) -> None:
    y, x = np.mgrid[0:20, 0:40]
    im = Image.fromarray((x * 5 + y * 2).astype(np.uint8))  # asymmetric along both axes
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(im, tmp_path / "o.jpg", "JPEG", quality=95, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("L")) / 255.0
    out = read_cxr(path)[0]
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() < 3 / 255
    drafted = read_cxr(path, size=(expected.shape[0] // 2, expected.shape[1] // 2))[0]
    np.testing.assert_allclose(drafted, resize_cxr(expected, drafted.shape), atol=0.05)


# ------------------------------------------------------------------------------------------
# DICOM
# ------------------------------------------------------------------------------------------


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    raw = np.array([[0, 1000, 2000, 4000]], np.uint16)
    mono1 = read_cxr(_dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1"))[0, 0]
    mono2 = read_cxr(_dicom(tmp_path / "m2.dcm", raw, photometric="MONOCHROME2"))[0, 0]
    np.testing.assert_allclose(mono2, raw[0] / 4000.0, atol=1e-6)  # min-max without a window
    np.testing.assert_allclose(mono1, 1.0 - raw[0] / 4000.0, atol=1e-6)
    assert mono1[-1] < mono1[0]  # the brightest raw pixel is the darkest output


def _linear_window(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR windowing written out by hand, to [0, 1]."""
    out = np.empty_like(x, dtype=np.float64)
    lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    out[x <= lo] = 0.0
    out[x > hi] = 1.0
    mid = (x > lo) & (x <= hi)
    out[mid] = (x[mid] - (c - 0.5)) / (w - 1) + 0.5
    return out


@pytest.mark.parametrize("multi", [False, True])
def test_rescale_and_window(tmp_path: Path, multi: bool) -> None:
    raw = np.array([[0, 40, 80, 100, 120, 160, 200, 4095]], np.uint16)
    slope, intercept, centre, width = 2.0, -100.0, 100.0, 201.0
    window = (
        {"WindowCenter": [centre, 900.0], "WindowWidth": [width, 50.0]}
        if multi
        else {"WindowCenter": centre, "WindowWidth": width}
    )
    path = _dicom(tmp_path / "w.dcm", raw, RescaleSlope=slope, RescaleIntercept=intercept, **window)
    out = read_cxr(path)[0, 0]
    expected = _linear_window(raw[0] * slope + intercept, centre, width)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert 0.0 < out[3] < 1.0 and out[0] == 0.0 and out[-1] == 1.0


def test_sigmoid_window(tmp_path: Path) -> None:
    raw = np.array([[0, 50, 100, 150, 200]], np.uint16)
    path = _dicom(
        tmp_path / "s.dcm", raw, WindowCenter=100, WindowWidth=80, VOILUTFunction="SIGMOID"
    )
    out = read_cxr(path)[0, 0]
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-4 * (raw[0] - 100.0) / 80)), atol=1e-6)


def test_voi_lut_sequence_wins_over_window(tmp_path: Path) -> None:
    entries = np.arange(4096)
    table = np.round(4095 * np.sqrt(entries / 4095)).astype(int)  # a gamma-like display curve
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 12])  # LUT Descriptor: entries, first value, bits
    item.add_new(0x00283006, "US", table.tolist())  # LUT Data
    raw = np.array([[0, 16, 256, 1024, 4095]], np.uint16)
    path = _dicom(
        tmp_path / "lut.dcm",
        raw,
        VOILUTSequence=pydicom.Sequence([item]),
        WindowCenter=2048,
        WindowWidth=10,
    )
    out = read_cxr(path)[0, 0]
    np.testing.assert_allclose(out, table[raw[0]] / 4095.0, atol=1e-6)


def test_dicom_resizes_like_images(tmp_path: Path) -> None:
    raw = (np.arange(60 * 30).reshape(60, 30) % 4096).astype(np.uint16)
    out = read_cxr(_dicom(tmp_path / "r.dcm", raw), size=(20, 20), fit="crop")
    assert out.shape == (1, 20, 20) and np.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


# ------------------------------------------------------------------------------------------
# resizing
# ------------------------------------------------------------------------------------------


@pytest.fixture()
def wide(tmp_path: Path) -> Path:
    """200 wide x 100 high, black, with a white block at rows 40-60, columns 60-100."""
    arr = np.zeros((100, 200), np.uint8)
    arr[40:60, 60:100] = 255
    return _save(Image.fromarray(arr), tmp_path / "wide.png")


def test_pad_keeps_aspect_and_centres(wide: Path) -> None:
    out = read_cxr(wide, size=100, fit="pad")[0]
    assert out.shape == (100, 100)
    # scale 0.5: content is 50 rows high, centred at rows 25..75; block -> rows 45..55, cols 30..50
    assert np.all(out[:24] == 0) and np.all(out[76:] == 0)
    assert out[47:53, 32:48].min() > 0.95
    assert out[30:40].max() < 0.05 and out[60:70].max() < 0.05
    assert out[45:55, :28].max() < 0.05 and out[45:55, 52:].max() < 0.05


def test_crop_keeps_aspect_and_takes_the_centre(wide: Path) -> None:
    out = read_cxr(wide, size=100, fit="crop")[0]
    assert out.shape == (100, 100)
    # scale 1: source columns 50..150 kept; block -> rows 40..60, output cols 10..50
    assert out[41:59, 11:49].min() > 0.95
    assert out[:, 52:].max() < 0.05 and out[:, :8].max() < 0.05 and out[:38].max() < 0.05


@pytest.mark.parametrize("fit", ["pad", "crop"])
@pytest.mark.parametrize("size", [(64, 48), (33, 100), 17])
def test_output_shape_is_exact(wide: Path, fit: str, size: int | tuple[int, int]) -> None:
    out = read_cxr(wide, size=size, fit=fit)
    hw = (size, size) if isinstance(size, int) else size
    assert out.shape == (1, *hw) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("size", [96, 390])
def test_jpeg_draft_matches_full_decode(tmp_path: Path, size: int) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:800, 0:800]
    stripes = 128 + 60 * np.sin(2 * np.pi * x / 10) * (y > 400)  # fine detail in the lower half
    arr = stripes + 30 * np.cos(y / 70) + rng.normal(0, 3, x.shape)
    path = _save(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), tmp_path / "b.jpg", "JPEG")
    fast = read_cxr(path, size=size)[0]
    full = resize_cxr(decode_cxr(path), size)
    assert np.abs(fast - full).mean() < 0.01 and np.abs(fast - full).max() < 0.1


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_jpeg_draft_keeps_geometry_of_odd_sizes(tmp_path: Path, orientation: int) -> None:
    """Sizes not divisible by the draft scale: sharp edges land where a full decode puts them."""
    arr = np.zeros((601, 1003), np.uint8)
    arr[97:503, 301:899] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(Image.fromarray(arr), tmp_path / "e.jpg", "JPEG", quality=98, exif=exif)
    for fit in ("pad", "crop"):
        fast = read_cxr(path, size=(96, 80), fit=fit)[0]
        full = resize_cxr(decode_cxr(path), (96, 80), fit=fit)
        assert np.abs(fast - full).max() < 0.06, fit


def test_resize_rejects_bad_arguments() -> None:
    img = np.zeros((10, 10), np.float32)
    with pytest.raises(ValueError):
        resize_cxr(img, 10, fit="stretch")
    with pytest.raises(ValueError):
        resize_cxr(img, (0, 10))


# ------------------------------------------------------------------------------------------
# CLAHE
# ------------------------------------------------------------------------------------------


def _local_contrast(img: np.ndarray, k: int = 8) -> float:
    """Mean standard deviation inside k x k blocks."""
    h, w = (img.shape[0] // k) * k, (img.shape[1] // k) * k
    blocks = img[:h, :w].reshape(h // k, k, w // k, k)
    return float(blocks.std(axis=(1, 3)).mean())


def _low_contrast(h: int = 128, w: int = 128) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return (0.3 + 0.4 * x / w + 0.02 * np.sin(x / 2.0) * np.sin(y / 3.0)).astype(np.float32)


def test_clahe_raises_local_contrast_and_stays_in_range() -> None:
    img = _low_contrast()
    mild, strong = clahe(img, clip=1.5), clahe(img, clip=4.0)
    for out in (mild, strong):
        assert out.shape == img.shape and out.dtype == np.float32
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert _local_contrast(mild) > 2 * _local_contrast(img)
    assert _local_contrast(strong) > _local_contrast(mild)


def _tile_mapping(tile: np.ndarray, clip: float, bins: int = 256) -> np.ndarray:
    """One tile's clipped-histogram CDF, computed directly from the definition."""
    q = np.minimum((tile * bins).astype(int), bins - 1)
    hist, _ = np.histogram(q, bins=bins, range=(0, bins))
    limit = max(clip * tile.size / bins, 1.0)
    excess = np.maximum(hist - limit, 0).sum()
    clipped = np.minimum(hist, limit) + excess / bins
    return np.cumsum(clipped) / tile.size


def test_clahe_at_tile_centres_uses_that_tiles_mapping() -> None:
    img = np.random.default_rng(1).beta(2, 5, (72, 72)).astype(np.float32)  # 9x9-pixel tiles
    out = clahe(img, clip=2.0, tiles=8)
    for i in range(8):
        for j in range(8):
            tile = img[9 * i : 9 * i + 9, 9 * j : 9 * j + 9]
            lut = _tile_mapping(tile, 2.0)
            cy, cx = 9 * i + 4, 9 * j + 4
            q = min(int(img[cy, cx] * 256), 255)
            assert out[cy, cx] == pytest.approx(lut[q], abs=1e-5)


def test_clahe_of_constant_image_is_constant() -> None:
    out = clahe(np.full((50, 70), 0.5, np.float32))
    assert np.isfinite(out).all() and np.ptp(out) < 1e-6


def test_read_cxr_clahe_flag(tmp_path: Path) -> None:
    img = (_low_contrast() * 65535).astype(np.uint16)
    path = _save(Image.fromarray(img), tmp_path / "lc.png")
    plain, eq = read_cxr(path, size=64), read_cxr(path, size=64, clahe=True, clahe_clip=3.0)
    assert eq.shape == plain.shape == (1, 64, 64)
    assert _local_contrast(eq[0], 4) > 1.5 * _local_contrast(plain[0], 4)


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (120, 120), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "JPEG")
    return buf.getvalue()


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    cases = {
        "empty.png": (b"", "file is empty"),
        "truncated.png": (_png_bytes()[: len(_png_bytes()) // 2], "truncated"),
        "truncated.jpg": (_jpeg_bytes()[: len(_jpeg_bytes()) // 2], "truncated"),
        "notes.png": (b"patient notes, not pixels\n" * 20, "not an image or DICOM file"),
        "corrupt.dcm": (b"\0" * 128 + b"DICM" + bytes(range(256)) * 8, "corrupt DICOM"),
    }
    out = {}
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        out[name] = (tmp_path / name, reason)
    return out


@pytest.mark.parametrize(
    "name", ["empty.png", "truncated.png", "truncated.jpg", "notes.png", "corrupt.dcm"]
)
def test_bad_files_raise_dataerror_naming_file_and_problem(tmp_path: Path, name: str) -> None:
    path, reason = _bad_files(tmp_path)[name]
    for reader in (read_cxr, decode_cxr):
        with pytest.raises(DataError) as info:
            reader(path)
        assert info.value.path == str(path)
        assert reason in str(info.value) and str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found") as info:
        read_cxr(tmp_path / "nope.png", size=224)
    assert info.value.path == str(tmp_path / "nope.png")


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "np.dcm", np.zeros((4, 4), np.uint16))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(DataError, match="no pixel data") as info:
        read_cxr(path)
    assert info.value.path == str(path)


def test_dicom_with_short_pixel_data(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "short.dcm", np.zeros((4, 4), np.uint16))
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 400, 400  # pixel data now far too short for the declared size
    ds.save_as(path)
    with pytest.raises(DataError, match="pixel data"):
        read_cxr(path)


# ------------------------------------------------------------------------------------------
# bytes input: detection on content
# ------------------------------------------------------------------------------------------


def test_bytes_detects_dicom_despite_png_name(tmp_path: Path) -> None:
    raw = np.array([[0, 2000, 4000]], np.uint16)
    data = _dicom_bytes(tmp_path, raw, photometric="MONOCHROME1")
    out = read_cxr_bytes(data, name="scan.png")
    np.testing.assert_allclose(out[0, 0], [1.0, 0.5, 0.0], atol=1e-6)


def test_bytes_detects_dicom_without_preamble(tmp_path: Path) -> None:
    raw = np.array([[0, 1000, 4000]], np.uint16)
    data = _dicom_bytes(tmp_path, raw, preamble=False)
    assert data[128:132] != b"DICM"
    out = read_cxr_bytes(data, name="upload.jpg")
    np.testing.assert_allclose(out[0, 0], raw[0] / 4000.0, atol=1e-6)


def test_bytes_detects_png_despite_dcm_name() -> None:
    buf = io.BytesIO()
    Image.fromarray(_ramp8()).save(buf, "PNG")
    out = read_cxr_bytes(buf.getvalue(), name="study.dcm", size=8)
    assert out.shape == (1, 8, 8)
    assert out[0, 0, 0] < out[0, -1, -1]


def test_bytes_errors_carry_the_given_name() -> None:
    with pytest.raises(DataError, match="not an image or DICOM file") as info:
        read_cxr_bytes(b"hello" * 100, name="upload-7")
    assert info.value.path == "upload-7"
    with pytest.raises(DataError, match="file is empty"):
        read_cxr_bytes(b"")
