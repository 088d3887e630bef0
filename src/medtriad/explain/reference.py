"""The reference X-ray: the pixel mean of training X-rays without a finding.

The occlusion fill ``reference`` replaces a window with the same window of this image: what a
chest without the finding looks like there, on average. Unlike a grey window (which can look
like an opacity) or the mirrored film (which leaves a finding on both sides in place), it takes
out one-sided and bilateral findings alike (`docs/decisions.md`).

Which training X-rays count as having no finding:

* ``no_finding``: where the data has a ``label_no_finding`` column (the CheXpert and MIMIC-CXR
  preparers write one), the rows with ``no_finding`` = 1;
* ``findings``: otherwise the rows whose X-ray finding columns (those of the built-in X-ray
  label sets, `medtriad.evaluate.labelsets`, that the data holds, but those that mark an
  absence, such as ``edema_severity_0``) are all 0;
* ``all``: where the data holds neither, or no row qualifies, every training X-ray.

The trainer builds it from the training split and stores it with the model
(``reference_cxr.npz`` in the model folder); `medtriad reference RUN DATA` adds it to a run
trained without one.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtriad.errors import DataError

log = logging.getLogger(__name__)

__all__ = [
    "REFERENCE_FILE",
    "ReferenceXray",
    "build_reference_cxr",
    "load_reference",
    "no_finding_rows",
    "save_reference",
    "xray_finding_columns",
]

REFERENCE_FILE = "reference_cxr.npz"
RULES = ("no_finding", "findings", "all")
ABSENCE_COLUMNS = ("no_finding", "edema_severity_0")
"""X-ray label columns whose 1 says a finding is absent: not findings themselves."""


@dataclass(frozen=True)
class ReferenceXray:
    """``image``: float32 (1, H, W) in model-input units; ``count``: X-rays averaged; ``rule``:
    how they were chosen (one of ``no_finding``, ``findings``, ``all``; see the module)."""

    image: np.ndarray
    count: int
    rule: str


def xray_finding_columns(names: list[str]) -> list[str]:
    """The label names among `names` that a built-in X-ray label set classifies, but those that
    mark an absence (`ABSENCE_COLUMNS`)."""
    from medtriad.evaluate.labelsets import BUILTIN, builtin_label_set

    known: set[str] = set()
    for name in BUILTIN:
        ls = builtin_label_set(name)
        if "cxr" in ls.modalities:
            known.update(ls.columns)
    known -= set(ABSENCE_COLUMNS)
    return [n for n in names if n in known]


def no_finding_rows(labels: np.ndarray, names: list[str]) -> tuple[np.ndarray, str]:
    """(bool rows without a finding, the rule that chose them) for a (N, len(names)) label
    matrix (NaN = unknown; an unknown finding does not count as absent)."""
    labels = np.asarray(labels, dtype=np.float64).reshape(len(labels), len(names))
    if "no_finding" in names:
        rows = labels[:, names.index("no_finding")] == 1
        rule = "no_finding"
    else:
        cols = [names.index(n) for n in xray_finding_columns(names)]
        if not cols:
            return np.ones(len(labels), bool), "all"
        rows = np.all(labels[:, cols] == 0, axis=1)
        rule = "findings"
    if not rows.any():
        log.warning("no training X-ray is labelled without a finding: the reference averages them all")
        return np.ones(len(labels), bool), "all"
    return rows, rule


def build_reference_cxr(dataset: Any, limit: int = 2000, seed: int = 0, batch: int = 256) -> ReferenceXray:
    """The mean of up to `limit` X-rays (a seeded sample) of `dataset` (a manifest or shard
    dataset, usually the training split) without a finding; absent or unreadable X-rays are
    left out."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if "cxr" not in dataset.modalities:
        raise DataError(None, "the data has no X-ray modality to build a reference X-ray from")
    from medtriad.data.dataset import manifest_labels

    names = list(dataset.label_names)
    rows, rule = no_finding_rows(manifest_labels(dataset.df, names), names)
    idx = np.flatnonzero(rows)
    if len(idx) > limit:
        idx = np.sort(np.random.default_rng(seed).choice(idx, limit, replace=False))
    view = copy.copy(dataset)
    view.modalities = ["cxr"]  # read the X-rays only
    total: np.ndarray | None = None
    count = 0
    for i in range(0, len(idx), batch):
        b = view[idx[i : i + batch]]
        ok = b.present["cxr"].numpy()
        x = b.inputs["cxr"].numpy()[ok].astype(np.float64)
        if len(x):
            total = x.sum(0) if total is None else total + x.sum(0)
            count += len(x)
    if total is None:
        raise DataError(None, "no readable X-ray to build a reference X-ray from")
    log.info("reference X-ray: the mean of %d training X-rays (rule %s)", count, rule)
    return ReferenceXray((total / count).astype(np.float32), count, rule)


def save_reference(ref: ReferenceXray, directory: str | os.PathLike[str]) -> Path:
    """Write `ref` as ``reference_cxr.npz`` into `directory`."""
    path = Path(directory) / REFERENCE_FILE
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, image=ref.image, count=np.int64(ref.count), rule=np.str_(ref.rule))
    os.replace(tmp, path)
    return path


def load_reference(directory: str | os.PathLike[str], size: int | None = None) -> ReferenceXray | None:
    """The reference stored in `directory`, None if there is none; DataError naming the file if
    it cannot be read or its image is not (1, size, size)."""
    path = Path(directory) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            ref = ReferenceXray(z["image"].astype(np.float32), int(z["count"]), str(z["rule"]))
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(path, f"not a readable reference X-ray: {exc}") from exc
    if ref.image.ndim != 3 or ref.image.shape[0] != 1 or (size is not None and ref.image.shape[1:] != (size, size)):
        raise DataError(path, f"reference X-ray of shape {ref.image.shape}, the model reads (1, {size}, {size})")
    if not np.isfinite(ref.image).all() or ref.rule not in RULES:
        raise DataError(path, "reference X-ray holds non-finite pixels or an unknown rule")
    return ref
