"""Label-fraction subsets and the linear probe."""

from __future__ import annotations

import numpy as np
import pytest

from medtriad.evaluate.metrics import auroc
from medtriad.evaluate.probe import DEFAULT_CS, fraction_rows, linear_probe


def _cohort(n_patients: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    subjects = np.repeat(np.arange(n_patients), 2)  # two studies per patient
    y = np.column_stack([rng.random(len(subjects)) < 0.3, rng.random(len(subjects)) < 0.02]).astype(
        float
    )
    return subjects, y


def test_fractions_are_whole_patients_nested_and_deterministic() -> None:
    subjects, y = _cohort()
    small, mid, full = (fraction_rows(subjects, y, f, seed=3) for f in (0.01, 0.1, 1.0))
    assert len(full) == len(subjects)
    assert set(small) <= set(mid) <= set(full)
    for rows in (small, mid):
        chosen = set(subjects[rows])
        assert set(np.flatnonzero(np.isin(subjects, list(chosen)))) == set(rows)  # whole patients
    assert np.array_equal(mid, fraction_rows(subjects, y, 0.1, seed=3))
    assert not np.array_equal(mid, fraction_rows(subjects, y, 0.1, seed=4))


def test_rare_classes_get_their_minimum_positives() -> None:
    subjects, y = _cohort()
    rows = fraction_rows(subjects, y, 0.01, seed=0, min_positives=3)
    assert (y[rows] == 1).sum(axis=0).min() >= 3
    assert len(np.unique(subjects[rows])) < 30  # still a small subset


def test_fraction_outside_range_raises() -> None:
    subjects, y = _cohort(10)
    with pytest.raises(ValueError):
        fraction_rows(subjects, y, 0.0)


def test_linear_probe_separates_and_picks_c_on_validation() -> None:
    rng = np.random.default_rng(1)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = (rng.random((n, 2)) < 0.4).astype(float)
        x = rng.normal(size=(n, 16))
        x[:, 0] += 3 * y[:, 0]
        x[:, 1] -= 3 * y[:, 1]
        return x, y

    (xt, yt), (xv, yv), (xs, ys) = split(300), split(100), split(200)
    yt[:10, 1] = np.nan  # unknown training labels are skipped
    res = linear_probe(xt, yt, xv, yv, xs)
    assert res.test_scores.shape == (200, 2) and res.val_scores.shape == (100, 2)
    assert all(c in DEFAULT_CS for c in res.chosen)
    for c in range(2):
        assert auroc(ys[:, c], res.test_scores[:, c]) > 0.95


def test_a_class_with_one_training_value_predicts_its_prior() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 4))
    y = np.column_stack([np.zeros(50), rng.random(50) < 0.5]).astype(float)
    res = linear_probe(x, y, x, y, x)
    assert res.chosen[0] is None and np.all(res.test_scores[:, 0] == 0.0)
    assert res.chosen[1] is not None


def test_finetuning_works_on_a_seeded_copy_and_leaves_the_model_alone(tiny_run, tiny_data) -> None:
    import torch

    from medtriad.data.dataset import open_dataset
    from medtriad.evaluate.probe import finetune
    from medtriad.models import MultiModalModel

    model = MultiModalModel.from_pretrained(tiny_run / "model")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train = open_dataset(tiny_data, model.config.data, split="train")
    test = open_dataset(tiny_data, model.config.data, split="test")
    rows = np.flatnonzero(train.df["ecg_path"].notna().to_numpy())
    y = train.df.loc[rows, ["label_afib", "label_sinus"]].to_numpy(float)
    test_rows = np.arange(len(test))
    res = finetune(
        model,
        "ecg",
        (train, rows, y),
        (test, test_rows),
        (test, test_rows),
        epochs=1,
        min_steps=6,
        batch_size=16,
    )
    assert res.test_scores.shape == (len(test), 2) and np.all(
        (res.test_scores > 0) & (res.test_scores < 1)
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = finetune(
        model,
        "ecg",
        (train, rows, y),
        (test, test_rows),
        (test, test_rows),
        epochs=1,
        min_steps=6,
        batch_size=16,
    )
    assert np.allclose(res.test_scores, again.test_scores)  # seeded
