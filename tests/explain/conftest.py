"""Tiny models and a tiny demo cohort shared by the explanation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtriad.config import Config, load_config

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
# two layers and larger inputs than the tiny preset: maps need a patch grid and a rollout
TINY = [
    "name=tiny-explain",
    "data.cxr.size=32",
    "data.report.max_length=32",
    "model.cxr.depth=2",
    "model.ecg.depth=2",
]


def tiny_config(*extra: str) -> Config:
    return load_config(TINY_CONFIG, [*TINY, *extra])


@pytest.fixture(scope="session")
def tiny_model():
    from medtriad.models import build_model

    return build_model(tiny_config()).eval()


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six demo studies (64 x 64 phantoms, 500 Hz ECGs, reports, annotations)."""
    from medtriad.data.synthetic.cohort import generate_cohort

    root = tmp_path_factory.mktemp("explain-cohort")
    generate_cohort(
        root, n=6, seed=3, missing_fraction=0.0, image_size=64, workers=1, progress=False
    )
    return root


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the machine is shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
