"""Zero-shot label sets: classes, the text prompts that describe them, and how they are scored.

A label set names the modalities it classifies, its classes (each with positive descriptions,
optionally negative ones, and the manifest label column holding its ground truth), templates
the descriptions are put into, how the prompt text is wrapped (the report format the model saw
in training), and a scoring rule:

* ``pos_neg``: per class, softmax over (similarity to the positive prompts, similarity to the
  negative prompts) times the logit scale; classes are independent (multi-label sets);
* ``softmax``: softmax over the classes' positive prompts (mutually exclusive classes, e.g.
  rhythms); each class is still evaluated one-vs-rest.

A user's label set is a YAML file::

    name: my_findings
    modalities: [cxr]            # which embeddings are classified (cxr, ecg, report)
    text: radiology              # prompts wrapped as "[RAD] ..." (radiology) or "[ECG] ..." (cardiology)
    scoring: pos_neg             # or softmax
    templates: ["{}.", "Impression: {}."]
    classes:
      cardiomegaly:
        column: cardiomegaly     # manifest column label_<column>; default: the class name in snake case
        positive: [cardiomegaly, the heart is enlarged]
        negative: [heart size is normal]     # required for pos_neg

Built-in sets (`BUILTIN`): ``chexpert14``, ``chexpert5x200``, ``mimic_edema``,
``ptbxl_super``, ``cpsc2018`` and the demo cohort's ``demo_cxr`` and ``demo_ecg``. Their label
columns are those the project's preparers write (`medtriad.data.sources`): snake-case names
(``pleural_effusion``, ``no_finding``, ``edema_severity_2``, ``norm``) and, for CPSC-2018, the
challenge abbreviations (``nsr`` for Normal, ``af``, ``iavb``, ``std``); a manifest named
differently maps them with a YAML set of its own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medtriad.data.text import combine_report, join_statements
from medtriad.errors import DataError

__all__ = [
    "BUILTIN",
    "SCORINGS",
    "TEXT_FORMATS",
    "ClassPrompts",
    "LabelSet",
    "builtin_label_set",
    "labelset_from_dict",
    "load_label_set",
    "resolve_label_set",
    "snake",
]

SCORINGS: tuple[str, ...] = ("pos_neg", "softmax")
TEXT_FORMATS: tuple[str, ...] = ("radiology", "cardiology")
_MODALITIES = ("cxr", "ecg", "report")


def snake(name: str) -> str:
    """``"Pleural Effusion"`` -> ``"pleural_effusion"``, ``"I-AVB"`` -> ``"i_avb"``."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


@dataclass(frozen=True)
class ClassPrompts:
    """Descriptions of one class's presence and absence, and its manifest label column."""

    column: str
    positive: tuple[str, ...]
    negative: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelSet:
    """A zero-shot task: classes with prompts, the modalities it applies to, how it is scored."""

    name: str
    modalities: tuple[str, ...]
    classes: Mapping[str, ClassPrompts]
    templates: tuple[str, ...] = ("{}",)
    text: str = "radiology"
    scoring: str = "pos_neg"
    description: str = ""
    source: str = field(default="builtin", compare=False)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    @property
    def columns(self) -> list[str]:
        """Manifest label names (without ``label_``) in class order."""
        return [c.column for c in self.classes.values()]

    def wrap(self, sentence: str) -> str:
        """A prompt sentence in the report format of this set's text (see `combine_report`)."""
        if self.text == "cardiology":
            return combine_report(None, join_statements([sentence]))
        return combine_report(sentence, None)

    def prompts(self, cls: str) -> tuple[list[str], list[str]]:
        """(positive texts, negative texts) of a class: every template x description, wrapped."""
        c = self.classes[cls]

        def expand(descriptions: Sequence[str]) -> list[str]:
            texts = [self.wrap(t.format(d)) for t in self.templates for d in descriptions]
            return list(dict.fromkeys(t for t in texts if t))

        return expand(c.positive), expand(c.negative)


def _fail(source: str | os.PathLike[str] | None, reason: str) -> DataError:
    return DataError(source, f"label set: {reason}")


def _strings(value: Any, where: str, source: Any, allow_empty: bool = False) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if value is None:
        value = []
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, str) and v.strip() for v in value
    ):
        raise _fail(source, f"{where} must be a list of non-empty strings, got {value!r}")
    if not value and not allow_empty:
        raise _fail(source, f"{where} is empty")
    return tuple(v.strip() for v in value)


def labelset_from_dict(
    data: Mapping[str, Any], source: str | os.PathLike[str] | None = None
) -> LabelSet:
    """Build and check a label set from its mapping form (the YAML layout in the module doc)."""
    if not isinstance(data, Mapping):
        raise _fail(source, f"expected a mapping, got {type(data).__name__}")
    known = {
        "name",
        "modalities",
        "modality",
        "classes",
        "templates",
        "text",
        "scoring",
        "description",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise _fail(source, f"unknown keys {unknown}; known: {sorted(known)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail(source, "needs a 'name'")
    mods = _strings(data.get("modalities", data.get("modality")), "modalities", source)
    bad = [m for m in mods if m not in _MODALITIES]
    if bad:
        raise _fail(source, f"unknown modalities {bad}; known: {list(_MODALITIES)}")
    scoring = data.get("scoring", "pos_neg")
    if scoring not in SCORINGS:
        raise _fail(source, f"scoring must be one of {list(SCORINGS)}, got {scoring!r}")
    text = data.get("text", "radiology")
    if text not in TEXT_FORMATS:
        raise _fail(source, f"text must be one of {list(TEXT_FORMATS)}, got {text!r}")
    templates = _strings(data.get("templates", ["{}"]), "templates", source)
    for t in templates:
        if t.count("{}") != 1:
            raise _fail(source, f"template {t!r} must hold exactly one '{{}}'")
    raw = data.get("classes")
    if not isinstance(raw, Mapping) or not raw:
        raise _fail(source, "needs a non-empty 'classes' mapping")
    classes: dict[str, ClassPrompts] = {}
    for cls, spec in raw.items():
        where = f"classes.{cls}"
        if not isinstance(spec, Mapping):
            raise _fail(
                source, f"{where} must be a mapping with 'positive' (and 'negative') prompts"
            )
        extra = sorted(set(spec) - {"column", "positive", "negative"})
        if extra:
            raise _fail(source, f"{where}: unknown keys {extra}")
        pos = _strings(spec.get("positive"), f"{where}.positive", source)
        neg = _strings(
            spec.get("negative"), f"{where}.negative", source, allow_empty=scoring == "softmax"
        )
        column = spec.get("column", snake(str(cls)))
        if not isinstance(column, str) or not column:
            raise _fail(source, f"{where}.column must be a non-empty string")
        classes[str(cls)] = ClassPrompts(column=column, positive=pos, negative=neg)
    if scoring == "softmax" and len(classes) < 2:
        raise _fail(source, "softmax scoring needs at least two classes")
    return LabelSet(
        name=name.strip(),
        modalities=mods,
        classes=classes,
        templates=templates,
        text=text,
        scoring=scoring,
        description=str(data.get("description", "")),
        source=str(source) if source is not None else "builtin",
    )


def load_label_set(path: str | os.PathLike[str]) -> LabelSet:
    """Read a label set from a YAML file (raises DataError naming the file and the problem)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "label set file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise DataError(p, f"not valid YAML: {exc}") from exc
    return labelset_from_dict(data, p)


# --------------------------------------------------------------------------- built-in sets

_CHEXPERT: dict[str, tuple[list[str], list[str]]] = {
    "Atelectasis": (
        [
            "atelectasis",
            "bibasilar atelectasis",
            "subsegmental atelectasis at the lung bases",
            "linear atelectasis",
        ],
        ["no atelectasis", "the lungs are well expanded"],
    ),
    "Cardiomegaly": (
        ["cardiomegaly", "the heart is enlarged", "moderate enlargement of the cardiac silhouette"],
        ["heart size is normal", "no cardiomegaly"],
    ),
    "Consolidation": (
        ["consolidation", "focal consolidation in the lower lobe", "airspace consolidation"],
        ["no focal consolidation", "the lungs are clear"],
    ),
    "Edema": (
        ["pulmonary edema", "interstitial edema", "pulmonary vascular congestion with edema"],
        ["no pulmonary edema", "no vascular congestion"],
    ),
    "Enlarged Cardiomediastinum": (
        ["the cardiomediastinal silhouette is enlarged", "widened mediastinum"],
        ["the cardiomediastinal silhouette is normal", "normal mediastinal contours"],
    ),
    "Fracture": (
        ["rib fracture", "acute fracture", "healed rib fractures"],
        ["no acute fracture", "the osseous structures are intact"],
    ),
    "Lung Lesion": (
        ["pulmonary nodule", "lung mass", "a nodular lesion in the lung"],
        ["no pulmonary nodules or masses"],
    ),
    "Lung Opacity": (
        ["lung opacity", "patchy opacities in the lung", "increased opacity at the lung base"],
        ["no focal opacity", "the lungs are clear"],
    ),
    "No Finding": (
        ["no acute cardiopulmonary process", "normal chest radiograph"],
        ["acute cardiopulmonary abnormality", "abnormal chest radiograph"],
    ),
    "Pleural Effusion": (
        ["pleural effusion", "small left pleural effusion", "bilateral pleural effusions"],
        ["no pleural effusion", "the costophrenic angles are sharp"],
    ),
    "Pleural Other": (
        ["pleural thickening", "pleural scarring", "calcified pleural plaques"],
        ["no pleural thickening", "no pleural abnormality"],
    ),
    "Pneumonia": (
        ["pneumonia", "opacity concerning for pneumonia", "infectious process in the lung"],
        ["no evidence of pneumonia"],
    ),
    "Pneumothorax": (
        ["pneumothorax", "small apical pneumothorax", "large right pneumothorax"],
        ["no pneumothorax"],
    ),
    "Support Devices": (
        [
            "endotracheal tube in place",
            "central venous catheter in place",
            "support devices are in place",
            "pacemaker leads",
        ],
        ["no support devices", "no lines or tubes"],
    ),
}
_CHEXPERT5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
_CXR_TEMPLATES = ["{}.", "Impression: {}."]

_EDEMA_SEVERITY: dict[str, list[str]] = {
    "0 none": ["no pulmonary edema", "no vascular congestion", "the lungs are clear"],
    "1 vascular congestion": [
        "mild pulmonary vascular congestion",
        "pulmonary vascular engorgement without frank edema",
    ],
    "2 interstitial edema": [
        "interstitial pulmonary edema",
        "mild interstitial edema with Kerley B lines",
        "moderate pulmonary edema",
    ],
    "3 alveolar edema": [
        "severe alveolar pulmonary edema",
        "diffuse bilateral alveolar opacities consistent with severe pulmonary edema",
    ],
}

_PTBXL: dict[str, list[str]] = {
    "NORM": ["Normal ECG", "Sinus rhythm, normal ECG"],
    "MI": [
        "Myocardial infarction",
        "Old inferior infarct",
        "Anterior myocardial infarction",
        "Q waves consistent with prior infarction",
    ],
    "STTC": [
        "ST-T changes",
        "Nonspecific ST-T wave abnormality",
        "ST depression",
        "T wave inversion",
    ],
    "CD": [
        "Conduction disturbance",
        "Right bundle branch block",
        "Left bundle branch block",
        "First degree AV block",
        "Left anterior fascicular block",
    ],
    "HYP": [
        "Left ventricular hypertrophy",
        "Right ventricular hypertrophy",
        "Left atrial enlargement",
    ],
}

_CPSC: dict[str, tuple[str, list[str]]] = {
    "Normal": ("nsr", ["Sinus rhythm", "Normal ECG"]),
    "AF": ("af", ["Atrial fibrillation"]),
    "I-AVB": ("iavb", ["First degree AV block", "Sinus rhythm with 1st degree AV block"]),
    "LBBB": ("lbbb", ["Left bundle branch block"]),
    "RBBB": ("rbbb", ["Right bundle branch block"]),
    "PAC": (
        "pac",
        ["Premature atrial contractions", "Sinus rhythm with premature atrial complexes"],
    ),
    "PVC": ("pvc", ["Premature ventricular contractions", "Ventricular premature complexes"]),
    "STD": ("std", ["ST depression", "ST segment depression"]),
    "STE": ("ste", ["ST elevation", "ST segment elevation"]),
}


def _chexpert14() -> dict[str, Any]:
    return {
        "name": "chexpert14",
        "description": "CheXpert's 14 observations, each present vs absent",
        "modalities": ["cxr"],
        "text": "radiology",
        "scoring": "pos_neg",
        "templates": _CXR_TEMPLATES,
        "classes": {c: {"positive": p, "negative": n} for c, (p, n) in _CHEXPERT.items()},
    }


def _chexpert5x200() -> dict[str, Any]:
    return {
        "name": "chexpert5x200",
        "description": "CheXpert 5x200: one of five mutually exclusive findings per image",
        "modalities": ["cxr"],
        "text": "radiology",
        "scoring": "softmax",
        "templates": _CXR_TEMPLATES,
        "classes": {c: {"positive": _CHEXPERT[c][0]} for c in _CHEXPERT5},
    }


def _mimic_edema() -> dict[str, Any]:
    return {
        "name": "mimic_edema",
        "description": "MIMIC-CXR pulmonary edema severity 0-3 (columns edema_severity_0..3)",
        "modalities": ["cxr"],
        "text": "radiology",
        "scoring": "softmax",
        "templates": _CXR_TEMPLATES,
        "classes": {
            c: {"positive": p, "column": f"edema_severity_{c[0]}"}
            for c, p in _EDEMA_SEVERITY.items()
        },
    }


def _ptbxl_super() -> dict[str, Any]:
    return {
        "name": "ptbxl_super",
        "description": "PTB-XL diagnostic superclasses",
        "modalities": ["ecg"],
        "text": "cardiology",
        "scoring": "softmax",
        "templates": ["{}"],
        "classes": {c: {"positive": p} for c, p in _PTBXL.items()},
    }


def _cpsc2018() -> dict[str, Any]:
    return {
        "name": "cpsc2018",
        "description": "CPSC-2018 rhythm and morphology classes",
        "modalities": ["ecg"],
        "text": "cardiology",
        "scoring": "softmax",
        "templates": ["{}"],
        "classes": {c: {"positive": p, "column": col} for c, (col, p) in _CPSC.items()},
    }


def _demo(modality: str) -> dict[str, Any]:
    from medtriad.data.synthetic.reports import class_prompts
    from medtriad.data.synthetic.state import CXR_FINDINGS, ECG_FINDINGS, ECG_RHYTHMS

    prompts = class_prompts()
    names = CXR_FINDINGS if modality == "cxr" else (*ECG_RHYTHMS, *ECG_FINDINGS)
    return {
        "name": f"demo_{modality}",
        "description": "the demo cohort's "
        + ("X-ray findings" if modality == "cxr" else "ECG rhythms and findings"),
        "modalities": [modality],
        "text": "radiology" if modality == "cxr" else "cardiology",
        "scoring": "pos_neg",
        "templates": ["{}"],
        "classes": {
            n: {"positive": prompts[n][0], "negative": prompts[n][1], "column": n} for n in names
        },
    }


BUILTIN: dict[str, Callable[[], dict[str, Any]]] = {
    "chexpert14": _chexpert14,
    "chexpert5x200": _chexpert5x200,
    "mimic_edema": _mimic_edema,
    "ptbxl_super": _ptbxl_super,
    "cpsc2018": _cpsc2018,
    "demo_cxr": lambda: _demo("cxr"),
    "demo_ecg": lambda: _demo("ecg"),
}
"""Built-in label set name -> a function returning its mapping form."""


def builtin_label_set(name: str) -> LabelSet:
    """A built-in label set by name (see `BUILTIN`)."""
    if name not in BUILTIN:
        raise DataError(
            None, f"unknown label set {name!r}; built-in: {sorted(BUILTIN)} (or give a YAML file)"
        )
    return labelset_from_dict(BUILTIN[name]())


def resolve_label_set(spec: str | os.PathLike[str] | LabelSet) -> LabelSet:
    """A label set from a built-in name, a YAML path, or a `LabelSet` (returned unchanged)."""
    if isinstance(spec, LabelSet):
        return spec
    if str(spec) in BUILTIN:
        return builtin_label_set(str(spec))
    return load_label_set(spec)
