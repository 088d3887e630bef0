"""`train.precision: auto` resolves by device: bf16 where the hardware multiplies it."""

from __future__ import annotations

import pytest
import torch

from medtriad.train import trainer
from medtriad.train.trainer import resolve_precision


def test_auto_on_cpu_follows_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    for explicit in ("fp32", "bf16", "fp16"):
        assert resolve_precision(explicit, cpu) == explicit


def test_the_cpu_probe_answers_and_autocast_follows_it() -> None:
    native = trainer.cpu_has_native_bf16()
    assert isinstance(native, bool)
    autocast, scaler = trainer._autocast_factory("auto", torch.device("cpu"))
    assert scaler is None
    with autocast():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == (torch.bfloat16 if native else torch.float32)
