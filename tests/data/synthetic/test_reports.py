"""Report writer of the demo cohort: determinism, variety, negations and hedges that a reader
must parse (not count), side/size words that follow the state, ECG statements, prompts."""

from __future__ import annotations

import dataclasses
import re
import time

import numpy as np
import pytest

from medtriad.data.synthetic.reports import (
    HEDGE_BELOW,
    ST_TERRITORY_LEADS,
    class_prompts,
    st_territory,
    write_cardiology_statements,
    write_radiology_report,
)
from medtriad.data.synthetic.state import CXR_FINDINGS, PatientState, sample_state
from medtriad.errors import DataError

# --- a small rule-based reader, independent of the writer's templates -----------------------
KEYWORDS = {
    "cardiomegaly": re.compile(r"\b(cardiomegaly|enlarged|enlargement)\b", re.IGNORECASE),
    "effusion": re.compile(r"\beffusions?\b", re.IGNORECASE),
    "edema": re.compile(r"\b(edema|congestion)\b", re.IGNORECASE),
    "pneumothorax": re.compile(r"\bpneumothorax\b", re.IGNORECASE),
    "consolidation": re.compile(r"\b(consolidation|pneumonia)\b", re.IGNORECASE),
}
PRE_NEG = re.compile(r"\b(no|not|without|negative for|free of)\b", re.IGNORECASE)
POST_NEG = re.compile(r"\b(is|are) (not (seen|identified|present)|absent)\b", re.IGNORECASE)
HEDGE = re.compile(
    r"\b(possible|possibly|likely|cannot|may represent|questionable)\b", re.IGNORECASE
)
SIZE_WORDS = ("small", "moderate", "large")


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=\.)\s+|\n+", text) if s.strip()]


def positive_sentences(text: str, finding: str) -> list[str]:
    """Sentences asserting `finding`: a keyword with no negation cue before it."""
    out = []
    for s in sentences(text):
        if POST_NEG.search(s):
            continue
        if any(not PRE_NEG.search(s[: m.start()]) for m in KEYWORDS[finding].finditer(s)):
            out.append(s)
    return out


def findings_section(report: str) -> str:
    return report.split("FINDINGS:", 1)[1].split("IMPRESSION:", 1)[0]


def size_word(severity: float) -> str:
    return SIZE_WORDS[0 if severity < 0.6 else (1 if severity < 0.8 else 2)]


def make_states(n: int, seed: int) -> list[PatientState]:
    rng = np.random.default_rng(seed)
    return [sample_state(rng, f"s{i:05d}", f"p{i:05d}") for i in range(n)]


@pytest.fixture(scope="module")
def corpus() -> tuple[list[PatientState], list[str]]:
    states = make_states(600, seed=7)
    rng = np.random.default_rng(11)
    return states, [write_radiology_report(s, rng) for s in states]


# --- determinism ----------------------------------------------------------------------------
def test_same_generator_state_gives_same_texts() -> None:
    states = make_states(40, seed=3)

    def run(seed: int) -> list[object]:
        rng = np.random.default_rng(seed)
        return [
            (write_radiology_report(s, rng), write_cardiology_statements(s, rng)) for s in states
        ]

    assert run(5) == run(5)
    assert run(5) != run(6)
    assert write_radiology_report(states[0], 9) == write_radiology_report(
        states[0], np.random.default_rng(9)
    )


def test_report_has_findings_and_impression_sections(corpus) -> None:
    _, reports = corpus
    for r in reports:
        assert r.index("FINDINGS:") < r.index("IMPRESSION:")
        assert findings_section(r).strip() and r.split("IMPRESSION:", 1)[1].strip()


# --- correctness through the reader ---------------------------------------------------------
@pytest.mark.parametrize("finding", CXR_FINDINGS)
def test_reader_agrees_with_labels(corpus, finding: str) -> None:
    states, reports = corpus
    agree = [
        bool(positive_sentences(r, finding)) == bool(s.labels()[finding])
        for s, r in zip(states[:500], reports[:500])
    ]
    assert np.mean(agree) >= 0.99


@pytest.mark.parametrize("finding", CXR_FINDINGS)
def test_finding_words_also_appear_when_absent(corpus, finding: str) -> None:
    """Counting the word cannot give the label: it appears in many negative reports too."""
    states, reports = corpus
    absent = [r for s, r in zip(states, reports) if not getattr(s, finding)]
    rate = np.mean([bool(KEYWORDS[finding].search(r)) for r in absent])
    assert rate > (0.15 if finding == "edema" else 0.2)


def test_normal_reports_negate_a_random_subset_of_findings(corpus) -> None:
    states, reports = corpus
    normal = [r for s, r in zip(states, reports) if not any(getattr(s, f) for f in CXR_FINDINGS)]
    assert len(normal) > 50
    subsets = set()
    for r in normal:
        named = frozenset(f for f in CXR_FINDINGS if KEYWORDS[f].search(findings_section(r)))
        assert not any(positive_sentences(r, f) for f in named)
        subsets.add(named)
    assert len(subsets) >= 4
    assert any(re.search(r"\bno (pleural )?effusion", r, re.IGNORECASE) for r in normal)
    assert any(re.search(r"\bno pneumothorax", r, re.IGNORECASE) for r in normal)
    impressions = [r.split("IMPRESSION:", 1)[1] for r in normal]
    assert all(re.search(r"no acute|normal chest", i, re.IGNORECASE) for i in impressions)


def test_heart_failure_pattern_is_summarised(corpus) -> None:
    states, reports = corpus
    hits = [
        "heart failure" in r.split("IMPRESSION:", 1)[1]
        for s, r in zip(states, reports)
        if s.cardiomegaly and s.edema and s.severity >= HEDGE_BELOW
    ]
    assert hits and all(hits)
    assert not any(
        "heart failure" in r for s, r in zip(states, reports) if not (s.cardiomegaly and s.edema)
    )


# --- variety and hedges ---------------------------------------------------------------------
def _shape(sentence: str) -> str:
    """Sentence with state-dependent words blanked, so only the phrasing remains."""
    words = r"left|right|bilateral|upper|middle|lower|small|moderate|large|mild|mildly|moderately|"
    words += r"markedly|marked|severe|patchy|focal|dense"
    return re.sub(rf"\b({words})\b", "_", sentence.lower()).strip()


@pytest.mark.parametrize("finding", CXR_FINDINGS)
def test_each_positive_finding_has_several_phrasings(corpus, finding: str) -> None:
    states, reports = corpus
    shapes = {
        _shape(sent)
        for s, r in zip(states[:300], reports[:300])
        if getattr(s, finding)
        for sent in positive_sentences(findings_section(r), finding)
    }
    assert len(shapes) >= 3, shapes


def test_hedges_only_for_low_severity_positive_findings(corpus) -> None:
    states, reports = corpus
    has_finding = [any(getattr(s, f) for f in CXR_FINDINGS) for s in states]
    hedged = [bool(HEDGE.search(r)) for r in reports]
    for s, r, pos, h in zip(states, reports, has_finding, hedged):
        if h:
            assert pos and s.severity < HEDGE_BELOW, r
    low = [h for s, pos, h in zip(states, has_finding, hedged) if pos and s.severity < HEDGE_BELOW]
    assert 0.1 < np.mean(low) < 0.9  # hedged sometimes, not always


# --- side, zone and size words --------------------------------------------------------------
def test_side_zone_and_size_words_follow_the_state(corpus) -> None:
    states, reports = corpus
    checked = 0
    for s, r in zip(states, reports):
        for finding, side in (
            ("effusion", s.effusion_side),
            ("pneumothorax", s.pneumothorax_side),
            ("consolidation", s.consolidation_side),
        ):
            if not side:
                continue
            for sent in positive_sentences(r, finding):
                low = sent.lower()
                if side == "bilateral":
                    assert "bilateral" in low or "both" in low, sent
                else:
                    other = "right" if side == "left" else "left"
                    assert side in low and other not in low, sent
                if finding == "consolidation":
                    assert s.consolidation_zone in low, sent
                else:
                    size = size_word(s.severity)
                    named = {w for w in SIZE_WORDS if re.search(rf"\b{w}\b", low)}
                    assert named <= {size}, sent
                checked += 1
    assert checked > 100


# --- cardiology statements ------------------------------------------------------------------
@pytest.fixture(scope="module")
def ecg_corpus() -> tuple[list[PatientState], list[list[str]]]:
    states = make_states(1500, seed=21)
    rng = np.random.default_rng(22)
    return states, [write_cardiology_statements(s, rng) for s in states]


RHYTHM_OF = {
    "sinus": re.compile(r"^(normal )?sinus rhythm$"),
    "sinus_tachycardia": re.compile(r"^sinus tachycardia$"),
    "sinus_bradycardia": re.compile(r"^(marked )?sinus bradycardia$"),
    "afib": re.compile(r"^atrial fibrillation( with (rapid|controlled) ventricular response)?$"),
}


def test_rhythm_statement_matches_state(ecg_corpus) -> None:
    states, stmts = ecg_corpus
    for s, st in zip(states, stmts):
        assert RHYTHM_OF[s.rhythm].match(st[0].lower()), (s.rhythm, st)
        others = [p for r, p in RHYTHM_OF.items() if r != s.rhythm]
        assert not any(p.match(x.lower()) for x in st for p in others), st
        if "rapid ventricular response" in st[0]:
            assert s.heart_rate > 110
    fast_af = [st[0] for s, st in zip(states, stmts) if s.rhythm == "afib" and s.heart_rate > 110]
    assert any("rapid ventricular response" in x for x in fast_af)
    assert any(x == "Atrial fibrillation" for x in fast_af) or len(fast_af) < 10


def test_bbb_st_elevation_and_low_voltage_are_named(ecg_corpus) -> None:
    states, stmts = ecg_corpus
    for s, st in zip(states, stmts):
        text = " | ".join(st).lower()
        assert ("right bundle branch block" in text) == (s.bbb == "rbbb"), st
        assert ("left bundle branch block" in text) == (s.bbb == "lbbb"), st
        assert bool(re.search(r"low (qrs )?voltage", text)) == s.low_voltage, st
        st_lines = [x for x in st if "ST elevation" in x]
        assert bool(st_lines) == s.st_elevation, st
        if s.st_elevation:
            assert st_territory(s) in st_lines[0].lower()
    for label, pattern in (("bbb", "bundle branch"), ("low_voltage", "volt"), ("st", "ST elev")):
        phrasings = {x for st in stmts for x in st if pattern in x}
        if label == "st":
            phrasings = {
                re.sub(r"inferior|anterior|lateral|leads [^,]*(, [^,]*)*", "_", x)
                for x in phrasings
            }
        assert len(phrasings) >= 3, (label, phrasings)


def test_st_territory_is_fixed_by_the_state() -> None:
    states = [s for s in make_states(400, seed=5) if s.st_elevation]
    territories = {st_territory(s) for s in states}
    assert territories == set(ST_TERRITORY_LEADS)
    assert all(st_territory(s) == st_territory(dataclasses.replace(s)) for s in states)
    assert st_territory(dataclasses.replace(states[0], st_elevation=False)) == ""


def test_final_statement_summarises_the_tracing(ecg_corpus) -> None:
    states, stmts = ecg_corpus
    seen = set()
    for s, st in zip(states, stmts):
        abnormal = s.rhythm == "afib" or s.bbb or s.st_elevation or s.low_voltage
        expected = (
            "Abnormal ECG"
            if abnormal
            else ("Normal ECG" if s.rhythm == "sinus" else "Borderline ECG")
        )
        assert st[-1] == expected, (s, st)
        assert sum(x.endswith(" ECG") for x in st) == 1
        seen.add(expected)
    assert seen == {"Abnormal ECG", "Normal ECG", "Borderline ECG"}


# --- prompts, errors, speed -----------------------------------------------------------------
def test_class_prompts_cover_every_label_and_read_correctly() -> None:
    prompts = class_prompts()
    labels = make_states(1, seed=0)[0].labels()
    assert set(prompts) == set(labels)
    for name, (pos, neg) in prompts.items():
        assert pos and neg and not set(pos) & set(neg), name
        assert len(set(pos)) == len(pos)
        if name in CXR_FINDINGS:
            assert all(positive_sentences(p, name) for p in pos), name
            assert not any(positive_sentences(n, name) for n in neg), name
            assert not any(HEDGE.search(p) for p in pos), name
    prompts["effusion"][0].clear()
    assert class_prompts()["effusion"][0]  # callers get copies


def test_inconsistent_state_raises_data_error() -> None:
    s = make_states(1, seed=0)[0]
    with pytest.raises(DataError, match="rhythm"):
        write_cardiology_statements(dataclasses.replace(s, rhythm="vtach"), 0)
    with pytest.raises(DataError, match="effusion side"):
        write_radiology_report(dataclasses.replace(s, effusion=True, effusion_side=""), 0)
    with pytest.raises(DataError, match="consolidation"):
        write_radiology_report(
            dataclasses.replace(
                s, consolidation=True, consolidation_side="left", consolidation_zone="apex"
            ),
            0,
        )


def test_two_thousand_reports_are_fast() -> None:
    states = make_states(2000, seed=1)
    best = np.inf
    for _ in range(3):
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        for s in states:
            write_radiology_report(s, rng)
            write_cardiology_statements(s, rng)
        best = min(best, time.perf_counter() - t0)
    assert best < 0.5, best
