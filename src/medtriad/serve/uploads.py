"""Uploaded query files, checked on their content before any reader sees them.

X-ray: PNG, JPEG or DICOM, recognised by their signatures (never by the file name), with the
pixel count read from the header and capped before decoding. ECG: a zip holding one WFDB record
(``.hea`` with its ``.dat``/``.mat``) or a ``.npy`` (12, T) array. A zip is extracted into a
fresh temporary folder under sanitised base names only: the client's folders are dropped, names
outside ``[A-Za-z0-9_.-]`` are refused, the member count and the bytes actually inflated are
capped (zip bombs), and the WFDB header may only name signal files that came in the zip, so no
client-supplied path reaches the filesystem. A ``.npy`` header is parsed first (no pickles,
numeric dtype, (12, T) shape) and the array read with ``allow_pickle=False``.

Every refusal is an `UploadProblem` carrying the HTTP status and a reason for the client.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from medtriad.errors import DataError

__all__ = ["Limits", "UploadProblem", "decode_cxr_upload", "decode_ecg_upload", "mib", "sniff_cxr"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC = b"DICM"
DICOM_MAGIC_OFFSET = 128
ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_WFDB_SUFFIXES = (".hea", ".dat", ".mat")
_CHUNK = 1 << 16


def mib(n: int) -> str:
    """A byte count for a message: ``20 MiB``, ``0.05 MiB``."""
    return f"{n / (1 << 20):.3g} MiB"


class UploadProblem(Exception):
    """An upload refused: ``status`` (413 too large, 415 wrong type, 422 unreadable) and reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """Caps on what one upload may hold or expand to."""

    max_pixels: int = 40_000_000
    max_zip_members: int = 16
    max_unzipped_bytes: int = 64 << 20
    max_signals: int = 64
    max_samples: int = 10_000_000
    max_fs: float = 20_000.0


# --------------------------------------------------------------------------- X-rays


def sniff_cxr(data: bytes) -> str:
    """``png``, ``jpeg`` or ``dicom`` from the leading bytes; UploadProblem 415 otherwise."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC:
        return "dicom"
    raise UploadProblem(415, "cxr: not a PNG, JPEG or DICOM file (checked on content)")


def _pixel_count(data: bytes, kind: str) -> int:
    """Pixels the image declares, read from its header without decoding the pixels."""
    try:
        if kind == "dicom":
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
            return int(ds.Rows) * int(ds.Columns) * max(frames, 1)
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return int(im.size[0]) * int(im.size[1])
    except Exception as exc:  # any header a decoder cannot parse is unreadable content
        raise UploadProblem(
            422, f"cxr: unreadable {kind} header ({exc.__class__.__name__})"
        ) from exc


def decode_cxr_upload(store: Any, data: bytes, limits: Limits) -> np.ndarray:
    """Checked X-ray bytes -> the model's (1, S, S) input."""
    kind = sniff_cxr(data)
    pixels = _pixel_count(data, kind)
    if pixels > limits.max_pixels:
        raise UploadProblem(413, f"cxr: {pixels} pixels exceed the limit of {limits.max_pixels}")
    try:
        return store.read_cxr_bytes(data, "cxr")
    except DataError as exc:
        raise UploadProblem(422, f"cxr: {exc.reason}") from exc


# --------------------------------------------------------------------------- ECGs


def _safe_member_name(raw: str) -> str:
    """The base name of a zip member (folders dropped), if it is a plain, safe file name."""
    name = PurePosixPath(raw.replace("\\", "/")).name
    if not _SAFE_NAME.match(name):
        raise UploadProblem(422, f"ecg: file name {name[:60]!r} in the zip is not allowed")
    return name


def _extract_wfdb(data: bytes, folder: Path, limits: Limits) -> Path:
    """Extract the WFDB files of a zip into `folder` (checked); returns the header's path."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in archive.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise UploadProblem(422, "ecg: not a readable zip archive") from exc
    if len(infos) > limits.max_zip_members:
        raise UploadProblem(
            413, f"ecg: the zip holds {len(infos)} files; at most {limits.max_zip_members} allowed"
        )
    if sum(i.file_size for i in infos) > limits.max_unzipped_bytes:
        raise UploadProblem(413, f"ecg: the zip expands beyond {mib(limits.max_unzipped_bytes)}")
    wanted: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        base = PurePosixPath(info.filename.replace("\\", "/")).name
        if base.startswith(".") or not base.lower().endswith(_WFDB_SUFFIXES):
            continue  # e.g. __MACOSX/._rec.hea, README.txt
        name = _safe_member_name(info.filename)
        if name in wanted:
            raise UploadProblem(422, f"ecg: the zip holds two files named {name!r}")
        wanted[name] = info
    headers = [n for n in wanted if n.lower().endswith(".hea")]
    if len(headers) != 1:
        raise UploadProblem(
            422, f"ecg: the zip must hold exactly one WFDB header (.hea), found {len(headers)}"
        )
    budget = limits.max_unzipped_bytes
    for name, info in wanted.items():
        try:
            with archive.open(info) as src, open(folder / name, "xb") as dst:
                while chunk := src.read(_CHUNK):
                    budget -= len(chunk)
                    if budget < 0:
                        raise UploadProblem(
                            413, f"ecg: the zip expands beyond {mib(limits.max_unzipped_bytes)}"
                        )
                    dst.write(chunk)
        except (zipfile.BadZipFile, RuntimeError, OSError, EOFError, NotImplementedError) as exc:
            raise UploadProblem(422, f"ecg: cannot extract {name!r} from the zip") from exc
    header = folder / headers[0]
    _check_header(header.read_bytes(), set(wanted), limits)
    return header


def _number(token: str) -> float:
    """The leading number of a WFDB header field such as ``500/1000(0)``."""
    match = re.match(r"^[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?", token)
    if not match:
        raise ValueError(token)
    return float(match.group(0))


def _check_header(raw: bytes, files: set[str], limits: Limits) -> None:
    """Refuse a WFDB header naming files outside the zip, several segments, or absurd sizes."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise UploadProblem(422, "ecg: the WFDB header is not ASCII text") from exc
    lines = [
        ln.split() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    if not lines or len(lines[0]) < 2:
        raise UploadProblem(422, "ecg: the WFDB header has no record line")
    record = lines[0]
    if "/" in record[0]:
        raise UploadProblem(422, "ecg: multi-segment WFDB records are not supported")
    try:
        n_sig = int(record[1])
        fs = _number(record[2]) if len(record) > 2 else 250.0
        n_samples = int(_number(record[3])) if len(record) > 3 else 0
    except ValueError as exc:
        raise UploadProblem(422, "ecg: malformed WFDB record line") from exc
    if not 1 <= n_sig <= limits.max_signals:
        raise UploadProblem(422, f"ecg: {n_sig} signals; 1 to {limits.max_signals} allowed")
    if not 1.0 <= fs <= limits.max_fs:
        raise UploadProblem(422, f"ecg: sampling rate {fs:g} Hz outside 1..{limits.max_fs:g}")
    if n_samples > limits.max_samples:
        raise UploadProblem(
            413, f"ecg: {n_samples} samples exceed the limit of {limits.max_samples}"
        )
    signals = lines[1 : 1 + n_sig]
    if len(signals) < n_sig:
        raise UploadProblem(
            422, f"ecg: the header declares {n_sig} signals but describes {len(signals)}"
        )
    for sig in signals:
        if sig[0] not in files:
            raise UploadProblem(
                422, f"ecg: the header names signal file {sig[0][:60]!r}, which is not in the zip"
            )


def _write_npy(data: bytes, folder: Path, limits: Limits) -> Path:
    """Check a .npy header (numeric, no pickles, (12, T)) and write it as ``record.npy``."""
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, SyntaxError) as exc:
        raise UploadProblem(422, "ecg: malformed .npy header") from exc
    if dtype.hasobject or dtype.kind not in "biuf":
        raise UploadProblem(422, f"ecg: a .npy ECG must be a real numeric array, got dtype {dtype}")
    if len(shape) != 2 or shape[0] != 12:
        raise UploadProblem(
            422, f"ecg: a .npy ECG must be a (12, T) array, got shape {tuple(shape)}"
        )
    if shape[1] > limits.max_samples:
        raise UploadProblem(
            413, f"ecg: {shape[1]} samples exceed the limit of {limits.max_samples}"
        )
    path = folder / "record.npy"
    with open(path, "xb") as dst:
        dst.write(data)
    return path


def decode_ecg_upload(store: Any, data: bytes, fs: float, folder: Path, limits: Limits) -> Any:
    """Checked ECG bytes -> the model's preprocessed `Ecg`; files go into `folder` only.

    `fs` is the sampling rate of a ``.npy`` array (a WFDB header carries its own).
    """
    if data.startswith(ZIP_MAGIC):
        path = _extract_wfdb(data, folder, limits)
    elif data.startswith(NPY_MAGIC):
        path = _write_npy(data, folder, limits)
    else:
        raise UploadProblem(
            415, "ecg: not a zip of a WFDB record or a .npy array (checked on content)"
        )
    try:
        return store.read_ecg(path, npy_fs=fs)
    except DataError as exc:
        reason = exc.reason.replace(str(folder) + "/", "").replace(str(folder), "")
        raise UploadProblem(422, f"ecg: {reason}") from exc
