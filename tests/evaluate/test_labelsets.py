"""Label sets: the YAML format, its checks, and the built-in sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtriad.data.text import split_combined
from medtriad.errors import DataError
from medtriad.evaluate.labelsets import (
    BUILTIN,
    builtin_label_set,
    load_label_set,
    resolve_label_set,
)

GOOD = """
name: my_findings
modalities: [cxr]
text: radiology
scoring: pos_neg
templates: ["{}.", "Impression: {}."]
classes:
  Pleural Effusion:
    positive: [pleural effusion, small left pleural effusion]
    negative: [no pleural effusion]
  heart:
    column: cardiomegaly
    positive: [cardiomegaly]
    negative: [heart size is normal]
"""


def test_user_yaml_loads_and_expands_templates(tmp_path: Path) -> None:
    p = tmp_path / "set.yaml"
    p.write_text(GOOD)
    ls = resolve_label_set(p)
    assert ls.name == "my_findings" and ls.modalities == ("cxr",)
    assert ls.columns == ["pleural_effusion", "cardiomegaly"]
    pos, neg = ls.prompts("Pleural Effusion")
    assert len(pos) == 4 and len(neg) == 2  # templates x descriptions
    assert all(t.startswith("[RAD] ") for t in pos + neg)
    assert split_combined(pos[1])[0] == "small left pleural effusion."
    assert split_combined(pos[2]) == ("Impression: pleural effusion.", None)


def test_cardiology_prompts_are_wrapped_as_ecg_statements() -> None:
    ls = builtin_label_set("cpsc2018")
    pos, neg = ls.prompts("AF")
    assert pos == ["[ECG] Atrial fibrillation."] and neg == []
    radiology, cardiology = split_combined(pos[0])
    assert radiology is None and cardiology == "Atrial fibrillation."


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("    negative: [no pleural effusion]\n", ""), "negative"),
        (lambda t: t.replace("scoring: pos_neg", "scoring: vote"), "scoring"),
        (lambda t: t.replace('"{}."', '"no placeholder"'), "template"),
        (lambda t: t.replace("modalities: [cxr]", "modalities: [mri]"), "modalities"),
        (lambda t: t + "colour: red\n", "unknown keys"),
        (lambda t: t.replace("name: my_findings\n", ""), "name"),
        (lambda t: "classes: [\n", "YAML"),
    ],
)
def test_bad_label_sets_name_the_file_and_problem(tmp_path: Path, edit, message: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(edit(GOOD))
    with pytest.raises(DataError, match=message) as info:
        load_label_set(p)
    assert info.value.path == str(p)


def test_missing_file_and_unknown_name_raise() -> None:
    with pytest.raises(DataError, match="not found"):
        resolve_label_set("/nonexistent/set.yaml")
    with pytest.raises(DataError, match="unknown label set"):
        builtin_label_set("imagenet")


def test_builtin_sets_load_with_their_documented_classes() -> None:
    sets = {name: builtin_label_set(name) for name in BUILTIN}
    assert len(sets["chexpert14"].classes) == 14
    assert sets["chexpert5x200"].class_names == [
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Pleural Effusion",
    ]
    assert sets["mimic_edema"].columns == [f"edema_severity_{i}" for i in range(4)]
    assert sets["ptbxl_super"].class_names == ["NORM", "MI", "STTC", "CD", "HYP"]
    assert len(sets["cpsc2018"].classes) == 9
    for ls in sets.values():
        for cls in ls.class_names:
            pos, neg = ls.prompts(cls)
            assert pos and (neg or ls.scoring == "softmax")


def test_demo_sets_use_the_report_style_prompts() -> None:
    from medtriad.data.synthetic.reports import class_prompts

    prompts = class_prompts()
    cxr, ecg = builtin_label_set("demo_cxr"), builtin_label_set("demo_ecg")
    assert cxr.columns == ["cardiomegaly", "effusion", "edema", "pneumothorax", "consolidation"]
    assert "afib" in ecg.columns and "st_elevation" in ecg.columns
    pos, _ = cxr.prompts("edema")
    assert [split_combined(t)[0] for t in pos] == [p for p in prompts["edema"][0]]
    assert all(split_combined(t)[1] for t in ecg.prompts("afib")[1])
