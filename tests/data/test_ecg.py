"""ECG reader: lead mapping by name, units, resampling, filters, NaN policy, crop/pad, writing,
and the errors raised for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb

from medtriad.data.ecg import (
    CANONICAL_LEADS,
    Ecg,
    canonical_lead,
    filter_ecg,
    load_raw_ecg,
    preprocess_ecg,
    read_ecg,
    resample_ecg,
    write_wfdb_record,
)
from medtriad.errors import ConfigError, DataError

FS = 500
RAW = {"fs": None, "seconds": None, "highpass": None, "lowpass": None}  # no processing at all
STEP_16 = 1e-3  # mV per ADC unit of the format-16 records written here


def wrsamp(
    folder: Path,
    name: str,
    signal: np.ndarray,
    names: list[str],
    fs: float = FS,
    units: str = "mV",
    gain: float = 1000.0,
) -> Path:
    """Write a format-16 WFDB record (signal (n, T) in ``units``); returns the header path."""
    n = len(names)
    wfdb.wrsamp(
        name, fs=fs, units=[units] * n, sig_name=names, p_signal=np.asarray(signal).T,
        fmt=["16"] * n, adc_gain=[gain] * n, baseline=[0] * n, write_dir=str(folder),
    )  # fmt: skip
    return folder / f"{name}.hea"


def lead_signals(seconds: float = 10.0, fs: float = FS) -> np.ndarray:
    """(12, T): lead k is a 7 Hz sine of amplitude 0.1*(k+1) mV plus a distinct offset, so every
    lead is identifiable by its amplitude."""
    t = np.arange(round(seconds * fs)) / fs
    k = np.arange(12)[:, None]
    return 0.1 * (k + 1) * np.sin(2 * np.pi * 7 * t) + 0.05 * k


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("I", "I"), ("ii", "II"), ("III", "III"), (" I ", "I"), ("lead I", "I"), ("Lead_II", "II"),
        ("ECG II", "II"), ("AVR", "aVR"), ("avr", "aVR"), ("aVR", "aVR"), ("aVl", "aVL"),
        ("AVF", "aVF"), ("V1", "V1"), ("v6", "V6"), ("V 3", "V3"), ("C4", "V4"), ("MLII", "II"),
        ("ML II", "II"), ("MLIII", "III"), ("D1", "I"), ("DII", "II"), ("D3", "III"),
        ("-aVR", None), ("vx", None), ("V3R", None), ("V7", None), ("1", None), ("", None),
        ("ABP", None),
    ],
)  # fmt: skip
def test_canonical_lead_names(name: str, expected: str | None) -> None:
    assert canonical_lead(name) == expected


def test_leads_in_another_order_with_lowercase_names_come_out_canonical(tmp_path: Path) -> None:
    sig = lead_signals()
    order = list(range(11, 5, -1)) + list(range(5, -1, -1))  # V6..V1, aVF..I
    names = [CANONICAL_LEADS[i].lower() for i in order]
    hea = wrsamp(tmp_path, "rev", sig[order], names)
    ecg = read_ecg(hea, **RAW)
    assert isinstance(ecg, Ecg)
    assert ecg.signal.dtype == np.float32 and ecg.signal.shape == sig.shape
    assert ecg.lead_mask.all()
    assert ecg.source_leads == tuple(names)
    np.testing.assert_allclose(ecg.signal, sig, atol=STEP_16)


def test_missing_leads_are_zero_and_masked(tmp_path: Path) -> None:
    sig = lead_signals()
    keep = [0, 1, 6, 7, 8, 9, 10, 11]  # I, II, V1-V6
    hea = wrsamp(tmp_path, "eight", sig[keep], [CANONICAL_LEADS[i] for i in keep])
    ecg = read_ecg(hea, **RAW)
    assert ecg.lead_mask.tolist() == [i in keep for i in range(12)]
    assert not ecg.signal[2:6].any()
    np.testing.assert_allclose(ecg.signal[keep], sig[keep], atol=STEP_16)


def test_extra_channels_are_ignored(tmp_path: Path) -> None:
    sig = lead_signals()
    vx = np.full((1, sig.shape[1]), 9.0)
    names = [*CANONICAL_LEADS[:6], "vx", *CANONICAL_LEADS[6:]]
    hea = wrsamp(tmp_path, "xyz", np.concatenate([sig[:6], vx, sig[6:]]), names)
    ecg = read_ecg(hea, **RAW)
    assert ecg.lead_mask.all()
    assert "vx" in ecg.source_leads
    np.testing.assert_allclose(ecg.signal, sig, atol=STEP_16)


def test_duplicate_lead_keeps_the_first_channel(tmp_path: Path) -> None:
    sig = lead_signals()
    dup = np.concatenate([sig, np.full((1, sig.shape[1]), 3.0)])
    hea = wrsamp(tmp_path, "dup", dup, [*CANONICAL_LEADS, "MLII"])
    np.testing.assert_allclose(read_ecg(hea, **RAW).signal[1], sig[1], atol=STEP_16)


@pytest.mark.parametrize(("units", "per_mv"), [("uV", 1000.0), ("mV", 1.0), ("V", 1e-3)])
def test_header_units_are_converted_to_mv(tmp_path: Path, units: str, per_mv: float) -> None:
    sig_mv = lead_signals()
    # one ADC step = 1 uV whatever the unit
    hea = wrsamp(
        tmp_path, "u", sig_mv * per_mv, list(CANONICAL_LEADS), units=units, gain=1000 / per_mv
    )
    raw, fs, names = load_raw_ecg(hea)
    assert fs == FS and names == CANONICAL_LEADS
    np.testing.assert_allclose(raw, sig_mv, atol=STEP_16)


def test_non_voltage_units_on_a_lead_are_rejected(tmp_path: Path) -> None:
    hea = wrsamp(tmp_path, "bp", lead_signals(), list(CANONICAL_LEADS), units="mmHg")
    with pytest.raises(DataError, match="not a voltage") as err:
        read_ecg(hea)
    assert err.value.path == str(hea)


def test_resampling_500_to_100_keeps_amplitude_and_phase(tmp_path: Path) -> None:
    t = np.arange(10 * FS) / FS
    sine = 1.5 * np.sin(2 * np.pi * 5 * t + 0.7)
    hea = wrsamp(tmp_path, "sine", np.tile(sine, (12, 1)), list(CANONICAL_LEADS))
    t_out = np.arange(1000) / 100
    expected = 1.5 * np.sin(2 * np.pi * 5 * t_out + 0.7)
    inner = slice(50, -50)
    plain = read_ecg(hea, fs=100, seconds=10, highpass=None, lowpass=None)
    assert plain.fs == 100 and plain.signal.shape == (12, 1000)
    assert np.abs(plain.signal[:, inner] - expected[inner]).max() < 0.01
    filtered = read_ecg(hea, fs=100, seconds=10)  # default band-pass, low-pass clipped to 45 Hz
    amp, phase = sine_fit(filtered.signal[0, 100:-100], t_out[100:-100], 5.0)
    assert abs(amp - 1.5) < 0.03 and abs(phase - 0.7) < 0.03


def sine_fit(y: np.ndarray, t: np.ndarray, freq: float) -> tuple[float, float]:
    """Least-squares (amplitude, phase) of ``y`` as A*sin(2*pi*freq*t + phase)."""
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    (a, b), *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(np.hypot(a, b)), float(np.arctan2(b, a))


@pytest.mark.parametrize(("fs_in", "fs_out"), [(1000, 500), (360, 500), (250, 500), (500, 128)])
def test_resample_length_and_amplitude(fs_in: float, fs_out: float) -> None:
    t = np.arange(8 * fs_in) / fs_in
    x = np.sin(2 * np.pi * 3 * t)[None]
    y = resample_ecg(x, fs_in, fs_out)
    assert y.shape == (1, 8 * fs_out)
    t_out = np.arange(8 * fs_out) / fs_out
    inner = slice(fs_out // 2, -fs_out // 2)
    assert np.abs(y[0, inner] - np.sin(2 * np.pi * 3 * t_out[inner])).max() < 0.01


def test_highpass_removes_baseline_wander_and_keeps_10hz() -> None:
    t = np.arange(10 * FS) / FS
    beat = 0.5 * np.sin(2 * np.pi * 10 * t)
    x = np.tile(beat + 1.0 * np.sin(2 * np.pi * 0.1 * t + 0.4), (12, 1))
    inner = slice(FS, -FS)
    kept = filter_ecg(x, FS, highpass=0.5, lowpass=100.0)
    assert np.abs(kept[:, inner] - beat[inner]).max() < 0.05  # wander gone
    amp, _ = sine_fit(kept[0, inner], t[inner], 10.0)
    assert amp > 0.9 * 0.5
    unfiltered = filter_ecg(x, FS, highpass=None, lowpass=100.0)
    assert np.abs(unfiltered[:, inner] - beat[inner]).max() > 0.5


def test_lowpass_is_clipped_below_nyquist() -> None:
    x = np.random.default_rng(0).normal(size=(12, 1000))
    y = filter_ecg(x, 100.0, highpass=None, lowpass=100.0)  # 100 Hz > Nyquist: clipped to 45 Hz
    assert np.isfinite(y).all() and not np.allclose(x, y)


def npy(tmp_path: Path, arr: np.ndarray, name: str = "ecg.npy") -> Path:
    path = tmp_path / name
    np.save(path, arr)
    return path


def test_npy_is_read_at_npy_fs(tmp_path: Path) -> None:
    sig = lead_signals(seconds=10, fs=250)
    path = npy(tmp_path, sig.astype(np.float32))
    ecg = read_ecg(path, fs=None, seconds=None, highpass=None, lowpass=None, npy_fs=250)
    assert ecg.fs == 250 and ecg.signal.shape == (12, 2500)
    np.testing.assert_allclose(ecg.signal, sig, atol=1e-6)
    assert read_ecg(path, npy_fs=250).signal.shape == (12, 5000)


def test_nan_interpolate_zero_and_raise(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(-1, 1, 10 * FS), (12, 1))
    ramp[1, 100:300] = np.nan
    ramp[4, :50] = np.inf
    path = npy(tmp_path, ramp)
    filled = read_ecg(path, **RAW, nan_policy="interpolate")
    assert np.isfinite(filled.signal).all() and filled.lead_mask.all()
    np.testing.assert_allclose(filled.signal[1, 100:300], ramp[0, 100:300], atol=1e-6)
    np.testing.assert_allclose(filled.signal[4, :50], ramp[4, 50], atol=1e-6)  # held at the end
    zeroed = read_ecg(path, **RAW, nan_policy="zero")
    assert not zeroed.signal[1, 100:300].any() and zeroed.signal[1, 99] != 0
    with pytest.raises(DataError, match="non-finite") as err:
        read_ecg(path, nan_policy="raise")
    assert err.value.path == str(path)


def test_all_nan_lead_becomes_missing(tmp_path: Path) -> None:
    sig = lead_signals()
    sig[3] = np.nan
    for policy in ("interpolate", "zero"):
        ecg = read_ecg(npy(tmp_path, sig), nan_policy=policy)
        assert ecg.lead_mask.tolist() == [i != 3 for i in range(12)]
        assert not ecg.signal[3].any() and np.isfinite(ecg.signal).all()


def test_wfdb_invalid_samples_are_nan_and_interpolated(tmp_path: Path) -> None:
    sig = lead_signals()
    sig[0, 1000:1010] = np.nan
    path = write_wfdb_record(tmp_path / "gap", sig, FS)
    assert np.isnan(wfdb.rdrecord(str(tmp_path / "gap")).p_signal[1000:1010, 0]).all()
    ecg = read_ecg(path, **RAW)
    assert np.isfinite(ecg.signal).all()
    with pytest.raises(DataError, match="non-finite"):
        read_ecg(path, nan_policy="raise")


def test_short_record_is_padded_with_zeros_at_the_end(tmp_path: Path) -> None:
    hea = wrsamp(tmp_path, "six", lead_signals(seconds=6), list(CANONICAL_LEADS))
    ecg = read_ecg(hea, fs=FS, seconds=10)
    assert ecg.signal.shape == (12, 5000)
    assert not ecg.signal[:, 3000:].any()
    assert np.abs(ecg.signal[:, 2900:3000]).max(axis=1).min() > 0.01


@pytest.mark.parametrize(("crop", "first"), [("start", 0.0), ("centre", 5.0)])
def test_long_record_is_cropped(tmp_path: Path, crop: str, first: float) -> None:
    t = np.arange(20 * FS) / FS
    hea = wrsamp(tmp_path, "long", np.tile(t / 10, (12, 1)), list(CANONICAL_LEADS))
    ecg = read_ecg(hea, seconds=10, crop=crop, highpass=None, lowpass=None)
    assert ecg.signal.shape == (12, 5000)
    np.testing.assert_allclose(ecg.signal[0, [0, -1]], [first / 10, (first + 10 - 1 / FS) / 10],
                               atol=STEP_16)  # fmt: skip


def test_normalisation_per_present_lead() -> None:
    sig = lead_signals()
    mask = np.ones(12, bool)
    mask[5] = False
    z = preprocess_ecg(sig, FS, mask, normalize="zscore")
    present = z.signal[mask]
    np.testing.assert_allclose(present.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(present.std(axis=1), 1, atol=1e-4)
    assert not z.signal[5].any()
    m = preprocess_ecg(sig, FS, mask, normalize="minmax")
    np.testing.assert_allclose(m.signal[mask].min(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(m.signal[mask].max(axis=1), 1, atol=1e-6)
    mv = preprocess_ecg(sig, FS, mask, highpass=None, lowpass=None)
    np.testing.assert_allclose(mv.signal[mask], sig[mask], atol=1e-5)  # "none" keeps mV


def test_preprocess_validates_settings_and_shape() -> None:
    sig = lead_signals()
    with pytest.raises(ConfigError, match="nan_policy"):
        preprocess_ecg(sig, FS, nan_policy="drop")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="highpass"):
        preprocess_ecg(sig, FS, fs=100, highpass=60.0)
    with pytest.raises(DataError, match="12 leads"):
        preprocess_ecg(sig[:8], FS, path="upload.npy")


@pytest.mark.parametrize("fmt", ["16", "212", "24", "32"])
def test_write_wfdb_record_round_trip(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(7)
    sig = np.clip(rng.normal(0, 2, size=(12, 2 * FS + 1)), -9, 9)
    hea = write_wfdb_record(tmp_path / "out" / "rt.hea", sig, FS, comments=["Dx: 426783006"])
    assert hea == tmp_path / "out" / "rt.hea" and hea.is_file()
    step = {"16": 1e-3, "212": 5e-3, "24": 1e-5, "32": 1e-6}[fmt]
    write_wfdb_record(tmp_path / "out" / "rt", sig, FS, fmt=fmt, comments=["Dx: 426783006"])
    rec = wfdb.rdrecord(str(tmp_path / "out" / "rt"))
    assert rec.sig_name == list(CANONICAL_LEADS) and rec.fs == FS
    assert rec.comments == ["Dx: 426783006"]
    assert np.abs(rec.p_signal.T - sig).max() <= step / 2 + 1e-9
    ecg = read_ecg(hea, **RAW)
    assert np.abs(ecg.signal - sig).max() <= step / 2 + 1e-6


def test_write_refuses_out_of_range_signals(tmp_path: Path) -> None:
    sig = lead_signals()
    sig[2, 10] = 40.0
    with pytest.raises(DataError, match="exceeds") as err:
        write_wfdb_record(tmp_path / "big", sig, FS)
    assert "big" in str(err.value)
    assert not (tmp_path / "big.hea").exists()
    with pytest.raises(DataError, match="exceeds"):
        write_wfdb_record(tmp_path / "mid", sig / 3, FS, fmt="212")  # 13.3 mV > 10.2 mV
    write_wfdb_record(tmp_path / "ok", sig / 3, FS, fmt="16")


def test_record_path_forms_are_equivalent(tmp_path: Path) -> None:
    write_wfdb_record(tmp_path / "rec", lead_signals(), FS)
    ref = read_ecg(tmp_path / "rec.hea").signal
    for form in ("rec", "rec.dat", str(tmp_path / "rec")):
        np.testing.assert_array_equal(read_ecg(tmp_path / form).signal, ref)


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def record(tmp_path: Path) -> Path:
    """A valid 10 s 12-lead record; returns the header path."""
    return write_wfdb_record(tmp_path / "rec", lead_signals(), FS)


def test_truncated_signal_file(record: Path) -> None:
    dat = record.with_suffix(".dat")
    dat.write_bytes(dat.read_bytes()[: 12 * 2 * 3000])
    with pytest.raises(DataError, match="truncated: expected 5000 samples, found 3000") as err:
        read_ecg(record)
    assert err.value.path == str(dat)


def test_empty_signal_file(record: Path) -> None:
    record.with_suffix(".dat").write_bytes(b"")
    with pytest.raises(DataError, match="empty") as err:
        read_ecg(record)
    assert "rec.dat" in str(err.value)


def test_header_pointing_to_missing_signal_file(record: Path) -> None:
    record.with_suffix(".dat").unlink()
    with pytest.raises(DataError, match="signal file rec.dat named in the header is missing") as e:
        read_ecg(record)
    assert e.value.path == str(record)


def test_garbage_header(tmp_path: Path) -> None:
    hea = tmp_path / "junk.hea"
    hea.write_bytes(b"this is not\x00 a header\n\xff\xfe")
    with pytest.raises(DataError, match="header") as err:
        read_ecg(hea)
    assert err.value.path == str(hea)


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as err:
        read_ecg(tmp_path / "nope.hea")
    assert err.value.path == str(tmp_path / "nope.hea")
    with pytest.raises(DataError, match="not found"):
        read_ecg(tmp_path / "nope")
    csv = tmp_path / "ecg.csv"
    csv.write_text("1,2,3\n")
    with pytest.raises(DataError, match="unsupported ECG file type"):
        read_ecg(csv)


def test_npy_with_wrong_lead_count(tmp_path: Path) -> None:
    path = npy(tmp_path, lead_signals()[:8])
    with pytest.raises(DataError, match="expected 12 leads.*got 8") as err:
        read_ecg(path)
    assert err.value.path == str(path)
    with pytest.raises(DataError, match="transpose"):
        read_ecg(npy(tmp_path, lead_signals().T, "t.npy"))


def test_npy_that_is_not_an_array(tmp_path: Path) -> None:
    path = tmp_path / "bad.npy"
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="cannot read") as err:
        read_ecg(path)
    assert err.value.path == str(path)


def test_record_without_any_known_lead_lists_the_names(tmp_path: Path) -> None:
    sig = lead_signals()[:3]
    hea = wrsamp(tmp_path, "frank", sig, ["vx", "vy", "vz"])
    with pytest.raises(DataError, match=r"no channel is a known ECG lead.*'vx', 'vy', 'vz'"):
        read_ecg(hea)


def test_min_leads(tmp_path: Path) -> None:
    sig = lead_signals()[:2]
    hea = wrsamp(tmp_path, "two", sig, ["I", "II"])
    assert read_ecg(hea).lead_mask.sum() == 2
    with pytest.raises(DataError, match="min_leads=8") as err:
        read_ecg(hea, min_leads=8)
    assert err.value.path == str(hea)


def test_record_shorter_than_one_second(tmp_path: Path) -> None:
    hea = wrsamp(tmp_path, "blip", lead_signals(seconds=0.5), list(CANONICAL_LEADS))
    with pytest.raises(DataError, match="0.5 s long"):
        read_ecg(hea)
    assert read_ecg(hea, min_seconds=0.25).signal.shape == (12, 5000)
