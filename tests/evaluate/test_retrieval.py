"""Retrieval ranks and tuple retrieval on hand-made embeddings."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F

from medtriad.evaluate.retrieval import (
    distractor_index,
    geometry_for_loss,
    recall_curve,
    recall_summary,
    retrieval_ranks,
    tuple_retrieval,
    tuple_scores,
)


def _onehot(rows: list[int], d: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(rows), d).float()


def test_ranks_of_a_known_arrangement() -> None:
    # query i's true match is gallery i; gallery rows are rotated so the match sits at a known rank
    d = 6
    gallery = _onehot([0, 1, 2, 3], d)
    query = torch.stack(
        [
            gallery[0],  # exact: rank 0
            F.normalize(0.5 * gallery[1] + gallery[2], dim=0),  # gallery 2 is closer: rank 1
            F.normalize(
                0.2 * gallery[2] + gallery[0] + 0.5 * gallery[3], dim=0
            ),  # 0 and 3 closer: rank 2
            gallery[3],
        ]
    )
    assert retrieval_ranks(query, gallery).tolist() == [0, 1, 2, 0]


def test_constant_embeddings_get_the_worst_rank() -> None:
    x = torch.ones(5, 3) / 3**0.5
    assert retrieval_ranks(x, x).tolist() == [4] * 5


def test_recall_curve_matches_summary() -> None:
    ranks = torch.tensor([0, 0, 3, 7, 1, 12, 4])
    curve = recall_curve(ranks, 13)
    summary = recall_summary(ranks)
    assert curve[0] == summary["R@1"] and curve[4] == summary["R@5"] and curve[9] == summary["R@10"]
    assert all(a <= b for a, b in pairwise(curve)) and curve[-1] == 1.0


def test_distractors_are_distinct_other_rows() -> None:
    idx = distractor_index(30, 9, seed=4)
    assert idx.shape == (30, 10)
    assert torch.equal(idx[:, 0], torch.arange(30))
    for row in idx:
        assert len(set(row.tolist())) == 10
    assert torch.equal(idx, distractor_index(30, 9, seed=4))
    assert distractor_index(4, 9, seed=0).shape == (4, 4)  # fewer rows than distractors asked


def _present(n: int, *names: str) -> dict[str, torch.Tensor]:
    return {m: torch.ones(n, dtype=torch.bool) for m in names}


def test_each_geometry_finds_the_tuple_it_is_built_for() -> None:
    n, d = 12, 24
    # a_i, b_i orthogonal one-hots; t_i lies in their span: volume 0 and both cosines high,
    # but a_i * b_i = 0 so the multilinear product is 0 for every candidate (all tied)
    a, b = _onehot(list(range(n)), d), _onehot(list(range(n, 2 * n)), d)
    emb = {"a": a, "b": b, "t": F.normalize(a + b, dim=1)}
    present = _present(n, "a", "b", "t")
    for geometry in ("cosine", "volume"):
        res = tuple_retrieval(emb, present, ["a", "b"], "t", n_distractors=9, geometry=geometry)
        assert res["R@1"] == 1.0 and res["n_candidates"] == 10.0
    mip = tuple_retrieval(emb, present, ["a", "b"], "t", n_distractors=9, geometry="mip")
    assert mip["R@1"] == 0.0 and mip["mean_rank"] == 10.0  # ties count against the true match

    # Symile's geometry: t_i follows the element-wise product of random sign vectors, so it is
    # nearly orthogonal to a_i and b_i (cosine fails) but has the largest MIP with them
    g = torch.Generator().manual_seed(0)
    sa = torch.randint(0, 2, (n, 64), generator=g).float() * 2 - 1
    sb = torch.randint(0, 2, (n, 64), generator=g).float() * 2 - 1
    emb = {
        "a": F.normalize(sa, dim=1),
        "b": F.normalize(sb, dim=1),
        "t": F.normalize(sa * sb, dim=1),
    }
    assert tuple_retrieval(emb, present, ["a", "b"], "t", geometry="mip")["R@1"] == 1.0
    assert tuple_retrieval(emb, present, ["a", "b"], "t", geometry="cosine")["R@1"] < 0.6


def test_tuple_scores_volume_matches_gram_volume() -> None:
    from medtriad.losses import gram_volume

    g = torch.Generator().manual_seed(1)
    q1, q2 = (
        F.normalize(torch.randn(5, 7, generator=g), dim=1),
        F.normalize(torch.randn(5, 7, generator=g), dim=1),
    )
    cand = F.normalize(torch.randn(5, 3, 7, generator=g), dim=-1)
    scores = tuple_scores([q1, q2], cand, "volume")
    for i in range(5):
        ref = gram_volume(
            cand[i], [q1[i : i + 1].expand(3, 7), q2[i : i + 1].expand(3, 7)], eps=0.0
        ).diagonal()
        assert torch.allclose(-scores[i], ref, atol=1e-5)


def test_tuple_retrieval_only_counts_complete_rows() -> None:
    n, d = 8, 16
    a = _onehot(list(range(n)), d)
    emb = {"a": a, "b": a, "t": a}
    present = _present(n, "a", "b", "t")
    present["b"][:3] = False
    assert tuple_retrieval(emb, present, ["a", "b"], "t")["n"] == 5.0


def test_geometry_follows_the_loss() -> None:
    assert geometry_for_loss("symile") == "mip"
    assert geometry_for_loss("gram") == "volume"
    assert geometry_for_loss("clip") == geometry_for_loss("more") == "cosine"
    with pytest.raises(ValueError):
        tuple_scores([torch.zeros(1, 2)], torch.zeros(1, 1, 2), "euclid")
