"""Registry, settings validation, input checks and the shared edge cases of the contract."""

from __future__ import annotations

import pytest
import torch

from medtriad.errors import ConfigError
from medtriad.losses import (
    ContrastiveLoss,
    LossOutput,
    available_losses,
    base,
    get_loss,
    register_loss,
)

from ._helpers import NAMES, unit_batch

ALL = {"clip", "more", "symile", "gram", "siglip", "dhn_nce", "mv_infonce", "mv_dhel"}


def test_every_documented_loss_is_registered() -> None:
    assert set(available_losses()) == ALL


def test_unknown_loss_names_the_alternatives() -> None:
    with pytest.raises(ConfigError) as exc:
        get_loss("infonce")
    assert exc.value.key == "loss.name" and "clip" in exc.value.reason


def test_unknown_setting_is_named() -> None:
    with pytest.raises(ConfigError) as exc:
        get_loss("clip", temperature=0.07)
    assert exc.value.key == "loss.temperature"


def test_register_loss_adds_a_custom_loss_and_refuses_a_taken_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    @register_loss("norm_gap")
    class NormGap(ContrastiveLoss):
        def compute(self, batch, logit_scale):
            gap = (batch.emb["cxr"] - batch.emb["ecg"]).norm(dim=-1).mean()
            return LossOutput(gap, {"gap": gap})

    emb = unit_batch(4, 3)
    out = get_loss("norm_gap")(emb, {}, 1.0)
    torch.testing.assert_close(out.total, (emb["cxr"] - emb["ecg"]).norm(dim=-1).mean())
    with pytest.raises(ValueError, match="already registered"):
        register_loss("clip")(NormGap)


@pytest.mark.parametrize(
    ("emb", "present", "match"),
    [
        ({"cxr": torch.zeros(3, 2)}, {}, "at least two"),
        ({"cxr": torch.zeros(3, 2), "ecg": torch.zeros(4, 2)}, {}, "same B and d"),
        ({"cxr": torch.zeros(3, 2), "ecg": torch.zeros(3, 2)}, {"ecg": torch.ones(3)}, "bool"),
        (
            {"cxr": torch.zeros(3, 2), "ecg": torch.zeros(3, 2)},
            {"ct": torch.ones(3, dtype=torch.bool)},
            "without",
        ),
        ({"cxr": torch.zeros(0, 2), "ecg": torch.zeros(0, 2)}, {}, "non-empty"),
    ],
)
def test_malformed_batches_are_rejected(emb: dict, present: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_loss("clip")(emb, present, 1.0)


@pytest.mark.parametrize("name", sorted(ALL))
def test_when_every_term_is_skipped_the_total_is_a_connected_zero(name: str) -> None:
    emb = unit_batch(4, 3)
    lonely = torch.tensor([True, False, False, False])
    present = {"cxr": lonely, "ecg": lonely.roll(1), "report": lonely.roll(2)}
    out = get_loss(name).double()(emb, present, 2.0)
    out.total.backward()
    assert out.total.item() == 0.0
    assert all(t.grad is None or torch.equal(t.grad, torch.zeros_like(t)) for t in emb.values())


@pytest.mark.parametrize("name", sorted(ALL))
def test_logit_scale_may_be_a_float_or_a_tensor(name: str) -> None:
    emb = unit_batch(5, 4, names=NAMES)
    loss = get_loss(name, gather=False).double()
    a = loss(emb, {}, 7.0) if name != "symile" else get_loss(name)(emb, {}, 7.0)
    b = (
        loss(emb, {}, torch.tensor([7.0]))
        if name != "symile"
        else get_loss(name)(emb, {}, torch.tensor(7.0))
    )
    torch.testing.assert_close(a.total, b.total)
    assert isinstance(a, LossOutput) and all(v.dim() == 0 for v in a.parts.values())


@pytest.mark.parametrize("name", sorted(ALL))
def test_half_precision_embeddings_are_computed_in_float32(name: str) -> None:
    emb = {m: t.detach().to(torch.bfloat16).requires_grad_() for m, t in unit_batch(6, 4).items()}
    out = get_loss(name)(emb, {}, 5.0)
    out.total.backward()
    expected = get_loss(name)({m: t.detach().float() for m, t in emb.items()}, {}, 5.0)
    assert out.total.dtype == torch.float32
    torch.testing.assert_close(out.total, expected.total)
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in emb.values())
