"""Why a study matched a query: small explanation maps for each search result.

For each result and each modality it has, the map explains that modality's match with the
query in the index's geometry (`medtriad.explain.MatchScore`): for cosine models the sum of its
similarities with the query vectors; for symile and gram the tuple it was scored in, i.e. the
query vectors plus the study's other tuple members. Maps, on the model's input grid:

* ``cxr_map`` / ``cxr_relevance``: (h, w) patch grid, token similarity and gradient-weighted
  attention rollout (`medtriad.explain.cxr_maps`; the occlusion map, hundreds of forwards per
  image, is left to ``medtriad explain``);
* ``ecg_map`` / ``ecg_relevance``: one value per ECG time token, and ``lead_importance``: the
  score drop when each lead is zeroed (`medtriad.explain.ecg_maps`);
* ``words``: ``[[word, weight], ...]``, the report's whitespace-separated words in order (markers
  removed), each weighted by the mean similarity of its projected tokens with the target
  direction, null past the encoder's length (one batched forward pass; integrated gradients,
  as ``medtriad explain`` computes, costs a pass per step and report: too slow here).

Values are rounded to 4 decimals to keep payloads small; the page scales each map itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from medtriad.data.ecg import CANONICAL_LEADS
from medtriad.data.text import split_combined

log = logging.getLogger(__name__)

__all__ = ["explain_hits", "word_similarity"]

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_WORD = re.compile(r"\S+")


def _round(a: Any) -> Any:
    """Nested lists of 4-decimal floats, None where a value is not finite (JSON has no NaN)."""
    x = np.asarray(a, dtype=np.float64)
    return np.where(np.isfinite(x), np.round(x, 4), None).tolist()


def _match_score(
    store: Any, query: Mapping[str, np.ndarray], rows: np.ndarray, modality: str
) -> Any:
    """The score a study's `modality` embedding is explained against, batched over `rows`."""
    from medtriad.explain import MatchScore

    geometry = store.geometry
    q = {m: torch.from_numpy(np.asarray(v, np.float32)) for m, v in query.items()}
    in_tuple = geometry != "cosine" and (modality not in q or set(q) >= set(store.modalities))
    if not in_tuple:
        return MatchScore(tuple(q.values()), "cosine")
    others: list[torch.Tensor] = [v for m, v in q.items() if m != modality]
    for m in store.modalities:
        if m in q or m == modality:
            continue
        d = int(store.info["dim"])
        vecs = [store.vector(int(r), m) for r in rows]
        others.append(
            torch.from_numpy(np.stack([np.zeros(d, np.float32) if v is None else v for v in vecs]))
        )
    return MatchScore(tuple(others), geometry)


def _text_items(encoder: Any, texts: Sequence[str]) -> list[str | tuple[str, str]]:
    """What the report encoder feeds its tokenizer: markers removed, parts paired if configured."""
    items: list[str | tuple[str, str]] = []
    for text in texts:
        radiology, cardiology = split_combined(text or "")
        if encoder.pair_sections and radiology and cardiology:
            items.append((radiology, cardiology))
        else:
            items.append(" ".join(p for p in (radiology, cardiology) if p))
    return items


@torch.inference_mode()
def word_similarity(
    model: Any, texts: Sequence[str], target: torch.Tensor
) -> list[list[tuple[str, float | None]]]:
    """Per text, its whitespace-separated words with the mean similarity of their projected
    tokens to `target` ((d,) or (B, d)); None for words past the encoder's length."""
    encoder = model.encoders["report"]
    items = _text_items(encoder, texts)
    enc = encoder.tokenizer(
        items,
        padding=True,
        truncation=True,
        max_length=encoder.max_length,
        return_offsets_mapping=True,
        return_tensors="pt",
    )
    tokens = encoder.forward_tokens({k: enc[k] for k in _MODEL_INPUTS if k in enc})
    z = model.project_tokens("report", tokens)
    t = target.to(z)
    sim = (z * (t[:, None] if t.ndim == 2 else t)).sum(-1).cpu().numpy()
    starts = enc["offset_mapping"][..., 0].numpy()
    out: list[list[tuple[str, float | None]]] = []
    for b, item in enumerate(items):
        seq = np.array([-1 if s is None else s for s in enc.sequence_ids(b)])
        real = np.array([w is not None for w in enc.word_ids(b)])
        words: list[tuple[str, float | None]] = []
        for s, part in enumerate(item if isinstance(item, tuple) else (item,)):
            spans = [(m.start(), m.end()) for m in _WORD.finditer(part)]
            tok = np.flatnonzero((seq == s) & real)
            w = np.searchsorted([a for a, _ in spans], starts[b, tok], side="right") - 1
            sums, counts = np.zeros(len(spans)), np.zeros(len(spans))
            np.add.at(sums, w, sim[b, tok])
            np.add.at(counts, w, 1)
            words += [
                (part[a:e], float(sums[j] / counts[j]) if counts[j] else None)
                for j, (a, e) in enumerate(spans)
            ]
        out.append(words)
    return out


def explain_hits(
    store: Any, query: Mapping[str, np.ndarray], hits: Sequence[Any]
) -> list[dict[str, Any]]:
    """An explanation dict per hit (keys only for the modalities whose input could be read)."""
    from medtriad.explain import cxr_maps, ecg_maps

    out: list[dict[str, Any]] = [{} for _ in hits]
    if not hits:
        return out
    model = store.model
    rows = np.array([h.row for h in hits])
    batch = store.study_batch(rows)
    for m in store.modalities:
        idx = np.flatnonzero(batch.present[m].numpy())
        if not len(idx):
            continue
        score = _match_score(store, query, rows[idx], m)
        if m == "cxr":
            # no occlusion map: hundreds of forwards per result are too slow for a search reply
            got = cxr_maps(model, batch.inputs["cxr"][idx], score, occlusion=None)
            for j, i in enumerate(idx):
                out[i]["cxr_map"] = _round(got["similarity"][j])
                out[i]["cxr_relevance"] = _round(got["relevance"][j])
        elif m == "ecg":
            got = ecg_maps(
                model, batch.inputs["ecg"][idx], score, batch.inputs["ecg_lead_mask"][idx]
            )
            for j, i in enumerate(idx):
                out[i]["ecg_map"] = _round(got["similarity"][j])
                out[i]["ecg_relevance"] = _round(got["relevance"][j])
                out[i]["lead_importance"] = dict(zip(CANONICAL_LEADS, _round(got["occlusion"][j])))
        elif m == "report":
            texts = [batch.inputs["report"][i] for i in idx]
            words = word_similarity(model, texts, score.target())
            for j, i in enumerate(idx):
                out[i]["words"] = [[w, None if v is None else round(v, 4)] for w, v in words[j]]
    return out
