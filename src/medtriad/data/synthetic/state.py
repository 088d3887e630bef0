"""The hidden patient state that drives every modality of the demo cohort.

One `PatientState` per study. A latent heart-failure state raises cardiomegaly, pulmonary
oedema, pleural effusion and atrial fibrillation together; the other findings are independent.
The X-ray phantom, the ECG simulator and the report writer each read the same state, so a model
can only match modalities by learning what the findings look like in each of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CXR_FINDINGS: tuple[str, ...] = ("cardiomegaly", "effusion", "edema", "pneumothorax", "consolidation")
ECG_RHYTHMS: tuple[str, ...] = ("sinus", "sinus_tachycardia", "sinus_bradycardia", "afib")
ECG_FINDINGS: tuple[str, ...] = ("bbb", "st_elevation", "low_voltage")
SIDES: tuple[str, ...] = ("left", "right")
ZONES: tuple[str, ...] = ("upper", "middle", "lower")
ST_TERRITORIES: tuple[str, ...] = ("inferior", "anterior", "lateral")


@dataclass(frozen=True)
class PatientState:
    """Everything the generators need to know about one study (all fields plain Python)."""

    sample_id: str
    subject_id: str
    age: int
    sex: str  # "M" or "F"
    heart_failure: bool
    # chest X-ray findings
    cardiomegaly: bool
    effusion: bool
    edema: bool
    pneumothorax: bool
    consolidation: bool
    effusion_side: str  # "left" | "right" | "bilateral" | "" when absent
    pneumothorax_side: str  # "left" | "right" | ""
    consolidation_side: str  # "left" | "right" | ""
    consolidation_zone: str  # "upper" | "middle" | "lower" | ""
    severity: float  # 0.4..1.0, scales how marked every present finding is
    # ECG
    rhythm: str  # one of ECG_RHYTHMS
    heart_rate: float  # mean ventricular rate, beats per minute
    bbb: str  # "" | "rbbb" | "lbbb"
    st_elevation: bool
    low_voltage: bool
    st_territory: str = ""  # one of ST_TERRITORIES when st_elevation, else ""

    def labels(self) -> dict[str, float]:
        """Binary labels (1.0 / 0.0) named as the manifest's `label_<name>` columns."""
        out = {f: float(getattr(self, f)) for f in CXR_FINDINGS}
        out.update({r: float(self.rhythm == r) for r in ECG_RHYTHMS})
        out["bbb"] = float(self.bbb != "")
        out["st_elevation"] = float(self.st_elevation)
        out["low_voltage"] = float(self.low_voltage)
        return out

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def sample_state(rng: np.random.Generator, sample_id: str, subject_id: str) -> PatientState:
    """Draw one patient state; the dependence structure is documented in the module docstring."""
    age = int(np.clip(rng.normal(62, 15), 18, 95))
    sex = "M" if rng.random() < 0.5 else "F"
    hf = bool(rng.random() < 0.30)

    def p(base: float, with_hf: float) -> bool:
        return bool(rng.random() < (with_hf if hf else base))

    cardiomegaly = p(0.12, 0.80)
    edema = p(0.06, 0.65)
    effusion = p(0.10, 0.60)
    pneumothorax = bool(rng.random() < 0.12)
    consolidation = bool(rng.random() < 0.18)
    severity = float(rng.uniform(0.4, 1.0))

    afib = p(0.08, 0.45)
    if afib:
        rhythm = "afib"
        hr = float(rng.uniform(85, 150))
    else:
        u = rng.random()
        if u < 0.15:
            rhythm, hr = "sinus_tachycardia", float(rng.uniform(105, 140))
        elif u < 0.30:
            rhythm, hr = "sinus_bradycardia", float(rng.uniform(40, 55))
        else:
            rhythm, hr = "sinus", float(rng.uniform(60, 95))
    u = rng.random()
    bbb = "rbbb" if u < 0.08 else ("lbbb" if u < 0.14 else "")
    st_elevation = bool(rng.random() < 0.10)
    territory = str(rng.choice(ST_TERRITORIES))
    low_voltage = bool(rng.random() < (0.20 if (hf and effusion) else 0.06))

    return PatientState(
        sample_id=sample_id,
        subject_id=subject_id,
        age=age,
        sex=sex,
        heart_failure=hf,
        cardiomegaly=cardiomegaly,
        effusion=effusion,
        edema=edema,
        pneumothorax=pneumothorax,
        consolidation=consolidation,
        effusion_side=(str(rng.choice(["left", "right", "bilateral"])) if effusion else ""),
        pneumothorax_side=(str(rng.choice(SIDES)) if pneumothorax else ""),
        consolidation_side=(str(rng.choice(SIDES)) if consolidation else ""),
        consolidation_zone=(str(rng.choice(ZONES)) if consolidation else ""),
        severity=severity,
        rhythm=rhythm,
        heart_rate=hr,
        bbb=bbb,
        st_elevation=st_elevation,
        st_territory=territory if st_elevation else "",
        low_voltage=low_voltage,
    )
