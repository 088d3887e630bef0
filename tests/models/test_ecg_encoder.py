"""ECG transformer: token counts from the input length, lead masking, sizes, DropKey."""

from __future__ import annotations

import pytest
import torch

from medtriad.config import ENCODER_SIZES, EcgEncoderConfig
from medtriad.models.ecg import EcgTransformer, build_ecg_encoder
from medtriad.models.vit import dropkey_rates


@pytest.mark.parametrize("fs", [100, 500])
def test_tokens_follow_the_input_length(fs: int) -> None:
    length = fs * 10
    model = build_ecg_encoder(
        EcgEncoderConfig(dim=32, depth=1, heads=2, stem_channels=16), length
    ).eval()
    x = torch.randn(2, 12, length)
    with torch.no_grad():
        tokens = model.forward_tokens(x)
    assert tokens.shape == (2, 1 + length // 5, 32)
    assert model.pos_embed.shape == (1, 1 + length // 5, 32)


def test_more_stem_layout() -> None:
    model = build_ecg_encoder(EcgEncoderConfig(), 1000)
    conv1, relu1, bn1, conv2, relu2, bn2 = model.stem
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size, conv1.stride) == (
        12,
        256,
        (5,),
        (5,),
    )
    assert (conv2.out_channels, conv2.kernel_size, conv2.stride) == (model.dim, (5,), (1,))
    assert (
        isinstance(relu1, torch.nn.ReLU)
        and isinstance(relu2, torch.nn.ReLU)
        and isinstance(bn1, torch.nn.BatchNorm1d)
        and isinstance(bn2, torch.nn.BatchNorm1d)
    )


@pytest.mark.parametrize("size", ["mini", "tiny", "small", "base"])
def test_every_size_gives_its_width(size: str) -> None:
    model = build_ecg_encoder(
        EcgEncoderConfig(size=size, patch_size=50, stem_channels=8), 100
    ).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 12, 100))
    dim, depth, _ = ENCODER_SIZES[size]
    assert out.shape == (1, dim) and len(model.transformer.blocks) == depth


def test_missing_leads_are_zeroed_before_the_embedding() -> None:
    torch.manual_seed(0)
    model = EcgTransformer(200, patch_size=10, stem_channels=16, dim=32, depth=1, heads=2).eval()
    x = torch.randn(3, 12, 200)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[0, [2, 7]] = False
    mask[2, :6] = False
    garbage = x.clone()
    garbage[~mask] = 1e3
    zeroed = x * mask.unsqueeze(-1)
    with torch.no_grad():
        masked = model(garbage, lead_mask=mask)
        assert torch.allclose(masked, model(zeroed), atol=1e-6)
        assert torch.allclose(
            masked[1], model(garbage)[1], atol=1e-6
        )  # an all-present row is untouched
        assert not torch.allclose(masked[0], model(garbage)[0])


def test_other_length_at_run_time_interpolates_positions() -> None:
    model = EcgTransformer(1000, patch_size=10, stem_channels=16, dim=32, depth=1, heads=2).eval()
    assert model.forward_tokens(torch.randn(1, 12, 500)).shape == (1, 51, 32)


def test_ecg_blocks_follow_their_dropkey_schedule() -> None:
    torch.manual_seed(0)
    model = EcgTransformer(
        400, patch_size=5, stem_channels=16, dim=32, depth=3, heads=2, dropkey=0.3
    ).train()
    with model.capture_attention() as maps:
        model(torch.randn(8, 12, 400))
    n = maps[0].shape[-1]
    off = ~torch.eye(n, dtype=torch.bool)
    fractions = [(m == 0)[..., off].float().mean().item() for m in maps]
    assert fractions == pytest.approx(dropkey_rates(0.3, 3, "linear_decrease"), abs=0.01)


def test_ecg_mean_pool_averages_the_time_tokens() -> None:
    from medtriad.models.ecg import EcgTransformer

    torch.manual_seed(0)
    enc = EcgTransformer(100, 12, 10, 16, 3, 16, 2, 2, pool="mean").eval()
    x = torch.randn(2, 12, 100)
    with torch.no_grad():
        assert torch.allclose(enc(x), enc.forward_tokens(x)[:, 1:].mean(1), atol=1e-6)
