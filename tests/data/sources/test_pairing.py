"""`pair_events` equals a brute-force pairing on random events, edges and ties included."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtriad.data.sources.pairing import pair_events

BASE = pd.Timestamp("2150-01-01")


def events(rng: np.random.Generator, n: int, subjects: int) -> tuple[pd.Series, pd.Series]:
    # whole hours on a small grid, so exact edges and ties are frequent
    subj = pd.Series(rng.integers(0, subjects, n)).astype(str)
    time = pd.Series(BASE + pd.to_timedelta(rng.integers(0, 24 * 20, n), unit="h"))
    return subj, time


def brute(ls, lt, rs, rt, lo, hi, mode):
    pairs = []
    for i in range(len(ls)):
        cands = [j for j in range(len(rs)) if rs[j] == ls[i] and lo <= rt[j] - lt[i] <= hi]
        if mode == "all":
            pairs += [(i, j) for j in sorted(cands, key=lambda j: (rt[j], j))]
        elif cands:
            pairs.append((i, min(cands, key=lambda j: (abs(rt[j] - lt[i]), rt[j], j))))
    return pairs


@pytest.mark.parametrize("mode", ["nearest", "all"])
@pytest.mark.parametrize("window", [(-48, 48), (0, 24), (24, 72)])
def test_matches_brute_force(mode: str, window: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(window) + len(mode))
    ls, lt = events(rng, 80, 6)
    rs, rt = events(rng, 120, 7)
    lo, hi = pd.Timedelta(hours=window[0]), pd.Timedelta(hours=window[1])
    li, ri = pair_events(ls, lt, rs, rt, lo, hi, mode)
    got = list(zip(li.tolist(), ri.tolist()))
    assert got == brute(ls.tolist(), lt.tolist(), rs.tolist(), rt.tolist(), lo, hi, mode)
    assert len(got) > 10


def test_edges_are_inclusive_to_the_millisecond() -> None:
    t = pd.Series([pd.Timestamp("2150-01-01 12:00:00.500")])
    r = pd.Series([t[0] - pd.Timedelta(days=60), t[0] + pd.Timedelta(days=60, milliseconds=1)])
    s = pd.Series(["a"])
    _, ri = pair_events(
        s, t, pd.Series(["a", "a"]), r, -pd.Timedelta(days=60), pd.Timedelta(days=60), "all"
    )
    assert ri.tolist() == [0]


def test_empty_inputs() -> None:
    empty = pd.Series([], dtype=str)
    li, ri = pair_events(
        empty,
        pd.Series([], dtype="datetime64[ns]"),
        pd.Series(["a"]),
        pd.Series([BASE]),
        pd.Timedelta(0),
        pd.Timedelta(1),
        "nearest",
    )
    assert len(li) == len(ri) == 0
