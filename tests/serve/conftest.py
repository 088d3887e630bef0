"""An index of a tiny cohort under a tiny (untrained) model, and helpers to make uploads."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from medtriad.config import load_config

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
TINY = ["name=tiny-serve"]


@pytest.fixture(scope="session")
def served_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medtriad.data.synthetic.cohort import generate_cohort
    from medtriad.index import build_index
    from medtriad.models import build_model

    root = tmp_path_factory.mktemp("serve")
    manifest = generate_cohort(
        root / "data", n=16, seed=11, missing_fraction=0.2, image_size=64, workers=1, progress=False
    )
    build_model(load_config(TINY_CONFIG, TINY)).save_pretrained(root / "run" / "model")
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
