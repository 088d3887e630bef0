"""Time-window pairing of two event tables of the same subjects (X-rays and ECGs, admissions and
ECGs), vectorised: no Python loop over subjects or events.

A right event r pairs with a left event l when both belong to the same subject and
``lo <= time(r) - time(l) <= hi`` (both edges inclusive, millisecond resolution). ``"all"``
returns every such pair; ``"nearest"`` the one with the smallest ``|time(r) - time(l)|`` per
left event, a tie going to the earlier right event, then to the right event that comes first in
its table.

How: subjects are coded 0..S-1 and each event gets the key ``code * span + t`` (t in ms since the
earliest event), with ``span`` larger than every time plus the window, so one sorted array of
right keys holds every subject in its own disjoint range, and ``np.searchsorted`` finds each
left event's window bounds for all events at once.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

PairMode = Literal["nearest", "all"]
_MS = np.int64(1_000_000)  # ns per ms


def _ms(times: pd.Series) -> np.ndarray:
    values = pd.to_datetime(times).to_numpy(dtype="datetime64[ns]").astype(np.int64)
    return values // _MS


def pair_events(
    left_subject: pd.Series,
    left_time: pd.Series,
    right_subject: pd.Series,
    right_time: pd.Series,
    lo: pd.Timedelta,
    hi: pd.Timedelta,
    mode: PairMode = "nearest",
) -> tuple[np.ndarray, np.ndarray]:
    """Positional indices (left, right) of the pairs; ``lo <= right - left <= hi``.

    Times must be non-null datetimes. For "nearest" each left index appears at most once;
    the result is ordered by left index, then right time.
    """
    if mode not in ("nearest", "all"):
        raise ValueError(f"mode must be 'nearest' or 'all', got {mode!r}")
    lo_ms = int(pd.Timedelta(lo) / pd.Timedelta(milliseconds=1))
    hi_ms = int(pd.Timedelta(hi) / pd.Timedelta(milliseconds=1))
    if lo_ms > hi_ms:
        raise ValueError(f"empty window: lo {lo} > hi {hi}")
    empty = (np.empty(0, np.int64), np.empty(0, np.int64))
    if len(left_subject) == 0 or len(right_subject) == 0:
        return empty
    codes, uniques = pd.factorize(
        pd.concat([left_subject.astype(str), right_subject.astype(str)], ignore_index=True)
    )
    lcode, rcode = (
        codes[: len(left_subject)].astype(np.int64),
        codes[len(left_subject) :].astype(np.int64),
    )
    lt, rt = _ms(left_time), _ms(right_time)
    t0 = min(lt.min(), rt.min())
    lt, rt = lt - t0, rt - t0
    span = int(max(lt.max(), rt.max())) + max(abs(lo_ms), abs(hi_ms)) + 1
    if len(uniques) * span >= 2**62:
        raise ValueError("time range too wide to pair at millisecond resolution")
    lkey = lcode * span + lt
    rkey = rcode * span + rt
    order = np.lexsort((np.arange(len(rkey)), rkey))  # by key, ties by table position
    rsorted = rkey[order]
    start = np.searchsorted(rsorted, lkey + lo_ms, side="left")
    stop = np.searchsorted(rsorted, lkey + hi_ms, side="right")
    if mode == "all":
        counts = stop - start
        left_idx = np.repeat(np.arange(len(lkey)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return left_idx, order[np.repeat(start, counts) + offsets]
    # nearest: the last key below the left key and the first key at or above it, in the window
    pos = np.clip(
        np.searchsorted(rsorted, lkey, side="left"), start, stop
    )  # a window may exclude 0
    below = pos - 1
    has_below = (below >= start) & (below < stop)
    has_above = (pos >= start) & (pos < stop)
    below_c = np.clip(below, 0, len(rsorted) - 1)
    above_c = np.clip(pos, 0, len(rsorted) - 1)
    d_below = np.where(has_below, lkey - rsorted[below_c], np.iinfo(np.int64).max)
    d_above = np.where(has_above, rsorted[above_c] - lkey, np.iinfo(np.int64).max)
    take_below = has_below & (d_below <= d_above)  # a tie goes to the earlier event
    chosen = np.where(take_below, below_c, above_c)
    # among equal keys (same subject and time) take the first in table order
    chosen = np.searchsorted(rsorted, rsorted[chosen], side="left")
    found = has_below | has_above
    return np.flatnonzero(found), order[chosen[found]]
