"""Frontal (PA) chest radiograph phantom of a `PatientState`.

The phantom is an attenuation map built from implicit shapes on a coordinate grid, then passed
through a random exposure (log response, contrast, brightness, gamma), quantum-like noise and a
slight detector blur. Anatomy: body and shoulders, lungs, mediastinum with aortic knob, heart,
diaphragm domes with a gastric bubble, posterior ribs, clavicles, spine, trachea, hila and
branching lung markings. Findings of `CXR_FINDINGS` are drawn where the state says they are, and
each one's region is returned as a mask so that localisation can be checked.

Coordinates. The grid is normalised to x, y in [-1, 1] with x growing to the image right and y
growing downwards. The image follows the standard PA display: the patient's RIGHT is on the image
LEFT (x < 0) and the patient's LEFT on the image right (x > 0); the heart bulges to x > 0.
Anatomy is drawn in a patient frame that is slightly rotated, shifted and scaled against the
image frame (positioning variation).

Randomness. `render_cxr` draws one seed per component (anatomy, lung markings, exposure, noise,
one per finding) from the caller's generator before anything else, so the same anatomy, exposure
and noise are drawn whichever findings are present: toggling a finding changes only its own
pixels (and, for cardiomegaly, the lung fields the larger heart covers).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from medtriad.data.synthetic.state import CXR_FINDINGS, SIDES, ZONES, PatientState
from medtriad.errors import DataError

_STREAMS: tuple[str, ...] = ("anatomy", "markings", "exposure", "noise", *CXR_FINDINGS)
_NORMAL_CTR = (0.38, 0.48)
_CARDIOMEGALY_CTR = (0.52, 0.65)
_MIN_SIZE = 32

Array = np.ndarray


@dataclass(frozen=True)
class PhantomCxr:
    """One rendered radiograph.

    image: uint8 (size, size), bone/tissue bright and air dark (clinical display).
    masks: one bool (size, size) region per present finding of CXR_FINDINGS.
    ctr: cardiothoracic ratio measured on the phantom (heart max width / thorax max inner width).
    anatomy: bool (size, size) masks of the anatomy ("thorax", "lung_right", "lung_left",
        "heart", "mediastinum", "body"), right/left meaning the patient's side.
    """

    image: Array
    masks: dict[str, Array]
    ctr: float
    anatomy: dict[str, Array]


# ----------------------------------------------------------------------------------- helpers


def _soft(sd: Array, width: float) -> Array:
    """Sigmoid of a signed distance (positive inside): a shape edge `width` wide."""
    t = sd * (1.0 / width)
    np.tanh(t, out=t)
    t *= 0.5
    t += 0.5
    return t


def _ellipse_sd(dx: Array, dy: Array, a: Array | float, b: float) -> Array:
    """First-order signed distance to an axis-aligned ellipse (positive inside)."""
    ia2 = 1.0 / (a * a)
    ib2 = 1.0 / (b * b)
    q = dx * dx * ia2 + dy * dy * ib2
    grad = 2.0 * np.sqrt((dx * ia2) ** 2 + (dy * ib2) ** 2) + 1e-3
    return (1.0 - q) / grad


def _width(mask: Array) -> int:
    """Horizontal extent of a mask in pixels (leftmost to rightmost set column), as the
    transverse diameters of the cardiothoracic ratio are measured."""
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[-1] - cols[0] + 1) if cols.size else 0


def _row_hull(mask: Array) -> Array:
    """Fill each row of a mask between its leftmost and rightmost set pixel."""
    left = np.logical_or.accumulate(mask, axis=1)
    right = np.logical_or.accumulate(mask[:, ::-1], axis=1)[:, ::-1]
    return left & right


_BLAS_ROWS = 16  # output rows per matmul: small products keep BLAS single-threaded


@functools.lru_cache(maxsize=32)
def _spline_matrix(size: int, cells: int) -> tuple[Array, Array]:
    """Banded (size, cells + 4) cubic B-spline matrix W (and a contiguous W.T) upsampling a
    lattice to `size` samples; rows scaled so a white-noise lattice gives unit variance."""
    u = (np.arange(size) + 0.5) / size * cells + 1.0
    base = np.floor(u).astype(np.intp)
    t = u - base
    w = (
        np.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3])
        / 6.0
    )
    w /= np.sqrt((w * w).sum(axis=0, keepdims=True))
    m = np.zeros((size, cells + 4), np.float32)
    rows = np.arange(size)
    for k in range(4):
        m[rows, base + k - 1] = w[k]
    return m, np.ascontiguousarray(m.T)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, n: int = 1) -> Array:
    """n smooth unit-variance Gaussian random fields (n, size, size), about `cells` blobs across:
    white noise on a coarse lattice Z, upsampled separably as W @ Z @ W.T.

    The product is taken in blocks of rows so that each BLAS call stays below the size at which
    BLAS spawns threads: with several worker processes on few cores threading only adds waits."""
    m, mt = _spline_matrix(size, cells)
    z = rng.standard_normal((n, cells + 4, cells + 4), dtype=np.float32)
    out = np.empty((n, size, size), np.float32)
    for j in range(n):
        a = z[j] @ mt
        for r in range(0, size, _BLAS_ROWS):
            np.matmul(m[r : r + _BLAS_ROWS], a, out=out[j, r : r + _BLAS_ROWS])
    return out


# ------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class _Anatomy:
    """Random anatomy and positioning of one patient (all Python floats, normalised units)."""

    rot: float
    shift_x: float
    shift_y: float
    scale: float
    body_w: float
    shoulder_w: float
    neck_w: float
    shoulder_y: float
    soft: float
    lung_cx: tuple[float, float]  # (right, left) |x| of each lung's centre
    lung_a: tuple[float, float]
    lung_b: tuple[float, float]
    lung_cy: tuple[float, float]
    lung_egg: float
    lung_depth: float
    dome_top: tuple[float, float]
    dome_u: tuple[float, float]
    dome_k: float
    med_r: float
    med_l: float
    knob: float
    normal_ctr: float
    heart_tilt: float
    heart_aspect: float
    heart_offset: float
    hilum_u: float
    hilum_y: tuple[float, float]
    rib_alpha: float
    rib_beta: float
    rib_top: float
    rib_count: float
    rib_warp: float
    clav_y: float
    clav_slope: float
    spine_w: float
    disc_period: float
    disc_phase: float
    breast: float
    breast_r: float
    bubble: float
    bubble_r: float


def _draw_anatomy(rng: np.random.Generator, sex: str) -> _Anatomy:
    u = rng.uniform
    female = sex == "F"
    lung_a = u(0.42, 0.47) * (0.96 if female else 1.0)
    dome_r = u(0.40, 0.50)
    hy = u(-0.06, 0.02)
    return _Anatomy(
        rot=u(-0.05, 0.05),
        shift_x=u(-0.035, 0.035),
        shift_y=u(-0.03, 0.04),
        scale=u(0.93, 1.04),
        body_w=u(0.86, 0.95) * (0.96 if female else 1.0),
        shoulder_w=u(1.0, 1.12),
        neck_w=u(0.17, 0.22),
        shoulder_y=u(-0.93, -0.84),
        soft=u(0.33, 0.40),
        lung_cx=(u(0.36, 0.41), u(0.35, 0.40)),
        lung_a=(lung_a, lung_a - u(0.0, 0.03)),
        lung_b=(u(0.86, 0.94), u(0.88, 0.96)),
        lung_cy=(u(0.12, 0.2), u(0.14, 0.22)),
        lung_egg=u(0.22, 0.38),
        lung_depth=u(0.22, 0.29),
        dome_top=(dome_r, dome_r + u(0.02, 0.07)),
        dome_u=(u(0.30, 0.40), u(0.30, 0.40)),
        dome_k=u(1.1, 1.6),
        med_r=u(0.11, 0.14),
        med_l=u(0.09, 0.12),
        knob=u(0.045, 0.08),
        normal_ctr=u(*_NORMAL_CTR),
        heart_tilt=u(0.45, 0.7),
        heart_aspect=u(0.68, 0.78),
        heart_offset=u(0.28, 0.36),
        hilum_u=u(0.14, 0.18),
        hilum_y=(hy, hy - u(0.02, 0.06)),
        rib_alpha=u(0.55, 0.7),
        rib_beta=u(0.72, 0.9),
        rib_top=u(-0.86, -0.78),
        rib_count=u(9.0, 10.5),
        rib_warp=u(0.2, 0.4),
        clav_y=u(-0.58, -0.5),
        clav_slope=u(0.3, 0.45),
        spine_w=u(0.065, 0.08),
        disc_period=u(0.085, 0.105),
        disc_phase=u(0.0, 1.0),
        breast=u(0.05, 0.09) if female else u(0.0, 0.02),
        breast_r=u(0.30, 0.40),
        bubble=u(0.06, 0.14) if rng.random() < 0.75 else 0.0,
        bubble_r=u(0.06, 0.1),
    )


# ------------------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class _Grid:
    x: Array  # patient frame, (size, size) float32
    y: Array
    px: float  # one pixel in patient-frame units
    size: int
    y_lo: Array  # per image row: smallest / largest patient-frame y
    y_hi: Array
    x_lo: Array  # per image column: smallest / largest patient-frame x
    x_hi: Array

    def rows(self, lo: float, hi: float) -> slice:
        """Image rows reaching patient-frame y in [lo, hi] (to draw small parts on a band)."""
        hit = np.flatnonzero((self.y_hi >= lo) & (self.y_lo <= hi))
        return slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 0)

    def cols(self, lo: float, hi: float) -> slice:
        """Image columns reaching patient-frame x in [lo, hi]."""
        hit = np.flatnonzero((self.x_hi >= lo) & (self.x_lo <= hi))
        return slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 0)


def _grid(size: int, an: _Anatomy) -> _Grid:
    c = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)
    xi = c[None, :] - an.shift_x
    yi = c[:, None] - an.shift_y
    cr, sr = math.cos(an.rot) / an.scale, math.sin(an.rot) / an.scale
    x = cr * xi + sr * yi
    y = -sr * xi + cr * yi
    return _Grid(
        x=x,
        y=y,
        px=2.0 / size / an.scale,
        size=size,
        y_lo=y.min(axis=1),
        y_hi=y.max(axis=1),
        x_lo=x.min(axis=0),
        x_hi=x.max(axis=0),
    )


# ---------------------------------------------------------------------------------- anatomy


@dataclass
class _Scene:
    """Working maps: total attenuation = tissue - air + markings."""

    tissue: Array
    air: Array  # lung air (how much the lungs lower the attenuation)
    markings: Array
    lung: tuple[Array, Array]  # soft lung fields (right, left)
    lung_sd: tuple[Array, Array]  # signed distance to each hemithorax wall
    thorax: Array  # bool
    heart: Array  # bool
    mediastinum: Array  # bool
    body: Array  # bool
    theta: Array  # perturbed angle around the hila (for branching textures)
    radius: Array  # distance to the nearer hilum
    ctr: float


def _dome_y(an: _Anatomy, x: Array | float) -> Array | float:
    """Diaphragm height: the upper envelope of one parabolic dome per side."""
    right = an.dome_top[0] + an.dome_k * (x + an.dome_u[0]) ** 2
    left = an.dome_top[1] + an.dome_k * (x - an.dome_u[1]) ** 2
    return np.minimum(right, left)


def _hilum_y(an: _Anatomy, x: Array) -> Array:
    """Height of the hilum on each side of the grid (the left hilum sits higher)."""
    return np.where(x > 0, np.float32(an.hilum_y[1]), np.float32(an.hilum_y[0]))


def _body(g: _Grid, an: _Anatomy, ax: Array, w: float) -> Array:
    """Soft body outline: neck, rounded shoulder caps, chest wall tapering to body_w."""
    t = np.clip((g.y - an.shoulder_y) * (1.0 / 0.28), 0.0, 1.0)
    cap = np.sqrt(np.clip(1.0 - (1.0 - t) ** 2, 0.0, 1.0))
    taper = np.clip((g.y + 0.55) * (1.0 / 0.7), 0.0, 1.0)
    half_w = an.neck_w + (an.shoulder_w - an.neck_w) * cap - (an.shoulder_w - an.body_w) * taper
    return _soft(np.minimum(half_w - ax, g.y - (an.shoulder_y - 0.2)), 2.5 * w)


def _heart(g: _Grid, an: _Anatomy, dome: Array, thorax: Array, ctr: float, w: float) -> Array:
    """Soft cardiac silhouette: a tilted ellipse on the left dome, sized so that its
    transverse diameter is `ctr` times the thorax width measured on this grid."""
    half = ctr * _width(thorax) * g.px / 2.0
    ct, st = math.cos(an.heart_tilt), math.sin(an.heart_tilt)
    rx = half / math.sqrt(ct * ct + (an.heart_aspect * st) ** 2)
    ry = an.heart_aspect * rx
    hx = an.heart_offset * half
    v_half = math.sqrt((rx * st) ** 2 + (ry * ct) ** 2)
    # the lateral extremes sit off the centre row (tilted ellipse): keep both above the domes
    offset = (rx * rx - ry * ry) * st * ct / half
    hy = min(float(_dome_y(an, hx)) - 0.5 * v_half, float(_dome_y(an, hx + half)) - offset - 0.02)
    dx, dy = g.x - hx, g.y - hy
    sd = _ellipse_sd(ct * dx + st * dy, ct * dy - st * dx, rx, ry)
    return _soft(sd, w) * _soft(dome + 0.03 - g.y, w)


def _mediastinum(g: _Grid, an: _Anatomy, w: float) -> Array:
    """Soft mediastinal band: SVC border on the right, aortic knob and pulmonary trunk left."""
    y = g.y
    wr = an.med_r + 0.03 * np.clip((y + 0.6) * (1.0 / 0.6), 0.0, 1.0)
    wl = (
        an.med_l
        + an.knob * np.exp(-(((y + 0.40) * (1.0 / 0.07)) ** 2))
        + 0.025 * np.exp(-(((y + 0.22) * (1.0 / 0.06)) ** 2))
    )
    return _soft(np.minimum(g.x + wr, wl - g.x), w)


def _add_bones(
    tissue: Array, g: _Grid, an: _Anatomy, eggs: list[Array], lungs: Array, w: float
) -> None:
    """Spine, posterior and anterior ribs, clavicles and humeral heads, added in place."""
    x, y = g.x, g.y
    ax = np.abs(x)
    # spine with disc spaces, visible through the mediastinum
    c = g.cols(-an.spine_w - 0.05, an.spine_w + 0.05)
    ys, xs = y[:, c], x[:, c]
    disc = np.clip(
        (np.cos((ys * (1.0 / an.disc_period) + an.disc_phase) * (2 * np.pi)) - 0.75) * 4.0, 0.0, 1.0
    )
    tissue[:, c] += 0.08 * _soft(an.spine_w - np.abs(xs - 0.005), 2 * w) * (1.0 - 0.4 * disc)

    # posterior ribs: arched bands of a warped coordinate, spaced wider downwards
    v = y + an.rib_alpha * ax - an.rib_beta * ax * ax
    tt = np.clip((v - an.rib_top) * (1.0 / (0.95 - an.rib_top)), 0.0, 1.0)
    phase = an.rib_count * (tt * (1.0 + an.rib_warp) - an.rib_warp * tt * tt)
    rib = np.clip((np.cos(phase * (2 * np.pi)) - 0.15) * 2.5, 0.0, 1.0)
    win = _soft(np.maximum(eggs[0], eggs[1]) + 0.04, 3 * w) * _soft(ax - an.spine_w, 3 * w)
    win *= v > an.rib_top + 0.02
    # anterior ribs: fainter, running down and medially, ending at the costal cartilages
    va = y + 0.5 * ax + 0.25 * ax * ax
    ant = np.clip((np.cos((va - an.rib_top) * (2 * np.pi / 0.24)) - 0.3) * 2.5, 0.0, 1.0)
    ant *= _soft(ax - 0.3, 0.05) * (va < 0.85)
    tissue += (0.06 * rib + 0.03 * ant) * win * (0.5 + 0.5 * lungs)

    # clavicles: slightly S-shaped bands rising laterally
    r = g.rows(an.clav_y - an.clav_slope * 0.6 - 0.1, an.clav_y + 0.1)
    ys, axr = y[r], ax[r]
    uc = np.clip((axr - 0.06) * (1.0 / 0.55), 0.0, 1.0)
    yc = an.clav_y - an.clav_slope * (axr - 0.06) + 0.03 * np.sin(uc * (2 * np.pi))
    clav = (
        _soft(0.032 + 0.012 * uc - np.abs(ys - yc), w)
        * _soft(axr - 0.06, 2 * w)
        * _soft(0.62 - axr, 2 * w)
    )
    tissue[r] += 0.15 * clav

    # humeral heads at the shoulders
    hy = an.shoulder_y + 0.2
    r = g.rows(hy - 0.18, hy + 0.18)
    hsd = np.hypot(ax[r] - an.shoulder_w + 0.02, y[r] - hy) - 0.15
    tissue[r] += 0.22 * _soft(-hsd, 2 * w)


def _markings(
    tissue: Array, lungs: Array, g: _Grid, an: _Anatomy, rng: np.random.Generator
) -> tuple[Array, Array, Array]:
    """Adds the hila to `tissue`; returns the lung markings (branching vessels radiating from
    the hila, stronger near them, plus fine texture) and the hilar angle and radius maps."""
    x, y = g.x, g.y
    hil_y = _hilum_y(an, x)
    ddx, ddy = np.abs(x) - an.hilum_u, y - hil_y
    radius = np.sqrt(ddx * ddx + ddy * ddy)
    wig = _smooth_noise(rng, g.size, 6, 3)
    bend = 0.075 * wig[0] + 0.02 * _smooth_noise(rng, g.size, 16)[0]
    theta = np.arctan2(ddy, ddx) + bend / (radius + 0.2)
    fine = _smooth_noise(rng, g.size, 12)[0]
    texture = 0.01 * _smooth_noise(rng, g.size, 36)[0] + 0.02 * wig[1]
    tissue += 0.1 * np.exp(-((radius * (1.0 / 0.09)) ** 2)) * (1.0 + 0.4 * wig[2])
    markings = np.zeros_like(tissue)
    r = np.flatnonzero(lungs.max(axis=1) > 0.01)
    r = slice(int(r[0]), int(r[-1]) + 1) if r.size else slice(0, 0)
    vessels = _branches(theta[r], radius[r], 10, 0.13, 0.026)
    vessels *= np.clip(0.35 + 0.8 * fine[r], 0.0, 1.0)
    markings[r] = lungs[r] * (0.13 * np.exp(-radius[r] * (1.0 / 0.4)) * vessels + texture[r])
    return markings, theta, radius


def _build_anatomy(
    g: _Grid, an: _Anatomy, ctr_target: float, mk_rng: np.random.Generator
) -> _Scene:
    x, y, w = g.x, g.y, 1.2 * g.px
    ax = np.abs(x)
    body = _body(g, an, ax, w)
    tissue = body * (an.soft + 0.10 * np.clip(ax / an.body_w, 0.0, 1.0) ** 6)

    # diaphragm, abdomen below it and the gastric bubble under the left dome
    dome = _dome_y(an, x)
    above = _soft(dome - y, w)
    tissue += 0.18 * (1.0 - above) * body
    if an.bubble > 0:
        bx = an.dome_u[1] + 0.1
        by = an.dome_top[1] + an.dome_k * 0.01 + 0.06 + an.bubble_r
        r = g.rows(by - an.bubble_r - 0.05, by + an.bubble_r + 0.05)
        bsd = _ellipse_sd(x[r] - bx, y[r] - by, an.bubble_r * 1.5, an.bubble_r)
        tissue[r] -= an.bubble * _soft(bsd, w) * (1.0 - above[r])

    # hemithoraces: egg shapes widening downwards, cut by the domes
    eggs = []
    for i, sgn in ((0, -1.0), (1, 1.0)):
        dy = y - an.lung_cy[i]
        a = an.lung_a[i] * np.clip(1.0 + an.lung_egg * dy * (1.0 / an.lung_b[i]), 0.3, None)
        eggs.append(_ellipse_sd(x - sgn * an.lung_cx[i], dy, a, an.lung_b[i]))
    thorax = _row_hull(((eggs[0] > 0) | (eggs[1] > 0)) & (y < dome))

    heart_soft = _heart(g, an, dome, thorax, ctr_target, w)
    med_soft = _mediastinum(g, an, w)
    tissue += np.maximum(0.14 * med_soft, 0.18 * heart_soft) * above

    # lungs and their air, deeper (darker) away from the chest wall
    central = 1.0 - np.maximum(med_soft, heart_soft)
    lung = []
    air = np.zeros_like(x)
    for i in (0, 1):
        ls = _soft(eggs[i], w) * above * central * _soft(-x if i == 0 else x, w)
        lung.append(ls)
        air += ls * (an.lung_depth * (0.78 + 0.22 * np.clip(eggs[i] * (1.0 / 0.18), 0.0, 1.0)))
    lungs = lung[0] + lung[1]

    # breast / pectoral shadows over the lower zones
    if an.breast > 0:
        r = g.rows(0.5 - an.breast_r - 0.1, 2.0)
        bsd = _ellipse_sd(ax[r] - 0.45, y[r] - 0.5, an.breast_r * 1.25, an.breast_r)
        tissue[r] += an.breast * _soft(bsd, 6 * w) * body[r]

    # trachea: an air column down to the carina
    r = g.rows(-2.0, -0.1)
    xr, yr = x[r], y[r]
    tx = 0.01 - 0.015 * np.clip(-(yr + 0.3), 0.0, 1.0)
    tissue[r] -= 0.15 * _soft(0.032 - np.abs(xr - tx), w) * _soft(-0.22 - yr, 4 * w) * body[r]

    _add_bones(tissue, g, an, eggs, lungs, w)
    markings, theta, radius = _markings(tissue, lungs, g, an, mk_rng)
    heart = heart_soft > 0.5
    return _Scene(
        tissue=tissue,
        air=air,
        markings=markings,
        lung=(lung[0], lung[1]),
        lung_sd=(eggs[0], eggs[1]),
        thorax=thorax | heart,
        heart=heart,
        mediastinum=(med_soft > 0.5) & (y < dome) & thorax,
        body=body > 0.5,
        theta=theta,
        radius=radius,
        ctr=_width(heart) / max(_width(thorax), 1),
    )


def _branches(theta: Array, radius: Array, n: int, r_branch: float, width0: float) -> Array:
    """Tapering tubes along rays of the perturbed angle around a hilum; their number doubles
    every r_branch of radius, so the lines fork as they run out (vessel-like branching).

    Each tube has a parabolic cross-section, 1 - (d / half_width)^2, written through
    1 - cos(n * theta) ~ (n * theta)^2 / 2 so that no distance field is needed."""
    width = width0 * (1.0 - 0.6 * np.clip(radius * 1.2, 0.0, 1.0)) + 1e-3
    inv_w2 = radius * radius / (width * width)
    c = np.cos(theta * n)
    out = np.clip(1.0 - inv_w2 * (2.0 / n**2) * (1.0 - c), 0.0, 1.0)
    for k in (1, 2):
        c = 2.0 * c * c - 1.0  # cos(2^k * n * theta)
        nk = n * 2**k
        ridge = np.clip(1.0 - inv_w2 * (2.0 / nk**2) * (1.0 - c), 0.0, 1.0)
        gate = np.clip((radius - k * r_branch) * (1.0 / r_branch), 0.0, 1.0)
        out = np.maximum(out, ridge * gate)
    return out


# --------------------------------------------------------------------------------- findings


def _sev01(state: PatientState) -> float:
    return float(np.clip((state.severity - 0.4) / 0.6, 0.0, 1.0))


def _sides(side: str) -> tuple[int, ...]:
    return {"right": (0,), "left": (1,), "bilateral": (0, 1)}[side]


def _effusion(
    s: _Scene, g: _Grid, an: _Anatomy, state: PatientState, rng: np.random.Generator
) -> Array:
    """Fluid at the base: meniscus rising laterally, blunted angle, homogeneous opacity."""
    sev = _sev01(state)
    mask = np.zeros(g.x.shape, bool)
    for i in _sides(state.effusion_side):
        u = -g.x if i == 0 else g.x
        lat = an.lung_cx[i] + an.lung_a[i] * 1.1
        frac = np.clip((u - 0.08) * (1.0 / (lat - 0.08)), 0.0, 1.0)
        level = an.dome_top[i] - (0.06 + 0.30 * sev) * rng.uniform(0.85, 1.15)
        rise = (0.10 + 0.12 * sev) * rng.uniform(0.85, 1.15)
        meniscus = level - rise * frac * frac
        fluid = _soft(g.y - meniscus, 0.02) * s.lung[i]
        s.air = s.air * (1.0 - fluid)
        s.tissue = s.tissue + (0.12 + 0.04 * sev) * fluid
        s.markings = s.markings * (1.0 - fluid)
        mask |= (fluid > 0.5) & (s.lung[i] > 0.5)
    return mask


def _edema(
    s: _Scene, g: _Grid, an: _Anatomy, state: PatientState, rng: np.random.Generator
) -> Array:
    """Perihilar bat-wing haze, Kerley B lines at the lateral bases, upper-lobe diversion.

    The region is where any of the three signs is drawn: the haze, the upper zones whose
    vessels are made prominent, and the basal band that holds the Kerley lines (all within the
    lungs). A model that reads oedema from the upper-zone vessels points at oedema."""
    sev = _sev01(state)
    lungs = s.lung[0] + s.lung[1]
    sx, sy = 0.30 + 0.14 * sev, 0.30 + 0.10 * sev
    hil_y = _hilum_y(an, g.x)
    ddx, ddy = np.abs(g.x) - an.hilum_u, g.y - hil_y
    haze_w = np.exp(-((ddx * (1.0 / sx)) ** 2) - (ddy * (1.0 / sy)) ** 2)
    blot = 0.8 + 0.2 * _smooth_noise(rng, g.size, 10)[0]
    amp = 0.35 + 0.3 * sev
    s.air = s.air * (1.0 - amp * haze_w * blot * lungs)
    s.tissue = s.tissue + (0.03 + 0.03 * sev) * haze_w * lungs
    # vessels made indistinct near the hila, prominent in the upper zones
    upper = np.clip((hil_y - g.y) * 2.5, 0.0, 1.0)
    s.markings = s.markings * (1.0 + 0.8 * upper)
    # Kerley B: short horizontal lines within a band along the lateral pleura at the bases
    kb = np.zeros_like(g.x)
    for i in (0, 1):
        band = np.clip(1.0 - s.lung_sd[i] * (1.0 / 0.08), 0.0, 1.0) * s.lung[i]
        base = np.clip((g.y - (hil_y + 0.12)) * 4.0, 0.0, 1.0)
        kb = kb + band * base
    jitter = 0.6 * _smooth_noise(rng, g.size, 14)[0]
    lines = np.clip((np.cos((g.y * (1.0 / 0.028) + jitter) * (2 * np.pi)) - 0.55) * 2.2, 0.0, 1.0)
    s.tissue = s.tissue + (0.05 + 0.05 * sev) * kb * lines
    return ((haze_w > 0.4) | (upper > 0.5) | (kb > 0.5)) & (lungs > 0.5)


def _pneumothorax(
    s: _Scene, g: _Grid, an: _Anatomy, state: PatientState, rng: np.random.Generator
) -> Array:
    """Air rim between chest wall and a thin visceral pleural line, apical and lateral."""
    sev = _sev01(state)
    i = _sides(state.pneumothorax_side)[0]
    depth = (0.10 + 0.12 * sev) * rng.uniform(0.9, 1.1)
    # full depth from the apex down the lateral wall, none along the mediastinum or the base
    u = g.x * (-1.0 if i == 0 else 1.0) - an.lung_cx[i]
    taper = np.clip((an.dome_top[i] - 0.02 - g.y) * (1.0 / 0.4), 0.0, 1.0)
    taper *= np.clip((u + 0.12) * (1.0 / 0.12), 0.0, 1.0)
    d = depth * taper
    sd = s.lung_sd[i]
    lung = s.lung[i]
    rim = _soft(d - sd, 1.0 * g.px) * lung
    line = np.exp(-(((sd - d) * (1.0 / (0.9 * g.px))) ** 2)) * lung * np.clip(taper * 4.0, 0.0, 1.0)
    s.markings = s.markings * (1.0 - rim)
    # no lung parenchyma beyond the line: more air, nothing but chest wall left
    s.air = s.air + rim * (0.12 + 0.04 * sev)
    s.tissue = s.tissue + 0.07 * line
    # collapsed lung slightly denser medial to the line
    inner = _soft(sd - d, 3 * g.px) * lung * taper
    s.air = s.air - 0.1 * sev * s.air * inner
    return (rim > 0.5) & (lung > 0.5)


def _consolidation(
    s: _Scene, g: _Grid, an: _Anatomy, state: PatientState, rng: np.random.Generator
) -> Array:
    """Patchy airspace opacity with air bronchograms in the requested side and zone."""
    sev = _sev01(state)
    i = _sides(state.consolidation_side)[0]
    lung = s.lung[i]
    inside = lung > 0.5
    ys = g.y[inside]
    t = {"upper": 0.2, "middle": 0.5, "lower": 0.78}[state.consolidation_zone]
    t += rng.uniform(-0.03, 0.03)
    cy = float(ys.min() + t * (ys.max() - ys.min()))
    xs = g.x[inside & (np.abs(g.y - cy) < 2 * g.px)]
    cx = float(xs.min() + rng.uniform(0.35, 0.65) * (xs.max() - xs.min()))
    rx = (0.15 + 0.10 * sev) * rng.uniform(0.85, 1.15)
    ry = (0.11 + 0.07 * sev) * rng.uniform(0.85, 1.15)
    coarse = _smooth_noise(rng, g.size, 12)[0]
    fine = _smooth_noise(rng, g.size, 32)[0]
    q = ((g.x - cx) * (1.0 / rx)) ** 2 + ((g.y - cy) * (1.0 / ry)) ** 2
    # lobular: noise breaks the envelope's rim into confluent patches with ill-defined edges,
    # while its core stays opaque (so every consolidation shows)
    env = np.exp(-0.6 * q)
    field = env * (1.0 + (0.45 * coarse + 0.2 * fine) * (1.2 - env)) - 0.45
    cons = np.clip(field * 2.5, 0.0, 1.0) * lung
    dens = (0.65 + 0.35 * sev) * np.clip(0.85 + 0.25 * fine, 0.4, 1.0)
    s.air = s.air * (1.0 - dens * cons)
    s.tissue = s.tissue + 0.05 * cons
    s.markings = s.markings * (1.0 - 0.7 * cons)
    rot = rng.uniform(0, 2 * np.pi)
    rows, cols = np.flatnonzero(cons.max(axis=1) > 0), np.flatnonzero(cons.max(axis=0) > 0)
    if rows.size:
        box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
        bronch = _branches(s.theta[box] + rot, s.radius[box], 8, 0.2, 0.012)
        s.tissue[box] -= 0.06 * bronch * cons[box] ** 2
    return (field > 0.1) & (lung > 0.5)  # where the opacity reaches a fifth of its density


_FINDING_DRAW = {
    "effusion": _effusion,
    "edema": _edema,
    "pneumothorax": _pneumothorax,
    "consolidation": _consolidation,
}


# --------------------------------------------------------------------------------- exposure


def _expose(
    att: Array, rng: np.random.Generator, noise_rng: np.random.Generator, size: int
) -> Array:
    """Log-like detector response, contrast/brightness/gamma, quantum-like noise, slight blur."""
    mu = rng.uniform(1.6, 2.2)
    contrast = rng.uniform(0.88, 1.15)
    bright = rng.uniform(-0.06, 0.06)
    gamma = rng.uniform(0.8, 1.25)
    sigma = rng.uniform(0.015, 0.035)
    blur = rng.uniform(0.5, 0.85) * size / 256
    v = (1.0 - np.exp(-mu * np.clip(att, 0.0, None))) * (1.0 / (1.0 - math.exp(-mu)))
    v = np.clip((v - 0.5) * contrast + 0.5 + bright, 0.0, 1.0) ** gamma
    v = v + sigma * np.sqrt(v + 0.1) * noise_rng.standard_normal(v.shape, dtype=np.float32)
    v = gaussian_filter(v, blur, mode="nearest")
    return (np.clip(v, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------------------------- API


def _validate(state: PatientState, size: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < _MIN_SIZE:
        raise ValueError(f"size must be an integer >= {_MIN_SIZE}, got {size!r}")
    checks = (
        (state.effusion, "effusion_side", state.effusion_side, (*SIDES, "bilateral")),
        (state.pneumothorax, "pneumothorax_side", state.pneumothorax_side, SIDES),
        (state.consolidation, "consolidation_side", state.consolidation_side, SIDES),
        (state.consolidation, "consolidation_zone", state.consolidation_zone, ZONES),
    )
    for present, name, value, allowed in checks:
        if present and value not in allowed:
            raise DataError(state.sample_id, f"{name}={value!r} must be one of {allowed}")
    if not math.isfinite(state.severity):
        raise DataError(state.sample_id, f"severity={state.severity!r} is not finite")


def render_cxr(state: PatientState, rng: np.random.Generator, size: int = 256) -> PhantomCxr:
    """Render a PA chest radiograph of `state` (see the module docstring for conventions)."""
    _validate(state, size)
    seeds = rng.integers(0, 2**63 - 1, size=len(_STREAMS))
    streams = {name: np.random.default_rng(int(s)) for name, s in zip(_STREAMS, seeds)}
    an = _draw_anatomy(streams["anatomy"], state.sex)
    g = _grid(int(size), an)

    card = streams["cardiomegaly"]
    lo, hi = _CARDIOMEGALY_CTR
    ctr_target = an.normal_ctr
    if state.cardiomegaly:
        ctr_target = lo + (hi - lo) * _sev01(state) + float(card.normal(0.0, 0.01))
        ctr_target = float(np.clip(ctr_target, lo, hi + 0.01))
    s = _build_anatomy(g, an, ctr_target, streams["markings"])

    masks: dict[str, Array] = {}
    if state.cardiomegaly:
        masks["cardiomegaly"] = s.heart.copy()
    for name, draw in _FINDING_DRAW.items():
        if getattr(state, name):
            masks[name] = draw(s, g, an, state, streams[name])
    masks = {k: masks[k] for k in CXR_FINDINGS if k in masks}

    image = _expose(s.tissue - s.air + s.markings, streams["exposure"], streams["noise"], g.size)
    anatomy = {
        "thorax": s.thorax,
        "lung_right": s.lung[0] > 0.5,
        "lung_left": s.lung[1] > 0.5,
        "heart": s.heart,
        "mediastinum": s.mediastinum,
        "body": s.body,
    }
    return PhantomCxr(image=image, masks=masks, ctr=float(s.ctr), anatomy=anatomy)
