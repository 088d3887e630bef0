"""An index of a tiny cohort under a tiny (untrained) model, and helpers to make uploads."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from medtriad.config import load_config

TINY = [
    "name=tiny-serve",
    "data.cxr.size=16",
    "data.ecg.fs=50",
    "data.ecg.seconds=2",
    "data.ecg.lowpass=20",
    "data.report.max_length=24",
    "model.embed_dim=8",
    "model.cxr.size=custom",
    "model.cxr.dim=16",
    "model.cxr.depth=1",
    "model.cxr.heads=2",
    "model.cxr.patch_size=8",
    "model.cxr.dropkey=0.0",
    "model.ecg.size=custom",
    "model.ecg.dim=16",
    "model.ecg.depth=1",
    "model.ecg.heads=2",
    "model.ecg.patch_size=10",
    "model.ecg.stem_channels=8",
    "model.ecg.dropkey=0.0",
    "model.report.freeze=true",
    "model.report.lora.enabled=false",
]


@pytest.fixture(scope="session")
def served_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medtriad.data.synthetic.cohort import generate_cohort
    from medtriad.index import build_index
    from medtriad.models import build_model

    root = tmp_path_factory.mktemp("serve")
    manifest = generate_cohort(
        root / "data", n=16, seed=11, missing_fraction=0.2, image_size=64, workers=1, progress=False
    )
    build_model(load_config(None, TINY)).save_pretrained(root / "run" / "model")
    build_index(root / "run", manifest, root / "index", progress=False)
    return root / "index"


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def wfdb_members(header: Path) -> dict[str, bytes]:
    """The header and signal files of a WFDB record, by base name."""
    return {p.name: p.read_bytes() for p in header.parent.glob(header.stem + ".*")}
