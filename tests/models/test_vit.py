"""Vision Transformer: shapes per size, DropKey schedule and measured masking, timm weight loading."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medtriad.config import ENCODER_SIZES, VitConfig
from medtriad.errors import ConfigError, DataError
from medtriad.models.vit import (
    VisionTransformer,
    build_vit,
    dropkey_rates,
    load_timm_weights,
    resample_pos_embed,
)


def vit_param_count(dim: int, depth: int, patch: int, n_tokens: int, mlp_ratio: float = 4.0) -> int:
    """Parameters of a 1-channel ViT with a patch stem, from the architecture's formula."""
    hidden = int(dim * mlp_ratio)
    block = (
        4 * dim
        + (dim * 3 * dim + 3 * dim)
        + (dim * dim + dim)
        + (dim * hidden + hidden)
        + (hidden * dim + dim)
    )
    return (patch * patch * dim + dim) + dim + n_tokens * dim + depth * block + 2 * dim


@pytest.mark.parametrize("size", ["mini", "tiny", "small", "base"])
def test_every_size_gives_its_width_and_token_count(size: str) -> None:
    cfg = VitConfig(size=size, patch_size=16, dropkey=0.1)
    model = build_vit(cfg, image_size=32).eval()
    dim, depth, heads = ENCODER_SIZES[size]
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        tokens = model.forward_tokens(x)
        pooled = model(x)
    assert tokens.shape == (1, 1 + 4, dim)
    assert pooled.shape == (1, dim)
    assert torch.equal(pooled, tokens[:, 0])
    assert (
        len(model.transformer.blocks) == depth and model.transformer.blocks[0].attn.heads == heads
    )


def test_vit_b16_at_224_has_the_formula_parameter_count() -> None:
    with torch.device("meta"):
        model = build_vit(VitConfig(size="base", patch_size=16), image_size=224)
    assert model.grid == (14, 14)
    assert sum(p.numel() for p in model.parameters()) == vit_param_count(768, 12, 16, 197)


def test_custom_size_and_non_square_patch_grid_sizes() -> None:
    model = build_vit(
        VitConfig(size="custom", dim=24, depth=1, heads=3, patch_size=6), image_size=48
    ).eval()
    assert model.forward_tokens(torch.randn(2, 1, 48, 48)).shape == (2, 1 + 64, 24)
    with pytest.raises(ConfigError) as exc:
        build_vit(VitConfig(patch_size=7), image_size=48)
    assert exc.value.key == "model.cxr.patch_size"


def test_conv_stem_keeps_the_token_grid() -> None:
    model = build_vit(
        VitConfig(stem="conv", patch_size=8, dim=32, depth=1, heads=2), image_size=32
    ).eval()
    assert model.forward_tokens(torch.randn(2, 1, 32, 32)).shape == (2, 1 + 16, 32)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.stem.modules())


def test_a_different_image_size_at_run_time_resamples_positions() -> None:
    model = build_vit(VitConfig(dim=32, depth=1, heads=2, patch_size=8), image_size=32).eval()
    assert model.forward_tokens(torch.randn(1, 1, 64, 64)).shape == (1, 1 + 64, 32)


# --------------------------------------------------------------------------- DropKey


def test_dropkey_schedules() -> None:
    dec = dropkey_rates(0.3, 4, "linear_decrease")
    inc = dropkey_rates(0.3, 4, "linear_increase")
    assert dec[0] == pytest.approx(0.3) and dec[-1] == 0.0
    assert all(a > b for a, b in itertools.pairwise(dec))
    assert inc == pytest.approx(dec[::-1])
    assert dropkey_rates(0.3, 4, "constant") == [0.3] * 4
    assert dropkey_rates(0.3, 1, "linear_decrease") == [0.3]


def _zero_fractions(maps: list[torch.Tensor]) -> tuple[list[float], list[int]]:
    """Per layer: fraction of off-diagonal probabilities that are exactly 0; zeros on the diagonal."""
    off, diag = [], []
    for probs in maps:
        n = probs.shape[-1]
        eye = torch.eye(n, dtype=torch.bool)
        zero = probs == 0
        off.append(zero[..., ~eye].float().mean().item())
        diag.append(int(zero[..., eye].sum()))
    return off, diag


@pytest.mark.parametrize("schedule", ["linear_decrease", "constant", "linear_increase"])
def test_dropkey_masks_the_scheduled_fraction_per_layer_in_training(schedule: str) -> None:
    torch.manual_seed(0)
    model = VisionTransformer(
        64, 8, dim=32, depth=4, heads=4, dropkey=0.4, schedule=schedule
    ).train()
    with model.capture_attention() as maps:
        model(torch.randn(16, 1, 64, 64))
    fractions, diagonal_zeros = _zero_fractions(maps)
    expected = dropkey_rates(0.4, 4, schedule)
    assert len(maps) == 4
    # 16 images x 4 heads x 65 x 64 logits per layer: the sampling error is below 0.002
    assert fractions == pytest.approx(expected, abs=0.01)
    assert diagonal_zeros == [0, 0, 0, 0]
    assert all(torch.allclose(m.sum(-1), torch.ones(())) for m in maps)


def test_dropkey_is_off_in_eval_and_changes_training_outputs() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(32, 8, dim=32, depth=2, heads=2, dropkey=0.3, schedule="constant")
    x = torch.randn(4, 1, 32, 32)
    model.eval()
    with torch.no_grad(), model.capture_attention() as maps:
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    assert _zero_fractions(maps)[0] == [0.0] * 4
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x), a)


def test_fast_attention_path_applies_the_same_masks_as_the_captured_path() -> None:
    model = VisionTransformer(
        32, 8, dim=32, depth=2, heads=2, dropkey=0.3, schedule="constant"
    ).train()
    x = torch.randn(4, 1, 32, 32)
    torch.manual_seed(1)
    fast = model(x)
    torch.manual_seed(1)
    with model.capture_attention():
        explicit = model(x)
    assert torch.allclose(fast, explicit, atol=1e-5)


def test_captured_attention_keeps_gradients() -> None:
    model = VisionTransformer(32, 8, dim=32, depth=2, heads=2).eval()
    with model.capture_attention() as maps:
        model(torch.randn(1, 1, 32, 32)).sum().backward()
    assert len(maps) == 2 and all(m.grad is not None and m.grad.shape == m.shape for m in maps)
    model(torch.randn(1, 1, 32, 32))
    assert len(maps) == 2  # nothing captured outside the block


# --------------------------------------------------------------------------- timm weights


def timm_state(
    dim: int = 32, depth: int = 2, patch: int = 4, grid: int = 4, embed_class: bool = True
) -> dict:
    """A random state dict with timm's ViT names and shapes (RGB patches, classifier head)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.1

    state = {
        "cls_token": r(1, 1, dim),
        "pos_embed": r(1, grid * grid + int(embed_class), dim),
        "patch_embed.proj.weight": r(dim, 3, patch, patch),
        "patch_embed.proj.bias": r(dim),
        "norm.weight": 1 + r(dim),
        "norm.bias": r(dim),
        "head.weight": r(10, dim),
        "head.bias": r(10),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        state |= {
            p + "norm1.weight": 1 + r(dim),
            p + "norm1.bias": r(dim),
            p + "attn.qkv.weight": r(3 * dim, dim),
            p + "attn.qkv.bias": r(3 * dim),
            p + "attn.proj.weight": r(dim, dim),
            p + "attn.proj.bias": r(dim),
            p + "norm2.weight": 1 + r(dim),
            p + "norm2.bias": r(dim),
            p + "mlp.fc1.weight": r(4 * dim, dim),
            p + "mlp.fc1.bias": r(4 * dim),
            p + "mlp.fc2.weight": r(dim, 4 * dim),
            p + "mlp.fc2.bias": r(dim),
        }
    return state


def reference_forward(state: dict, x: torch.Tensor, heads: int, depth: int) -> torch.Tensor:
    """timm's ViT computation written out from the raw tensors, on a grey image replicated to RGB."""
    rgb = x.expand(-1, 3, -1, -1)
    w = state["patch_embed.proj.weight"]
    t = (
        F.conv2d(rgb, w, state["patch_embed.proj.bias"], stride=w.shape[-1])
        .flatten(2)
        .transpose(1, 2)
    )
    t = torch.cat([state["cls_token"].expand(len(t), -1, -1), t], 1) + state["pos_embed"]
    b, n, d = t.shape
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(t, (d,), state[p + "norm1.weight"], state[p + "norm1.bias"], 1e-6)
        q, k, v = (
            F.linear(h, state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"])
            .reshape(b, n, 3, heads, -1)
            .permute(2, 0, 3, 1, 4)
        )
        a = ((q @ k.transpose(-1, -2)) / (d // heads) ** 0.5).softmax(-1)
        t = t + F.linear(
            (a @ v).transpose(1, 2).reshape(b, n, d),
            state[p + "attn.proj.weight"],
            state[p + "attn.proj.bias"],
        )
        h = F.layer_norm(t, (d,), state[p + "norm2.weight"], state[p + "norm2.bias"], 1e-6)
        h = F.linear(
            F.gelu(F.linear(h, state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"])),
            state[p + "mlp.fc2.weight"],
            state[p + "mlp.fc2.bias"],
        )
        t = t + h
    return F.layer_norm(t, (d,), state["norm.weight"], state["norm.bias"], 1e-6)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_weights_reproduce_the_reference_forward(tmp_path: Path, suffix: str) -> None:
    state = timm_state()
    path = tmp_path / f"vit{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"model": state}, path)
    cfg = VitConfig(size="custom", dim=32, depth=2, heads=2, patch_size=4, pretrained=str(path))
    model = build_vit(cfg, image_size=16).eval()
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(
            model.forward_tokens(x), reference_forward(state, x, heads=2, depth=2), atol=1e-5
        )


def test_timm_position_embeddings_are_resampled_to_a_new_grid() -> None:
    state = timm_state()
    state["pos_embed"][:, 1:] = 0.5  # a constant grid stays constant under interpolation
    model = VisionTransformer(32, 4, dim=32, depth=2, heads=2)
    from medtriad.models.vit import timm_to_vit_state

    mapped = timm_to_vit_state(state, model)
    assert mapped["pos_embed"].shape == (1, 1 + 64, 32)
    assert torch.allclose(mapped["pos_embed"][:, 1:], torch.full((1, 64, 32), 0.5), atol=1e-6)
    assert torch.equal(mapped["pos_embed"][:, 0], state["pos_embed"][:, 0])
    assert torch.allclose(
        mapped["stem.proj.weight"], state["patch_embed.proj.weight"].sum(1, keepdim=True)
    )
    # timm's no_embed_class layout: the grid alone, the class token gets a zero position
    no_class = timm_state(embed_class=False)
    assert torch.equal(timm_to_vit_state(no_class, model)["pos_embed"][:, 0], torch.zeros(1, 32))


def test_resampling_a_linear_ramp_keeps_it_monotone() -> None:
    ramp = torch.arange(16.0).reshape(1, 16, 1).repeat(1, 1, 2)  # 4x4 grid, row-major ramp
    pos = torch.cat([torch.zeros(1, 1, 2), ramp], 1)
    out = resample_pos_embed(pos, (8, 8))[0, 1:, 0].reshape(8, 8)
    assert (out[:, 1:] >= out[:, :-1]).all() and (out[1:] >= out[:-1]).all()


def test_bad_timm_files_raise_data_error_naming_the_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = VisionTransformer(16, 4, dim=32, depth=2, heads=2)
    extra = timm_state() | {"reg_token": torch.zeros(1, 4, 32)}
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(DataError, match="reg_token") as exc:
        load_timm_weights(model, tmp_path / "extra.safetensors")
    assert exc.value.path == str(tmp_path / "extra.safetensors")
    save_file(timm_state(patch=8, grid=2), str(tmp_path / "p8.safetensors"))
    with pytest.raises(DataError, match="patch size"):
        load_timm_weights(model, tmp_path / "p8.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read"):
        load_timm_weights(model, tmp_path / "junk.pth")
    with pytest.raises(DataError, match="does not exist"):
        load_timm_weights(model, tmp_path / "missing.safetensors")


def test_timm_weights_need_the_patch_stem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        build_vit(VitConfig(stem="conv", pretrained=str(tmp_path / "w.safetensors")), image_size=64)
    assert exc.value.key == "model.cxr.stem"


def test_mean_pool_is_the_mean_patch_token_and_cls_pool_the_class_token() -> None:
    from medtriad.models.vit import VisionTransformer

    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    for pool in ("cls", "mean"):
        torch.manual_seed(0)
        vit = VisionTransformer(32, 8, 16, 2, 2, pool=pool).eval()
        with torch.no_grad():
            tokens = vit.forward_tokens(x)
            want = tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(1)
            assert torch.allclose(vit(x), want, atol=1e-6)
    with pytest.raises(ValueError, match="pool"):
        VisionTransformer(32, 8, 16, 2, 2, pool="max")


def test_register_tokens_sit_after_the_class_token_and_stay_out_of_the_embedding() -> None:
    from medtriad.models.vit import VisionTransformer

    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    vit = VisionTransformer(32, 8, 16, 2, 2, pool="mean", registers=3).eval()
    assert vit.n_prefix == 4
    with torch.no_grad():
        tokens = vit.forward_tokens(x)
        assert tokens.shape == (2, 4 + 16, 16)
        assert torch.allclose(vit(x), tokens[:, 4:].mean(1), atol=1e-6)
        before = vit(x)
        vit.register_tokens.add_(torch.randn(1, 3, 16))  # registers change what patches attend to
        assert not torch.allclose(vit(x), before, atol=1e-4)
    with pytest.raises(ValueError, match="registers"):
        VisionTransformer(32, 8, 16, 2, 2, registers=-1)


def _token_change(vit: VisionTransformer, x: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """Per-token output change when the 8 x 8 patch at (row, col) of `x` is replaced by noise."""
    y = x.clone()
    y[..., row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8] = torch.randn(1, 1, 8, 8)
    outs = []
    with torch.no_grad():
        for image in (y, x):
            torch.manual_seed(1)  # the same DropKey draw for both
            outs.append(vit.forward_tokens(image))
    return (outs[0] - outs[1]).abs().amax(dim=(0, 2))


@pytest.mark.parametrize(("depth", "radius"), [(1, 1), (2, 1), (2, 0)])
def test_a_local_radius_limits_what_a_patch_token_reads(depth: int, radius: int) -> None:
    """Radius R: after L layers a patch token depends on the patches within R * L rows and
    columns (radius 0: its own patch) and never beyond, whatever DropKey masks in training; the
    class token and registers still read every patch."""
    torch.manual_seed(0)
    vit = VisionTransformer(48, 8, 16, depth, 2, registers=1, attention_radius=radius, dropkey=0.3)
    x = torch.randn(1, 1, 48, 48)
    grid = 6
    for mode in ("eval", "train"):
        getattr(vit, mode)()
        change = _token_change(vit, x, 5, 5)
        patches = change[vit.n_prefix :].reshape(grid, grid)
        for r, c in itertools.product(range(grid), range(grid)):
            near = max(abs(r - 5), abs(c - 5)) <= depth * radius
            if mode == "eval":
                assert (patches[r, c] > 0) == near, (mode, r, c)
            else:  # DropKey may mask a near key in every head, never unmask a far one
                assert near or patches[r, c] == 0, (mode, r, c)
        assert torch.all(change[: vit.n_prefix] > 0)
    global_vit = VisionTransformer(48, 8, 16, depth, 2).eval()
    assert torch.all(_token_change(global_vit, x, 5, 5) > 0)


def test_locality_reaches_the_captured_attention_and_is_configured() -> None:
    torch.manual_seed(0)
    vit = build_vit(VitConfig(size="custom", dim=16, depth=1, heads=2, attention_radius=2), 48).eval()
    assert vit.attention_radius == 2
    with torch.no_grad(), vit.capture_attention() as maps:
        vit.forward_tokens(torch.randn(2, 1, 48, 48))
    probs = maps[0][:, :, 1:, :]  # patch queries
    assert torch.all(probs[..., 0] == 0)  # never the class token
    first = probs[:, :, 0, 1:].reshape(2, 2, 6, 6)  # patch (0, 0) reads rows and columns 0..2
    assert torch.all(first[..., :3, :3] > 0) and torch.all(first[..., 3:, :] == 0)
    assert torch.all(first[..., :, 3:] == 0)
    with pytest.raises(ConfigError) as exc:
        VitConfig(attention_radius=-1).check("model.cxr")
    assert exc.value.key == "model.cxr.attention_radius"


def test_registers_are_refused_beside_a_local_radius() -> None:
    with pytest.raises(ConfigError) as exc:
        VitConfig(attention_radius=1, registers=2).check("model.cxr")
    assert exc.value.key == "model.cxr.registers"
