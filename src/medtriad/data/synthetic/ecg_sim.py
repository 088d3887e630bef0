"""12-lead ECG simulator of the demo cohort: one `PatientState` in, 12 leads in mV out.

Design
------
*Wave shapes from ECGSYN.* neurokit2's ECGSYN (McSharry et al. 2003) models the ECG as the
z-coordinate of a point circling a limit cycle, kicked by Gaussian events at phase angles
``ti`` with widths ``bi`` and strengths ``ai``. Given the phase trajectory, z obeys a linear ODE,
so its output is linear in ``ai``: a beat is the sum of the responses to each event. At first use
we run ``neurokit2.ecg_simulate(method="ecgsyn")`` once per *wave* (P, septal q, the left
ventricular R forces, the terminal forces, the bundle-branch-block forces, an asymmetric T wave,
an ST-injury plateau), each a few events at 60 bpm with a fixed ``random_state``, and cut one
beat of the periodic steady state. ECGSYN's damping leaves a slow undershoot after every wave,
so the baseline is taken as the line between the isoelectric points 3.5 sigma outside the
events, the shape is zero outside them, re-centred on the events' centroid (the integrated
phase runs a few ms early) and scaled to unit peak. Wave boundaries (annotations) are where a
shape crosses 5 % of its peak. The bank (~0.1 s, plus neurokit2's import) is cached in-process
and deterministic.

*Cardiac dipole.* A beat is a 3-D heart vector (x: patient's left, y: feet, z: anterior):
each wave adds ``unit_shape(t - centre) * direction``, where the direction vector (in mV)
encodes which leads see the wave positive. Sweeping directions over the QRS (septum rightward
and anterior, then left ventricle inferior-left, then left-posterior, then basal superior)
gives the normal R-wave progression from rS in V1 to qR in V6.

*Leads.* Leads I and II and V1-V6 are projections of the dipole onto lead vectors (I at 0 deg,
II at +60 deg in the frontal plane; V1-V6 in the horizontal plane, V2-V4 with larger gain as they
lie nearest the heart). III, aVR, aVL and aVF are *derived* from I and II in float32 after the
noise is added, so Einthoven's and Goldberger's relations hold exactly in the returned array:
III = II - I, aVR = -(I + II) / 2, aVL = I - II / 2, aVF = II - I / 2.

*Rhythm.* R times come from an RR series (sinus: respiratory sinus arrhythmia plus a little
jitter; AF: independent skewed draws); the intervals inside the record are rescaled so that
their mean is exactly 60 / heart_rate. Each beat is scattered into the record with
``np.bincount`` over a (beats x window) index array; the QT-dependent waves (T, ST plateau) are
time-stretched about the J point per beat by Fridericia's rule (QT proportional to RR^(1/3),
using the preceding RR). Beat-to-beat gain follows respiration plus jitter.

*Noise* is added to the nine electrode potentials (RA, LA, LL, V1-V6), never to the leads:
baseline wander (a few random sinusoids under 0.5 Hz), powerline interference at 50 or 60 Hz
(per-electrode amplitude and phase), and bursty high-passed Gaussian muscle (EMG) noise. Leads
are electrode differences (I = LA - RA, II = LL - RA, Vi = Vi - (RA + LA + LL) / 3), which is
what keeps the limb-lead relations exact with noise present.

State -> signal rules
---------------------
- rhythm sinus / sinus_tachycardia / sinus_bradycardia: P before every QRS, PR interval
  150 ms + 0.3 ms per year over 50 (+/- 12 ms), shortened 0.25 ms per bpm above 70, clipped
  to 110-210 ms; RR coefficient of variation about 0.01-0.035.
- rhythm afib: the P waves are left out, RR is irregular (independent right-skewed intervals,
  coefficient of variation 0.15-0.25, none shorter than 0.3 s), and an atrial dipole adds
  fibrillatory f-waves whose rate wanders within 4-9 Hz: about 0.03-0.07 mV peak-to-peak in II,
  0.04-0.08 in V1 and up to 0.15 in V2.
- heart_rate: mean RR = 60 / heart_rate inside the record.
- bbb "rbbb": normal initial forces, then a broad late force pointing right and anterior
  (rSR' in V1, broad S in I and V6) bridged by an anterior mid-QRS force, QRS 130-155 ms,
  T inverted in V1-V2.
  bbb "lbbb": septal force reversed (no q in I/V6, QS in V1), left ventricle activated by two
  broad, separated leftward-posterior forces (broad notched R in I, aVL, V5-V6; deep S in
  V1-V3), QRS 130-150 ms, discordant ST-T.
- st_elevation: an injury current through the ST segment, territory from the state:
  inferior (elevation in II, III, aVF; depression in I, aVL), anterior (elevation in V1-V4;
  depression in III and aVF) or lateral (elevation in I, aVL, V5-V6; depression in III, aVF). It rises from 10 ms before the J point and fades with the T wave;
  0.25-0.45 mV along the injury vector, scaled by state.severity; not attenuated by low
  voltage (the label stays visible).
- low_voltage: the largest limb-lead QRS peak-to-peak is rescaled to 0.25-0.42 mV (P, QRS, T
  and f-waves together); otherwise it is kept at or above 0.65 mV.
- age / sex: frontal QRS axis moves left with age (about -0.35 deg per year, SD 15 deg);
  voltage is larger in men and the young; QTc is 405 ms (men) or 425 ms (women) plus
  0.4 ms per year over 50 (+/- 12 ms). The JT interval is what is kept: a bundle branch block
  lengthens the QT by its extra QRS width.

Annotations hold sample indices inside the record; each key is filtered on its own, so
``p_onsets`` may be one entry longer or shorter than ``r_peaks`` at the record edges.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from medtriad.data.synthetic.state import ECG_RHYTHMS, PatientState

logger = logging.getLogger(__name__)

LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
ANNOTATION_KEYS: tuple[str, ...] = (
    "r_peaks",
    "p_onsets",
    "p_offsets",
    "qrs_onsets",
    "qrs_offsets",
    "t_offsets",
)
ECG_STATE_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "rhythm": "sinus / sinus_tachycardia / sinus_bradycardia: P waves, regular RR; "
        "afib: no P waves, f-waves 4-9 Hz, irregular RR",
        "heart_rate": "mean ventricular rate in bpm: mean RR inside the record is 60 / heart_rate",
        "bbb": "'' narrow QRS; 'rbbb' rSR' in V1 and broad S in I/V6; 'lbbb' broad notched R in "
        "I/aVL/V5-V6 and deep S in V1; both QRS >= 120 ms",
        "st_elevation": "injury current in an inferior or anterior territory, reciprocal depression",
        "low_voltage": "largest limb-lead QRS peak-to-peak below 0.5 mV",
        "severity": "scales the ST elevation",
        "age": "frontal QRS axis, voltage, PR interval and QTc",
        "sex": "voltage (higher in men) and QTc (longer in women)",
    }
)
ST_TERRITORIES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"inferior": ("II", "III", "aVF"), "anterior": ("V1", "V2", "V3", "V4"), "lateral": ("I", "aVL", "V5", "V6")}
)
ST_RECIPROCAL: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"inferior": ("I", "aVL"), "anterior": ("III", "aVF"), "lateral": ("III", "aVF")}
)

_GRID_MS = np.arange(-400.0, 401.0)  # template time axis, 1 kHz
_SUPPORT_LEVEL = 0.05  # a wave starts / ends where its unit shape crosses this fraction of peak
_NORMAL_QRS_MS = 90.0  # QRS duration that the QTc values below assume


@dataclass(frozen=True)
class SimulatedEcg:
    """One simulated record: ``signal`` float32 (12, T) in mV in `LEADS` order."""

    signal: np.ndarray
    annotations: dict[str, np.ndarray]
    fs: int
    st_territory: str  # "" | "inferior" | "anterior" | "lateral"


# --------------------------------------------------------------------------------------------
# template bank (neurokit2 ECGSYN, built once per process)
# --------------------------------------------------------------------------------------------

# name -> events as (centre ms, relative peak, Gaussian sigma ms); at most five events each
_WAVE_EVENTS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "p": ((0.0, 1.0, 17.0),),
    "q_septal": ((0.0, 1.0, 7.0),),
    "r_main": ((0.0, 1.0, 10.0),),
    "s_terminal": ((0.0, 1.0, 8.0),),
    "rbbb_terminal": ((0.0, 1.0, 22.0),),
    "lbbb_septal": ((0.0, 1.0, 12.0),),
    "lbbb_lv": ((0.0, 1.0, 17.0),),
    "t": ((-25.0, 0.75, 45.0), (10.0, 0.55, 28.0)),
    "st_plateau": (
        (0.0, 1.0, 25.0),
        (40.0, 1.0, 25.0),
        (80.0, 1.0, 25.0),
        (120.0, 1.0, 25.0),
        (160.0, 1.0, 25.0),
    ),
}


@dataclass(frozen=True)
class _Template:
    values: np.ndarray  # unit-peak shape on _GRID_MS
    lo: float  # first / last time (ms) where the shape exceeds _SUPPORT_LEVEL
    hi: float


def _ecgsyn_wave(events: tuple[tuple[float, float, float], ...]) -> np.ndarray:
    """Unit-peak, zero-baseline response of ECGSYN to a few Gaussian events, on _GRID_MS."""
    import neurokit2 as nk

    ti, ai, bi = [], [], []
    for centre_ms, rel, sigma_ms in events:
        b = 2.0 * np.pi * sigma_ms / 1000.0  # Gaussian width in radians at 60 bpm
        ti.append(360.0 * centre_ms / 1000.0)
        bi.append(b)
        ai.append(rel * 30.0 / b**2)  # peak ~ ai * bi^2 / omega: relative peaks as asked
    while len(ti) < 5:  # ECGSYN takes exactly five events; pad with silent ones
        ti.append(0.0)
        ai.append(0.0)
        bi.append(0.1)
    z = np.asarray(
        nk.ecg_simulate(
            duration=6,
            sampling_rate=1000,
            noise=0,
            heart_rate=60,
            heart_rate_std=0,
            method="ecgsyn",
            random_state=20241016,
            ti=tuple(ti),
            ai=tuple(ai),
            bi=tuple(bi),
        ),
        dtype=np.float64,
    )
    # one beat of the periodic steady state: the events of the sixth beat sit at t = 5 s
    seg = z[5000 - 400 : 5000 + 401]
    # ECGSYN's damping leaves a slow undershoot after every wave; take the baseline as the line
    # between the isoelectric points 3.5 sigma outside the events and keep the wave only
    start = min(c - 3.5 * w for c, _, w in events)
    stop = max(c + 3.5 * w for c, _, w in events)
    inside = (_GRID_MS >= start) & (_GRID_MS <= stop)
    i0, i1 = np.flatnonzero(inside)[[0, -1]]
    baseline = np.interp(_GRID_MS, [_GRID_MS[i0], _GRID_MS[i1]], [seg[i0], seg[i1]])
    wave = np.where(inside, seg - baseline, 0.0)
    # the integrated phase runs a few ms ahead; put the centroid back where the events put it
    weights = np.array([rel * w for _, rel, w in events])
    want = float(np.dot(weights, [c for c, _, _ in events]) / weights.sum())
    shift = want - float(np.dot(_GRID_MS, wave) / wave.sum())
    wave = np.interp(_GRID_MS - shift, _GRID_MS, wave, left=0.0, right=0.0)
    return wave / wave[np.argmax(np.abs(wave))]


@functools.lru_cache(maxsize=1)
def _template_bank() -> dict[str, _Template]:
    start = time.perf_counter()
    bank = {}
    for name, events in _WAVE_EVENTS.items():
        values = _ecgsyn_wave(events)
        above = np.flatnonzero(values >= _SUPPORT_LEVEL)
        bank[name] = _Template(
            values=values,
            lo=float(_GRID_MS[above[0]]),
            hi=float(_GRID_MS[above[-1]]),
        )
    logger.debug("built ECG template bank in %.2f s", time.perf_counter() - start)
    return bank


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------


def _unit(x: float, y: float, z: float, scale: float = 1.0) -> np.ndarray:
    v = np.array([x, y, z], dtype=np.float64)
    return scale * v / np.linalg.norm(v)


def _precordial(angle_deg: float, down: float, gain: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return _unit(np.cos(a), down, np.sin(a), gain)


# injury-current direction per ST territory (dipole axes as below): inferior points to the
# feet (II, III, aVF), anterior to the front (V1-V4), lateral to the left and up (I, aVL, V5-V6)
_ST_DIRECTIONS: dict[str, tuple[float, float, float]] = {
    "inferior": (-0.3, 0.95, -0.05),
    "anterior": (0.2, -0.35, 0.95),
    "lateral": (0.95, -0.3, 0.1),
}

# independent leads: I, II, V1..V6 (rows) x dipole (x left, y feet, z anterior)
_LEAD_VECTORS = np.stack(
    [
        np.array([1.0, 0.0, 0.0]),
        np.array([0.5, np.sqrt(3.0) / 2.0, 0.0]),
        _precordial(118.0, 0.10, 1.05),
        _precordial(96.0, 0.10, 1.75),
        _precordial(76.0, 0.15, 1.85),
        _precordial(58.0, 0.20, 1.65),
        _precordial(32.0, 0.20, 1.25),
        _precordial(5.0, 0.20, 0.95),
    ]
)


def _rot_z(deg: float) -> np.ndarray:
    """Rotation in the frontal plane (positive turns the axis towards +y, i.e. rightward)."""
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_y(deg: float) -> np.ndarray:
    """Rotation in the horizontal plane (positive turns leftward forces anterior)."""
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])


# --------------------------------------------------------------------------------------------
# per-record morphology
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Wave:
    template: str
    centre_ms: float  # placement of the template's zero, relative to the R fiducial
    vector: np.ndarray  # (3,) mV


@dataclass(frozen=True)
class _Morphology:
    p: list[_Wave]
    qrs: list[_Wave]
    t: _Wave
    st: _Wave | None
    j_ms: float  # QRS offset (J point), anchor of the QT stretch
    qrs_on_ms: float


def _qrs_waves(bbb: str) -> list[_Wave]:
    if bbb == "lbbb":
        return [
            _Wave("lbbb_septal", -42.0, _unit(0.7, 0.2, -0.3, 0.30)),
            _Wave("lbbb_lv", -16.0, _unit(0.85, 0.3, -0.3, 1.25)),
            _Wave("lbbb_lv", 38.0, _unit(0.9, 0.0, -0.35, 1.35)),
        ]
    waves = [
        _Wave("q_septal", -28.0, _unit(-0.55, 0.25, 0.8, 0.25)),
        _Wave("r_main", -7.0, _unit(0.65, 0.7, 0.35, 1.05)),
        _Wave("r_main", 7.0, _unit(0.75, 0.2, -0.75, 1.0)),
    ]
    if bbb == "rbbb":
        waves.append(_Wave("r_main", 22.0, _unit(0.2, -0.3, 0.9, 0.6)))
        waves.append(_Wave("rbbb_terminal", 58.0, _unit(-0.7, 0.05, 0.75, 0.8)))
    else:
        waves.append(_Wave("s_terminal", 27.0, _unit(-0.35, -0.6, -0.7, 0.35)))
    return waves


def _morphology(
    state: PatientState, rng: np.random.Generator, bank: dict[str, _Template], territory: str
) -> _Morphology:
    """Wave list of one record: axis, voltage, intervals and findings from the state."""
    age_dev = float(state.age) - 50.0
    frontal = float(np.clip(-0.35 * age_dev + rng.normal(0.0, 15.0), -50.0, 40.0))
    horizontal = float(rng.normal(0.0, 10.0))
    rot = _rot_y(horizontal) @ _rot_z(frontal)
    t_rot = _rot_y(0.5 * horizontal) @ _rot_z(0.6 * frontal)

    qrs = [_Wave(w.template, w.centre_ms, rot @ w.vector) for w in _qrs_waves(state.bbb)]
    qrs_on = min(w.centre_ms + bank[w.template].lo for w in qrs)
    j_point = max(w.centre_ms + bank[w.template].hi for w in qrs)

    # P: right-atrial (early, inferior-anterior) then left-atrial (later, leftward-posterior)
    pr = 150.0 + 0.3 * age_dev + rng.normal(0.0, 12.0) - 0.25 * (state.heart_rate - 70.0)
    pr = float(np.clip(pr, 110.0, 210.0))
    p_amp = float(rng.uniform(0.7, 1.2))
    p_lo = bank["p"].lo
    first_p = qrs_on - pr - p_lo  # centre of the first P component
    p_waves = [
        _Wave("p", first_p, _unit(0.3, 0.85, 0.45, 0.12 * p_amp)),
        _Wave("p", first_p + 24.0, _unit(0.85, 0.45, -0.4, 0.10 * p_amp)),
    ]

    # T: concordant with the QRS in a normal heart, rotated away from the late forces in BBB
    qtc = (405.0 if state.sex == "M" else 425.0) + 0.4 * age_dev + rng.normal(0.0, 12.0)
    t_amp = float(rng.uniform(0.75, 1.25))
    if state.bbb == "lbbb":
        t_vec = _unit(-0.6, 0.1, 0.75, 0.45 * t_amp)
    elif state.bbb == "rbbb":
        t_vec = _unit(0.75, 0.55, -0.25, 0.40 * t_amp)
    else:
        t_vec = _unit(0.6, 0.65, 0.45, 0.42 * t_amp)
    # the JT interval is what repolarisation keeps: a wide QRS lengthens the QT by its excess
    t_wave = _Wave("t", j_point + qtc - _NORMAL_QRS_MS - bank["t"].hi, t_rot @ t_vec)

    st_centre = j_point - 10.0 - bank["st_plateau"].lo  # rises from 10 ms before J
    st = None
    if territory:
        size = 0.25 + 0.2 * float(np.clip(state.severity, 0.0, 1.0))
        direction = _ST_DIRECTIONS[territory]
        st = _Wave("st_plateau", st_centre, _unit(*direction, size))
    return _Morphology(p=p_waves, qrs=qrs, t=t_wave, st=st, j_ms=j_point, qrs_on_ms=qrs_on)


# --------------------------------------------------------------------------------------------
# rhythm
# --------------------------------------------------------------------------------------------


def _r_times(
    rng: np.random.Generator, afib: bool, heart_rate: float, seconds: float, f_resp: float
) -> tuple[np.ndarray, np.ndarray]:
    """R times (s, sorted, with beats just outside the record) and each beat's preceding RR."""
    rr_mean = 60.0 / heart_rate
    first = float(rng.uniform(0.0, min(rr_mean, seconds)))
    n_win = max(int((seconds - first) // rr_mean), 0)
    n_pre = int(np.ceil(0.7 / (0.4 * rr_mean))) + 1
    n_post = int(np.ceil(0.4 / (0.4 * rr_mean))) + 1
    n = n_pre + n_win + n_post
    if afib:
        cv = float(rng.uniform(0.15, 0.25))
        z = rng.gamma(4.0, 1.0, size=n)  # right-skewed like AF interval histograms
        z = (z - 4.0) / 2.0
        win = slice(n_pre, n_pre + n_win)
        if n_win >= 3:
            z[win] = (z[win] - z[win].mean()) / z[win].std()
        rr = rr_mean * (1.0 + cv * z)
        rr = np.maximum(rr, min(0.3, 0.6 * rr_mean))  # refractory floor
    else:
        rsa = float(rng.uniform(0.01, 0.045))  # respiratory sinus arrhythmia
        phase = float(rng.uniform(0.0, 2.0 * np.pi))
        k = np.arange(n) - n_pre
        rr = rr_mean * (
            1.0
            + rsa * np.sin(2.0 * np.pi * f_resp * k * rr_mean + phase)
            + rng.normal(0.0, 0.006, size=n)
        )
    if n_win:
        rr[n_pre : n_pre + n_win] *= n_win * rr_mean / rr[n_pre : n_pre + n_win].sum()
    before = first - np.cumsum(rr[:n_pre][::-1])[::-1]
    after = first + np.cumsum(rr[n_pre:])
    times = np.concatenate([before, [first], after])
    prev_rr = np.concatenate([[rr[0]], rr])  # rr[i] separates times[i] and times[i + 1]
    keep = (times > -0.7) & (times < seconds + 0.4)
    return times[keep], prev_rr[keep]


# --------------------------------------------------------------------------------------------
# noise on the electrodes
# --------------------------------------------------------------------------------------------


def _smooth_random(rng: np.random.Generator, rows: int, t: np.ndarray, step_s: float) -> np.ndarray:
    """Zero-mean, unit-scale random curves interpolated between knots every `step_s` seconds."""
    knots = np.arange(t[0] - step_s, t[-1] + 2.0 * step_s, step_s)
    values = rng.normal(0.0, 1.0, size=(rows, knots.size))
    return np.stack([np.interp(t, knots, v) for v in values])


def _electrode_noise(rng: np.random.Generator, t: np.ndarray, fs: int, f_resp: float) -> np.ndarray:
    """(9, T) noise on RA, LA, LL, V1..V6 in mV: baseline wander, powerline, EMG."""
    rows = 9
    # baseline wander: respiration shared by all electrodes plus slower drifts
    wander_mv = float(rng.uniform(0.02, 0.2))
    freqs = np.concatenate(
        [np.full((rows, 1), f_resp), rng.uniform(0.03, 0.12, size=(rows, 2))], axis=1
    )
    amps = wander_mv * rng.uniform(0.2, 1.0, size=(rows, 3)) * np.array([1.0, 0.6, 0.6])
    phases = rng.uniform(0.0, 2.0 * np.pi, size=(rows, 3))
    noise = np.einsum(
        "rk,rkt->rt", amps, np.sin(2.0 * np.pi * freqs[:, :, None] * t + phases[:, :, None])
    )
    # powerline at 50 or 60 Hz, skipped where the sampling rate cannot carry it
    mains = 50.0 if rng.random() < 0.5 else 60.0
    line_mv = float(rng.uniform(0.0, 0.03)) if rng.random() < 0.7 else 0.0
    line_amp = line_mv * rng.uniform(0.2, 1.0, size=(rows, 1))
    line_phase = rng.uniform(0.0, 2.0 * np.pi, size=(rows, 1))
    if mains < fs / 2.0 and line_mv > 0.0:
        noise += line_amp * np.sin(2.0 * np.pi * mains * t + line_phase)
    # muscle noise: high-passed white noise in bursts
    emg_mv = float(rng.uniform(0.002, 0.015))
    white = rng.normal(0.0, 1.0, size=(rows, t.size + 1))
    emg = np.diff(white, axis=1) / np.sqrt(2.0)
    envelope = 1.0 + np.clip(_smooth_random(rng, rows, t, 1.0), 0.0, 2.0)
    noise += emg_mv * envelope * emg
    return noise


def _fibrillation(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """(3, T) atrial dipole of f-waves: 4-9 Hz oscillation with wandering rate and size."""
    f0 = float(rng.uniform(5.0, 8.0))
    f_inst = np.clip(f0 + 0.8 * _smooth_random(rng, 1, t, 0.7)[0], 4.0, 9.0)
    dt = t[1] - t[0] if t.size > 1 else 1.0
    phase = 2.0 * np.pi * np.cumsum(f_inst) * dt + rng.uniform(0.0, 2.0 * np.pi)
    size = float(rng.uniform(0.025, 0.06))
    env = size * np.clip(1.0 + 0.3 * _smooth_random(rng, 1, t, 1.5)[0], 0.3, None)
    wave = env * (np.sin(phase) + 0.35 * np.sin(2.0 * phase + 1.0))
    return _unit(0.2, 0.55, 0.8)[:, None] * wave[None, :]


# --------------------------------------------------------------------------------------------
# assembly
# --------------------------------------------------------------------------------------------


def _wave_values(bank: dict[str, _Template], wave: _Wave, tau_ms: np.ndarray) -> np.ndarray:
    return np.interp(
        tau_ms - wave.centre_ms, _GRID_MS, bank[wave.template].values, left=0.0, right=0.0
    )


def _limb_qrs_p2p(qrs: np.ndarray) -> float:
    """Largest peak-to-peak over the six limb leads of a (3, L) QRS dipole."""
    lead_i, lead_ii = _LEAD_VECTORS[:2] @ qrs
    limbs = np.stack(
        [
            lead_i,
            lead_ii,
            lead_ii - lead_i,
            -(lead_i + lead_ii) / 2,
            lead_i - lead_ii / 2,
            lead_ii - lead_i / 2,
        ]
    )
    return float(np.max(limbs.max(axis=1) - limbs.min(axis=1)))


def _voltage_scale(state: PatientState, rng: np.random.Generator, limb_p2p: float) -> float:
    age_dev = float(state.age) - 50.0
    scale = float(np.exp(rng.normal(0.0, 0.12))) * (1.08 if state.sex == "M" else 0.94)
    scale *= float(np.clip(1.0 - 0.004 * age_dev, 0.8, 1.2))
    target_low = float(rng.uniform(0.25, 0.42))
    if state.low_voltage:
        return target_low / limb_p2p
    return max(scale, 0.65 / limb_p2p)


def simulate_ecg(
    state: PatientState, rng: np.random.Generator, fs: int = 500, seconds: float = 10.0
) -> SimulatedEcg:
    """Simulate one 12-lead record (mV, `LEADS` order) with wave annotations for `state`."""
    if fs < 100:
        raise ValueError(f"fs must be at least 100 Hz, got {fs}")
    if not seconds > 0.0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if state.rhythm not in ECG_RHYTHMS:
        raise ValueError(f"unknown rhythm {state.rhythm!r}; expected one of {ECG_RHYTHMS}")
    if state.bbb not in ("", "rbbb", "lbbb"):
        raise ValueError(f"unknown bundle branch block {state.bbb!r}")
    if not 20.0 <= state.heart_rate <= 250.0:
        raise ValueError(f"heart_rate {state.heart_rate} outside 20-250 bpm")

    bank = _template_bank()
    afib = state.rhythm == "afib"
    n = round(seconds * fs)
    t = np.arange(n) / fs
    # every draw happens in a fixed order whatever the state, so one seed gives one record
    rng.random()  # keeps the draw order of records made before the territory lived in the state
    territory = state.st_territory if state.st_elevation else ""
    morph = _morphology(state, rng, bank, territory)
    f_resp = float(rng.uniform(0.15, 0.35))  # breathing drives RR, QRS size and baseline
    r_times, prev_rr = _r_times(rng, afib, state.heart_rate, seconds, f_resp)

    offsets = np.arange(-round(0.33 * fs), round(0.62 * fs) + 1)
    tau = offsets * (1000.0 / fs)

    qrs = sum(np.outer(w.vector, _wave_values(bank, w, tau)) for w in morph.qrs)
    scale = _voltage_scale(state, rng, _limb_qrs_p2p(qrs))
    fixed = (
        qrs if afib else qrs + sum(np.outer(w.vector, _wave_values(bank, w, tau)) for w in morph.p)
    )

    # QT-dependent waves, stretched about the J point by (preceding RR)^(1/3)
    stretch = np.clip(prev_rr, 0.3, 1.8) ** (1.0 / 3.0)
    u = morph.j_ms + (tau[None, :] - morph.j_ms) / stretch[:, None]
    beats = fixed[:, None, :] + morph.t.vector[:, None, None] * _wave_values(bank, morph.t, u)[None]
    beats = beats * scale
    if morph.st is not None:  # injury current keeps its size in low voltage
        beats = beats + morph.st.vector[:, None, None] * _wave_values(bank, morph.st, u)[None]

    gain = 1.0 + 0.04 * np.sin(2.0 * np.pi * f_resp * r_times + rng.uniform(0.0, 2.0 * np.pi))
    gain = gain + rng.normal(0.0, 0.015, size=r_times.size)
    beats = beats * gain[None, :, None]

    r_idx = np.round(r_times * fs).astype(np.int64)
    idx = r_idx[:, None] + offsets[None, :]
    valid = (idx >= 0) & (idx < n)
    flat_idx = idx[valid]
    dipole = np.stack([np.bincount(flat_idx, weights=b[valid], minlength=n) for b in beats])
    if afib:
        dipole += scale * _fibrillation(rng, t)

    cardiac = _LEAD_VECTORS @ dipole  # (8, T): I, II, V1..V6
    e = _electrode_noise(rng, t, fs, f_resp)
    wct = e[:3].mean(axis=0)
    lead_i = (cardiac[0] + e[1] - e[0]).astype(np.float32)
    lead_ii = (cardiac[1] + e[2] - e[0]).astype(np.float32)
    chest = (cardiac[2:] + e[3:] - wct).astype(np.float32)
    half = np.float32(0.5)
    limbs = np.stack(
        [
            lead_i,
            lead_ii,
            lead_ii - lead_i,
            -(lead_i + lead_ii) * half,
            lead_i - lead_ii * half,
            lead_ii - lead_i * half,
        ]
    )
    signal = np.concatenate([limbs, chest], axis=0)

    annotations = _annotations(bank, morph, r_times, stretch, fs, n, afib)
    return SimulatedEcg(signal=signal, annotations=annotations, fs=fs, st_territory=territory)


def _annotations(
    bank: dict[str, _Template],
    morph: _Morphology,
    r_times: np.ndarray,
    stretch: np.ndarray,
    fs: int,
    n: int,
    afib: bool,
) -> dict[str, np.ndarray]:
    """Sample indices of the wave boundaries of every beat, kept where inside the record."""
    p_on = min(w.centre_ms + bank[w.template].lo for w in morph.p)
    p_off = max(w.centre_ms + bank[w.template].hi for w in morph.p)
    t_end = morph.t.centre_ms + bank[morph.t.template].hi
    times_ms = {
        "r_peaks": np.zeros_like(r_times),
        "p_onsets": np.full_like(r_times, p_on),
        "p_offsets": np.full_like(r_times, p_off),
        "qrs_onsets": np.full_like(r_times, morph.qrs_on_ms),
        "qrs_offsets": np.full_like(r_times, morph.j_ms),
        "t_offsets": morph.j_ms + (t_end - morph.j_ms) * stretch,
    }
    r_idx = np.round(r_times * fs).astype(np.int64)
    out = {}
    for key in ANNOTATION_KEYS:
        if afib and key in ("p_onsets", "p_offsets"):
            out[key] = np.zeros(0, dtype=np.int64)
            continue
        idx = r_idx + np.round(times_ms[key] * fs / 1000.0).astype(np.int64)
        out[key] = idx[(idx >= 0) & (idx < n)]
    return out
