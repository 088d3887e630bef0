"""12-lead ECG reader: WFDB records and ``.npy`` arrays to a canonical, filtered (12, T) array in mV.

Every ECG that enters medtriad goes through here, so that models always see the same lead order
(:data:`CANONICAL_LEADS`), the same unit (millivolts), rate and duration, whatever the source.

Pipeline of :func:`read_ecg`: load the channels and convert them to mV (:func:`load_raw_ecg`),
map them BY NAME to the canonical order (missing leads become zeros with ``lead_mask`` False,
unrecognised channels such as Frank ``vx``/``vy``/``vz`` are ignored), then
:func:`preprocess_ecg`: non-finite samples by ``nan_policy``, polyphase resampling, zero-phase
Butterworth high-/low-pass, crop to ``seconds``, optional per-lead normalisation, zero padding at
the end.

Lead names: case, spaces, ``_``/``.``/``-`` separators and a ``lead``/``ecg`` prefix are ignored;
``D1``/``DI``..``D3``/``DIII`` and the Holter ``MLI``/``MLII``/``MLIII`` map to I/II/III, and the
European chest names ``C1``..``C6`` to V1..V6. A name starting with ``-`` (e.g. ``-aVR`` of the
Cabrera display) is a negated lead, a different signal, and is NOT mapped: it is ignored like any
unknown channel. Bare digits (``1``, ``2``) are not mapped either: they are as often channel
numbers as lead names.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import signal as sps

from medtriad.errors import ConfigError, DataError

if TYPE_CHECKING:
    from wfdb import Record

    from medtriad.config import EcgConfig

log = logging.getLogger(__name__)

CANONICAL_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)  # fmt: skip
N_LEADS = len(CANONICAL_LEADS)

NanPolicy = Literal["raise", "interpolate", "zero"]
CropMode = Literal["start", "centre", "center"]
Normalize = Literal["none", "zscore", "minmax"]

_NAN_POLICIES = ("raise", "interpolate", "zero")
_CROP_MODES = ("start", "centre", "center")
_NORMALIZE_MODES = ("none", "zscore", "minmax")

FILTER_ORDER = 4
"""Butterworth order of each edge; applied forward and backward, so the effective order doubles."""
LOWPASS_NYQUIST_FRACTION = 0.45
"""The low-pass corner is clipped to this fraction of the output rate (0.9 of Nyquist)."""


# --------------------------------------------------------------------------- lead names


def _alias_table() -> dict[str, str]:
    table = {lead.lower(): lead for lead in CANONICAL_LEADS}
    for k, roman in enumerate(("i", "ii", "iii"), start=1):
        lead = CANONICAL_LEADS[k - 1]
        table.update({f"d{k}": lead, f"d{roman}": lead, f"ml{roman}": lead, f"ml{k}": lead})
    for k in range(1, 7):
        table[f"c{k}"] = f"V{k}"
    return table


_ALIASES = _alias_table()
_SEPARATORS = re.compile(r"[\s_.\-:]+")
_PREFIXES = ("lead", "ecg")


def canonical_lead(name: str) -> str | None:
    """Canonical name of a lead label as found in a file (``"avr"`` -> ``"aVR"``), or None.

    None means the channel is not one of the 12 standard leads (e.g. ``vx``, ``-aVR``, ``V3R``)
    and is to be ignored.
    """
    s = str(name).strip()
    if not s or s.startswith("-"):
        return None
    s = _SEPARATORS.sub("", s.lower())
    for prefix in _PREFIXES:
        if s.startswith(prefix) and len(s) > len(prefix):
            s = s[len(prefix) :]
            break
    return _ALIASES.get(s)


# --------------------------------------------------------------------------- result type


@dataclass(frozen=True, eq=False)
class Ecg:
    """A preprocessed 12-lead ECG.

    ``signal`` is float32 (12, T) in mV (unless normalised), rows in :data:`CANONICAL_LEADS`
    order; rows whose ``lead_mask`` is False were missing and are all zeros. ``source_leads`` are
    the channel names as found in the file, in file order.
    """

    signal: np.ndarray
    lead_mask: np.ndarray
    fs: float
    source_leads: tuple[str, ...]
    path: Path | None = None

    @property
    def seconds(self) -> float:
        """Duration of ``signal`` in seconds."""
        return self.signal.shape[-1] / self.fs


# --------------------------------------------------------------------------- units

_TO_MV = {"nv": 1e-6, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "mv": 1.0, "v": 1e3, "kv": 1e6}


def _mv_scale(unit: str | None) -> float | None:
    """Factor that turns a value in ``unit`` into mV; None when the unit is not a voltage."""
    if unit is None or not str(unit).strip():
        return 1.0  # WFDB: a signal without units is in mV
    return _TO_MV.get(str(unit).strip().lower())


# --------------------------------------------------------------------------- loading

_BYTES_PER_SAMPLE = {
    "8": 1.0, "16": 2.0, "24": 3.0, "32": 4.0, "61": 2.0, "80": 1.0, "160": 2.0,
    "212": 1.5, "310": 4 / 3, "311": 4 / 3,
}  # fmt: skip


def _resolve(path: Path) -> tuple[str, Path]:
    """(kind, target): kind 'npy' with the file, or 'wfdb' with the record path without suffix."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if not path.is_file():
            raise DataError(path, "file not found")
        return "npy", path
    if suffix == ".hea":
        if not path.is_file():
            raise DataError(path, "file not found")
        return "wfdb", path.with_suffix("")
    if suffix in (".dat", ".mat"):
        if not path.is_file():
            raise DataError(path, "file not found")
        header = path.with_suffix(".hea")
        if not header.is_file():
            raise DataError(path, f"no WFDB header {header.name} beside the signal file")
        return "wfdb", path.with_suffix("")
    header = Path(f"{path}.hea")
    if header.is_file():
        return "wfdb", path
    if not path.exists():
        raise DataError(path, "file not found (nor a WFDB header with that record name)")
    raise DataError(
        path,
        f"unsupported ECG file type {path.suffix or path.name!r}: "
        "expected a WFDB record (.hea with .dat/.mat) or a .npy array",
    )


def _check_signal_files(record: Path, header: Record) -> None:
    """Raise DataError when a signal file named in the header is missing, empty or truncated."""
    header_path = Path(f"{record}.hea")
    names = list(header.file_name or [])
    fmts = list(header.fmt or [])
    offsets = list(header.byte_offset or [None] * len(names))
    spf = list(header.samps_per_frame or [1] * len(names))
    sig_len = header.sig_len
    files: dict[str, dict[str, float]] = {}
    for name, fmt, off, n in zip(names, fmts, offsets, spf):
        entry = files.setdefault(
            name,
            {"frame": 0.0, "bps": _BYTES_PER_SAMPLE.get(str(fmt), 0.0), "offset": float(off or 0)},
        )
        entry["frame"] += n or 1
    for name, entry in files.items():
        sig_file = record.parent / name
        if not sig_file.is_file():
            raise DataError(header_path, f"signal file {name} named in the header is missing")
        payload = sig_file.stat().st_size - entry["offset"]
        if payload <= 0:
            raise DataError(sig_file, f"signal file {name} is empty")
        if not entry["bps"] or not sig_len:
            continue  # compressed format or length not declared: wfdb decides
        found = int(payload // (entry["bps"] * entry["frame"]))
        if found < sig_len:
            raise DataError(
                sig_file,
                f"signal file {name} truncated: expected {sig_len} samples, found {found}",
            )


def _load_wfdb(record: Path) -> tuple[np.ndarray, float, tuple[str, ...], list[str]]:
    import wfdb

    header_path = Path(f"{record}.hea")
    try:
        rec = wfdb.rdrecord(str(record))
    except Exception as exc:  # wfdb raises many types; diagnose from the header and file sizes
        try:
            header = wfdb.rdheader(str(record))
        except Exception as hexc:
            raise DataError(header_path, f"unreadable WFDB header: {hexc}") from hexc
        _check_signal_files(record, header)
        raise DataError(header_path, f"cannot read WFDB record: {exc}") from exc
    if not rec.n_sig or rec.p_signal is None or rec.p_signal.size == 0:
        raise DataError(header_path, "record has no samples")
    if rec.sig_len and rec.p_signal.shape[0] < rec.sig_len:
        raise DataError(
            header_path,
            f"signal file truncated: expected {rec.sig_len} samples, found {rec.p_signal.shape[0]}",
        )
    names = tuple(str(n) for n in rec.sig_name)
    units = [str(u) if u is not None else "" for u in (rec.units or [""] * len(names))]
    return rec.p_signal.T, float(rec.fs), names, units


def _load_npy(path: Path, npy_fs: float) -> tuple[np.ndarray, float, tuple[str, ...], list[str]]:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(path, f"cannot read .npy array: {exc}") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise DataError(path, f"expected a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[0] != N_LEADS:
        hint = " (stored as (T, 12)? transpose it)" if arr.ndim == 2 and arr.shape[1] == 12 else ""
        raise DataError(
            path,
            f"expected 12 leads as a (12, T) array, got {arr.shape[0] if arr.ndim else 0} "
            f"rows in shape {arr.shape}{hint}",
        )
    if arr.shape[1] == 0:
        raise DataError(path, "array has no samples")
    return arr.astype(np.float64, copy=False), float(npy_fs), CANONICAL_LEADS, ["mV"] * N_LEADS


def load_raw_ecg(
    path: str | Path, *, npy_fs: float = 500.0
) -> tuple[np.ndarray, float, tuple[str, ...]]:
    """Load an ECG file as it is: (signal (n_channels, T) float64 in mV, fs, channel names).

    WFDB records keep all their channels in file order; channels whose units are not a voltage
    are dropped unless their name is an ECG lead (then DataError). A ``.npy`` must be a (12, T)
    array in canonical order, in mV, at ``npy_fs`` Hz.
    """
    path = Path(path)
    kind, target = _resolve(path)
    if kind == "npy":
        sig, fs, names, units = _load_npy(target, npy_fs)
        return sig, fs, names
    sig, fs, names, units = _load_wfdb(target)
    scales = np.array([_mv_scale(u) or np.nan for u in units], dtype=np.float64)
    bad = [(n, u) for n, u, s in zip(names, units, scales) if np.isnan(s)]
    for name, unit in bad:
        if canonical_lead(name) is not None:
            raise DataError(path, f"lead {name!r} has units {unit!r}, which is not a voltage")
        log.debug("%s: dropping non-voltage channel %r (%s)", path, name, unit)
    keep = ~np.isnan(scales)
    sig = sig[keep] * scales[keep, None]
    return sig, fs, tuple(n for n, k in zip(names, keep) if k)


def _to_canonical(
    raw: np.ndarray, names: Sequence[str], path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Place channels into canonical rows by name: (signal (12, T), lead_mask (12,))."""
    src, dst = [], []
    for i, name in enumerate(names):
        lead = canonical_lead(name)
        if lead is None:
            continue
        row = CANONICAL_LEADS.index(lead)
        if row in dst:
            log.warning("%s: channel %r duplicates lead %s; keeping the first", path, name, lead)
            continue
        src.append(i)
        dst.append(row)
    if not dst:
        raise DataError(path, f"no channel is a known ECG lead; channels found: {list(names)}")
    out = np.zeros((N_LEADS, raw.shape[-1]), dtype=np.float64)
    out[dst] = raw[src]
    mask = np.zeros(N_LEADS, dtype=bool)
    mask[dst] = True
    return out, mask


# --------------------------------------------------------------------------- preprocessing


def apply_nan_policy(
    signal: np.ndarray,
    lead_mask: np.ndarray,
    policy: NanPolicy = "interpolate",
    path: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Remove NaN/inf samples from a (n_leads, T) array; returns (signal, lead_mask) copies.

    ``raise``: DataError naming the leads. ``interpolate``: linear in time per lead, holding the
    nearest finite value at the ends. ``zero``: set to 0. A lead with no finite sample becomes
    missing (zeros, mask False) under both non-raising policies.
    """
    _check_choice("nan_policy", policy, _NAN_POLICIES)
    signal = np.array(signal, dtype=np.float64, copy=True)
    mask = np.array(lead_mask, dtype=bool, copy=True)
    signal[~mask] = 0.0
    bad = ~np.isfinite(signal)
    if not bad.any():
        return signal, mask
    rows = np.flatnonzero(bad.any(axis=-1))
    if policy == "raise":
        names = [CANONICAL_LEADS[r] if len(signal) == N_LEADS else str(r) for r in rows]
        raise DataError(path, f"{int(bad.sum())} non-finite samples (NaN/inf) in leads {names}")
    dead = bad.all(axis=-1)
    if policy == "zero":
        signal[bad] = 0.0
    else:
        t = np.arange(signal.shape[-1])
        for r in rows:
            if not dead[r]:
                ok = ~bad[r]
                signal[r, bad[r]] = np.interp(t[bad[r]], t[ok], signal[r, ok])
    if dead.any():
        log.info(
            "%s: leads with no finite sample treated as missing: %s", path, np.flatnonzero(dead)
        )
        signal[dead] = 0.0
        mask &= ~dead
    return signal, mask


def resample_ecg(signal: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Polyphase resampling along the last axis from ``fs_in`` to (a rational approximation of)
    ``fs_out``; the ratio is ``Fraction(fs_out / fs_in).limit_denominator(1000)``."""
    if fs_in == fs_out:
        return signal
    ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
    if ratio.numerator == ratio.denominator:
        return signal
    # padtype="line" continues the trend at the ends: no ringing from an implicit step to zero.
    return sps.resample_poly(signal, ratio.numerator, ratio.denominator, axis=-1, padtype="line")


@lru_cache(maxsize=64)
def _sos(fs: float, highpass: float | None, lowpass: float | None) -> np.ndarray | None:
    if highpass and lowpass:
        return sps.butter(FILTER_ORDER, [highpass, lowpass], "bandpass", fs=fs, output="sos")
    if highpass:
        return sps.butter(FILTER_ORDER, highpass, "highpass", fs=fs, output="sos")
    if lowpass:
        return sps.butter(FILTER_ORDER, lowpass, "lowpass", fs=fs, output="sos")
    return None


def effective_lowpass(lowpass: float | None, fs: float) -> float | None:
    """The low-pass corner actually used: ``lowpass`` clipped to 0.45*fs (None = no low-pass)."""
    if lowpass is None:
        return None
    return min(float(lowpass), LOWPASS_NYQUIST_FRACTION * fs)


def filter_ecg(
    signal: np.ndarray, fs: float, highpass: float | None = 0.5, lowpass: float | None = 100.0
) -> np.ndarray:
    """Zero-phase Butterworth filtering along the last axis (all leads at once).

    ``highpass`` removes baseline wander, ``lowpass`` (clipped to 0.45*fs) removes high-frequency
    noise; None disables either edge. Returns float64.
    """
    if highpass is not None and highpass <= 0:
        raise ConfigError("highpass", f"must be > 0 Hz or None, got {highpass}")
    if lowpass is not None and lowpass <= 0:
        raise ConfigError("lowpass", f"must be > 0 Hz or None, got {lowpass}")
    lp = effective_lowpass(lowpass, fs)
    if highpass is not None and lp is not None and highpass >= lp:
        raise ConfigError("highpass", f"{highpass} Hz is not below the low-pass corner {lp} Hz")
    if highpass is not None and highpass >= fs / 2:
        raise ConfigError("highpass", f"{highpass} Hz is not below Nyquist ({fs / 2} Hz)")
    sos = _sos(float(fs), None if highpass is None else float(highpass), lp)
    signal = np.asarray(signal, dtype=np.float64)
    if sos is None:
        return signal
    # Even (mirror) extension over 1.5 periods of the high-pass corner: on real ECG it leaves
    # far smaller edge transients than scipy's default short odd extension.
    padlen = 3 * (2 * len(sos) + 1)
    if highpass is not None:
        padlen = max(padlen, round(1.5 * fs / highpass))
    padlen = max(min(padlen, signal.shape[-1] - 1), 0)
    return sps.sosfiltfilt(sos, signal, axis=-1, padtype="even", padlen=padlen)


def _crop_or_pad(signal: np.ndarray, n: int, crop: CropMode) -> tuple[np.ndarray, int]:
    """Crop to at most ``n`` samples; returns (signal, number of zero samples to pad at the end)."""
    t = signal.shape[-1]
    if t > n:
        start = 0 if crop == "start" else (t - n) // 2
        return signal[..., start : start + n], 0
    return signal, n - t


def _normalize(signal: np.ndarray, mask: np.ndarray, mode: Normalize) -> np.ndarray:
    if mode == "none":
        return signal
    x = signal[mask]
    if mode == "zscore":
        std = x.std(axis=-1, keepdims=True)
        x = (x - x.mean(axis=-1, keepdims=True)) / np.where(std > 0, std, 1.0)
    else:  # minmax to [0, 1]
        lo, hi = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
        span = hi - lo
        x = (x - lo) / np.where(span > 0, span, 1.0)
    out = np.zeros_like(signal)
    out[mask] = x
    return out


def _check_choice(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(key, f"must be one of {list(allowed)}, got {value!r}")


def preprocess_ecg(
    signal: np.ndarray,
    fs_in: float,
    lead_mask: np.ndarray | None = None,
    *,
    fs: float | None = 500.0,
    seconds: float | None = 10.0,
    highpass: float | None = 0.5,
    lowpass: float | None = 100.0,
    nan_policy: NanPolicy = "interpolate",
    crop: CropMode = "start",
    normalize: Normalize = "none",
    min_leads: int = 1,
    min_seconds: float = 1.0,
    path: str | Path | None = None,
    source_leads: Sequence[str] = CANONICAL_LEADS,
) -> Ecg:
    """Preprocess an already-loaded (12, T) array in canonical lead order and mV.

    Steps: non-finite samples by ``nan_policy``; resample to ``fs`` (None keeps ``fs_in``);
    high-/low-pass (:func:`filter_ecg`); crop to ``seconds`` (``crop`` = "start" or "centre");
    per-present-lead ``normalize`` ("none" keeps mV, "zscore", "minmax" to [0, 1]); zero padding
    at the end up to ``seconds`` (None keeps the whole record). Rows with ``lead_mask`` False are
    zeroed. Raises DataError (naming ``path``) for a wrong shape, a record shorter than
    ``min_seconds``, fewer than ``min_leads`` usable leads, or NaN under ``nan_policy="raise"``.
    """
    _check_choice("nan_policy", nan_policy, _NAN_POLICIES)
    _check_choice("crop", crop, _CROP_MODES)
    _check_choice("normalize", normalize, _NORMALIZE_MODES)
    if not 1 <= min_leads <= N_LEADS:
        raise ConfigError("min_leads", f"must be in 1..12, got {min_leads}")
    for key, value in (("fs", fs), ("seconds", seconds)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(key, f"must be a positive number or None, got {value}")
    arr = np.asarray(signal)
    if arr.ndim != 2 or arr.shape[0] != N_LEADS:
        raise DataError(path, f"expected 12 leads as a (12, T) array, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise DataError(path, f"expected a real numeric array, got dtype {arr.dtype}")
    if not (math.isfinite(fs_in) and fs_in > 0):
        raise DataError(path, f"invalid sampling rate {fs_in}")
    duration = arr.shape[-1] / fs_in
    if duration < min_seconds:
        raise DataError(
            path,
            f"record is {duration:.3g} s long ({arr.shape[-1]} samples at {fs_in:g} Hz); "
            f"at least {min_seconds:g} s is needed",
        )
    mask = np.ones(N_LEADS, dtype=bool) if lead_mask is None else np.asarray(lead_mask, bool)
    if mask.shape != (N_LEADS,):
        raise DataError(path, f"lead_mask must have shape (12,), got {mask.shape}")

    x, mask = apply_nan_policy(arr, mask, nan_policy, path)
    if int(mask.sum()) < min_leads:
        present = [lead for lead, m in zip(CANONICAL_LEADS, mask) if m]
        raise DataError(
            path,
            f"only {len(present)} usable leads {present} (min_leads={min_leads}); "
            f"channels found: {list(source_leads)}",
        )
    fs_out = float(fs_in if fs is None else fs)
    x = resample_ecg(x, float(fs_in), fs_out)
    x = filter_ecg(x, fs_out, highpass, lowpass)
    pad = 0
    if seconds is not None:
        x, pad = _crop_or_pad(x, round(seconds * fs_out), crop)
    x = _normalize(x, mask, normalize)
    x[~mask] = 0.0
    out = np.zeros((N_LEADS, x.shape[-1] + pad), dtype=np.float32)
    out[:, : x.shape[-1]] = x
    return Ecg(
        signal=out,
        lead_mask=mask,
        fs=fs_out,
        source_leads=tuple(str(s) for s in source_leads),
        path=None if path is None else Path(path),
    )


def read_ecg(
    path: str | Path,
    fs: float | None = 500,
    seconds: float | None = 10.0,
    *,
    highpass: float | None = 0.5,
    lowpass: float | None = 100.0,
    nan_policy: NanPolicy = "interpolate",
    crop: CropMode = "start",
    normalize: Normalize = "none",
    npy_fs: float = 500.0,
    min_leads: int = 1,
    min_seconds: float = 1.0,
) -> Ecg:
    """Read a WFDB record (``.hea``/``.dat``/``.mat`` or the record name) or a ``.npy`` into an
    :class:`Ecg`: (12, fs*seconds) float32 mV in canonical lead order plus the lead mask.

    See :func:`preprocess_ecg` for the processing settings. Bad input raises DataError.
    """
    path = Path(path)
    raw, fs_in, names = load_raw_ecg(path, npy_fs=npy_fs)
    sig, mask = _to_canonical(raw, names, path)
    return preprocess_ecg(
        sig,
        fs_in,
        mask,
        fs=fs,
        seconds=seconds,
        highpass=highpass,
        lowpass=lowpass,
        nan_policy=nan_policy,
        crop=crop,
        normalize=normalize,
        min_leads=min_leads,
        min_seconds=min_seconds,
        path=path,
        source_leads=names,
    )


# --------------------------------------------------------------------------- writing

_WRITE_GAINS = {"16": 1000.0, "24": 100_000.0, "32": 1_000_000.0, "212": 200.0}
"""ADC gain (units per mV) per writable format: 1 uV steps for 16-bit, 5 uV for 212 (MIT-BIH)."""
_WRITE_BITS = {"16": 16, "24": 24, "32": 32, "212": 12}
_RECORD_NAME = re.compile(r"^[-\w]+$")



def read_ecg_input(path: str | Path, cfg: EcgConfig, *, npy_fs: float = 500.0) -> Ecg:
    """`read_ecg` with the preprocessing a config's ``data.ecg`` section describes: the one way
    training, evaluation, explanations and the index turn a file into model input."""
    return read_ecg(
        path,
        fs=cfg.fs,
        seconds=cfg.seconds,
        highpass=cfg.highpass,
        lowpass=cfg.lowpass,
        nan_policy=cfg.nan_policy,
        normalize=cfg.normalize,
        npy_fs=npy_fs,
    )


def write_wfdb_record(
    path: str | Path,
    signal: np.ndarray,
    fs: float,
    lead_names: Sequence[str] = CANONICAL_LEADS,
    fmt: str = "16",
    comments: Sequence[str] = (),
) -> Path:
    """Write a (n_leads, T) mV array as a WFDB record ``<path>.hea`` + ``<path>.dat``.

    ``path`` is the record path with or without ``.hea``. Format "16" stores 1 uV steps (range
    +-32.767 mV), "212" 5 uV (+-10.2 mV), "24"/"32" finer; a value outside the range raises
    DataError rather than being clipped. NaN samples are stored as WFDB invalid samples.
    Returns the header path.
    """
    path = Path(path)
    if path.suffix.lower() == ".hea":
        path = path.with_suffix("")
    name = path.name
    if not _RECORD_NAME.match(name):
        raise DataError(path, "WFDB record names may only hold letters, digits, '_' and '-'")
    if fmt not in _WRITE_GAINS:
        raise ConfigError("fmt", f"must be one of {sorted(_WRITE_GAINS)}, got {fmt!r}")
    x = np.asarray(signal, dtype=np.float64)
    names = [str(n) for n in lead_names]
    if x.ndim != 2 or x.shape[0] != len(names) or x.shape[1] == 0:
        raise DataError(
            path, f"expected a ({len(names)}, T) signal for leads {names}, got shape {x.shape}"
        )
    if any(not n or any(c.isspace() for c in n) for n in names):
        raise DataError(path, f"lead names must be non-empty without spaces, got {names}")
    lines = [str(c) for c in comments]
    if any("\n" in c or "\r" in c for c in lines):
        raise DataError(path, "header comments must be single lines")
    if not (math.isfinite(fs) and fs > 0):
        raise DataError(path, f"invalid sampling rate {fs}")
    gain = _WRITE_GAINS[fmt]
    limit = (2 ** (_WRITE_BITS[fmt] - 1) - 1) / gain  # the lowest code marks invalid samples
    if np.isinf(x).any():
        raise DataError(path, "signal holds infinite values")
    peak = float(np.nanmax(np.abs(x))) if np.isfinite(x).any() else 0.0
    if peak > limit:
        raise DataError(
            path, f"signal peak {peak:.3f} mV exceeds the +-{limit:.3f} mV range of format {fmt}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    import wfdb

    n = len(names)
    wfdb.wrsamp(
        name,
        fs=float(fs),
        units=["mV"] * n,
        sig_name=names,
        p_signal=x.T,
        fmt=[fmt] * n,
        adc_gain=[gain] * n,
        baseline=[0] * n,
        comments=lines,
        write_dir=str(path.parent),
    )
    return path.with_suffix(".hea")
