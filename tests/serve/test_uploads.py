"""Upload checks that refuse content before any reader (or the model) sees it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtriad.serve.uploads import (
    Limits,
    UploadProblem,
    decode_cxr_upload,
    decode_ecg_upload,
    sniff_cxr,
)

from .conftest import zip_bytes


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


def _refusal(fn, *args) -> UploadProblem:
    with pytest.raises(UploadProblem) as info:
        fn(*args)
    return info.value


def test_types_are_recognised_by_content_only() -> None:
    assert sniff_cxr(_png(4, 4)) == "png"
    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, format="JPEG")
    assert sniff_cxr(buf.getvalue()) == "jpeg"
    assert sniff_cxr(b"\0" * 128 + b"DICM" + b"\0" * 10) == "dicom"
    assert _refusal(sniff_cxr, b"BM" + b"\0" * 200).status == 415


def test_pixel_count_is_capped_before_decoding() -> None:
    problem = _refusal(decode_cxr_upload, None, _png(64, 64), Limits(max_pixels=1000))
    assert problem.status == 413 and "4096 pixels" in problem.reason


def _record(header: str, dat: bytes = b"\0" * 48) -> bytes:
    return zip_bytes({"rec.hea": header.encode(), "rec.dat": dat})


@pytest.mark.parametrize(
    ("header", "status", "words"),
    [
        ("rec/2 12 500 5000\n", 422, "multi-segment"),
        ("rec 1 5000000 5000\nrec.dat 16 200 16 0 0 0 0 I\n", 422, "sampling rate"),
        ("rec 1 500 900000000\nrec.dat 16 200 16 0 0 0 0 I\n", 413, "samples"),
        ("rec 2 500 12\nrec.dat 16 200 16 0 0 0 0 I\n", 422, "describes 1"),
        ("rec 1 500 12\n/etc/passwd 16 200 16 0 0 0 0 I\n", 422, "not in the zip"),
        ("rec 1 500 12\nrec\u00e9.dat 16 200 16 0 0 0 0 I\n", 422, "ASCII"),
    ],
)
def test_wfdb_headers_are_checked_before_reading(
    tmp_path: Path, header: str, status: int, words: str
) -> None:
    problem = _refusal(decode_ecg_upload, None, _record(header), 500.0, tmp_path, Limits())
    assert problem.status == status and words in problem.reason


def test_zips_need_exactly_one_header_and_safe_unique_names(tmp_path: Path) -> None:
    none = zip_bytes({"rec.dat": b"\0"})
    assert (
        "exactly one" in _refusal(decode_ecg_upload, None, none, 500.0, tmp_path, Limits()).reason
    )
    twice = zip_bytes({"a/rec.hea": b"x", "b/rec.hea": b"y"})
    assert "two files" in _refusal(decode_ecg_upload, None, twice, 500.0, tmp_path, Limits()).reason
    odd = zip_bytes({"rec;rm -rf.hea": b"x"})
    assert "not allowed" in _refusal(decode_ecg_upload, None, odd, 500.0, tmp_path, Limits()).reason
    assert list(tmp_path.iterdir()) == []  # refused before anything was extracted


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("arr", "words"),
    [
        (np.array([[1, "a"]] * 12, dtype=object), "real numeric"),
        (np.zeros((3, 100), np.float32), "(12, T)"),
        (np.zeros((12, 100), np.complex64), "real numeric"),
    ],
)
def test_npy_headers_are_checked_and_never_unpickled(
    tmp_path: Path, arr: np.ndarray, words: str
) -> None:
    problem = _refusal(decode_ecg_upload, None, _npy(arr), 500.0, tmp_path, Limits())
    assert problem.status == 422 and words in problem.reason
    assert list(tmp_path.iterdir()) == []
