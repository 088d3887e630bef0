"""Gradient caching gives the full-batch gradient."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from medtriad.data.shards import ShardDataset
from medtriad.losses import get_loss
from medtriad.models import build_model
from medtriad.train.trainer import EncodeStep, _inputs, build_text_cache, contrastive_step

from .conftest import tiny_config


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "extra, mode, loss",
    [
        # BatchNorm heads in eval mode: every layer is per-sample, the gradients must agree
        ((), "eval", "more"),
        # training mode with DropKey on: the re-forward must replay each chunk's random masks
        (("model.head.type=linear", "model.cxr.dropkey=0.3", "data.modalities=[cxr, report]"), "train", "clip"),
    ],
)
def test_chunks_of_4_give_the_full_batch_16_gradient(tiny_shards, extra, mode, loss) -> None:
    cfg = tiny_config(*extra)
    model = build_model(cfg)
    ds = ShardDataset(tiny_shards, split="train", modalities=cfg.data.modalities)
    cache = build_text_cache(model, ds, None)
    step = EncodeStep(model)
    step.train(mode == "train")
    loss_fn = get_loss(loss)
    batch = ds[np.arange(16)]
    inputs = _inputs(batch, cache, torch.device("cpu"))
    present = dict(batch.present)
    results = []
    for chunk in (None, 4):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        out = contrastive_step(step, step, loss_fn, inputs, present, chunk, contextlib.nullcontext)
        results.append((float(out.total.detach()), grads(step)))
    (full_loss, full), (cached_loss, cached) = results
    assert abs(full_loss - cached_loss) < 1e-6
    assert set(full) == set(cached) and len(full) > 10
    assert "model.log_logit_scale" in full
    for name in full:
        torch.testing.assert_close(cached[name], full[name], atol=1e-5, rtol=1e-4, msg=name)
    # a wrong replay (a different seed for the re-forward) must be visible in training mode
    if mode == "train":
        assert any(float(g.abs().sum()) > 0 for n, g in full.items() if "encoders.cxr" in n)
