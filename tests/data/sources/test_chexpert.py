"""`prepare chexpert`: both folder layouts, frontal filter, uncertainty policies, splits, 5x200."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medtriad.data.manifest import read_manifest
from medtriad.data.sources.chexpert import FIVE, prepare_chexpert
from medtriad.errors import DataError

COLUMNS = [
    "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
    "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
    "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
]  # fmt: skip


def row(path: str, frontal: bool = True, **labels: float) -> dict:
    return {"Path": path, "Sex": "Female", "Age": 68, "Frontal/Lateral": "Frontal" if frontal else "Lateral",
            "AP/PA": "AP" if frontal else None, **labels}  # fmt: skip


def build(base: Path, make, folder: str = "CheXpert-v1.0") -> Path:
    """Train rows: for each of the five labels three clean single-positives, plus distractors."""
    train, n = [], 0

    def add(frontal: bool = True, write: bool = True, **labels: float) -> None:
        nonlocal n
        n += 1
        rel = f"train/patient{n:05d}/study1/view1_{'frontal' if frontal else 'lateral'}.jpg"
        train.append(row(f"CheXpert-v1.0/{rel}", frontal, **labels))
        if write:
            make.image(base / folder / rel, seed=n)

    for name in FIVE:
        for _ in range(3):
            add(**{name: 1.0, "Support Devices": 1.0, "Fracture": 0.0})
    add(Edema=1.0, Cardiomegaly=1.0)  # two of the five: never in 5x200
    add(Edema=1.0, Consolidation=-1.0)  # uncertain on another: never in 5x200
    add(frontal=False, Edema=1.0)  # lateral
    add(write=False, Edema=1.0)  # image missing
    valid = [
        row("CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg", **{"No Finding": 1.0})
    ]
    make.image(base / folder / "valid/patient64541/study1/view1_frontal.jpg")
    make.csv(base / folder / "train.csv", train, COLUMNS)
    make.csv(base / folder / "valid.csv", valid, COLUMNS)
    return base


def test_rows_labels_and_splits(tmp_path: Path, make) -> None:
    root = build(tmp_path / "data", make)
    s = prepare_chexpert(root, tmp_path / "o", val_fraction=0.3, seed=1)
    df = read_manifest(s.manifest).set_index("sample_id")
    assert len(df) == 18
    assert s.dropped_rows["view Lateral not frontal"]["ids"] == [
        "train/patient00018/study1/view1_lateral"
    ]
    assert s.dropped_rows["image file missing"]["ids"] == [
        "train/patient00019/study1/view1_frontal"
    ]
    v = df.loc["valid/patient64541/study1/view1_frontal"]
    assert v["split"] == "test" and v["subject_id"] == "patient64541" and v["label_no_finding"] == 1
    assert (tmp_path / "o" / v["cxr_path"]).resolve() == (
        root / "CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg"
    ).resolve()
    train = df[df["meta_official_split"] == "train"]
    assert set(train["split"]) == {"train", "val"}
    r = df.loc["train/patient00017/study1/view1_frontal"]
    assert (
        r["label_consolidation"] == -1 and r["label_edema"] == 1 and np.isnan(r["label_pneumonia"])
    )
    assert df["report_text"].isna().all() and df["ecg_path"].isna().all()


@pytest.mark.parametrize(
    "policy,expected", [("keep", -1.0), ("ones", 1.0), ("zeros", 0.0), ("ignore", np.nan)]
)
def test_uncertainty_policy(tmp_path: Path, make, policy: str, expected: float) -> None:
    root = build(tmp_path / "data", make)
    df = read_manifest(prepare_chexpert(root, tmp_path / "o", uncertain=policy).manifest).set_index(
        "sample_id"
    )
    got = df.loc["train/patient00017/study1/view1_frontal", "label_consolidation"]
    assert (np.isnan(got) and np.isnan(expected)) or got == expected


def test_layouts(tmp_path: Path, make) -> None:
    parent = build(tmp_path / "a", make)
    inner = prepare_chexpert(parent / "CheXpert-v1.0", tmp_path / "o1")
    renamed = build(tmp_path / "b", make, folder="my_chexpert")
    other = prepare_chexpert(renamed / "my_chexpert", tmp_path / "o2")
    a, b = read_manifest(inner.manifest), read_manifest(other.manifest)
    assert a["sample_id"].tolist() == b["sample_id"].tolist() and len(a) == 18
    assert all((tmp_path / "o2" / p).is_file() for p in b["cxr_path"])


def test_five_by_200(tmp_path: Path, make) -> None:
    root = build(tmp_path / "data", make)
    s = prepare_chexpert(root, tmp_path / "o", subset="5x200", per_class=2, seed=4)
    df = read_manifest(s.manifest)
    five = df[[f"label_{n.lower().replace(' ', '_')}" for n in FIVE]]
    assert len(df) == 10 and set(df["split"]) == {"test"}
    assert ((five == 1).sum(axis=1) == 1).all() and not (five == -1).any().any()
    assert ((five == 1).sum(axis=0) == 2).all()
    again = read_manifest(
        prepare_chexpert(root, tmp_path / "p", subset="5x200", per_class=2, seed=4).manifest
    )
    assert again["sample_id"].tolist() == df["sample_id"].tolist()
    with pytest.raises(DataError, match="only 3"):
        prepare_chexpert(root, tmp_path / "q", subset="5x200", per_class=4)


def test_missing_release(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train.csv"):
        prepare_chexpert(tmp_path, tmp_path / "o")
