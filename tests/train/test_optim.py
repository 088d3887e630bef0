"""Parameter groups, per-modality learning rates, freezing and the schedule."""

from __future__ import annotations

import itertools
import math

import torch

from medtriad.models import build_model
from medtriad.train.optim import build_optimizer, freeze_by_glob, lr_factor, set_lr
from medtriad.train.trainer import EncodeStep

from .conftest import tiny_config


def test_groups_decay_and_modality_multipliers() -> None:
    step = EncodeStep(build_model(tiny_config()))
    frozen = freeze_by_glob(step, ["model.encoders.ecg.*"])
    assert frozen and all(n.startswith("model.encoders.ecg.") for n in frozen)
    opt = build_optimizer(step, lr=1e-3, weight_decay=0.1, lr_mult={"cxr": 3.0})
    by_name = {n: g for g in opt.param_groups for n in g["names"]}
    assert not any(n.startswith("model.encoders.ecg.") for n in by_name)  # frozen: not optimised
    assert by_name["model.log_logit_scale"]["weight_decay"] == 0.0
    cxr_weights = [n for n in by_name if n.startswith("model.encoders.cxr") and n.endswith("weight") and "norm" not in n]
    assert cxr_weights and all(by_name[n]["weight_decay"] == 0.1 and math.isclose(by_name[n]["lr"], 3e-3) for n in cxr_weights)
    assert all(by_name[n]["weight_decay"] == 0.0 for n in by_name if n.endswith("bias"))
    ecg_head = [n for n in by_name if n.startswith("model.heads.ecg.")]
    assert ecg_head and all(math.isclose(by_name[n]["lr"], 1e-3) for n in ecg_head)
    # every trainable parameter is in exactly one group
    trainable = [n for n, p in step.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted(by_name)
    set_lr(opt, 0.5)
    assert math.isclose(by_name[cxr_weights[0]]["lr"], 1.5e-3)


def test_warmup_then_cosine() -> None:
    f = [lr_factor(s, warmup=10, total=110) for s in range(110)]
    assert f[0] == 0.1 and f[9] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(f[10:]))  # monotone decay after warmup
    assert math.isclose(lr_factor(60, 10, 110), 0.5, abs_tol=1e-9)  # half-way through the cosine
    assert lr_factor(110, 10, 110, min_factor=0.1) == 0.1


def test_frozen_parameters_do_not_move() -> None:
    step = EncodeStep(build_model(tiny_config()))
    freeze_by_glob(step, ["model.heads.cxr.*"])
    head = next(step.model.heads["cxr"].parameters())
    before = head.detach().clone()
    opt = build_optimizer(step, lr=1e-2, weight_decay=0.1)
    emb, scale, _ = step({"cxr": torch.rand(4, 1, 16, 16), "ecg": torch.randn(4, 12, 100)})
    (emb["cxr"] @ emb["ecg"].T * scale).sum().backward()
    opt.step()
    assert torch.equal(before, head)
    moved = next(step.model.encoders["cxr"].parameters())
    assert moved.grad is not None and moved.requires_grad
