"""Zero-shot scoring on a hand-made text encoder whose answers are known."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medtriad.evaluate.labelsets import labelset_from_dict
from medtriad.evaluate.metrics import auroc
from medtriad.evaluate.zeroshot import (
    class_embeddings,
    fused_probs,
    label_matrix,
    zeroshot_probs,
    zeroshot_scores,
)

D = 6


class FakeModel:
    """Encodes each known prompt text to a fixed unit vector; records what it was asked."""

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        self.table = table
        self.training = True
        self.seen: list[str] = []
        self.config = SimpleNamespace(model=SimpleNamespace(embed_dim=D))

    def eval(self) -> FakeModel:
        self.training = False
        return self

    def train(self, mode: bool = True) -> FakeModel:
        self.training = mode
        return self

    def encode(self, inputs: dict) -> dict[str, torch.Tensor]:
        assert not self.training
        self.seen += inputs["report"]
        return {"report": torch.stack([self.table[t] for t in inputs["report"]])}


def e(i: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(i), D).float()


SET = {
    "name": "toy",
    "modalities": ["cxr"],
    "scoring": "pos_neg",
    "classes": {
        "effusion": {"positive": ["effusion"], "negative": ["no effusion"]},
        "pneumothorax": {
            "positive": ["pneumothorax", "collapsed lung"],
            "negative": ["no pneumothorax"],
        },
    },
}
TABLE = {
    "[RAD] effusion": e(0),
    "[RAD] no effusion": e(1),
    "[RAD] pneumothorax": e(2),
    "[RAD] collapsed lung": e(4),
    "[RAD] no pneumothorax": e(3),
}


def test_prompt_ensembles_average_then_renormalise() -> None:
    model = FakeModel(TABLE)
    ce = class_embeddings(model, labelset_from_dict(SET))
    assert set(model.seen) == set(TABLE) and model.training  # training mode restored
    assert torch.allclose(ce.positive[0], e(0))
    assert torch.allclose(ce.positive[1], (e(2) + e(4)) / math.sqrt(2))
    assert torch.allclose(ce.negative[1], e(3))


def test_pos_neg_probability_is_the_two_way_softmax() -> None:
    ce = class_embeddings(FakeModel(TABLE), labelset_from_dict(SET))
    x = torch.stack([e(0), e(1), F.normalize(e(0) + e(3), dim=0)])
    p = zeroshot_probs(x, ce, logit_scale=2.0, scoring="pos_neg")
    assert torch.isclose(p[0, 0], torch.softmax(torch.tensor([2.0, 0.0]), 0)[0])
    assert torch.isclose(p[1, 0], torch.softmax(torch.tensor([0.0, 2.0]), 0)[0])
    assert p[2, 0] > 0.5 > p[2, 1]  # effusion yes, pneumothorax no


def test_softmax_scoring_picks_the_closest_class() -> None:
    spec = {
        "name": "rhythm",
        "modalities": ["ecg"],
        "text": "cardiology",
        "scoring": "softmax",
        "classes": {c: {"positive": [c]} for c in ("Sinus", "Afib", "Flutter")},
    }
    table = {"[ECG] Sinus.": e(0), "[ECG] Afib.": e(1), "[ECG] Flutter.": e(2)}
    ce = class_embeddings(FakeModel(table), labelset_from_dict(spec))
    assert ce.negative is None
    x = F.normalize(torch.stack([e(1) + 0.1 * e(0), e(2), e(0)]), dim=1)
    p = zeroshot_probs(x, ce, 20.0, "softmax")
    assert p.argmax(1).tolist() == [1, 2, 0]
    assert torch.allclose(p.sum(1), torch.ones(3))


def test_scores_use_only_present_rows_with_known_labels_and_separate_classes() -> None:
    ls = labelset_from_dict(SET)
    ce = class_embeddings(FakeModel(TABLE), ls)
    rng = np.random.default_rng(0)
    n = 40
    y = (rng.random((n, 2)) < 0.5).astype(float)
    # the image embedding points toward each present finding's prompt and away otherwise
    x = F.normalize(
        torch.from_numpy(
            y[:, :1] * np.eye(D)[0]
            + (1 - y[:, :1]) * np.eye(D)[1]
            + y[:, 1:] * np.eye(D)[2]
            + (1 - y[:, 1:]) * np.eye(D)[3]
        ).float()
        + 0.05 * torch.randn(n, D, generator=torch.Generator().manual_seed(0)),
        dim=1,
    )
    labels = np.column_stack([y[:, 1], y[:, 0]])  # data columns in another order
    labels[5, :] = np.nan  # unknown everywhere: left out
    labels[6, 1] = -1  # uncertain effusion: unknown for that class only
    present = {"cxr": torch.ones(n, dtype=torch.bool)}
    present["cxr"][7] = False
    z = zeroshot_scores(
        {"cxr": x}, present, labels, ["pneumothorax", "effusion"], ls, "cxr", ce, 10.0
    )
    assert 5 not in z.rows and 7 not in z.rows and len(z.rows) == n - 2
    assert np.isnan(z.y[list(z.rows).index(6), 0])
    for c in range(2):
        k = np.isfinite(z.y[:, c])
        assert auroc(z.y[k, c], z.scores[k, c]) == 1.0


def test_label_matrix_fills_missing_columns_with_nan() -> None:
    m = label_matrix(np.array([[1.0, -1.0], [0.0, 1.0]]), ["a", "b"], ["b", "zzz", "a"])
    assert np.array_equal(np.isnan(m), [[True, True, False], [False, True, False]])
    assert m[1, 0] == 1.0 and m[0, 2] == 1.0


def test_late_fusion_averages_logits() -> None:
    ce = class_embeddings(FakeModel(TABLE), labelset_from_dict(SET))
    emb = {"cxr": e(0)[None], "ecg": e(1)[None]}
    both = fused_probs(emb, ["cxr", "ecg"], ce, 10.0, "pos_neg")
    assert both[0, 0] == pytest.approx(0.5)  # +10 and -10 cancel
    assert fused_probs(emb, ["cxr"], ce, 10.0, "pos_neg")[0, 0] > 0.99
