"""A tiny cohort, its shards and a tiny config shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtriad.config import Config, load_config

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
TINY = ["name=tiny"]


def tiny_config(*extra: str) -> Config:
    return load_config(TINY_CONFIG, [*TINY, *extra])


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medtriad.data.shards import prepare_shards_for_config
    from medtriad.data.synthetic.cohort import generate_cohort

    root = tmp_path_factory.mktemp("tiny")
    manifest = generate_cohort(root / "data", n=80, seed=5, missing_fraction=0.2, image_size=64, workers=1, progress=False)
    return prepare_shards_for_config(manifest, root / "shards", tiny_config(), workers=1, progress=False)
