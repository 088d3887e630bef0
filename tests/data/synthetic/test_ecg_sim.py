"""Behaviour of the demo-cohort ECG simulator, measured on the returned signal."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from medtriad.data.synthetic.ecg_sim import (
    ANNOTATION_KEYS,
    ECG_STATE_FIELDS,
    LEADS,
    ST_RECIPROCAL,
    ST_TERRITORIES,
    simulate_ecg,
)
from medtriad.data.synthetic.state import PatientState, sample_state

FS = 500
LEAD = {name: i for i, name in enumerate(LEADS)}
LIMB = [LEAD[n] for n in ("I", "II", "III", "aVR", "aVL", "aVF")]
INDEPENDENT = [LEAD[n] for n in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")]


def make_state(**overrides: object) -> PatientState:
    base = PatientState(
        sample_id="s0",
        subject_id="p0",
        age=55,
        sex="F",
        heart_failure=False,
        cardiomegaly=False,
        effusion=False,
        edema=False,
        pneumothorax=False,
        consolidation=False,
        effusion_side="",
        pneumothorax_side="",
        consolidation_side="",
        consolidation_zone="",
        severity=0.7,
        rhythm="sinus",
        heart_rate=72.0,
        bbb="",
        st_elevation=False,
        low_voltage=False,
    )
    return replace(base, **overrides)


def sim(seed: int, **overrides: object):
    return simulate_ecg(make_state(**overrides), np.random.default_rng(seed), fs=FS, seconds=10.0)


def ms(x: float) -> int:
    return round(x * FS / 1000.0)


def average_beat(signal: np.ndarray, r_peaks: np.ndarray, lo_ms: float, hi_ms: float) -> np.ndarray:
    """Mean of the (12, L) windows [R + lo, R + hi) over beats whose window lies in the record."""
    lo, hi = ms(lo_ms), ms(hi_ms)
    r = r_peaks[(r_peaks + lo >= 0) & (r_peaks + hi <= signal.shape[1])]
    return np.stack([signal[:, k + lo : k + hi] for k in r]).mean(axis=0)


def rel_median(ann: dict[str, np.ndarray], key: str) -> float:
    """Median position (ms) of a wave boundary relative to the R peak of its beat."""
    r = ann["r_peaks"]
    pos = ann[key]
    nearest = r[np.argmin(np.abs(pos[:, None] - r[None, :]), axis=1)]
    return float(np.median(pos - nearest)) * 1000.0 / FS


def st_levels(rec) -> np.ndarray:
    """Per-lead ST level: mean 60-80 ms after QRS offset minus the PR baseline, in mV."""
    on, off = rel_median(rec.annotations, "qrs_onsets"), rel_median(rec.annotations, "qrs_offsets")
    beat = average_beat(rec.signal, rec.annotations["r_peaks"], on - 30.0, off + 90.0)
    base = beat[:, : ms(25.0)].mean(axis=1)
    j = ms(off - (on - 30.0))
    return beat[:, j + ms(60.0) : j + ms(80.0)].mean(axis=1) - base


def rr_cv(rec) -> float:
    rr = np.diff(rec.annotations["r_peaks"])
    return float(rr.std() / rr.mean())


def qrs_width_ms(rec) -> float:
    """Span around R where the 8-lead spatial magnitude of the average beat exceeds 10 % of peak."""
    on = rel_median(rec.annotations, "qrs_onsets")
    beat = average_beat(rec.signal, rec.annotations["r_peaks"], -200.0, 200.0)[INDEPENDENT]
    base_lo = ms(on + 200.0 - 20.0)
    beat = beat - beat[:, base_lo : base_lo + ms(16.0)].mean(axis=1, keepdims=True)
    mag = np.linalg.norm(beat, axis=0)
    centre = ms(200.0)
    region = mag[centre - ms(150.0) : centre + ms(150.0)]
    above = region > 0.1 * region.max()
    peak = int(np.argmax(region))
    below = np.flatnonzero(~above)
    left = below[below < peak].max(initial=-1)
    right = below[below > peak].min(initial=above.size)
    return (right - left - 1) * 1000.0 / FS


# ---------------------------------------------------------------------------------------------


def test_output_format_and_annotation_order():
    rec = sim(1)
    assert rec.signal.shape == (12, 5000) and rec.signal.dtype == np.float32
    assert np.isfinite(rec.signal).all()
    assert set(rec.annotations) == set(ANNOTATION_KEYS)
    ann = rec.annotations
    for key in ANNOTATION_KEYS:
        a = ann[key]
        assert np.issubdtype(a.dtype, np.integer) and np.all(np.diff(a) > 0)
        assert a.size and a.min() >= 0 and a.max() < 5000
    # the boundaries of each beat come in physiological order
    order = [rel_median(ann, k) for k in ("p_onsets", "p_offsets", "qrs_onsets")]
    order += [0.0, rel_median(ann, "qrs_offsets"), rel_median(ann, "t_offsets")]
    assert order == sorted(order)
    qrs = rel_median(ann, "qrs_offsets") - rel_median(ann, "qrs_onsets")
    assert 75.0 <= qrs <= 110.0
    assert {"rhythm", "heart_rate", "bbb", "st_elevation", "low_voltage"} <= set(ECG_STATE_FIELDS)


def test_deterministic_for_a_seed_and_varies_across_seeds():
    a, b, c = (
        sim(7, rhythm="afib", heart_rate=100.0),
        sim(7, rhythm="afib", heart_rate=100.0),
        sim(8, rhythm="afib", heart_rate=100.0),
    )
    np.testing.assert_array_equal(a.signal, b.signal)
    for key in ANNOTATION_KEYS:
        np.testing.assert_array_equal(a.annotations[key], b.annotations[key])
    assert not np.array_equal(a.signal, c.signal)
    assert not np.array_equal(a.annotations["r_peaks"], c.annotations["r_peaks"])


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"rhythm": "afib", "heart_rate": 120.0},
        {"bbb": "lbbb", "st_elevation": True},
        {"low_voltage": True},
    ],
)
def test_limb_leads_obey_einthoven_and_goldberger(overrides):
    x = sim(3, **overrides).signal
    i, ii = x[LEAD["I"]], x[LEAD["II"]]
    np.testing.assert_allclose(x[LEAD["III"]], ii - i, atol=1e-6)
    np.testing.assert_allclose(x[LEAD["aVR"]], -(i + ii) / 2, atol=1e-6)
    np.testing.assert_allclose(x[LEAD["aVL"]], i - ii / 2, atol=1e-6)
    np.testing.assert_allclose(x[LEAD["aVF"]], ii - i / 2, atol=1e-6)
    # the noise is not identical across leads: the chest leads are not a linear copy of I/II
    assert np.linalg.matrix_rank(x[INDEPENDENT].astype(np.float64)) == 8


@pytest.mark.parametrize(
    ("rhythm", "rate"),
    [("sinus", 72.0), ("sinus_tachycardia", 130.0), ("sinus_bradycardia", 44.0), ("afib", 110.0)],
)
def test_heart_rate_matches_state(rhythm, rate):
    import neurokit2 as nk

    for seed in range(3):
        rec = sim(seed, rhythm=rhythm, heart_rate=rate)
        r = rec.annotations["r_peaks"]
        assert 60.0 * FS / np.diff(r).mean() == pytest.approx(rate, rel=0.1)
        cleaned = nk.ecg_clean(rec.signal[LEAD["II"]].astype(np.float64), sampling_rate=FS)
        _, info = nk.ecg_peaks(cleaned, sampling_rate=FS)
        found = np.asarray(info["ECG_R_Peaks"])
        assert 60.0 * FS / np.diff(found).mean() == pytest.approx(rate, rel=0.1)
        # the detector finds the annotated beats, within 30 ms
        assert np.median(np.abs(found[:, None] - r[None, :]).min(axis=1)) <= ms(30.0)


def test_afib_is_irregular_and_sinus_regular():
    for seed in range(6):
        assert rr_cv(sim(seed, rhythm="afib", heart_rate=95.0)) > 0.1
        for rhythm, rate in (
            ("sinus", 75.0),
            ("sinus_bradycardia", 48.0),
            ("sinus_tachycardia", 120.0),
        ):
            assert rr_cv(sim(seed, rhythm=rhythm, heart_rate=rate)) < 0.05


def test_afib_has_no_p_waves_but_fibrillatory_waves():
    p_energy, f_power = {}, {}
    for rhythm in ("sinus", "afib"):
        pe, fp = [], []
        for seed in range(4):
            rec = sim(seed, rhythm=rhythm, heart_rate=75.0)
            r = rec.annotations["r_peaks"]
            # P window before the QRS in lead II, averaged over beats (P waves are locked to R)
            beat = average_beat(rec.signal, r, -260.0, -60.0)[LEAD["II"]]
            pe.append(np.mean((beat - beat.mean()) ** 2))
            # 4-9 Hz power in V1 once the average QRST is taken out of every beat
            v1 = rec.signal[LEAD["V1"]].astype(np.float64)
            template = average_beat(rec.signal, r, -300.0, 500.0)[LEAD["V1"]]
            resid = v1.copy()
            for k in r:
                lo, hi = max(k - ms(300.0), 0), min(k + ms(500.0), v1.size)
                resid[lo:hi] -= template[lo - (k - ms(300.0)) : hi - (k - ms(300.0))]
            spec = np.abs(np.fft.rfft(resid - resid.mean())) ** 2
            freqs = np.fft.rfftfreq(resid.size, 1.0 / FS)
            fp.append(spec[(freqs >= 4.0) & (freqs <= 9.0)].sum())
        p_energy[rhythm], f_power[rhythm] = np.mean(pe), np.mean(fp)
        if rhythm == "afib":
            assert rec.annotations["p_onsets"].size == 0 and rec.annotations["p_offsets"].size == 0
    assert p_energy["afib"] < 0.3 * p_energy["sinus"]
    assert f_power["afib"] > 3.0 * f_power["sinus"]


@pytest.mark.parametrize("bbb", ["rbbb", "lbbb"])
def test_bundle_branch_block_widens_qrs(bbb):
    for seed in range(4):
        narrow, wide = sim(seed), sim(seed, bbb=bbb)
        assert qrs_width_ms(narrow) < 110.0
        assert qrs_width_ms(wide) >= 120.0
        ann = wide.annotations
        assert rel_median(ann, "qrs_offsets") - rel_median(ann, "qrs_onsets") >= 120.0


def qrs_complex(rec) -> np.ndarray:
    """Average (12, L) QRS from 20 ms before its onset to its offset, PR baseline removed."""
    on = rel_median(rec.annotations, "qrs_onsets")
    off = rel_median(rec.annotations, "qrs_offsets")
    qrs = average_beat(rec.signal, rec.annotations["r_peaks"], on - 20.0, off)
    return qrs - qrs[:, : ms(16.0)].mean(axis=1, keepdims=True)


def test_bundle_branch_block_morphology():
    for seed in range(4):
        rb = sim(seed, bbb="rbbb")
        qrs = qrs_complex(rb)
        late = qrs[:, -ms(60.0) :]  # the last 60 ms of the QRS
        v1 = qrs[LEAD["V1"]]
        assert late[LEAD["V1"]].max() > 0.3  # terminal R' in V1 ...
        s_wave = int(np.argmin(v1))
        assert v1[s_wave] < -0.1 and v1[s_wave:].max() > 0.3  # ... after an S: rSR'
        assert late[LEAD["I"]].min() < -0.1 and late[LEAD["V6"]].min() < -0.1  # broad S

        lb = sim(seed, bbb="lbbb")
        qrs = qrs_complex(lb)
        v1, v6 = qrs[LEAD["V1"]], qrs[LEAD["V6"]]
        assert -v1.min() > 0.5 and v1.max() < 0.2 * -v1.min()  # QS / deep S in V1
        assert v6.max() > 0.4 and -v6.min() < 0.2 * v6.max()  # R in V6 without q
        assert np.sum(v6 > 0.5 * v6.max()) * 1000.0 / FS >= 50.0  # and it is broad


def test_st_elevation_in_territory_with_reciprocal_depression():
    seen = set()
    for seed in range(12):
        territory = sorted(ST_TERRITORIES)[seed % len(ST_TERRITORIES)]
        plain, injured = sim(seed), sim(seed, st_elevation=True, st_territory=territory)
        assert plain.st_territory == "" and injured.st_territory == territory
        seen.add(territory)
        base, st = st_levels(plain), st_levels(injured)
        assert np.all(np.abs(base) < 0.06)
        for lead in ST_TERRITORIES[territory]:
            assert st[LEAD[lead]] > 0.1, (seed, territory, lead)
        for lead in ST_RECIPROCAL[territory]:
            assert st[LEAD[lead]] < -0.05, (seed, territory, lead)
        # the injury current touches the ST-T only: everything up to the J point is unchanged
        on = ms(rel_median(injured.annotations, "qrs_onsets"))
        off = ms(rel_median(injured.annotations, "qrs_offsets"))
        diff = np.abs(injured.signal - plain.signal)
        for r in injured.annotations["r_peaks"]:
            assert diff[:, max(r + on, 0) : max(r + off - ms(20.0), 0)].max(initial=0.0) < 0.02
    assert seen == set(ST_TERRITORIES)


def test_low_voltage_limb_leads():
    for seed in range(6):
        for low in (False, True):
            rec = sim(seed, low_voltage=low, age=30 + 8 * seed, sex="MF"[seed % 2])
            on = rel_median(rec.annotations, "qrs_onsets")
            off = rel_median(rec.annotations, "qrs_offsets")
            qrs = average_beat(rec.signal, rec.annotations["r_peaks"], on, off)[LIMB]
            p2p = (qrs.max(axis=1) - qrs.min(axis=1)).max()
            assert (p2p < 0.5) if low else (p2p > 0.55), (seed, low, p2p)


def test_realistic_amplitudes():
    for seed in range(5):
        rec = sim(seed)
        beat = average_beat(rec.signal, rec.annotations["r_peaks"], -60.0, 60.0)
        beat = beat - beat[:, :5].mean(axis=1, keepdims=True)
        p2p = beat.max(axis=1) - beat.min(axis=1)
        assert 0.5 < p2p[LEAD["II"]] + p2p[LEAD["I"]] < 4.0
        chest = p2p[[LEAD[f"V{i}"] for i in (2, 3, 4)]]
        assert 1.0 < chest.max() < 4.5


def test_cohort_states_simulate_fast():
    rng = np.random.default_rng(11)
    states = [sample_state(rng, f"s{i}", f"p{i}") for i in range(50)]
    simulate_ecg(states[0], np.random.default_rng(0))  # builds the template bank
    start = time.perf_counter()
    for i, state in enumerate(states):
        rec = simulate_ecg(state, np.random.default_rng(i))
        assert rec.signal.shape == (12, 5000)
    per_record = (time.perf_counter() - start) / len(states)
    print(f"simulate_ecg: {1000.0 * per_record:.1f} ms per record")
    assert per_record < 0.06


@pytest.mark.parametrize(
    ("kwargs", "overrides"),
    [({"fs": 20}, {}), ({"seconds": 0.0}, {}), ({}, {"rhythm": "flutter"}), ({}, {"bbb": "ivcd"})],
)
def test_rejects_bad_arguments(kwargs, overrides):
    with pytest.raises(ValueError):
        simulate_ecg(make_state(**overrides), np.random.default_rng(0), **kwargs)
