from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medtriad.errors import ConfigError
from medtriad.index.ann import (
    IVFPQ_MIN_VECTORS,
    build_ann,
    choose_kind,
    kind_of,
    read_ann,
    search_ann,
    write_ann,
)


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_auto_is_exact_up_to_the_limit_then_hnsw() -> None:
    assert choose_kind("auto", 100, exact_limit=100) == "flat"
    assert choose_kind("auto", 101, exact_limit=100) == "hnsw"
    assert choose_kind("hnsw", 5) == "hnsw"


def test_ivfpq_falls_back_to_exact_when_too_few_to_train() -> None:
    assert choose_kind("ivfpq", IVFPQ_MIN_VECTORS - 1) == "flat"
    assert choose_kind("ivfpq", IVFPQ_MIN_VECTORS) == "ivfpq"


def test_unknown_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="kind"):
        choose_kind("lsh", 10)


@pytest.mark.parametrize(("kind", "min_recall"), [("flat", 1.0), ("hnsw", 0.95), ("ivfpq", 0.5)])
def test_each_kind_finds_a_stored_vector_and_survives_a_round_trip(
    tmp_path: Path, kind: str, min_recall: float
) -> None:
    x = _unit(IVFPQ_MIN_VECTORS + 200, 16)
    index = build_ann(x, kind)
    assert kind_of(index) == kind and index.ntotal == len(x)
    queries = x[:200]
    _, ids = search_ann(index, queries, 10)
    recall = float(np.mean(ids[:, :10] == np.arange(200)[:, None]) * 10)
    assert recall >= min_recall
    write_ann(index, tmp_path / "i.faiss")
    again = read_ann(tmp_path / "i.faiss")
    assert kind_of(again) == kind
    np.testing.assert_array_equal(search_ann(again, queries, 10)[1], ids)


def test_flat_scores_are_inner_products() -> None:
    x = _unit(50, 8, seed=1)
    q = _unit(3, 8, seed=2)
    scores, ids = search_ann(build_ann(x, "flat"), q, 5)
    np.testing.assert_allclose(
        scores, np.take_along_axis(q @ x.T, ids, axis=1), rtol=1e-5, atol=1e-6
    )
    assert (np.diff(scores, axis=1) <= 1e-7).all()


def test_search_asks_no_more_than_the_index_holds() -> None:
    x = _unit(4, 8)
    _, ids = search_ann(build_ann(x, "flat"), x[:1], 50)
    assert ids.shape == (1, 4) and sorted(ids[0].tolist()) == [0, 1, 2, 3]
    empty = build_ann(np.zeros((0, 8), np.float32), "flat")
    assert search_ann(empty, x[:1], 5)[1].shape == (1, 0)
