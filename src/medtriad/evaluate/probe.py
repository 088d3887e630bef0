"""Linear probes on frozen embeddings and fine-tuning of an encoder, at label fractions.

Label fractions are fractions of the *training patients*: the patients are ordered by a seeded
permutation and the first ``ceil(f * n_patients)`` are taken; then, for every class with fewer
than ``min_positives`` positive rows in the subset, further patients with a positive row for
that class are added in the same order until it has them (or the training split runs out). So
the subsets are nested (1% within 10% within 100%) and every class has positives to learn from.

Linear probe: one L2-regularised logistic regression (scikit-learn, lbfgs) per class on the
frozen embeddings, standardised with the training subset's mean and deviation; the inverse
regularisation C is chosen per class from a small grid by the validation AUROC.

Fine-tuning: a copy of the modality's encoder and a new linear layer on its pooled features,
trained with masked binary cross-entropy (unknown labels ignored) and AdamW for a number of
epochs, and at least 50 optimiser steps (small label fractions).
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medtriad.evaluate.metrics import auroc

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CS", "FRACTIONS", "ProbeResult", "finetune", "fraction_rows", "linear_probe"]

FRACTIONS: tuple[float, ...] = (0.01, 0.1, 1.0)
DEFAULT_CS: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)


def fraction_rows(
    subjects: Sequence[Any] | np.ndarray,
    y: np.ndarray,
    fraction: float,
    seed: int = 0,
    min_positives: int = 3,
) -> np.ndarray:
    """Indices of the training rows kept at label `fraction` (see the module doc for the rule)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    subjects = np.asarray(subjects).astype(str)
    uniq, inverse = np.unique(subjects, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    rank = np.empty(len(uniq), np.int64)
    rank[order] = np.arange(len(uniq))
    chosen = np.zeros(len(uniq), bool)
    chosen[order[: max(1, math.ceil(fraction * len(uniq)))]] = True
    pos = np.nan_to_num(np.asarray(y, dtype=np.float64), nan=0.0) == 1  # (n, C)
    for c in range(pos.shape[1]):
        have = int(pos[chosen[inverse], c].sum())
        if have >= min_positives:
            continue
        # subjects with a positive for c, not yet chosen, in permutation order
        cand = np.unique(inverse[pos[:, c] & ~chosen[inverse]])
        for s in cand[np.argsort(rank[cand])]:
            if have >= min_positives:
                break
            chosen[s] = True
            have += int(pos[inverse == s, c].sum())
    return np.flatnonzero(chosen[inverse])


@dataclass
class ProbeResult:
    """Validation and test probabilities (n, C) and the per-class setting chosen."""

    val_scores: np.ndarray
    test_scores: np.ndarray
    chosen: list[float | None]
    n_train: int


def _known(y: np.ndarray) -> np.ndarray:
    return np.isfinite(y) & (y >= 0)


def linear_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    cs: Sequence[float] = DEFAULT_CS,
    seed: int = 0,
) -> ProbeResult:
    """Logistic regression per class on frozen features, C chosen by validation AUROC.

    A class whose training labels hold one value only predicts its training prevalence
    (constant scores; its chosen C is None). Without usable validation labels the middle of
    the grid is used.
    """
    from threadpoolctl import threadpool_limits

    # standardise with the training subset's statistics: unit-norm embeddings have tiny
    # per-dimension variance, which makes the C grid arbitrary and lbfgs slow to converge
    x_train, x_val, x_test = (np.asarray(x, dtype=np.float64) for x in (x_train, x_val, x_test))
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    x_train, x_val, x_test = ((x - mean) / std for x in (x_train, x_val, x_test))
    # one BLAS thread: these problems are tiny, and many threads on a busy machine cost more
    with threadpool_limits(limits=1):
        return _fit_per_class(x_train, y_train, x_val, y_val, x_test, cs, seed)


def _fit_per_class(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    cs: Sequence[float],
    seed: int,
) -> ProbeResult:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    n_classes = y_train.shape[1]
    val = np.zeros((len(x_val), n_classes))
    test = np.zeros((len(x_test), n_classes))
    chosen: list[float | None] = []
    for c in range(n_classes):
        k = _known(y_train[:, c])
        yc = y_train[k, c]
        if len(np.unique(yc)) < 2:
            prior = float(yc.mean()) if len(yc) else 0.5
            val[:, c], test[:, c] = prior, prior
            chosen.append(None)
            continue
        kv = _known(y_val[:, c])
        best: tuple[float, float, Any] | None = None
        grid = list(cs) if len(np.unique(y_val[kv, c])) == 2 else [cs[len(cs) // 2]]
        for C in grid:
            clf = LogisticRegression(C=C, max_iter=1000, random_state=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(x_train[k], yc)
            pv = clf.predict_proba(x_val)[:, 1]
            score = auroc(y_val[kv, c], pv[kv]) if len(grid) > 1 else 0.0
            if best is None or score > best[0]:
                best = (score, C, clf)
        assert best is not None
        clf = best[2]
        val[:, c] = clf.predict_proba(x_val)[:, 1]
        test[:, c] = clf.predict_proba(x_test)[:, 1]
        chosen.append(float(best[1]))
    return ProbeResult(val, test, chosen, len(x_train))


class _Classifier(nn.Module):
    def __init__(self, model: Any, modality: str, n_classes: int) -> None:
        super().__init__()
        self.modality = modality
        self.encoder = copy.deepcopy(model.encoders[modality])
        self.linear = nn.Linear(self.encoder.dim, n_classes)

    def forward(self, inputs: dict[str, Any]) -> torch.Tensor:
        x = inputs[self.modality].float()
        if self.modality == "cxr":
            feats = self.encoder(x)
        else:
            feats = self.encoder(x, inputs.get("ecg_lead_mask"))
        return self.linear(feats)


def _inputs(batch: Any, modality: str) -> dict[str, Any]:
    inputs = {modality: batch.inputs[modality]}
    if modality == "ecg" and "ecg_lead_mask" in batch.inputs:
        inputs["ecg_lead_mask"] = batch.inputs["ecg_lead_mask"]
    return inputs


@torch.no_grad()
def _predict(
    net: nn.Module, dataset: Any, rows: np.ndarray, modality: str, batch_size: int
) -> np.ndarray:
    net.eval()
    out = [
        torch.sigmoid(net(_inputs(dataset[rows[s : s + batch_size]], modality))).double().numpy()
        for s in range(0, len(rows), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, net.linear.out_features))  # type: ignore[union-attr]


def finetune(
    model: Any,
    modality: str,
    train: tuple[Any, np.ndarray, np.ndarray],
    val: tuple[Any, np.ndarray],
    test: tuple[Any, np.ndarray],
    epochs: int = 3,
    lr: float = 1e-4,
    head_lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    min_steps: int = 50,
) -> ProbeResult:
    """Fine-tune a copy of `modality`'s encoder with a linear head (the model is left untouched).

    `train` is (dataset, rows, y (len(rows), C)); `val` and `test` are (dataset, rows). Runs
    `epochs` passes over the rows, or more passes until `min_steps` optimiser steps are done (a
    1% subset may hold one batch). Returns sigmoid probabilities on the validation and test rows.
    """
    ds, rows, y = train
    if modality not in ("cxr", "ecg"):
        raise ValueError(f"fine-tuning needs an X-ray or ECG encoder, not {modality!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _Classifier(model, modality, y.shape[1])
        opt = torch.optim.AdamW(
            [
                {"params": net.encoder.parameters(), "lr": lr},
                {"params": net.linear.parameters(), "lr": head_lr},
            ],
            weight_decay=0.01,
        )
        rng = np.random.default_rng(seed)
        yt = torch.from_numpy(np.asarray(y, dtype=np.float32))
        steps_per_epoch = max(1, -(-len(rows) // batch_size))
        passes = max(epochs, -(-min_steps // steps_per_epoch)) if epochs > 0 else 0
        for _ in range(passes):
            net.train()
            order = rng.permutation(len(rows))
            for s in range(0, len(order), batch_size):
                pick = order[s : s + batch_size]
                if len(pick) < 2:  # BatchNorm in the encoder needs more than one sample
                    continue
                logits = net(_inputs(ds[rows[pick]], modality))
                target = yt[pick]
                known = torch.isfinite(target) & (target >= 0)
                if not known.any():
                    continue
                loss = F.binary_cross_entropy_with_logits(logits[known], target[known])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    val_scores = _predict(net, val[0], val[1], modality, 4 * batch_size)
    test_scores = _predict(net, test[0], test[1], modality, 4 * batch_size)
    return ProbeResult(val_scores, test_scores, [None] * y.shape[1], len(rows))
