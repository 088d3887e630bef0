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
        true = (q * gallery[s : s + chunk]).sum(-1, keepdim=True)
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
