"""Retrieval of a trained model on a held-out split (the figures the demo prints)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from medtriad.data.dataset import open_dataset
from medtriad.evaluate.retrieval import pairwise_retrieval


@torch.no_grad()
def embed_dataset(model: Any, dataset: Any, batch_size: int = 128) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Unit embeddings and presence masks of every row of `dataset` (model in eval mode)."""
    model.eval()
    embs: list[dict[str, torch.Tensor]] = []
    pres: list[dict[str, torch.Tensor]] = []
    for s in range(0, len(dataset), batch_size):
        b = dataset[np.arange(s, min(s + batch_size, len(dataset)))]
        embs.append({m: e.cpu() for m, e in model.encode(b).items()})
        pres.append({m: b.present[m] for m in embs[-1]})
    emb = {m: torch.cat([e[m] for e in embs]) for m in embs[0]}
    present = {m: torch.cat([p[m] for p in pres]) for m in pres[0]}
    return emb, present


def heldout_retrieval(
    model_dir: str | os.PathLike[str], data: str | os.PathLike[str], split: str = "test"
) -> dict[str, dict[str, float]]:
    """R@1/5/10, median and mean rank for every ordered modality pair on `split`, plus the
    chance level of R@5 (5 / number of candidates)."""
    from medtriad.models import MultiModalModel

    model = MultiModalModel.from_pretrained(model_dir)
    dataset = open_dataset(data, model.config.data, split=split)
    emb, present = embed_dataset(model, dataset)
    out = pairwise_retrieval(emb, present)
    for res in out.values():
        res["chance_R@5"] = min(1.0, 5.0 / max(res["n"], 1.0))
    return out
