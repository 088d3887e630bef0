from pathlib import Path

import pytest
import yaml

from medtriad.config import Config, load_config, save_config, to_dict
from medtriad.errors import ConfigError


def write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_round_trip_keeps_every_value(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, {"name": "x", "seed": 3, "data": {"ecg": {"fs": 250, "lowpass": None}}}))
    assert cfg.data.ecg.fs == 250 and cfg.data.ecg.lowpass is None and cfg.seed == 3
    out = tmp_path / "out.yaml"
    save_config(cfg, out)
    assert load_config(out) == cfg
    assert to_dict(load_config(out)) == to_dict(cfg)


def test_unknown_key_is_named_with_its_dotted_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, {"data": {"ecg": {"sample_rate": 100}}}))
    assert exc.value.key == "data.ecg.sample_rate"
    assert "unknown key" in str(exc.value)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"seed": "zero"}, "seed"),
        ({"seed": True}, "seed"),
        ({"data": {"cxr": {"clahe": "yes"}}}, "data.cxr.clahe"),
        ({"data": {"cxr": {"fit": "stretch"}}}, "data.cxr.fit"),
        ({"data": {"ecg": {"seconds": [1]}}}, "data.ecg.seconds"),
        ({"data": {"report": {"sections": ["findings", 3]}}}, "data.report.sections[1]"),
        ({"data": {"cxr": 5}}, "data.cxr"),
    ],
)
def test_wrong_types_are_rejected_with_the_key(tmp_path: Path, data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, data))
    assert exc.value.key == key


def test_value_checks_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.ecg\.lowpass"):
        load_config(None, ["data.ecg.fs=100", "data.ecg.lowpass=60"])
    with pytest.raises(ConfigError, match=r"data\.modalities"):
        load_config(None, ["data.modalities=[cxr, mri]"])
    with pytest.raises(ConfigError, match=r"data\.cxr\.size"):
        load_config(None, ["data.cxr.size=0"])


def test_int_accepted_where_float_expected_and_overrides_parse_yaml() -> None:
    cfg = load_config(None, ["data.ecg.seconds=5", "data.ecg.highpass=null", "name=run a"])
    assert cfg.data.ecg.seconds == 5.0 and isinstance(cfg.data.ecg.seconds, float)
    assert cfg.data.ecg.highpass is None and cfg.name == "run a"
    assert load_config(None) == Config()


def test_bad_files_and_overrides(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(None, ["seed"])
    with pytest.raises(ConfigError, match="is a value"):
        load_config(None, ["seed=1", "seed.x=1"])
