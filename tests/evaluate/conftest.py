"""A tiny tri-modal cohort, its shards and a briefly trained tiny model for the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtriad.config import Config, load_config

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
TINY = ["name=tiny", "train.batch_size=8", "train.lr=0.001", "train.warmup_steps=2", "train.log_every=1", "train.threads=1", "train.workers=0", "train.max_steps=4", "train.epochs=1"]


def tiny_config(*extra: str) -> Config:
    return load_config(TINY_CONFIG, [*TINY, *extra])


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shard folder of an 80-study cohort (10% of patients in each of val and test)."""
    from medtriad.data.shards import prepare_shards_for_config
    from medtriad.data.synthetic.cohort import generate_cohort

    root = tmp_path_factory.mktemp("eval_tiny")
    manifest = generate_cohort(
        root / "data", n=80, seed=5, missing_fraction=0.2, image_size=64, workers=1, progress=False
    )
    return prepare_shards_for_config(
        manifest, root / "shards", tiny_config(), workers=1, progress=False
    )


@pytest.fixture(scope="session")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding `model/` after four training steps."""
    from medtriad.train.trainer import train

    run = tmp_path_factory.mktemp("eval_run") / "run"
    train(tiny_config(), tiny_data, run, progress=False)
    return run
