"""Zero-shot classification: embeddings of any modality scored against text prompts.

For each class, every (template x description) prompt is wrapped in the report format the model
was trained on (`LabelSet.wrap`), encoded by the report encoder, and the unit vectors are
averaged and re-normalised into one class embedding (a prompt ensemble); likewise for the
negative prompts. With ``s`` the model's logit scale and ``x`` a unit embedding:

* ``pos_neg``: ``p_c = softmax(s x.pos_c, s x.neg_c)[0] = sigmoid(s (x.pos_c - x.neg_c))``;
* ``softmax``: ``p = softmax_c(s x.pos_c)``, one probability per class (one-vs-rest metrics).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medtriad.evaluate.labelsets import LabelSet

log = logging.getLogger(__name__)

__all__ = [
    "ClassEmbeddings",
    "ZeroShotScores",
    "class_embeddings",
    "encode_texts",
    "label_matrix",
    "zeroshot_probs",
    "zeroshot_scores",
]


@torch.no_grad()
def encode_texts(model: Any, texts: Sequence[str], batch_size: int = 256) -> Tensor:
    """(n, d) unit embeddings of `texts` through the model's report encoder and head (eval mode)."""
    was_training = model.training
    model.eval()
    try:
        out = [
            model.encode({"report": list(texts[s : s + batch_size])})["report"].cpu()
            for s in range(0, len(texts), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.config.model.embed_dim)


@dataclass
class ClassEmbeddings:
    """One unit vector per class for its positive prompts, and for its negative prompts (or None)."""

    classes: list[str]
    positive: Tensor
    negative: Tensor | None


def _ensemble(vectors: Tensor) -> Tensor:
    return F.normalize(vectors.mean(0), dim=-1)


def class_embeddings(model: Any, labelset: LabelSet) -> ClassEmbeddings:
    """Prompt-ensemble embeddings of every class of `labelset` (all prompts encoded in one pass)."""
    texts: list[str] = []
    spans: list[tuple[slice, slice]] = []
    for cls in labelset.class_names:
        pos, neg = labelset.prompts(cls)
        a = len(texts)
        texts += pos
        b = len(texts)
        texts += neg
        spans.append((slice(a, b), slice(b, len(texts))))
    vecs = encode_texts(model, texts)
    positive = torch.stack([_ensemble(vecs[p]) for p, _ in spans])
    negative = None
    if labelset.scoring == "pos_neg":
        negative = torch.stack([_ensemble(vecs[n]) for _, n in spans])
    return ClassEmbeddings(labelset.class_names, positive, negative)


def zeroshot_probs(x: Tensor, classes: ClassEmbeddings, logit_scale: float, scoring: str) -> Tensor:
    """(n, C) class probabilities of unit embeddings `x` (n, d) under `scoring`."""
    pos = x @ classes.positive.T * logit_scale
    if scoring == "pos_neg":
        if classes.negative is None:
            raise ValueError("pos_neg scoring needs negative prompt embeddings")
        return torch.sigmoid(pos - x @ classes.negative.T * logit_scale)
    if scoring == "softmax":
        return pos.softmax(dim=-1)
    raise ValueError(f"unknown scoring {scoring!r}")


def label_matrix(
    labels: Tensor | np.ndarray, label_names: Sequence[str], columns: Sequence[str]
) -> np.ndarray:
    """(n, C) labels of `columns` (NaN for a column the data lacks); -1 (uncertain) becomes NaN."""
    labels = np.asarray(labels, dtype=np.float64)
    index = {n: i for i, n in enumerate(label_names)}
    out = np.full((labels.shape[0], len(columns)), np.nan)
    for j, c in enumerate(columns):
        if c in index:
            out[:, j] = labels[:, index[c]]
    out[out < 0] = np.nan
    return out


@dataclass
class ZeroShotScores:
    """Labels and zero-shot probabilities of the rows a label set is evaluated on."""

    labelset: str
    modality: str
    classes: list[str]
    rows: np.ndarray  # indices into the split
    y: np.ndarray  # (n, C) float, NaN unknown
    scores: np.ndarray  # (n, C)


def zeroshot_scores(
    emb: Mapping[str, Tensor],
    present: Mapping[str, Tensor],
    labels: Tensor | np.ndarray,
    label_names: Sequence[str],
    labelset: LabelSet,
    modality: str,
    classes: ClassEmbeddings,
    logit_scale: float,
) -> ZeroShotScores:
    """Zero-shot probabilities for the rows where `modality` is present and at least one of the
    set's labels is known; classes whose column the data lacks stay NaN (left out of metrics)."""
    y_all = label_matrix(labels, label_names, labelset.columns)
    keep = present[modality].numpy().astype(bool) & np.isfinite(y_all).any(axis=1)
    rows = np.flatnonzero(keep)
    probs = zeroshot_probs(
        emb[modality][torch.from_numpy(rows)], classes, logit_scale, labelset.scoring
    )
    return ZeroShotScores(
        labelset.name, modality, labelset.class_names, rows, y_all[rows], probs.double().numpy()
    )


def fused_probs(
    emb: Mapping[str, Tensor],
    modalities: Sequence[str],
    classes: ClassEmbeddings,
    logit_scale: float,
    scoring: str,
) -> Tensor:
    """Late fusion: class probabilities from the mean of the per-modality logits (pos_neg: the
    logit of the positive-vs-negative softmax; softmax: the class logits)."""
    logits = []
    for m in modalities:
        x = emb[m]
        pos = x @ classes.positive.T * logit_scale
        logits.append(pos - x @ classes.negative.T * logit_scale if scoring == "pos_neg" else pos)  # type: ignore[union-attr]
    mean = torch.stack(logits).mean(0)
    return torch.sigmoid(mean) if scoring == "pos_neg" else mean.softmax(-1)
