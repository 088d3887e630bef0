"""Shared fixtures: small configs and one MiniLM-based model loaded once per session."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from medtriad.config import Config, load_config
from medtriad.models import MultiModalModel, build_model

TINY = (
    "data.cxr.size=32",
    "data.report.max_length=32",
    "model.cxr.patch_size=8",
    "model.cxr.dim=32",
    "model.cxr.depth=2",
    "model.cxr.heads=2",
    "model.ecg.length=200",
    "model.ecg.patch_size=10",
    "model.ecg.stem_channels=16",
    "model.ecg.dim=32",
    "model.ecg.depth=2",
    "model.ecg.heads=2",
    "model.embed_dim=16",
)


def tiny_config(*overrides: str) -> Config:
    """Default config shrunk to test sizes, with extra ``key=value`` overrides."""
    return load_config(None, [*TINY, *overrides])


@pytest.fixture(scope="session")
def tiny_model() -> MultiModalModel:
    """cxr + ecg + report (MiniLM with LoRA) at test sizes, in eval mode. Do not train it."""
    return build_model(tiny_config()).eval()


def texts() -> Sequence[str]:
    from medtriad.data.text import combine_report

    return [
        combine_report(
            "Heart size is normal. No focal consolidation.", "Sinus rhythm. Normal ECG."
        ),
        combine_report("Small left pleural effusion with basilar atelectasis.", None),
        combine_report(None, "Atrial fibrillation with rapid ventricular response."),
        "No acute cardiopulmonary process.",
    ]
