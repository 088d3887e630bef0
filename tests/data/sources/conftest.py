"""Helpers that write tiny real files (JPEG/PNG images, WFDB records, CSVs) for the release trees
the preparer tests build in tmp_path, and the location of the shared real data."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import wfdb
from PIL import Image

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


def image(path: Path, seed: int = 0) -> Path:
    """A small greyscale image (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((40, 48)) * 255).astype(np.uint8)).save(
        path
    )
    return path


def record(folder: Path, name: str, fs: int = 100, seconds: float = 2.0) -> Path:
    """A 12-lead WFDB record (.hea + .dat); returns the header path."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(fs * seconds)) / fs
    sig = np.stack([0.3 * np.sin(2 * np.pi * (1 + k) * t) for k in range(12)], axis=1)
    wfdb.wrsamp(
        name,
        fs=fs,
        units=["mV"] * 12,
        sig_name=LEADS,
        p_signal=sig,
        fmt=["16"] * 12,
        write_dir=str(folder),
    )
    return folder / f"{name}.hea"


def csv(path: Path, rows: list[dict] | pd.DataFrame, columns: list[str] | None = None) -> Path:
    """Write a CSV (gzipped when the name ends in .gz) with exactly `columns` as its header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=columns)
    if columns is not None:
        df = df.reindex(columns=columns)
    df.to_csv(path, index=False)
    return path


@pytest.fixture
def make() -> SimpleNamespace:
    return SimpleNamespace(image=image, record=record, csv=csv)


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("shared real data not present")
    return SHARED
