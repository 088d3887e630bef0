"""A tiny cohort, a tiny (untrained) model saved as a run, and an index built from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtriad.config import Config, load_config

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
TINY = ["name=tiny-index"]


def tiny_config(*extra: str) -> Config:
    return load_config(TINY_CONFIG, [*TINY, *extra])


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
