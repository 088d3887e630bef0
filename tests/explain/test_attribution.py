"""Attribution methods: exact formulas, known answers, completeness, and the randomisation check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medtriad.data.text import combine_report
from medtriad.errors import ConfigError
from medtriad.explain import (
    MatchScore,
    Occlusion,
    attention_relevance,
    cxr_maps,
    ecg_maps,
    integrated_gradients,
    lead_occlusion,
    patch_occlusion,
    rollout,
    token_similarity,
)
from medtriad.explain.attribution import embed_tokens, unit_embeddings
from medtriad.explain.quality import spearman
from medtriad.losses.gram import gram_volume

from .conftest import tiny_config

REPORT = combine_report(
    "Moderate cardiomegaly. Small left pleural effusion.", "Atrial fibrillation."
)


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def inputs(seed: int = 0, b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, 32, 32, generator=g), torch.randn(b, 12, 100, generator=g) * 0.3


# --------------------------------------------------------------------------- scores


def test_match_score_geometries_follow_their_formulas() -> None:
    z, a, b = unit(3, 8, seed=1), unit(3, 8, seed=2), unit(3, 8, seed=3)
    assert torch.allclose(MatchScore((a,), "cosine")(z), (z * a).sum(-1))
    assert torch.allclose(MatchScore((a, b), "cosine")(z), (z * a).sum(-1) + (z * b).sum(-1))
    assert torch.allclose(MatchScore((a, b), "mip")(z), (z * a * b).sum(-1))
    volume = torch.stack(
        [gram_volume(z[i : i + 1], [a[i : i + 1], b[i : i + 1]])[0, 0] for i in range(3)]
    )
    assert torch.allclose(MatchScore((a, b), "volume")(z), -volume, atol=1e-5)
    # linear geometries: the target direction reproduces the score
    for geometry in ("cosine", "mip"):
        s = MatchScore((a, b), geometry)
        assert torch.allclose((z * s.target()).sum(-1), s(z))


def test_match_score_broadcasts_over_stacked_copies() -> None:
    z, a = unit(5, 3, 8, seed=1), unit(3, 8, seed=2)
    s = MatchScore((a,))
    assert s(z).shape == (5, 3)
    assert torch.allclose(s(z)[4], s(z[4]))


# --------------------------------------------------------------------------- rollout


def test_rollout_is_the_product_of_identity_plus_weighted_attention() -> None:
    g = torch.Generator().manual_seed(0)
    attn = [torch.rand(2, 3, 5, 5, generator=g).softmax(-1) for _ in range(3)]
    grads = [torch.randn(2, 3, 5, 5, generator=g) for _ in range(3)]
    expected = torch.eye(5).expand(2, 5, 5)
    for a, gr in zip(attn, grads):
        expected = (torch.eye(5) + (gr * a).clamp_min(0).mean(1)) @ expected
    assert torch.allclose(rollout(attn, grads), expected, atol=1e-6)


def test_rollout_points_where_the_class_token_attends_with_positive_gradient() -> None:
    n = 6
    uniform = torch.full((1, 2, n, n), 1.0 / n)
    last = torch.eye(n).repeat(1, 2, 1, 1)
    last[:, :, 0] = 0.0
    last[:, :, 0, 4] = 1.0  # the class token reads token 4 only
    grads = [torch.ones(1, 2, n, n), torch.ones(1, 2, n, n)]
    relevance = rollout([uniform, last], grads)[0, 0, 1:]
    assert int(relevance.argmax()) == 3  # token 4 = patch index 3
    grads[1][:, :, 0, 4] = -1.0  # a negative gradient removes that path
    assert float(rollout([uniform, last], grads)[0, 0, 4]) < float(relevance[3])


# --------------------------------------------------------------------------- token maps


def test_token_similarity_equals_a_direct_computation(tiny_model) -> None:
    cxr, ecg = inputs()
    target = unit(8, seed=5)
    with torch.no_grad():
        for modality, x in (("cxr", cxr), ("ecg", ecg)):
            tokens = tiny_model.forward_tokens(modality, x)[:, 1:]
            z = F.normalize(
                tiny_model.heads[modality](tokens.reshape(-1, tokens.shape[-1])), dim=-1
            )
            direct = (z @ target).reshape(len(x), -1)
            assert torch.allclose(
                token_similarity(tiny_model, modality, x, target), direct, atol=1e-5
            )


def test_maps_have_the_token_shapes_and_are_finite(tiny_model) -> None:
    cxr, ecg = inputs(b=3)
    s = MatchScore((unit(3, 8),))
    grid = cxr_maps(tiny_model, cxr, s)
    assert {k: v.shape for k, v in grid.items()} == {
        "similarity": (3, 4, 4),
        "relevance": (3, 4, 4),
        "occlusion": (3, 32, 32),
    }
    assert set(cxr_maps(tiny_model, cxr, s, occlusion=None)) == {"similarity", "relevance"}
    e = ecg_maps(tiny_model, ecg, s)
    assert {k: v.shape for k, v in e.items()} == {
        "similarity": (3, 10),
        "relevance": (3, 10),
        "occlusion": (3, 12),
    }
    for v in [*grid.values(), *e.values()]:
        assert np.isfinite(v).all()
    assert (grid["relevance"] >= 0).all() and grid["relevance"].max() > 0


def test_class_token_embedding_is_what_encode_returns(tiny_model) -> None:
    cxr, ecg = inputs()
    emb = unit_embeddings(tiny_model, {"cxr": cxr, "ecg": ecg})
    with torch.no_grad():
        for modality, x in (("cxr", cxr), ("ecg", ecg)):
            z = embed_tokens(tiny_model, modality, tiny_model.forward_tokens(modality, x))
            assert torch.allclose(z, emb[modality], atol=1e-6)


def test_explaining_restores_train_mode(tiny_config_model_train) -> None:
    model = tiny_config_model_train
    cxr, _ = inputs()
    attention_relevance(model, "cxr", cxr, MatchScore((unit(8),)))
    assert model.training and model.heads["cxr"].training


@pytest.fixture
def tiny_config_model_train():
    from medtriad.models import build_model

    return build_model(tiny_config("data.modalities=[cxr,ecg]")).train()


# --------------------------------------------------------------------------- occlusion


def test_occlusion_is_the_score_drop_and_zero_for_an_empty_lead(tiny_model) -> None:
    _, ecg = inputs()
    ecg[:, 3] = 0.0
    target = unit(2, 8, seed=7)
    s = MatchScore((target,))
    drop = lead_occlusion(tiny_model, ecg, s)
    assert drop.shape == (2, 12)
    assert torch.allclose(drop[:, 3], torch.zeros(2), atol=1e-6)
    assert (drop.abs() > 1e-6).sum() >= 10
    for lead in (0, 7):
        occluded = ecg.clone()
        occluded[:, lead] = 0.0
        before = s(unit_embeddings(tiny_model, {"ecg": ecg})["ecg"])
        after = s(unit_embeddings(tiny_model, {"ecg": occluded})["ecg"])
        assert torch.allclose(drop[:, lead], before - after, atol=1e-5)


# --------------------------------------------------------------------------- integrated gradients


@pytest.fixture(scope="module")
def linear_head_model():
    from medtriad.models import build_model

    return build_model(tiny_config("model.head.type=linear")).eval()


def test_ig_attributions_sum_to_the_score_difference(linear_head_model) -> None:
    s = MatchScore((unit(1, 8, seed=3),))
    errors = {}
    for steps in (4, 32):
        ig = integrated_gradients(linear_head_model, REPORT, s, steps=steps)
        errors[steps] = abs(ig.token_scores.sum() - ig.delta)
    assert abs(ig.delta) > 1e-3
    assert errors[32] <= 0.01 * np.abs(ig.token_scores).sum()
    assert errors[32] < errors[4]
    assert np.isclose(ig.word_scores.sum(), ig.token_scores.sum())


@pytest.mark.parametrize("pair", [False, True])
def test_ig_endpoint_is_the_model_score_and_words_are_whole(linear_head_model, pair: bool) -> None:
    encoder = linear_head_model.encoders["report"]
    previous, encoder.pair_sections = encoder.pair_sections, pair
    try:
        other = unit(1, 8, seed=4)
        s = MatchScore((other,))
        ig = integrated_gradients(linear_head_model, REPORT, s, steps=4)
        z = unit_embeddings(linear_head_model, {"report": [REPORT]})["report"]
        assert ig.score == pytest.approx(float(s(z)[0]), abs=1e-5)
        assert len(ig.parts) == (2 if pair else 1)
        assert "cardiomegaly" in ig.words and "fibrillation" in ig.words
        assert len(ig.tokens) > len(ig.words)  # sub-words were merged
        special = [i for i, t in enumerate(ig.tokens) if t in ("[CLS]", "[SEP]")]
        assert np.allclose(ig.token_scores[special], 0.0)
    finally:
        encoder.pair_sections = previous


def test_ig_baseline_and_steps_are_validated(linear_head_model) -> None:
    from medtriad.errors import ConfigError

    s = MatchScore((unit(1, 8),))
    with pytest.raises(ConfigError):
        integrated_gradients(linear_head_model, REPORT, s, steps=0)
    with pytest.raises(ConfigError):
        integrated_gradients(linear_head_model, REPORT, s, baseline="mask")  # type: ignore[arg-type]
    zeros = integrated_gradients(linear_head_model, REPORT, s, steps=8, baseline="zeros")
    pad = integrated_gradients(linear_head_model, REPORT, s, steps=8, baseline="pad")
    assert zeros.baseline_score != pytest.approx(pad.baseline_score)


# --------------------------------------------------------------------- known answer, randomisation


_CHECKER = ((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2).float()


def patch_images(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """32 x 32 images holding a checkerboard patch and a second patch: a solid grey one (label 1,
    same mean brightness) or another checkerboard (label 0). Returns images, labels, solid patch."""
    where = torch.stack([torch.randperm(16, generator=g)[:2] for _ in range(n)])
    label = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 1, 32, 32, generator=g) * 0.1
    for i in range(n):
        (r, c), (r2, c2) = divmod(int(where[i, 0]), 4), divmod(int(where[i, 1]), 4)
        x[i, 0, r2 * 8 : r2 * 8 + 8, c2 * 8 : c2 * 8 + 8] += _CHECKER
        x[i, 0, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8] += 0.5 if label[i] else _CHECKER
    return x, label, where[:, 0]


@pytest.fixture(scope="module")
def solid_patch_model():
    """An X-ray encoder trained so that its embedding points to target 1 iff a solid patch shows."""
    from medtriad.models import build_model

    model = build_model(tiny_config("model.head.type=linear", "data.modalities=[cxr,ecg]"))
    targets = unit(2, 8, seed=11)
    g = torch.Generator().manual_seed(0)
    params = [p for n, p in model.named_parameters() if n.startswith(("encoders.cxr", "heads.cxr"))]
    opt = torch.optim.Adam(params, lr=3e-3)
    model.train()
    for _ in range(150):
        x, label, _ = patch_images(32, g)
        z = F.normalize(model.heads["cxr"](model.features("cxr", x)), dim=-1)
        loss = F.cross_entropy(10 * z @ targets.T, label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), targets


def test_relevance_finds_the_patch_that_decides_the_match(solid_patch_model) -> None:
    from medtriad.models import build_model

    model, targets = solid_patch_model
    x, label, solid = patch_images(96, torch.Generator().manual_seed(1))
    x, solid = x[label == 1], solid[label == 1]
    s = MatchScore((targets[1],))
    assert (unit_embeddings(model, {"cxr": x})["cxr"] @ targets.T).argmax(1).float().mean() > 0.9
    trained = attention_relevance(model, "cxr", x, s).argmax(1)
    assert (trained == solid).float().mean() >= 0.9
    # an untrained encoder is drawn to the high-contrast checkerboard instead
    fresh = build_model(
        tiny_config("model.head.type=linear", "data.modalities=[cxr,ecg]", "seed=5")
    ).eval()
    assert (attention_relevance(fresh, "cxr", x, s).argmax(1) == solid).float().mean() <= 0.3


def test_randomisation_check_reinitialised_weights_change_the_maps(solid_patch_model) -> None:
    """Mean Spearman correlation (over images and three re-initialisations) below 0.3."""
    from medtriad.models import build_model

    model, targets = solid_patch_model
    x, _, _ = patch_images(16, torch.Generator().manual_seed(2))
    s = MatchScore((targets[1],))
    a = cxr_maps(model, x, s)
    rho: dict[str, list[float]] = {"similarity": [], "relevance": [], "occlusion": []}
    for seed in (5, 9, 13):
        config = tiny_config("model.head.type=linear", "data.modalities=[cxr,ecg]", f"seed={seed}")
        b = cxr_maps(build_model(config).eval(), x, s)
        for method, values in rho.items():
            values += [spearman(a[method][i], b[method][i]) for i in range(len(x))]
    for method, values in rho.items():
        assert np.mean(values) < 0.3, (method, np.mean(values))
    # the same weights give the same maps (the check can fail)
    again = cxr_maps(model, x, s)
    assert (
        np.mean([spearman(a["relevance"][i], again["relevance"][i]) for i in range(len(x))]) > 0.99
    )


def test_occlusion_finds_the_patch_that_decides_the_match(solid_patch_model) -> None:
    """The occlusion map's peak pixel lies in the solid patch (8 x 8 of the 32 x 32 input); a
    pixel map can peak on the patch's edge, one pixel out, where the relevance (one value per
    patch) cannot, hence 0.8 rather than 0.9."""
    model, targets = solid_patch_model
    x, label, solid = patch_images(64, torch.Generator().manual_seed(1))
    x, solid = x[label == 1], solid[label == 1]
    # the mean fill: a blurred checkerboard would be a solid patch, the very feature scored
    occ = patch_occlusion(model, x, MatchScore((targets[1],)), Occlusion(window=8, stride=2, fill="mean"))
    assert occ.shape == (len(x), 32, 32)
    peak = occ.flatten(1).argmax(1)
    cell = (peak // 32 // 8) * 4 + (peak % 32) // 8
    assert (cell == solid).float().mean() >= 0.8
    # a map whose peaks ignored the image would land in the solid patch about 1/16 of the time
    shuffled = cell[torch.randperm(len(cell), generator=torch.Generator().manual_seed(0))]
    assert (shuffled == solid).float().mean() <= 0.4


# --------------------------------------------------------------------------- occlusion


def direct_occlusion(model, x: torch.Tensor, target: torch.Tensor, window: int, stride: int, fill: str):
    """The occlusion map by its definition, one window and one image at a time."""
    h, w = x.shape[-2:]
    starts = lambda n: sorted(set(range(0, n - window + 1, stride)) | {n - window})
    out = torch.zeros(len(x), h, w)
    for i, img in enumerate(x):
        img = img[None]
        s0 = unit_embeddings(model, {"cxr": img})["cxr"][0] @ target
        k = window | 1
        bases = {
            "mean": torch.full_like(img, float(img.mean())),
            "blur": F.avg_pool2d(F.pad(img, (k // 2,) * 4, mode="replicate"), k, stride=1),
            "mirror": img[..., torch.arange(w - 1, -1, -1)],  # column c holds column W - 1 - c
        }
        if getattr(model, "reference_cxr", None) is not None:
            bases["reference"] = torch.as_tensor(model.reference_cxr.image)[None]
        fill = "mean+blur" if fill == "both" else fill
        used = fill.replace("|", "+").split("+")
        total, count = torch.zeros(h, w), torch.zeros(h, w)
        for r in starts(h):
            for c in starts(w):
                drops = []
                for name in used:
                    copy = img.clone()
                    copy[..., r : r + window, c : c + window] = bases[name][..., r : r + window, c : c + window]
                    drops.append(s0 - unit_embeddings(model, {"cxr": copy})["cxr"][0] @ target)
                drop = max(drops) if "|" in fill else sum(drops) / len(drops)
                total[r : r + window, c : c + window] += drop
                count[r : r + window, c : c + window] += 1
        out[i] = total / count
    return out


@pytest.mark.parametrize(
    ("window", "stride", "fill"),
    [(8, 4, "both"), (6, 5, "blur"), (5, 3, "mean"), (6, 4, "mirror"), (8, 4, "mean+blur+mirror"),
     (8, 4, "mean|blur|mirror"), (6, 3, "blur|mean")],
)
def test_patch_occlusion_is_the_mean_drop_of_the_covering_windows(tiny_model, window, stride, fill) -> None:
    cxr, _ = inputs(b=2)
    target = unit(8, seed=4)
    got = patch_occlusion(tiny_model, cxr, MatchScore((target,)), Occlusion(window, stride, fill), chunk=7)
    want = direct_occlusion(tiny_model, cxr, target, window, stride, fill)
    assert torch.allclose(got, want, atol=1e-5)
    assert got.abs().max() > 0


def with_reference(model, image: torch.Tensor):
    """A shallow copy of `model` holding `image` as its reference X-ray."""
    import copy

    from medtriad.explain.reference import ReferenceXray

    out = copy.copy(model)
    out.reference_cxr = ReferenceXray(image.numpy().astype("float32"), 5, "findings")
    return out


@pytest.mark.parametrize(("window", "stride", "fill"), [(8, 4, "reference"), (6, 4, "reference|mirror"), (6, 5, "auto")])
def test_reference_fill_is_the_window_of_the_reference_xray(tiny_model, window, stride, fill) -> None:
    cxr, _ = inputs(b=2)
    model = with_reference(tiny_model, torch.rand(1, *cxr.shape[-2:], generator=torch.Generator().manual_seed(7)))
    target = unit(8, seed=4)
    got = patch_occlusion(model, cxr, MatchScore((target,)), Occlusion(window, stride, fill), chunk=5)
    want = direct_occlusion(model, cxr, target, window, stride, fill.replace("auto", "mean|reference"))
    assert torch.allclose(got, want, atol=1e-5) and got.abs().max() > 0


def test_auto_fill_follows_the_model_and_reference_needs_one(tiny_model) -> None:
    from medtriad.explain.attribution import resolve_fill

    cxr, _ = inputs(b=1)
    s = MatchScore((unit(8, seed=4),))
    assert resolve_fill("auto", tiny_model) == "mean|mirror" and resolve_fill("auto") == "mean|mirror"
    assert torch.allclose(patch_occlusion(tiny_model, cxr, s), patch_occlusion(tiny_model, cxr, s, Occlusion(fill="mean|mirror")))
    # an input equal to the reference loses nothing when a window is replaced by it
    model = with_reference(tiny_model, cxr[0])
    assert resolve_fill("auto", model) == "mean|reference" and resolve_fill("mean", model) == "mean"
    assert patch_occlusion(model, cxr, s, Occlusion(fill="reference")).abs().max() < 1e-6
    assert patch_occlusion(model, cxr, s).abs().max() > 1e-4  # its mean fill still changes it
    with pytest.raises(ConfigError, match="reference X-ray"):
        patch_occlusion(tiny_model, cxr, s, Occlusion(fill="reference"))
    small = with_reference(tiny_model, torch.zeros(1, 16, 16))
    with pytest.raises(ConfigError, match="the input"):
        patch_occlusion(small, cxr, s, Occlusion(fill="reference"))


def test_patch_occlusion_of_a_uniform_image_is_zero_and_settings_are_checked(tiny_model) -> None:
    s = MatchScore((unit(8, seed=4),))
    flat = torch.full((1, 1, 32, 32), 0.3)
    assert patch_occlusion(tiny_model, flat, s).abs().max() < 1e-6  # no fill changes anything
    every = patch_occlusion(tiny_model, flat, s, Occlusion(fill="mean+blur+mirror"))
    assert every.abs().max() < 1e-6
    # the mirror fill leaves a left-right symmetric image as it was, and no other image
    half = torch.rand(1, 1, 32, 16, generator=torch.Generator().manual_seed(0))
    symmetric = torch.cat([half, half.flip(-1)], dim=-1)
    assert patch_occlusion(tiny_model, symmetric, s, Occlusion(fill="mirror")).abs().max() < 1e-6
    lopsided = torch.cat([half, torch.zeros_like(half)], dim=-1)
    assert patch_occlusion(tiny_model, lopsided, s, Occlusion(fill="mirror")).abs().max() > 1e-4
    patch = tiny_model.encoders["cxr"].patch_size
    assert Occlusion().resolve(patch, (32, 32)) == (patch, max(1, patch // 4))
    bads = ("zeros", "mean+zeros", "mean+mean", "both+mirror", "", "mean+", "mean+blur|mirror", "mean|mean")
    for bad in (Occlusion(window=33), Occlusion(stride=-1), *(Occlusion(fill=f) for f in bads)):
        with pytest.raises(ConfigError):
            patch_occlusion(tiny_model, flat, s, bad)


# --------------------------------------------------------------------------- mean pooling


@pytest.fixture(scope="module")
def mean_pool_model():
    from medtriad.models import build_model

    cfg = tiny_config("model.cxr.pool=mean", "model.ecg.pool=mean", "model.head.type=linear")
    return build_model(cfg).eval()


def test_mean_pooled_similarity_map_decomposes_the_score(mean_pool_model) -> None:
    """Linear head + mean pooling: the mean of the token map is the unnormalised score, and the
    unit embedding's score is that mean over the pooled projection's norm."""
    m = mean_pool_model
    cxr, ecg = inputs(seed=3)
    target = unit(8, seed=7)
    with torch.no_grad():
        for modality, x in (("cxr", cxr), ("ecg", ecg)):
            sim = token_similarity(m, modality, x, target)
            pooled = m.heads[modality](m.encoders[modality](x))
            assert torch.allclose(sim.mean(1), pooled @ target, atol=1e-5)
            z = unit_embeddings(m, {modality: x})[modality]
            assert torch.allclose(z @ target, sim.mean(1) / pooled.norm(dim=-1), atol=1e-5)


def test_mean_pooled_relevance_reads_the_patch_rows_of_the_rollout(mean_pool_model) -> None:
    m = mean_pool_model
    cxr, _ = inputs(seed=4)
    score = MatchScore((unit(2, 8, seed=8),))
    x = cxr.clone().requires_grad_(True)
    with torch.enable_grad(), m.encoders["cxr"].capture_attention() as maps:
        tokens = m.forward_tokens("cxr", x)
        grads = torch.autograd.grad(score(embed_tokens(m, "cxr", tokens)).sum(), maps)
    full = rollout([a.detach() for a in maps], grads)
    expected = full[:, 1:, 1:].mean(dim=1)
    assert torch.allclose(attention_relevance(m, "cxr", cxr, score), expected, atol=1e-6)
    assert not torch.allclose(expected, full[:, 0, 1:], atol=1e-3)  # not the class-token row


def test_maps_skip_register_tokens() -> None:
    from medtriad.models import build_model

    m = build_model(tiny_config("model.cxr.pool=mean", "model.cxr.registers=2", "model.head.type=linear")).eval()
    cxr, _ = inputs(seed=5, b=3)
    grid = cxr_maps(m, cxr, MatchScore((unit(3, 8, seed=9),)))
    assert grid["similarity"].shape == grid["relevance"].shape == (3, 4, 4)
    target = unit(8, seed=9)
    with torch.no_grad():
        pooled = m.heads["cxr"](m.encoders["cxr"](cxr))
    assert torch.allclose(token_similarity(m, "cxr", cxr, target).mean(1), pooled @ target, atol=1e-5)
