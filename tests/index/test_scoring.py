from __future__ import annotations

import numpy as np
import pytest

from medtriad.errors import ConfigError
from medtriad.index.scoring import GRAM_EPS, Term, geometry_of, score_terms, terms_for

MODS = ["cxr", "ecg", "report"]


def _unit(*shape: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_geometry_follows_the_loss() -> None:
    assert geometry_of("symile") == "mip"
    assert geometry_of("gram") == "volume"
    assert {geometry_of(n) for n in ("clip", "more", "siglip", "dhn_nce", "mv_infonce")} == {
        "cosine"
    }


def test_cosine_terms_pair_every_query_with_every_target() -> None:
    terms = terms_for("cosine", ["report", "cxr"], MODS)
    assert {t.name for t in terms} == {f"{q}->{s}" for q in ("cxr", "report") for s in MODS}
    only = terms_for("cosine", ["report"], MODS, targets=["cxr"])
    assert [t.name for t in only] == ["report->cxr"]


def test_tuple_terms_complete_the_tuple_from_the_study() -> None:
    assert terms_for("mip", ["report"], MODS) == [Term(("report",), ("cxr", "ecg"))]
    assert terms_for("volume", ["cxr", "report"], MODS) == [Term(("cxr", "report"), ("ecg",))]
    full = terms_for("mip", MODS, MODS)
    assert [(t.query, t.study) for t in full] == [
        (("ecg", "report"), ("cxr",)),
        (("cxr", "report"), ("ecg",)),
        (("cxr", "ecg"), ("report",)),
    ]


@pytest.mark.parametrize(
    ("geometry", "query", "targets"),
    [
        ("cosine", ["labs"], None),
        ("cosine", [], None),
        ("cosine", ["cxr"], ["labs"]),
        ("mip", ["cxr"], ["ecg"]),
    ],
)
def test_bad_queries_are_config_errors(
    geometry: str, query: list[str], targets: list[str] | None
) -> None:
    with pytest.raises(ConfigError):
        terms_for(geometry, query, MODS, targets)  # type: ignore[arg-type]


def _study(n: int = 30) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    study = {m: _unit(n, 8, seed=i + 1) for i, m in enumerate(MODS)}
    present = {m: np.random.default_rng(10 + i).random(n) > 0.3 for i, m in enumerate(MODS)}
    return study, present


def test_cosine_scores_are_dot_products_and_nan_where_absent() -> None:
    study, present = _study()
    q = {"report": _unit(8, seed=9)}
    terms = terms_for("cosine", ["report"], MODS)
    got = score_terms("cosine", terms, q, study, present)
    for i, t in enumerate(terms):
        m = t.study[0]
        np.testing.assert_allclose(
            got[i, present[m]], study[m][present[m]] @ q["report"], rtol=1e-5
        )
        assert np.isnan(got[i, ~present[m]]).all()


def test_mip_is_the_sum_of_elementwise_products() -> None:
    study, present = _study()
    q = {"report": _unit(8, seed=9)}
    got = score_terms("mip", terms_for("mip", ["report"], MODS), q, study, present)[0]
    both = present["cxr"] & present["ecg"]
    want = (q["report"] * study["cxr"] * study["ecg"]).sum(-1)
    np.testing.assert_allclose(got[both], want[both], rtol=1e-5, atol=1e-7)
    assert np.isnan(got[~both]).all()


def test_volume_is_minus_the_parallelotope_volume() -> None:
    study, present = _study()
    q = {"cxr": _unit(8, seed=11), "report": _unit(8, seed=12)}
    got = score_terms("volume", terms_for("volume", ["cxr", "report"], MODS), q, study, present)[0]
    for j in np.flatnonzero(present["ecg"]):
        a = np.stack([q["cxr"], q["report"], study["ecg"][j]]).astype(np.float64)
        want = -np.sqrt(max(np.linalg.det(a @ a.T), GRAM_EPS))
        assert got[j] == pytest.approx(want, rel=1e-4, abs=1e-6)
    # the study's own ECG completing a collinear tuple has the smallest possible volume
    q_same = {"cxr": study["ecg"][0], "report": study["ecg"][0]}
    best = score_terms(
        "volume",
        [Term(("cxr", "report"), ("ecg",))],
        q_same,
        study,
        {**present, "ecg": np.ones(30, bool)},
    )[0]
    assert int(np.argmax(best)) == 0
