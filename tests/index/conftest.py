"""A tiny cohort, a tiny (untrained) model saved as a run, and an index built from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtriad.config import Config, load_config

TINY = [
    "name=tiny-index",
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


def tiny_config(*extra: str) -> Config:
    return load_config(None, [*TINY, *extra])


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest of 40 synthetic studies (some lacking a modality)."""
    from medtriad.data.synthetic.cohort import generate_cohort

    root = tmp_path_factory.mktemp("index-cohort")
    return generate_cohort(
        root / "data", n=40, seed=7, missing_fraction=0.25, image_size=64, workers=1, progress=False
    )


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding ``model/`` as training writes it."""
    from medtriad.models import build_model

    run = tmp_path_factory.mktemp("index-run")
    build_model(tiny_config()).save_pretrained(run / "model")
    return run


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory: pytest.TempPathFactory, run_dir: Path, cohort: Path) -> Path:
    from medtriad.index import build_index

    out = tmp_path_factory.mktemp("index") / "idx"
    build_index(run_dir, cohort, out, progress=False)
    return out
