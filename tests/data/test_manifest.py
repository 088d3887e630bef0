from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtriad.data.manifest import assign_splits, read_manifest, schema_problems, write_manifest
from medtriad.errors import DataError


def table(**over: list) -> pd.DataFrame:
    base = {
        "sample_id": ["a", "b", "c"],
        "subject_id": ["p1", "p1", "p2"],
        "split": ["train", "train", "test"],
        "cxr_path": ["a.png", None, "c.png"],
        "ecg_path": [None, "b.hea", ""],
        "report_text": ["x", "y", None],
        "label_edema": [1.0, 0.0, np.nan],
    }
    base.update(over)
    return pd.DataFrame(base)


def test_write_then_read_round_trip_and_blank_paths_become_missing(tmp_path: Path) -> None:
    write_manifest(table(), tmp_path / "m.parquet")
    df = read_manifest(tmp_path / "m.parquet")
    assert list(df["sample_id"]) == ["a", "b", "c"]
    assert df["ecg_path"].isna().tolist() == [True, False, True]
    assert df["label_edema"].dtype == np.float64
    assert df.attrs["root"] == str(tmp_path.resolve())
    assert not (tmp_path / "m.parquet.tmp").exists()


def test_clean_table_has_no_problems() -> None:
    assert schema_problems(table()) == []


@pytest.mark.parametrize(
    "over, needle",
    [
        ({"sample_id": ["a", "a", "c"]}, "duplicate sample_id"),
        ({"split": ["train", "test", "test"]}, "more than one split"),
        ({"split": ["train", "train", "holdout"]}, "split must be one of"),
        ({"label_edema": [1.0, 2.0, 0.0]}, "label_edema holds values"),
        ({"cxr_path": ["/abs/a.png", None, None]}, "relative"),
        ({"cxr_path": [None, None, None], "ecg_path": [None, None, None]}, "no modality"),
    ],
)
def test_schema_problems_are_reported(over: dict, needle: str) -> None:
    problems = schema_problems(table(**over))
    assert any(needle in p for p in problems), problems


def test_missing_columns_and_unreadable_files(tmp_path: Path) -> None:
    t = table().drop(columns=["split"])
    t.to_parquet(tmp_path / "m.parquet")
    with pytest.raises(DataError, match="missing required columns"):
        read_manifest(tmp_path / "m.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError) as exc:
        read_manifest(tmp_path / "junk.parquet")
    assert exc.value.path.endswith("junk.parquet")
    with pytest.raises(DataError, match="not found"):
        read_manifest(tmp_path / "none.parquet")


def test_assign_splits_is_patient_level_deterministic_and_proportional() -> None:
    subjects = pd.Series([f"p{i // 2}" for i in range(2000)])
    s1 = assign_splits(subjects, seed=1)
    assert s1.equals(assign_splits(subjects, seed=1))
    assert not s1.equals(assign_splits(subjects, seed=2))
    assert (pd.DataFrame({"s": subjects, "split": s1}).groupby("s")["split"].nunique() == 1).all()
    frac = s1.value_counts(normalize=True)
    assert abs(frac["train"] - 0.8) < 0.01 and abs(frac["val"] - 0.1) < 0.01
