"""A tiny tri-modal cohort, its shards and a briefly trained tiny model for the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtriad.config import Config, load_config

TINY = [
    "name=tiny",
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
    "train.batch_size=8",
    "train.lr=0.001",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.threads=1",
    "train.workers=0",
    "train.max_steps=4",
    "train.epochs=1",
]


def tiny_config(*extra: str) -> Config:
    return load_config(None, [*TINY, *extra])


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
