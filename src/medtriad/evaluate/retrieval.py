"""Cross-modal retrieval: ranks of the true match, recall at K, median and mean rank."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def retrieval_ranks(query: Tensor, gallery: Tensor, chunk: int = 4096) -> Tensor:
    """0-based rank of gallery[i] among all gallery items for query[i] (cosine / dot product).

    Ties count against the true match (a constant model gets the worst rank, never a lucky one).
    """
    if query.shape != gallery.shape:
        raise ValueError(f"query {tuple(query.shape)} and gallery {tuple(gallery.shape)} must be paired row by row")
    ranks = []
    for s in range(0, query.shape[0], chunk):
        q = query[s : s + chunk]
        sim = q @ gallery.T
        # the true score from the same product, so the match always counts itself exactly once
        true = sim.gather(1, torch.arange(s, s + q.shape[0], device=sim.device)[:, None])
        ranks.append((sim >= true).sum(-1) - 1)
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def recall_summary(ranks: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@K (fraction of queries whose match is in the top K), median and mean 1-based rank."""
    r = ranks.double()
    out = {f"R@{k}": float((r < k).double().mean()) for k in ks}
    out["median_rank"] = float((r + 1).median())
    out["mean_rank"] = float((r + 1).mean())
    out["n"] = float(len(r))
    return out


def pairwise_retrieval(
    emb: Mapping[str, Tensor], present: Mapping[str, Tensor], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, dict[str, float]]:
    """Retrieval for every ordered pair of modalities over the rows where both are present."""
    out: dict[str, dict[str, float]] = {}
    names = list(emb)
    for a in names:
        for b in names:
            if a == b:
                continue
            rows = present[a] & present[b]
            if int(rows.sum()) < 2:
                continue
            out[f"{a}->{b}"] = recall_summary(retrieval_ranks(emb[a][rows], emb[b][rows]), ks)
    return out


# --------------------------------------------------------------------------- geometry & tuples

GEOMETRIES: tuple[str, ...] = ("cosine", "mip", "volume")
"""How a tuple of embeddings is scored: summed cosine, multilinear inner product, negative volume."""

_LOSS_GEOMETRY = {"symile": "mip", "gram": "volume"}


def geometry_for_loss(loss_name: str) -> str:
    """The scoring geometry a loss trains for: ``mip`` (Symile), ``volume`` (GRAM), else ``cosine``."""
    return _LOSS_GEOMETRY.get(loss_name, "cosine")


def tuple_scores(queries: Sequence[Tensor], candidates: Tensor, geometry: str = "cosine") -> Tensor:
    """Score of every candidate target for every query tuple; higher is a better match.

    `queries`: one (n, d) tensor per query modality; `candidates` (n, k, d): k candidate targets
    per query. Returns (n, k): ``cosine`` sums the dot products of each query vector with the
    candidate, ``mip`` is ``sum_j q1_j q2_j ... t_j``, ``volume`` is minus the volume of the
    parallelotope spanned by the query vectors and the candidate (GRAM: smaller is closer).
    """
    if geometry == "cosine":
        return sum(torch.einsum("nd,nkd->nk", q, candidates) for q in queries)  # type: ignore[return-value]
    if geometry == "mip":
        prod = queries[0]
        for q in queries[1:]:
            prod = prod * q
        return torch.einsum("nd,nkd->nk", prod, candidates)
    if geometry == "volume":
        vecs = [q[:, None, :].expand_as(candidates) for q in queries] + [candidates]
        a = torch.stack(vecs, dim=-2)  # (n, k, m, d)
        gram = a @ a.transpose(-1, -2)
        det = torch.linalg.det(gram.double()).clamp_min(0.0)
        return -det.sqrt().to(candidates.dtype)
    raise ValueError(f"unknown geometry {geometry!r}; known: {list(GEOMETRIES)}")


def distractor_index(n: int, n_distractors: int, seed: int, chunk: int = 1024) -> Tensor:
    """(n, 1 + n_distractors) row indices: column 0 is the row itself, then distinct other rows.

    Drawn uniformly without replacement from the other rows (all of them when fewer are
    available); rows are processed in chunks so memory stays O(chunk * n).
    """
    k = min(n_distractors, n - 1)
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for s in range(0, n, chunk):
        rows = torch.arange(s, min(s + chunk, n))
        noise = torch.rand(len(rows), n, generator=gen)
        noise[torch.arange(len(rows)), rows] = 2.0  # never the true row
        parts.append(noise.topk(k, dim=1, largest=False).indices)
    others = torch.cat(parts) if parts else torch.zeros(0, k, dtype=torch.long)
    return torch.cat([torch.arange(n)[:, None], others], dim=1)


def tuple_ranks(
    emb: Mapping[str, Tensor],
    present: Mapping[str, Tensor],
    query_modalities: Sequence[str],
    target: str,
    n_distractors: int = 9,
    geometry: str = "cosine",
    seed: int = 0,
    rows: Tensor | None = None,
) -> tuple[Tensor, Tensor, int]:
    """0-based ranks of the true target for tuple -> modality retrieval (see `tuple_retrieval`).

    Returns (ranks, mask of the rows evaluated, number of candidates per query).
    """
    keep = present[target].clone().bool()
    for m in query_modalities:
        keep &= present[m].bool()
    if rows is not None:
        keep &= rows.bool()
    n = int(keep.sum())
    if n < 2:
        return torch.zeros(0, dtype=torch.long), keep, 0
    idx = distractor_index(n, n_distractors, seed)
    queries = [emb[m][keep] for m in query_modalities]
    cand = emb[target][keep][idx]  # (n, 1 + k, d)
    scores = tuple_scores(queries, cand, geometry)
    return (scores >= scores[:, :1]).sum(-1) - 1, keep, int(idx.shape[1])


def tuple_retrieval(
    emb: Mapping[str, Tensor],
    present: Mapping[str, Tensor],
    query_modalities: Sequence[str],
    target: str,
    n_distractors: int = 9,
    geometry: str = "cosine",
    seed: int = 0,
    ks: Sequence[int] = (1, 5, 10),
    rows: Tensor | None = None,
) -> dict[str, float]:
    """Tuple -> modality retrieval (Symile-MIMIC protocol): for each row holding every query
    modality and the target, rank its true target among itself and `n_distractors` targets of
    other rows (drawn with `seed`), scored with `geometry`. Ties count against the true match.

    `rows` restricts the evaluation to a bool mask; with the same rows and seed, different query
    subsets face the same distractors. Returns `recall_summary` plus ``n_candidates``.
    """
    ranks, _, n_cand = tuple_ranks(emb, present, query_modalities, target, n_distractors, geometry, seed, rows)
    if n_cand == 0:
        return {"n": float(len(ranks)), "n_candidates": 0.0}
    out = recall_summary(ranks, ks)
    out["n_candidates"] = float(n_cand)
    return out


def recall_curve(ranks: Tensor, max_k: int | None = None) -> list[float]:
    """R@K for K = 1..max_k (default: the number of candidates) from 0-based ranks."""
    r = ranks.long()
    kmax = int(max_k or (int(r.max()) + 1 if len(r) else 0))
    if kmax == 0:
        return []
    counts = torch.bincount(r.clamp(max=kmax), minlength=kmax + 1)[:kmax]
    return (counts.cumsum(0).double() / max(len(r), 1)).tolist()
