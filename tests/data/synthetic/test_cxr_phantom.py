"""The chest X-ray phantom: deterministic, anatomically laid out, findings where the state says."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from medtriad.data.synthetic.cxr_phantom import PhantomCxr, render_cxr
from medtriad.data.synthetic.state import CXR_FINDINGS, PatientState, sample_state
from medtriad.errors import DataError

SIZE = 256


def make_state(**changes: object) -> PatientState:
    """A male patient without chest findings (ECG fields as drawn), then `changes`."""
    base = dataclasses.replace(
        sample_state(np.random.default_rng(0), "s0", "p0"),
        sex="M",
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
    )
    return dataclasses.replace(base, **changes)


def render(state: PatientState, seed: int, size: int = SIZE) -> PhantomCxr:
    return render_cxr(state, np.random.default_rng(seed), size=size)


def centroid(mask: np.ndarray) -> tuple[float, float]:
    """(row, column) centre of a mask."""
    rows, cols = np.nonzero(mask)
    return float(rows.mean()), float(cols.mean())


def lung(p: PhantomCxr, side: str) -> np.ndarray:
    return p.anatomy[f"lung_{side}"]


EVERYTHING = make_state(
    cardiomegaly=True,
    effusion=True,
    effusion_side="bilateral",
    edema=True,
    pneumothorax=True,
    pneumothorax_side="left",
    consolidation=True,
    consolidation_side="right",
    consolidation_zone="upper",
)


def test_same_seed_same_phantom_and_different_seeds_differ() -> None:
    a, b, c = render(EVERYTHING, 3), render(EVERYTHING, 3), render(EVERYTHING, 4)
    assert a.image.dtype == np.uint8 and a.image.shape == (SIZE, SIZE)
    assert np.array_equal(a.image, b.image) and a.ctr == b.ctr
    assert all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert np.mean(a.image != c.image) > 0.5


def test_anatomy_varies_between_patients() -> None:
    areas = [int(render(make_state(), seed).anatomy["lung_right"].sum()) for seed in range(6)]
    ctrs = [render(make_state(), seed).ctr for seed in range(6)]
    assert np.std(areas) > 0.02 * np.mean(areas)
    assert np.std(ctrs) > 0.005


def test_clinical_display_air_dark_tissue_bright() -> None:
    p = render(make_state(), 0)
    img = p.image.astype(float)
    lungs = p.anatomy["lung_right"] | p.anatomy["lung_left"]
    assert img[lungs].mean() + 40 < img[p.anatomy["heart"]].mean()
    assert img[~p.anatomy["body"]].mean() + 40 < img[lungs].mean()


@pytest.mark.parametrize("size", [64, 96])
def test_other_sizes(size: int) -> None:
    p = render(EVERYTHING, 1, size=size)
    assert p.image.shape == (size, size)
    assert all(m.shape == (size, size) and m.dtype == bool and m.any() for m in p.masks.values())


def test_masks_exactly_for_present_findings_nonempty_within_thorax() -> None:
    rng = np.random.default_rng(0)
    seen: set[str] = set()
    for k in range(30):
        state = sample_state(rng, f"s{k}", f"p{k}")
        p = render(state, k)
        present = {f for f in CXR_FINDINGS if getattr(state, f)}
        assert set(p.masks) == present
        seen |= present
        for name, mask in p.masks.items():
            assert mask.dtype == bool and mask.shape == (SIZE, SIZE) and mask.any(), name
            assert not (mask & ~p.anatomy["thorax"]).any(), name
            if name != "cardiomegaly":  # the parenchymal findings lie in the lung fields
                lungs = lung(p, "right") | lung(p, "left")
                assert not (mask & ~lungs).any(), name
    assert seen == set(CXR_FINDINGS)


@pytest.mark.parametrize("side", ["left", "right", "bilateral"])
def test_effusion_on_its_side_at_the_lung_base(side: str) -> None:
    for seed in range(4):
        p = render(make_state(effusion=True, effusion_side=side, severity=0.4 + 0.2 * seed), seed)
        mask = p.masks["effusion"]
        half = SIZE // 2
        # patient left is image right
        on_left, on_right = mask[:, half:].sum(), mask[:, :half].sum()
        if side == "left":
            assert on_left > 0 and on_right == 0
        elif side == "right":
            assert on_right > 0 and on_left == 0
        else:
            assert on_left > 0 and on_right > 0
        for lung_side in ("left", "right") if side == "bilateral" else (side,):
            lm = lung(p, lung_side)
            rows = np.nonzero(lm.any(axis=1))[0]
            part = mask & lm
            assert centroid(part)[0] > rows[0] + 0.55 * (rows[-1] - rows[0])


@pytest.mark.parametrize("side", ["left", "right"])
def test_pneumothorax_apical_and_lateral_on_its_side(side: str) -> None:
    for seed in range(4):
        p = render(make_state(pneumothorax=True, pneumothorax_side=side), seed)
        mask, lm = p.masks["pneumothorax"], lung(p, side)
        assert not (mask & ~lm).any()
        (mr, mc), (lr, lc) = centroid(mask), centroid(lm)
        mid = SIZE / 2
        assert (mc > mid) == (side == "left")
        assert abs(mc - mid) > abs(lc - mid)  # lateral to the lung's centre
        assert mr < lr  # above it
        # a meaningful band: several pixels wide along the lateral wall even at the mild end
        assert mask.sum() > 0.08 * lm.sum()


@pytest.mark.parametrize("zone", ["upper", "middle", "lower"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_consolidation_in_its_side_and_zone(side: str, zone: str) -> None:
    third = {"upper": 0, "middle": 1, "lower": 2}[zone]
    for seed in range(3):
        p = render(
            make_state(consolidation=True, consolidation_side=side, consolidation_zone=zone), seed
        )
        mask, lm = p.masks["consolidation"], lung(p, side)
        assert not (mask & ~lm).any()
        rows = np.nonzero(lm.any(axis=1))[0]
        rel = (centroid(mask)[0] - rows[0]) / (rows[-1] - rows[0])
        assert third / 3 < rel < (third + 1) / 3, rel


def test_ctr_separates_cardiomegaly_from_normal_hearts() -> None:
    normal = [render(make_state(severity=0.4 + 0.03 * k), 100 + k).ctr for k in range(20)]
    big = [
        render(make_state(cardiomegaly=True, severity=0.4 + 0.03 * k), 100 + k).ctr
        for k in range(20)
    ]
    assert max(normal) < 0.5 < min(big)
    assert 0.36 <= min(normal) and max(big) <= 0.68
    # severity scales the enlargement
    mild = render(make_state(cardiomegaly=True, severity=0.4), 5).ctr
    marked = render(make_state(cardiomegaly=True, severity=1.0), 5).ctr
    assert marked > mild + 0.08


def test_cardiomegaly_mask_is_the_heart_bulging_to_patient_left() -> None:
    p = render(make_state(cardiomegaly=True), 2)
    heart = p.masks["cardiomegaly"]
    assert np.array_equal(heart, p.anatomy["heart"])
    assert centroid(heart)[1] > SIZE / 2  # patient left = image right


FINDING_STATES = {
    "cardiomegaly": {"cardiomegaly": True},
    "effusion": {"effusion": True, "effusion_side": "right"},
    "edema": {"edema": True},
    "pneumothorax": {"pneumothorax": True, "pneumothorax_side": "right"},
    "consolidation": {
        "consolidation": True,
        "consolidation_side": "left",
        "consolidation_zone": "middle",
    },
}
BRIGHTER = {
    "cardiomegaly": True,
    "effusion": True,
    "edema": True,
    "pneumothorax": False,
    "consolidation": True,
}


@pytest.mark.parametrize("finding", CXR_FINDINGS)
def test_findings_change_the_pixels_where_claimed(finding: str) -> None:
    for seed, severity in ((0, 0.4), (1, 1.0)):
        state = make_state(severity=severity, **FINDING_STATES[finding])
        with_f = render(state, seed)
        without = render(dataclasses.replace(state, **{finding: False}), seed)
        mask = with_f.masks[finding]
        delta = with_f.image[mask].astype(float).mean() - without.image[mask].astype(float).mean()
        assert (delta > 8) if BRIGHTER[finding] else (delta < -8), (finding, severity, delta)


@pytest.mark.parametrize("finding", ["effusion", "pneumothorax", "consolidation"])
def test_toggling_a_local_finding_leaves_the_rest_of_the_image(finding: str) -> None:
    state = make_state(**FINDING_STATES[finding])
    with_f = render(state, 9)
    without = render(dataclasses.replace(state, **{finding: False}), 9)
    changed = np.abs(with_f.image.astype(int) - without.image.astype(int)) > 2
    region = with_f.masks[finding]
    if finding == "pneumothorax":  # the collapsed lung medial to the pleural line is denser
        region = region | lung(with_f, "right")
    near = binary_dilation(region, iterations=8)
    assert changed.any()
    assert (changed & ~near).sum() < 0.002 * changed.size


def test_edema_region_holds_its_three_signs() -> None:
    """Haze, upper-zone vessels and basal Kerley lines: the region covers the upper lungs (where
    the vessels are made prominent), leaves most of the lower lungs out, and holds most of the
    pixels that oedema changes."""
    for seed, severity in ((9, 0.4), (3, 1.0)):
        state = make_state(edema=True, severity=severity)
        with_f, without = render(state, seed), render(dataclasses.replace(state, edema=False), seed)
        region = with_f.masks["edema"]
        lungs = with_f.anatomy["lung_right"] | with_f.anatomy["lung_left"]
        assert not (region & ~lungs).any()
        rows = np.flatnonzero(lungs.any(axis=1))
        quarter = (rows[-1] - rows[0]) // 4
        upper, lower = lungs.copy(), lungs.copy()
        upper[rows[0] + quarter :] = False
        lower[: rows[-1] - quarter] = False
        assert region[upper].mean() > 0.95 and region[lower].mean() < 0.3
        changed = np.abs(with_f.image.astype(int) - without.image.astype(int)) > 2
        assert (changed & region).sum() > 0.55 * changed.sum()


def test_severity_grows_the_effusion_and_pneumothorax() -> None:
    for finding in ("effusion", "pneumothorax"):
        areas = [
            render(make_state(severity=s, **FINDING_STATES[finding]), 4).masks[finding].sum()
            for s in (0.4, 1.0)
        ]
        assert areas[1] > 1.5 * areas[0], finding


def test_inconsistent_state_and_bad_size_are_rejected() -> None:
    with pytest.raises(DataError, match="effusion_side"):
        render(make_state(effusion=True, effusion_side=""), 0)
    with pytest.raises(DataError, match="consolidation_zone"):
        render(
            make_state(consolidation=True, consolidation_side="left", consolidation_zone="apex"), 0
        )
    with pytest.raises(ValueError, match="size"):
        render(make_state(), 0, size=8)


def test_render_speed_at_256() -> None:
    rng = np.random.default_rng(5)
    states = [sample_state(rng, f"s{k}", f"p{k}") for k in range(50)]
    render(states[0], 0)  # warm caches
    start = time.perf_counter()
    for k, state in enumerate(states):
        render(state, k)
    per = (time.perf_counter() - start) / len(states)
    print(f"render_cxr at 256: {per * 1000:.1f} ms per study")
    assert per < 0.060
