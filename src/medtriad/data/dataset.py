"""Datasets and loaders that yield whole `Batch`es.

A dataset is indexed by an array of row numbers and returns a ready batch, so shards are read
with one vectorised slice per modality instead of a Python loop over samples. Two sources:

- `ShardDataset`: memory-mapped arrays written by `medtriad prepare shards` (nothing to decode);
- `ManifestDataset`: the raw files of a manifest, decoded on the fly with the same readers.

A sample whose file cannot be read is not fatal: its modality is marked absent for that batch
and the failure is logged and counted (`ManifestDataset.bad`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from medtriad.config import DataConfig
from medtriad.data.manifest import LABEL_PREFIX, label_columns, read_manifest, resolve
from medtriad.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """One batch: inputs per modality (absent rows zero-filled), presence masks, labels.

    ``inputs``: ``cxr`` float32 (B, 1, H, W); ``ecg`` float32 (B, 12, T) with ``ecg_lead_mask``
    bool (B, 12); ``report`` a list of texts or ``{"input_ids", "attention_mask"}`` (B, L).
    ``present[m]`` is a bool (B,) tensor. ``labels`` float32 (B, n_labels), NaN = unknown.
    """

    inputs: dict[str, Any]
    present: dict[str, Tensor]
    labels: Tensor
    index: Tensor
    sample_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(x: Any) -> Any:
            if isinstance(x, Tensor):
                return x.to(device, non_blocking=non_blocking)
            if isinstance(x, dict):
                return {k: move(v) for k, v in x.items()}
            return x

        return replace(
            self,
            inputs=move(self.inputs),
            present=move(self.present),
            labels=move(self.labels),
            index=move(self.index),
        )

    def select(self, rows: Tensor | slice | Sequence[int]) -> Batch:
        """The sub-batch of the given rows (used to cut a batch into chunks)."""

        def take(x: Any) -> Any:
            if isinstance(x, Tensor):
                return x[rows]
            if isinstance(x, dict):
                return {k: take(v) for k, v in x.items()}
            if isinstance(x, list):
                idx = range(len(x))[rows] if isinstance(rows, slice) else [int(i) for i in rows]
                return [x[i] for i in idx]
            return x

        return Batch(
            inputs=take(self.inputs),
            present=take(self.present),
            labels=take(self.labels),
            index=take(self.index),
            sample_ids=take(self.sample_ids),
        )

    def drop(self, modality: str, rows: Tensor) -> Batch:
        """Hide `modality` from the rows where `rows` is True (modality dropout)."""
        present = dict(self.present)
        present[modality] = present[modality] & ~rows
        return replace(self, present=present)


def manifest_labels(df: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """float32 (len(df), len(names)) matrix of the ``label_<name>`` columns, NaN = unknown."""
    cols = [f"{LABEL_PREFIX}{n}" for n in names]
    if not cols:
        return np.zeros((len(df), 0), np.float32)
    return df[cols].to_numpy(dtype=np.float32, na_value=np.nan)


class ManifestDataset:
    """Decodes a manifest's raw files with the configured preprocessing."""

    def __init__(
        self,
        manifest: str | os.PathLike[str] | pd.DataFrame,
        data: DataConfig,
        split: str | Sequence[str] | None = None,
        modalities: Sequence[str] | None = None,
    ) -> None:
        df = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
        self.root = df.attrs.get("root", ".")
        if split is not None:
            splits = [split] if isinstance(split, str) else list(split)
            df = df[df["split"].isin(splits)]
        self.df = df.reset_index(drop=True)
        self.data = data
        self.modalities = list(modalities or data.modalities)
        self.label_names = [c[len(LABEL_PREFIX) :] for c in label_columns(self.df)]
        self._labels = manifest_labels(self.df, self.label_names)
        self.bad: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.df)

    def _cxr(self, rel: Any) -> np.ndarray | None:
        from medtriad.data.cxr import read_cxr

        path = resolve(self.root, rel)
        if path is None:
            return None
        c = self.data.cxr
        return read_cxr(path, size=c.size, fit=c.fit, clahe=c.clahe)

    def _ecg(self, rel: Any) -> tuple[np.ndarray, np.ndarray] | None:
        from medtriad.data.ecg import read_ecg_input

        path = resolve(self.root, rel)
        if path is None:
            return None
        rec = read_ecg_input(path, self.data.ecg)
        return rec.signal, rec.lead_mask

    def _report(self, text: Any) -> str | None:
        from medtriad.data.text import check_report

        if text is None or text is pd.NA:
            return None
        return check_report(text, "report")

    def _safe(self, fn: Any, value: Any, sample_id: str, modality: str) -> Any:
        try:
            return fn(value)
        except DataError as exc:
            key = f"{sample_id}:{modality}"
            if key not in self.bad:
                self.bad[key] = str(exc)
                log.warning("skipping %s of %s: %s", modality, sample_id, exc)
            return None

    def __getitem__(self, rows: np.ndarray) -> Batch:
        rows = np.asarray(rows, dtype=np.int64)
        sub = self.df.iloc[rows]
        ids = sub["sample_id"].astype(str).tolist()
        inputs: dict[str, Any] = {}
        present: dict[str, Tensor] = {}
        b = len(rows)
        if "cxr" in self.modalities:
            s = self.data.cxr.size
            arr = np.zeros((b, 1, s, s), np.float32)
            ok = np.zeros(b, bool)
            for i, (sid, rel) in enumerate(zip(ids, sub["cxr_path"])):
                img = self._safe(self._cxr, rel, sid, "cxr")
                if img is not None:
                    arr[i], ok[i] = img, True
            inputs["cxr"], present["cxr"] = torch.from_numpy(arr), torch.from_numpy(ok)
        if "ecg" in self.modalities:
            t = round(self.data.ecg.fs * self.data.ecg.seconds)
            arr = np.zeros((b, 12, t), np.float32)
            leads = np.zeros((b, 12), bool)
            ok = np.zeros(b, bool)
            for i, (sid, rel) in enumerate(zip(ids, sub["ecg_path"])):
                rec = self._safe(self._ecg, rel, sid, "ecg")
                if rec is not None:
                    arr[i], leads[i], ok[i] = rec[0], rec[1], True
            inputs["ecg"], inputs["ecg_lead_mask"] = torch.from_numpy(arr), torch.from_numpy(leads)
            present["ecg"] = torch.from_numpy(ok)
        if "report" in self.modalities:
            texts = [self._safe(self._report, t, sid, "report") for sid, t in zip(ids, sub["report_text"])]
            present["report"] = torch.tensor([t is not None for t in texts], dtype=torch.bool)
            inputs["report"] = [t or "" for t in texts]
        return Batch(inputs, present, torch.from_numpy(self._labels[rows]), torch.from_numpy(rows), ids)


class EpochBatches:
    """Deterministic batches of row indices for one epoch and one rank.

    The order is a permutation seeded by ``(seed, epoch)``, identical on every rank; rank r takes
    every ``world``-th row of each global batch, so the union of the ranks' batches is the batch a
    single process would see. ``start`` skips batches already done (exact resume).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        epoch: int,
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = True,
        start: int = 0,
    ) -> None:
        if batch_size % world:
            raise ValueError(f"global batch {batch_size} is not divisible by {world} processes")
        self.n, self.batch_size, self.rank, self.world, self.start = n, batch_size, rank, world, start
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        n_batches = n // batch_size if drop_last else -(-n // batch_size)
        self.batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)]
        if not drop_last and world > 1:
            raise ValueError("an incomplete last batch cannot be split evenly across processes")

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.start)

    def __iter__(self) -> Iterator[np.ndarray]:
        for batch in self.batches[self.start :]:
            yield batch[self.rank :: self.world]


def make_loader(dataset: Any, batches: EpochBatches, workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader whose items are whole batches (the dataset collates them itself).

    It gets its own generator: a DataLoader otherwise draws its worker seed from the global RNG
    each epoch, which would make a resumed run's random stream differ from an uninterrupted one.
    """
    return torch.utils.data.DataLoader(
        dataset,
        sampler=batches,
        batch_size=None,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
        collate_fn=_identity,
        generator=torch.Generator().manual_seed(0),
    )


def _identity(x: Any) -> Any:
    return x


def open_dataset(
    path: str | os.PathLike[str], data: DataConfig, split: str | Sequence[str] | None = None
) -> ManifestDataset | Any:
    """A shard folder (holding ``shards.json``) or a manifest file, whichever `path` is."""
    p = Path(path)
    if (p / "shards.json").is_file():
        from medtriad.data.shards import ShardDataset

        return ShardDataset(p, split=split, modalities=data.modalities)
    return ManifestDataset(p, data, split=split)
