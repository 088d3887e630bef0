"""Every real ECG record shipped in ../shared/data loads to a clean canonical (12, 5000) array,
and Einthoven's relations on the unprocessed leads prove that the channels were mapped by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medtriad.data.ecg import CANONICAL_LEADS, read_ecg

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ecg"
FOLDERS = ("cpsc2018/records", "cinc2021/records", "ptbdb")


def _records() -> list[Path]:
    return sorted(h for folder in FOLDERS for h in (DATA / folder).glob("*.hea"))


RECORDS = _records()
pytestmark = pytest.mark.skipif(not RECORDS, reason=f"real ECG data not found under {DATA}")

I, II, III, AVR, AVL, AVF = range(6)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("header", RECORDS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_real_record_loads_canonically(header: Path) -> None:
    ecg = read_ecg(header, fs=500, seconds=10)
    assert ecg.signal.shape == (12, 5000) and ecg.signal.dtype == np.float32
    assert np.isfinite(ecg.signal).all()
    assert ecg.lead_mask.all()
    assert ecg.fs == 500.0
    # the limb leads carry signal (a few Chapman records have genuinely flat chest leads)
    assert (np.abs(ecg.signal[:6]).max(axis=1) > 0.01).all()

    raw = read_ecg(header, fs=None, seconds=None, highpass=None, lowpass=None)
    s = raw.signal.astype(np.float64)
    assert _corr(s[III], s[II] - s[I]) > 0.9
    assert _corr(s[AVR], -(s[I] + s[II]) / 2) > 0.9
    assert _corr(s[AVL], s[I] - s[II] / 2) > 0.9
    assert _corr(s[AVF], s[II] - s[I] / 2) > 0.9
    scale = np.abs(s[:6]).max()
    assert np.abs(s[III] - (s[II] - s[I])).max() < 0.05 * scale + 0.01


def test_ptbdb_ignores_frank_leads_and_maps_lowercase_names() -> None:
    header = DATA / "ptbdb" / "s0010_re.hea"
    if not header.is_file():
        pytest.skip(f"{header} not found")
    ecg = read_ecg(header, fs=500, seconds=10)
    assert ecg.source_leads[:12] == tuple(lead.lower() for lead in CANONICAL_LEADS)
    assert ecg.source_leads[12:] == ("vx", "vy", "vz")
    assert ecg.lead_mask.all() and ecg.signal.shape == (12, 5000)
