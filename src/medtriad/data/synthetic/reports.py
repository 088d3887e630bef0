"""Report writer of the demo cohort: a radiology report and ECG machine statements per state.

The text is written from the same `PatientState` that drives the X-ray phantom and the ECG
simulator, so it names exactly the findings the other modalities show. It is deliberately
hard to read by counting words:

* every finding has several phrasings (different words and word order), and the same words
  appear in positive and negative sentences ("small right pleural effusion" /
  "no pleural effusion"); normal reports negate a random subset of the absent findings;
* positive findings at low severity (``state.severity < HEDGE_BELOW``) are sometimes hedged
  ("possible small effusion", "cannot exclude early consolidation"). A hedged finding is
  still present: its label stays 1. High-severity findings and absent findings are never
  hedged;
* side, zone and size words follow the state (left/right/bilateral, upper/middle/lower zone,
  small/moderate/large by severity).

Randomness comes from the caller's generator only, so a report is fixed by the generator state.
`class_prompts` turns the same phrase banks into positive/negative sentences per label for
zero-shot classification.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from medtriad.data.synthetic.state import (
    CXR_FINDINGS,
    ECG_RHYTHMS,
    SIDES,
    ZONES,
    PatientState,
)
from medtriad.errors import DataError

__all__ = [
    "ECG_STATEMENTS",
    "FINDING_PHRASES",
    "HEDGE_BELOW",
    "ST_TERRITORY_LEADS",
    "PhraseBank",
    "class_prompts",
    "st_territory",
    "write_cardiology_statements",
    "write_radiology_report",
]

HEDGE_BELOW = 0.6
"""Only findings with severity below this may be hedged (and they stay positive)."""
_HEDGE_P = 0.4
"""Chance that a present, low-severity finding is written with a hedge."""
_MENTION_P = {
    "cardiomegaly": 0.85,
    "edema": 0.5,
    "effusion": 0.65,
    "pneumothorax": 0.65,
    "consolidation": 0.65,
}
"""Chance that an absent finding is explicitly negated in the findings section."""


@dataclass(frozen=True)
class PhraseBank:
    """Sentence templates for one chest X-ray finding.

    Fields in braces are filled from the state: ``{deg}``/``{adv}`` (degree adjective/adverb),
    ``{size}``, ``{ext}`` (extent), ``{side}``, ``{zone}``. `summary` phrases are the
    impression's form of a present finding.
    """

    positive: tuple[str, ...]
    hedged: tuple[str, ...]
    negative: tuple[str, ...]
    summary: tuple[str, ...]
    hedged_summary: tuple[str, ...]
    noun: str  # the finding as a noun phrase inside a grouped negation ("No x, y or z.")


FINDING_PHRASES: dict[str, PhraseBank] = {
    "cardiomegaly": PhraseBank(
        positive=(
            "{deg} cardiomegaly.",
            "The heart is {adv} enlarged.",
            "There is {deg} enlargement of the cardiac silhouette.",
            "The cardiac silhouette is {adv} enlarged.",
            "Heart size is {adv} enlarged.",
        ),
        hedged=(
            "Possible mild cardiomegaly.",
            "The heart is likely mildly enlarged.",
            "Mild cardiomegaly cannot be excluded.",
            "Heart size is at the upper limits of normal to possibly mildly enlarged.",
        ),
        negative=(
            "The heart is not enlarged.",
            "Heart size is normal.",
            "No cardiomegaly.",
            "The cardiac silhouette is within normal limits.",
            "There is no cardiomegaly.",
            "The heart is normal in size.",
            "The cardiomediastinal silhouette is normal.",
        ),
        summary=(
            "{deg} cardiomegaly.",
            "{deg} enlargement of the cardiac silhouette.",
            "Cardiomegaly, {deg}.",
        ),
        hedged_summary=("Possible mild cardiomegaly.", "Likely mild cardiomegaly."),
        noun="cardiomegaly",
    ),
    "edema": PhraseBank(
        positive=(
            "{deg} pulmonary edema.",
            "There is {deg} pulmonary edema.",
            "Pulmonary vascular congestion with {deg} interstitial edema.",
            "{deg} interstitial pulmonary edema with perihilar haziness.",
            "Indistinct pulmonary vessels, in keeping with {deg} pulmonary edema.",
        ),
        hedged=(
            "Likely mild interstitial edema.",
            "Possible mild pulmonary vascular congestion.",
            "Mild pulmonary edema cannot be excluded.",
            "Subtle indistinctness of the pulmonary vessels may represent mild edema.",
        ),
        negative=(
            "No pulmonary edema.",
            "There is no pulmonary edema.",
            "No pulmonary vascular congestion.",
            "Pulmonary vasculature is normal.",
            "There is no evidence of pulmonary edema.",
            "Pulmonary vascularity is within normal limits.",
        ),
        summary=("{deg} pulmonary edema.", "{deg} interstitial edema.", "Pulmonary edema, {deg}."),
        hedged_summary=("Possible mild pulmonary edema.", "Likely mild interstitial edema."),
        noun="pulmonary edema",
    ),
    "effusion": PhraseBank(
        positive=(
            "{size} {side} pleural effusion.",
            "There is a {size} {side} pleural effusion.",
            "A {size} pleural effusion is present on the {side}.",
            "Blunting of the {side} costophrenic angle, consistent with a {size} pleural effusion.",
            "{size} {side}-sided pleural effusion with adjacent atelectasis.",
        ),
        hedged=(
            "Possible {size} {side} pleural effusion.",
            "A {size} {side} pleural effusion cannot be excluded.",
            "Minimal blunting of the {side} costophrenic angle may represent a {size} effusion.",
            "Likely {size} {side} pleural effusion.",
        ),
        negative=(
            "No pleural effusion.",
            "There is no pleural effusion.",
            "No pleural effusions.",
            "The costophrenic angles are sharp.",
            "The pleural spaces are free of effusion.",
            "A pleural effusion is not seen.",
        ),
        summary=(
            "{size} {side} pleural effusion.",
            "{size} {side} effusion.",
            "{side} pleural effusion, {size}.",
        ),
        hedged_summary=("Possible {size} {side} pleural effusion.",),
        noun="pleural effusion",
    ),
    "pneumothorax": PhraseBank(
        positive=(
            "{size} {side} pneumothorax.",
            "There is a {size} {side} apical pneumothorax.",
            "A {size} {side}-sided pneumothorax is present.",
            "{size} {side} pneumothorax with a visible visceral pleural line.",
            (
                "A visceral pleural line is seen in the {side} hemithorax, consistent with a "
                "{size} pneumothorax."
            ),
        ),
        hedged=(
            "Possible {size} {side} apical pneumothorax.",
            "A {size} {side} apical pneumothorax cannot be excluded.",
            "Questionable thin pleural line at the {side} apex, possibly a {size} pneumothorax.",
            "Likely {size} {side} apical pneumothorax.",
        ),
        negative=(
            "No pneumothorax.",
            "There is no pneumothorax.",
            "No pneumothorax is seen.",
            "No evidence of pneumothorax.",
            "Negative for pneumothorax.",
            "A pneumothorax is not identified.",
        ),
        summary=(
            "{size} {side} pneumothorax.",
            "{size} {side}-sided pneumothorax.",
            "{side} pneumothorax, {size}.",
        ),
        hedged_summary=(
            "Possible {size} {side} apical pneumothorax.",
            "Cannot exclude a {size} {side} apical pneumothorax.",
        ),
        noun="pneumothorax",
    ),
    "consolidation": PhraseBank(
        positive=(
            "{ext} consolidation in the {side} {zone} zone.",
            (
                "There is {ext} airspace consolidation in the {side} {zone} zone, concerning "
                "for pneumonia."
            ),
            "{side} {zone} zone consolidation.",
            "{ext} opacity in the {side} {zone} zone, consistent with consolidation.",
            "The {side} {zone} zone shows {ext} consolidation.",
        ),
        hedged=(
            "Cannot exclude early consolidation in the {side} {zone} zone.",
            "Subtle opacity in the {side} {zone} zone may represent early consolidation.",
            "Possible early consolidation in the {side} {zone} zone.",
            "{ext} {side} {zone} zone opacity, likely early pneumonia.",
        ),
        negative=(
            "No focal consolidation.",
            "There is no focal airspace consolidation.",
            "No consolidation to suggest pneumonia.",
            "No focal consolidation is seen.",
            "The lungs are free of focal consolidation.",
        ),
        summary=(
            "{side} {zone} zone consolidation, concerning for pneumonia.",
            "{ext} {side} {zone} zone consolidation.",
            (
                "Consolidation in the {side} {zone} zone, compatible with pneumonia in the "
                "appropriate clinical setting."
            ),
        ),
        hedged_summary=(
            "Possible early consolidation in the {side} {zone} zone.",
            "Cannot exclude early pneumonia in the {side} {zone} zone.",
        ),
        noun="focal consolidation",
    ),
}
"""Chest X-ray finding -> its phrase bank (templates, see `PhraseBank`)."""

_BILATERAL_EFFUSION = PhraseBank(
    positive=(
        "{size} bilateral pleural effusions.",
        "There are {size} bilateral pleural effusions.",
        "{size} pleural effusions are present bilaterally.",
        "Blunting of both costophrenic angles, consistent with {size} bilateral effusions.",
        "{size} bilateral pleural effusions with adjacent atelectasis.",
    ),
    hedged=(
        "Possible {size} bilateral pleural effusions.",
        "{size} bilateral pleural effusions cannot be excluded.",
        "Minimal blunting of both costophrenic angles may represent {size} effusions.",
        "Likely {size} bilateral pleural effusions.",
    ),
    negative=FINDING_PHRASES["effusion"].negative,
    summary=("{size} bilateral pleural effusions.", "Bilateral pleural effusions, {size}."),
    hedged_summary=("Possible {size} bilateral pleural effusions.",),
    noun="pleural effusions",
)

_HF_FINDINGS = (
    "The heart is {adv} enlarged, with {edeg} pulmonary edema.",
    "Cardiomegaly with pulmonary vascular congestion and {edeg} interstitial edema.",
    "{deg} cardiomegaly and {edeg} pulmonary edema.",
)
"""Findings sentence for cardiomegaly and oedema together (both present, neither hedged)."""
_HF_IMPRESSION = (
    "Cardiomegaly with {edeg} pulmonary edema{eff_and}, consistent with congestive heart failure.",
    "Findings consistent with congestive heart failure: cardiomegaly and {edeg} edema{eff_with}.",
    "{deg} cardiomegaly with pulmonary edema{eff_and}, compatible with congestive heart failure.",
)
"""Impression where cardiomegaly and oedema are both present (neither hedged)."""
_HF_EFFUSION = {"uni": "a {size} {side} pleural effusion", "bi": "{size} bilateral effusions"}

_GROUPED_NEGATIVE = (
    "No {list}.",
    "There is no {list}.",
    "No evidence of {list}.",
    "No {list} is seen.",
)
_LUNGS_CLEAR = (
    "The lungs are clear.",
    "Lungs are clear.",
    "The lungs are well expanded and clear.",
)
_MEDIASTINUM = (
    "The mediastinal and hilar contours are normal.",
    "Mediastinal contours are unremarkable.",
    "The hilar contours are within normal limits.",
)
_BONES = (
    "No acute osseous abnormality.",
    "The visualized osseous structures are intact.",
    "Osseous structures are unremarkable.",
)
_NORMAL_IMPRESSION = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "No acute intrathoracic process.",
    "Normal chest radiograph.",
)
_EXAMINATION = (
    "EXAMINATION: Chest radiograph, PA view.",
    "EXAMINATION: CHEST (PA)",
    "EXAMINATION: PA chest radiograph.",
)
_SYMPTOMS = (
    "shortness of breath",
    "chest pain",
    "cough",
    "fever",
    "dyspnea on exertion",
    "fatigue",
    "palpitations",
)
_COMPARISON = ("COMPARISON: None.", "COMPARISON: No prior studies available.")

_DEGREE = ("mild", "moderate", "marked")
_ADVERB = ("mildly", "moderately", "markedly")
_EDEMA_DEGREE = ("mild", "moderate", "severe")
_SIZE = ("small", "moderate", "large")
_EXTENT = ("patchy", "focal", "dense")
_ANATOMIC_RANK = {
    "cardiomegaly": 0,
    "edema": 2,
    "consolidation": 3,
    "effusion": 4,
    "pneumothorax": 5,
}
_IMPRESSION_ORDER = ("pneumothorax", "consolidation", "effusion", "edema", "cardiomegaly")

# --- ECG ------------------------------------------------------------------------------------
ST_TERRITORY_LEADS: dict[str, tuple[str, ...]] = {
    "inferior": ("II", "III", "aVF"),
    "anterior": ("V1", "V2", "V3", "V4"),
    "lateral": ("I", "aVL", "V5", "V6"),
}
"""ST-elevation territory -> the leads that show it."""

ECG_STATEMENTS: dict[str, tuple[str, ...]] = {
    "sinus": ("Sinus rhythm", "Normal sinus rhythm"),
    "sinus_tachycardia": ("Sinus tachycardia",),
    "sinus_bradycardia": ("Sinus bradycardia", "Marked sinus bradycardia"),
    "afib": (
        "Atrial fibrillation",
        "Atrial fibrillation with rapid ventricular response",
        "Atrial fibrillation with controlled ventricular response",
    ),
    "rbbb": (
        "Right bundle branch block",
        "Complete right bundle branch block",
        "Right bundle branch block with secondary repolarization abnormality",
    ),
    "lbbb": (
        "Left bundle branch block",
        "Complete left bundle branch block",
        "Left bundle branch block with secondary repolarization abnormality",
    ),
    "st_elevation": (
        "ST elevation, consider {territory} injury",
        "ST elevation, consider {territory} injury or acute infarct",
        "{territory} ST elevation, consider acute infarct",
        "ST elevation in leads {leads}, consistent with {territory} injury",
    ),
    "low_voltage": (
        "Low QRS voltages in limb leads",
        "Low voltage QRS",
        "Generalized low QRS voltages",
    ),
}
"""Statement templates: rhythm name, bundle branch block type, or ECG finding -> phrasings."""

_ECG_EXTRA = (
    "Nonspecific T wave abnormality",
    "Prolonged QT interval",
    "Possible left atrial abnormality",
    "Nonspecific ST-T wave changes",
)
"""Incidental statements (no label) that may join an already abnormal tracing."""

_ECG_NEGATIVE_PROMPTS: dict[str, tuple[str, ...]] = {
    "sinus": (
        "Atrial fibrillation",
        "Sinus tachycardia",
        "Sinus bradycardia",
        "Irregular rhythm, no sinus rhythm",
    ),
    "sinus_tachycardia": (
        "Sinus rhythm",
        "Sinus bradycardia",
        "Atrial fibrillation",
        "Normal heart rate, no tachycardia",
    ),
    "sinus_bradycardia": (
        "Sinus rhythm",
        "Sinus tachycardia",
        "Atrial fibrillation",
        "Normal heart rate, no bradycardia",
    ),
    "afib": (
        "Sinus rhythm",
        "Normal sinus rhythm",
        "Sinus tachycardia",
        "Sinus bradycardia",
        "Regular rhythm, no atrial fibrillation",
    ),
    "bbb": (
        "Normal ECG",
        "Normal intraventricular conduction",
        "No bundle branch block",
        "Normal QRS duration",
    ),
    "st_elevation": (
        "Normal ECG",
        "No ST elevation",
        "No acute ST changes",
        "Normal ST segments",
    ),
    "low_voltage": (
        "Normal ECG",
        "Normal QRS voltages",
        "No low voltage",
        "QRS voltages within normal limits",
    ),
}
"""ECG label -> sentences for its absence (zero-shot negatives; the writer never negates)."""


class _Dice:
    """Uniform draws from the caller's generator, taken in blocks (one numpy call per text)."""

    __slots__ = ("_buf", "_i", "_rng")

    def __init__(self, rng: np.random.Generator, block: int) -> None:
        self._rng = rng
        self._buf: list[float] = rng.random(block).tolist()
        self._i = 0

    def u(self) -> float:
        if self._i == len(self._buf):
            self._buf = self._rng.random(len(self._buf)).tolist()
            self._i = 0
        v = self._buf[self._i]
        self._i += 1
        return v

    def chance(self, p: float) -> bool:
        return self.u() < p

    def pick(self, seq: Sequence[str]) -> str:
        return seq[int(self.u() * len(seq))]

    def shuffle(self, items: list) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = int(self.u() * (i + 1))
            items[i], items[j] = items[j], items[i]


def _as_rng(rng: np.random.Generator | int) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _bucket(severity: float) -> int:
    """0/1/2 for small-mild / moderate / large-marked."""
    return 0 if severity < HEDGE_BELOW else (1 if severity < 0.8 else 2)


def _check_state(state: PatientState) -> None:
    """Reject states whose fields contradict each other (the writer would describe nonsense)."""
    problems = []
    if state.rhythm not in ECG_RHYTHMS:
        problems.append(f"unknown rhythm {state.rhythm!r}")
    if state.bbb not in ("", "rbbb", "lbbb"):
        problems.append(f"unknown bundle branch block {state.bbb!r}")
    if state.effusion and state.effusion_side not in (*SIDES, "bilateral"):
        problems.append(f"effusion side {state.effusion_side!r}")
    if state.pneumothorax and state.pneumothorax_side not in SIDES:
        problems.append(f"pneumothorax side {state.pneumothorax_side!r}")
    if state.consolidation and (
        state.consolidation_side not in SIDES or state.consolidation_zone not in ZONES
    ):
        problems.append(
            f"consolidation side/zone {state.consolidation_side!r}/{state.consolidation_zone!r}"
        )
    if problems:
        raise DataError(None, f"patient state {state.sample_id!r}: " + "; ".join(problems))


def _fill(finding: str, bucket: int, side: str = "", zone: str = "") -> dict[str, str]:
    """Template fields for one present finding of severity bucket `bucket` (see `_bucket`)."""
    if finding == "cardiomegaly":
        return {"deg": _DEGREE[bucket], "adv": _ADVERB[bucket]}
    if finding == "edema":
        return {"deg": _EDEMA_DEGREE[bucket]}
    if finding == "consolidation":
        return {"ext": _EXTENT[bucket], "side": side, "zone": zone}
    return {"size": _SIZE[bucket], "side": side}  # effusion, pneumothorax


def _fields(state: PatientState, finding: str) -> dict[str, str]:
    """Template fields describing one present finding of `state`."""
    side = {
        "effusion": state.effusion_side,
        "pneumothorax": state.pneumothorax_side,
        "consolidation": state.consolidation_side,
    }.get(finding, "")
    return _fill(finding, _bucket(state.severity), side, state.consolidation_zone)


def _bank(state: PatientState, finding: str) -> PhraseBank:
    if finding == "effusion" and state.effusion_side == "bilateral":
        return _BILATERAL_EFFUSION
    return FINDING_PHRASES[finding]


def _join_nouns(nouns: list[str], d: _Dice) -> str:
    if len(nouns) == 1:
        return nouns[0]
    comma = "," if len(nouns) > 2 and d.chance(0.5) else ""
    return ", ".join(nouns[:-1]) + f"{comma} or {nouns[-1]}"


def _findings_section(
    state: PatientState, present: list[str], hedged: set[str], d: _Dice
) -> list[str]:
    """Findings sentences: one per present finding, negations for a random subset of the rest."""
    # (rank, is_positive, sentence); rank orders the findings anatomically
    parts: list[tuple[int, bool, str]] = []
    todo = list(present)
    if (
        "cardiomegaly" in todo
        and "edema" in todo
        and not hedged & {"cardiomegaly", "edema"}
        and d.chance(0.3)
    ):
        f = _fields(state, "cardiomegaly")
        parts.append(
            (0, True, _cap(d.pick(_HF_FINDINGS).format(edeg=_fields(state, "edema")["deg"], **f)))
        )
        todo = [x for x in todo if x not in ("cardiomegaly", "edema")]
    for finding in todo:
        bank = _bank(state, finding)
        templates = bank.hedged if finding in hedged else bank.positive
        parts.append(
            (
                _ANATOMIC_RANK[finding],
                True,
                _cap(d.pick(templates).format(**_fields(state, finding))),
            )
        )

    absent = [f for f in CXR_FINDINGS if f not in present]
    negated = [f for f in absent if d.chance(_MENTION_P[f])]
    clear_ok = not ({"edema", "consolidation", "pneumothorax"} & set(present))
    if clear_ok and "consolidation" in negated and d.chance(0.35):
        # "The lungs are clear" stands in for the consolidation (and oedema) negation.
        parts.append((3, False, d.pick(_LUNGS_CLEAR)))
        negated = [f for f in negated if f not in ("consolidation", "edema")]
    lung_negs = [f for f in negated if f != "cardiomegaly"]
    if len(lung_negs) >= 2 and d.chance(0.5):
        if d.chance(0.3):
            d.shuffle(lung_negs)
        nouns = [FINDING_PHRASES[f].noun for f in lung_negs]
        text = d.pick(_GROUPED_NEGATIVE).format(list=_join_nouns(nouns, d))
        parts.append((min(_ANATOMIC_RANK[f] for f in lung_negs), False, text))
        negated = [f for f in negated if f == "cardiomegaly"]
    for f in negated:
        parts.append((_ANATOMIC_RANK[f], False, d.pick(FINDING_PHRASES[f].negative)))
    if not parts:  # nothing present and nothing negated: still describe the lungs
        parts.append((3, False, d.pick(_LUNGS_CLEAR)))
    if d.chance(0.4):
        parts.append((1, False, d.pick(_MEDIASTINUM)))

    if d.chance(0.5):  # anatomical order: heart, mediastinum, lungs, pleura
        parts.sort(key=lambda p: p[0])
        sentences = [p[2] for p in parts]
    else:  # positives first, each group in random order
        pos = [p[2] for p in parts if p[1]]
        neg = [p[2] for p in parts if not p[1]]
        d.shuffle(pos)
        d.shuffle(neg)
        sentences = pos + neg
    if d.chance(0.35):
        sentences.append(d.pick(_BONES))
    return sentences


def _impression(state: PatientState, present: list[str], hedged: set[str], d: _Dice) -> list[str]:
    """Impression items: a heart-failure summary where the pattern is present, else per finding."""
    if not present:
        return [d.pick(_NORMAL_IMPRESSION)]
    items: list[str] = []
    todo = [f for f in _IMPRESSION_ORDER if f in present]
    if "cardiomegaly" in todo and "edema" in todo and not hedged & {"cardiomegaly", "edema"}:
        eff = ""
        if "effusion" in todo and "effusion" not in hedged:
            kind = "bi" if state.effusion_side == "bilateral" else "uni"
            eff = _HF_EFFUSION[kind].format(**_fields(state, "effusion"))
            todo.remove("effusion")
        text = d.pick(_HF_IMPRESSION).format(
            edeg=_fields(state, "edema")["deg"],
            eff_and=f" and {eff}" if eff else "",
            eff_with=f", with {eff}" if eff else "",
            **_fields(state, "cardiomegaly"),
        )
        items.append(_cap(text))
        todo = [f for f in todo if f not in ("cardiomegaly", "edema")]
    for f in todo:
        bank = _bank(state, f)
        templates = bank.hedged_summary if f in hedged else bank.summary
        items.append(_cap(d.pick(templates).format(**_fields(state, f))))
    if not state.pneumothorax and d.chance(0.15):
        items.append("No pneumothorax.")
    if d.chance(0.3):
        d.shuffle(items)
    return items


def write_radiology_report(state: PatientState, rng: np.random.Generator | int) -> str:
    """A PA chest radiograph report (EXAMINATION, INDICATION?, COMPARISON?, FINDINGS, IMPRESSION).

    Deterministic for a given generator state. Raises DataError for an inconsistent state.
    """
    _check_state(state)
    d = _Dice(_as_rng(rng), 48)
    present = [f for f in CXR_FINDINGS if getattr(state, f)]
    hedged = {f for f in present if state.severity < HEDGE_BELOW and d.chance(_HEDGE_P)}
    lines = [d.pick(_EXAMINATION)]
    if d.chance(0.7):
        person = "man" if state.sex == "M" else "woman"
        lines.append(f"INDICATION: {state.age}-year-old {person} with {d.pick(_SYMPTOMS)}.")
    if d.chance(0.5):
        lines.append(d.pick(_COMPARISON))
    lines.append("FINDINGS:\n" + " ".join(_findings_section(state, present, hedged, d)))
    items = _impression(state, present, hedged, d)
    if len(items) > 1 and d.chance(0.5):
        body = "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))
    else:
        body = " ".join(items)
    lines.append("IMPRESSION:\n" + body)
    return "\n\n".join(lines)


def st_territory(state: PatientState) -> str:
    """Territory of the state's ST elevation ("" when absent); the ECG simulator reads the same."""
    return state.st_territory if state.st_elevation else ""


def _rhythm_statement(state: PatientState, d: _Dice) -> str:
    names = ECG_STATEMENTS[state.rhythm]
    if state.rhythm == "sinus":
        return names[0] if d.chance(0.7) else names[1]
    if state.rhythm == "sinus_bradycardia":
        return names[1] if state.heart_rate < 45 and d.chance(0.5) else names[0]
    if state.rhythm == "afib":
        if state.heart_rate > 110 and d.chance(0.7):
            return names[1]
        if state.heart_rate <= 100 and d.chance(0.3):
            return names[2]
        return names[0]
    return names[0]


def write_cardiology_statements(state: PatientState, rng: np.random.Generator | int) -> list[str]:
    """Machine-style ECG statements: rhythm first, findings, then Normal/Borderline/Abnormal ECG.

    Borderline: sinus tachycardia or bradycardia alone. Abnormal: atrial fibrillation, a bundle
    branch block, ST elevation or low voltage. Deterministic for a given generator state.
    """
    _check_state(state)
    d = _Dice(_as_rng(rng), 16)
    out = [_rhythm_statement(state, d)]
    middle: list[str] = []
    if state.bbb:
        middle.append(d.pick(ECG_STATEMENTS[state.bbb]))
        if state.bbb == "lbbb" and d.chance(0.3):
            middle.append("Left axis deviation")
    if state.low_voltage:
        middle.append(d.pick(ECG_STATEMENTS["low_voltage"]))
    if state.st_elevation:
        territory = st_territory(state)
        text = d.pick(ECG_STATEMENTS["st_elevation"]).format(
            territory=territory, leads=", ".join(ST_TERRITORY_LEADS[territory])
        )
        middle.append(_cap(text))
    abnormal = bool(middle) or state.rhythm == "afib"
    if abnormal and d.chance(0.2):
        middle.append(d.pick(_ECG_EXTRA))
    if d.chance(0.4):
        d.shuffle(middle)
    out.extend(middle)
    if abnormal:
        out.append("Abnormal ECG")
    elif state.rhythm == "sinus":
        out.append("Normal ECG")
    else:
        out.append("Borderline ECG")
    return out


# --- zero-shot prompts ----------------------------------------------------------------------
_PROMPT_FILLS = ((0, "right", "lower"), (1, "left", "middle"), (2, "left", "upper"))
"""Representative (bucket, side, zone); template i of a bank uses fill i mod 3 (varied, not all)."""


def _fill_all(finding: str, templates: Sequence[str], start: int = 0, side: str = "") -> list[str]:
    out = []
    for i, t in enumerate(templates):
        bucket, fill_side, zone = _PROMPT_FILLS[(start + i) % len(_PROMPT_FILLS)]
        out.append(_cap(t.format(**_fill(finding, bucket, side or fill_side, zone))))
    return out


@lru_cache(maxsize=1)
def _prompts() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    out: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for f, bank in FINDING_PHRASES.items():
        pos = _fill_all(f, bank.positive) + _fill_all(f, bank.summary, 1)
        if f == "effusion":
            pos += _fill_all(f, _BILATERAL_EFFUSION.positive, 2, side="bilateral")
        out[f] = (tuple(dict.fromkeys(pos)), tuple(bank.negative))
    for r in ECG_RHYTHMS:
        out[r] = (ECG_STATEMENTS[r], _ECG_NEGATIVE_PROMPTS[r])
    out["bbb"] = (ECG_STATEMENTS["rbbb"] + ECG_STATEMENTS["lbbb"], _ECG_NEGATIVE_PROMPTS["bbb"])
    out["st_elevation"] = (
        tuple(
            _cap(t.format(territory=name, leads=", ".join(leads)))
            for t in ECG_STATEMENTS["st_elevation"]
            for name, leads in ST_TERRITORY_LEADS.items()
        ),
        _ECG_NEGATIVE_PROMPTS["st_elevation"],
    )
    out["low_voltage"] = (ECG_STATEMENTS["low_voltage"], _ECG_NEGATIVE_PROMPTS["low_voltage"])
    return out


def class_prompts() -> dict[str, tuple[list[str], list[str]]]:
    """Label name (as in `PatientState.labels()`) -> (positive sentences, negative sentences).

    Written in the style of the generated reports and statements, for zero-shot scoring of
    an embedding against "finding present" vs "finding absent" texts.
    """
    return {k: (list(pos), list(neg)) for k, (pos, neg) in _prompts().items()}
