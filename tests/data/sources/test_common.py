"""Shared preparer machinery: drop bookkeeping, relative paths, streaming reads, splits, the
summary writer and its printed table, and the registry's option descriptions."""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from medtriad.data.sources import PREPARERS, option_help, prepare_dataset
from medtriad.data.sources.common import (
    Drops,
    finish,
    most_held_out,
    read_csv_filtered,
    rel_prefix,
    summary_table,
)
from medtriad.errors import ConfigError, DataError


def test_drops_count_everything_but_keep_the_first_ids() -> None:
    d = Drops(keep=3)
    d.add("bad", ["a", "b"])
    d.add("bad", pd.Series(["c", "d", "e"]))
    d.add_each(pd.Series(["x", "y", "z"]), pd.Series(["r1", "r2", "r1"]))
    assert d.reasons["bad"] == {"count": 5, "ids": ["a", "b", "c"]}
    assert d.reasons["r1"]["ids"] == ["x", "z"] and d.total == 8
    df = pd.DataFrame({"id": ["p", "q", "r"]})
    kept = d.filter(df, [True, False, True], "odd", "id")
    assert kept["id"].tolist() == ["p", "r"] and d.reasons["odd"]["ids"] == ["q"]


@pytest.mark.parametrize(
    "base,out,expected",
    [
        ("data/release", "data/release/prepared", "../"),
        ("data/release", "elsewhere/out", "../../data/release/"),
        ("x", "x", ""),
    ],
)
def test_rel_prefix(tmp_path: Path, base: str, out: str, expected: str) -> None:
    (tmp_path / base).mkdir(parents=True, exist_ok=True)
    (tmp_path / out).mkdir(parents=True, exist_ok=True)
    prefix = rel_prefix(tmp_path / base, tmp_path / out)
    assert prefix == expected
    assert (tmp_path / out / (prefix + "f.jpg")).resolve() == (tmp_path / base / "f.jpg").resolve()


def test_most_held_out() -> None:
    subject = pd.Series(["a", "a", "b", "c", "c"])
    split, moved = most_held_out(subject, pd.Series(["train", "test", "train", "val", "train"]))
    assert split.tolist() == ["test", "test", "train", "val", "val"] and moved == 2


def test_streamed_read_checks_the_header(tmp_path: Path) -> None:
    p = tmp_path / "x.csv.gz"
    pd.DataFrame({"a": range(10), "b": list("abcdefghij")}).to_csv(p, index=False)
    got = read_csv_filtered(p, ["a"], lambda c: c[c["a"] % 2 == 0], chunksize=3)
    assert got["a"].tolist() == [0, 2, 4, 6, 8]
    with pytest.raises(DataError, match="missing columns \\['c'\\]"):
        read_csv_filtered(p, ["a", "c"])


def manifest(splits: list[str]) -> pd.DataFrame:
    n = len(splits)
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "subject_id": ["p0"] * n, "split": splits,
                         "cxr_path": None, "ecg_path": None, "report_text": ["[RAD] clear."] * n,
                         "label_x": [1.0] * n, "meta_y": list(range(n))})  # fmt: skip


def test_finish_writes_summary_and_refuses_a_leak(tmp_path: Path) -> None:
    rows = Drops()
    rows.add("too old", [f"id{i}" for i in range(25)])
    s = finish(manifest(["train", "train"]), dataset="t", root=tmp_path, out=tmp_path / "o", options={"root_like": tmp_path},
               rows=rows, values=Drops(), notes=["n"], started=time.perf_counter())  # fmt: skip
    saved = json.loads((tmp_path / "o" / "prepare_summary.json").read_text())
    assert (
        saved["n_rows"] == 2
        and saved["dropped_rows"]["too old"]["count"] == 25
        and saved["n_dropped"] == 25
    )
    assert saved["coverage"] == {"cxr": 0.0, "ecg": 0.0, "report": 1.0} and saved["options"][
        "root_like"
    ] == str(tmp_path)
    console = Console(width=200, record=True)
    console.print(summary_table(s))
    text = console.export_text()
    assert "id9" in text and "id10" not in text and "(+15 more)" in text
    with pytest.raises(DataError, match="more than one split"):
        finish(manifest(["train", "test"]), dataset="t", root=tmp_path, out=tmp_path / "p", options={},
               rows=Drops(), values=Drops(), notes=[], started=time.perf_counter())  # fmt: skip
    assert not (tmp_path / "p" / "manifest.parquet").exists()


def test_every_option_is_described() -> None:
    for name, fn in PREPARERS.items():
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        ]
        described = option_help(name)
        assert list(described) == [p.name for p in params]
        assert all(d["help"] and not isinstance(d["type"], str) for d in described.values())


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown dataset"):
        prepare_dataset("mimic4", tmp_path, tmp_path / "o")
