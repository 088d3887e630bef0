"""Model sections of the config: presets, overrides, checks naming their dotted keys."""

from __future__ import annotations

import pytest

from medtriad.config import ENCODER_SIZES, load_config
from medtriad.errors import ConfigError
from medtriad.models.model import input_sizes


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.cxr.size=custom", "model.cxr.dim"),
        ("model.cxr.heads=5", "model.cxr.heads"),
        ("model.ecg.dropkey=1.0", "model.ecg.dropkey"),
        ("model.ecg.dropkey_schedule=cosine", "model.ecg.dropkey_schedule"),
        ("model.report.pooling=max", "model.report.pooling"),
        ("model.cxr.pool=max", "model.cxr.pool"),
        ("model.cxr.registers=-1", "model.cxr.registers"),
        ("model.ecg.pool=first", "model.ecg.pool"),
        ("model.report.lora.r=0", "model.report.lora.r"),
        ("model.head.type=mlp", "model.head.type"),
        ("model.logit_scale_max=10", "model.logit_scale_max"),
        ("model.embed_dim=0", "model.embed_dim"),
    ],
)
def test_bad_model_settings_name_their_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert exc.value.key == key


def test_conv_stem_needs_a_power_of_two_patch() -> None:
    assert (
        load_config(None, ["model.cxr.patch_size=12"]).model.cxr.patch_size == 12
    )  # patch stem: fine
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["model.cxr.stem=conv", "model.cxr.patch_size=12"])
    assert exc.value.key == "model.cxr.patch_size"


def test_presets_and_explicit_overrides() -> None:
    cfg = load_config(None, ["model.cxr.size=base", "model.cxr.depth=6", "model.ecg.size=small"])
    assert cfg.model.cxr.dims() == (768, 6, 12)
    assert cfg.model.ecg.dims() == ENCODER_SIZES["small"]
    custom = load_config(
        None,
        ["model.cxr.size=custom", "model.cxr.dim=48", "model.cxr.depth=2", "model.cxr.heads=3"],
    )
    assert custom.model.cxr.dims() == (48, 2, 3)


def test_input_sizes_follow_the_data_section_unless_the_model_sets_them() -> None:
    cfg = load_config(None, ["data.cxr.size=96", "data.ecg.fs=500", "data.report.max_length=77"])
    assert input_sizes(cfg) == {"cxr": 96, "ecg": 5000, "report": 77}
    cfg = load_config(
        None, ["model.cxr.image_size=64", "model.ecg.length=2500", "model.report.max_length=40"]
    )
    assert input_sizes(cfg) == {"cxr": 64, "ecg": 2500, "report": 40}
