"""Report sentences for the local alignment term (`medtriad.losses.local`).

A `SentenceBank` holds, for every row of a dataset, the sentences of one report part
(radiology for X-ray patches, cardiology for ECG time tokens; `medtriad.config.LOCAL_SECTIONS`).
With a frozen text encoder their features are computed once (each distinct sentence encoded a
single time: report templates repeat) and cached beside the run; with a trainable one the batch's
sentences are encoded in the step, so the gradient reaches the text encoder.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from medtriad.data.text import report_sentences

__all__ = ["SentenceBank", "build_sentence_bank", "sentence_embeddings"]

_ENCODE_BATCH = 256


@dataclass
class SentenceBank:
    """Sentences of one report part per dataset row: ``texts[row]`` (at most ``width``), their
    (N, width) ``mask`` and, for a frozen encoder, (N, width, D) encoder ``features``."""

    texts: list[list[str]]
    mask: Tensor
    features: Tensor | None = None

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def lookup(self, index: Tensor) -> dict[str, Any]:
        """The batch's sentences: ``mask`` (B, width), and ``features`` (B, width, D) or the
        flat ``texts`` with their ``positions`` in the flattened (B * width) grid."""
        index = index.cpu()
        mask = self.mask[index]
        if self.features is not None:
            return {"mask": mask, "features": self.features[index.to(self.features.device)]}
        texts, positions = [], []
        for b, row in enumerate(index.tolist()):
            for k, sentence in enumerate(self.texts[row]):
                texts.append(sentence)
                positions.append(b * self.width + k)
        return {"mask": mask, "texts": texts, "positions": torch.tensor(positions, dtype=torch.long)}


def _key(dataset: Any, section: str, width: int, sections: list[str], encoder_id: str) -> str:
    h = hashlib.sha1(f"{section}|{width}|{sections}|{encoder_id}".encode())
    h.update("\n".join(dataset.df["sample_id"].astype(str)).encode())
    h.update("\n".join(dataset.df["report_text"].fillna("").astype(str)).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def _encode_unique(model: nn.Module, sentences: list[str]) -> Tensor:
    from medtriad.progress import track

    encoder = model.encoders["report"]
    was = encoder.training
    encoder.eval()
    out = []
    starts = range(0, len(sentences), _ENCODE_BATCH)
    for s in track(starts, total=len(starts), description="caching sentence features"):
        out.append(encoder(sentences[s : s + _ENCODE_BATCH]).float())
    encoder.train(was)
    return torch.cat(out) if out else torch.zeros(0, encoder.dim)


def build_sentence_bank(
    model: nn.Module,
    dataset: Any,
    section: str,
    width: int,
    sections: list[str],
    *,
    frozen: bool,
    cache_file: Path | None = None,
) -> SentenceBank:
    """The `SentenceBank` of `dataset`'s reports for one part (``radiology``/``cardiology``).

    `sections` are the radiology report sections read (``data.report.sections``); with `frozen`
    the features are computed (or read from `cache_file` when its key matches). The bank is as
    wide as the longest report part, up to `width`."""
    texts = [
        report_sentences(t, sections)[section][:width]
        for t in dataset.df["report_text"].fillna("").astype(str)
    ]
    width = max(1, max((len(row) for row in texts), default=0))  # no all-padding columns
    mask = torch.zeros(len(texts), width, dtype=torch.bool)
    for i, row in enumerate(texts):
        mask[i, : len(row)] = True
    if not frozen:
        return SentenceBank(texts, mask)
    encoder = model.encoders["report"]
    key = _key(dataset, section, width, sections, f"{model.config.model.report}|{encoder.max_length}")
    if cache_file is not None and cache_file.is_file():
        stored = torch.load(cache_file, map_location="cpu")
        if stored.get("key") == key:
            return SentenceBank(texts, mask, stored["features"].to(model.device))
    unique = sorted({s for row in texts for s in row})
    where = {s: i for i, s in enumerate(unique)}
    encoded = _encode_unique(model, unique).cpu()
    features = torch.zeros(len(texts), width, encoder.dim)
    rows = [(i, k, where[s]) for i, row in enumerate(texts) for k, s in enumerate(row)]
    if rows:
        r, k, u = (torch.tensor(c) for c in zip(*rows))
        features[r, k] = encoded[u]
    if cache_file is not None:
        tmp = cache_file.with_suffix(".tmp")
        torch.save({"key": key, "features": features}, tmp)
        os.replace(tmp, cache_file)
    return SentenceBank(texts, mask, features.to(model.device))


def sentence_embeddings(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    """(B, width, embed_dim) report-head projections of a `SentenceBank.lookup` result (rows
    of padding are zero). Trainable encoders encode the flat texts here, with gradient."""
    head = model.heads["report"]
    mask = batch["mask"]
    if "features" in batch:
        return head(batch["features"]).float()
    b, width = mask.shape
    out = torch.zeros(b * width, model.config.model.embed_dim, device=model.device)
    if batch["texts"]:
        z = head(model.features("report", batch["texts"])).float()
        out = out.index_copy(0, batch["positions"].to(model.device), z)
    return out.reshape(b, width, -1)
