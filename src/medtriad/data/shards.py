"""`medtriad prepare shards`: preprocess a manifest once into memory-mapped arrays.

Layout of a shard folder::

    shards.json        preprocessing settings, counts, bad samples with reasons
    manifest.parquet   the manifest's rows (paths still relative to the original manifest)
    cxr.npy            uint8 (N, 1, S, S): X-rays at the training size (value * 255)
    ecg.npy            int16 (N, 12, T): ECG in microvolts (1 uV steps, +-32.767 mV)
    ecg_leads.npy      bool (N, 12): lead masks
    report_ids.npy     int32 (N, L) token ids; report_mask.npy, report_types.npy uint8 (N, L)
    present.npy        bool (N, 3): cxr, ecg, report present and readable
    done.npy           bool (N,): rows already written (an interrupted run resumes)

Rows are read in parallel worker processes; a bad file marks its modality absent and is listed
in ``shards.json`` (or raises at once with ``fail_fast``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medtriad.config import DataConfig
from medtriad.data.dataset import Batch, ManifestDataset, manifest_labels
from medtriad.data.manifest import LABEL_PREFIX, label_columns, read_manifest, write_manifest
from medtriad.errors import DataError

log = logging.getLogger(__name__)

ECG_UNITS_PER_MV = 1000.0
SHARD_MODALITIES = ("cxr", "ecg", "report")
CHUNK = 64
Tokenize = Callable[[Sequence[str]], dict[str, torch.Tensor]]


def _settings(data: DataConfig, tokenizer_id: str, max_length: int) -> dict[str, Any]:
    return {
        "cxr": asdict(data.cxr),
        "ecg": asdict(data.ecg),
        "tokenizer": tokenizer_id,
        "max_length": max_length,
        "ecg_units_per_mv": ECG_UNITS_PER_MV,
    }


def _read_chunk(args: tuple[Any, DataConfig, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
    df, data, rows = args
    ds = ManifestDataset(df, data, modalities=("cxr", "ecg", "report"))
    batch = ds[rows]
    out = {
        "cxr": np.rint(batch.inputs["cxr"].numpy() * 255.0).clip(0, 255).astype(np.uint8),
        "ecg": np.rint(batch.inputs["ecg"].numpy() * ECG_UNITS_PER_MV).clip(-32767, 32767).astype(np.int16),
        "ecg_leads": batch.inputs["ecg_lead_mask"].numpy(),
        "present": np.stack([batch.present[m].numpy() for m in SHARD_MODALITIES], axis=1),
        "texts": batch.inputs["report"],
        "bad": ds.bad,
    }
    return rows, out


def prepare_shards(
    manifest: str | os.PathLike[str],
    out: str | os.PathLike[str],
    data: DataConfig,
    tokenize: Tokenize,
    tokenizer_id: str,
    max_length: int,
    workers: int | None = None,
    fail_fast: bool = False,
    progress: bool = True,
    token_lengths: Callable[[Sequence[str | None]], np.ndarray] | None = None,
) -> Path:
    """Write the shard folder for `manifest` (resuming a previous, interrupted run).

    With `token_lengths` (untruncated token counts), reports longer than `max_length` are
    counted (``truncated_reports`` in ``shards.json``) and a warning says how many were cut.
    """
    df = read_manifest(manifest)
    root = df.attrs["root"]
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    n = len(df)
    s, t = data.cxr.size, round(data.ecg.fs * data.ecg.seconds)
    settings = _settings(data, tokenizer_id, max_length)
    meta_path = out_p / "shards.json"
    fresh = True
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        fresh = old.get("settings") != settings or old.get("n") != n or old.get("manifest") != str(Path(manifest).resolve())
        if fresh:
            log.info("shard settings changed: rewriting %s", out_p)
    mode = "w+" if fresh else "r+"

    def mm(name: str, dtype: Any, shape: tuple[int, ...]) -> np.memmap:
        return np.lib.format.open_memmap(out_p / f"{name}.npy", mode=mode, dtype=dtype, shape=shape if mode == "w+" else None)

    arrays = {
        "cxr": mm("cxr", np.uint8, (n, 1, s, s)),
        "ecg": mm("ecg", np.int16, (n, 12, t)),
        "ecg_leads": mm("ecg_leads", np.bool_, (n, 12)),
        "report_ids": mm("report_ids", np.int32, (n, max_length)),
        "report_mask": mm("report_mask", np.uint8, (n, max_length)),
        "report_types": mm("report_types", np.uint8, (n, max_length)),
        "present": mm("present", np.bool_, (n, 3)),
        "done": mm("done", np.bool_, (n,)),
    }
    old_meta = {} if fresh else json.loads(meta_path.read_text())
    bad: dict[str, str] = dict(old_meta.get("bad", {}))
    meta = {"manifest": str(Path(manifest).resolve()), "root": root, "n": n, "settings": settings, "bad": bad,
            "truncated_reports": int(old_meta.get("truncated_reports", 0))}
    meta_path.write_text(json.dumps(meta, indent=2))
    write_manifest(df, out_p / "manifest.parquet")

    todo = np.flatnonzero(~np.asarray(arrays["done"]))
    chunks = [todo[i : i + CHUNK] for i in range(0, len(todo), CHUNK)]
    table = df.copy()
    table.attrs["root"] = root
    tasks = [(table, data, rows) for rows in chunks]
    from medtriad.progress import make_progress

    def store(rows: np.ndarray, res: dict[str, Any]) -> None:
        if res["bad"] and fail_fast:
            key, reason = next(iter(res["bad"].items()))
            raise DataError(key, reason)
        texts = res["texts"]
        if token_lengths is not None:
            has_text = [bool(t) for t in texts]
            meta["truncated_reports"] += int(((token_lengths(texts) > max_length) & has_text).sum())
        tok = tokenize(texts)
        ids, mask = tok["input_ids"].numpy(), tok["attention_mask"].numpy()
        width = min(ids.shape[1], max_length)
        types = tok["token_type_ids"].numpy() if "token_type_ids" in tok else np.zeros_like(ids)
        for key, value in (("report_ids", ids), ("report_mask", mask), ("report_types", types)):
            arrays[key][rows] = 0
            arrays[key][rows, :width] = value[:, :width]
        for key in ("cxr", "ecg", "ecg_leads", "present"):
            arrays[key][rows] = res[key]
        arrays["done"][rows] = True
        bad.update(res["bad"])

    workers = max(1, min(workers or os.cpu_count() or 1, len(chunks)))
    with make_progress() as bar:
        task = bar.add_task("writing shards", total=n, completed=n - len(todo))
        if not progress:
            bar.update(task, visible=False)
        results = map(_read_chunk, tasks) if workers == 1 else None
        pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
        try:
            if pool is not None:
                results = pool.map(_read_chunk, tasks)
            for rows, res in results:  # type: ignore[union-attr]
                store(rows, res)
                bar.advance(task, len(rows))
                if len(bad) and bar.tasks[task].completed % (CHUNK * 16) == 0:
                    meta_path.write_text(json.dumps(meta, indent=2))
        finally:
            for a in arrays.values():
                a.flush()
            meta_path.write_text(json.dumps(meta, indent=2))
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    meta["counts"] = {m: int(np.asarray(arrays["present"])[:, i].sum()) for i, m in enumerate(SHARD_MODALITIES)}
    meta_path.write_text(json.dumps(meta, indent=2))
    if bad:
        log.warning("%d bad samples were marked absent (listed in %s)", len(bad), meta_path)
    cut = meta["truncated_reports"]
    if cut:
        log.warning(
            "%d of %d reports are longer than max_length=%d tokens and were cut; findings written late "
            "in a report may be lost (raise data.report.max_length)", cut, meta["counts"]["report"], max_length,
        )
    return out_p


class ShardDataset:
    """Reads batches from a shard folder with one fancy-indexing slice per array."""

    def __init__(
        self, folder: str | os.PathLike[str], split: str | Sequence[str] | None = None, modalities: Sequence[str] | None = None
    ) -> None:
        self.folder = Path(folder)
        meta_file = self.folder / "shards.json"
        if not meta_file.is_file():
            raise DataError(self.folder, "not a shard folder (no shards.json)")
        self.meta = json.loads(meta_file.read_text())
        done = np.load(self.folder / "done.npy", mmap_mode="r")
        if not bool(np.all(done)):
            raise DataError(self.folder, f"shards incomplete ({int(np.sum(~done))} rows missing): run prepare shards again")
        df = pd.read_parquet(self.folder / "manifest.parquet")
        rows = np.arange(len(df))
        if split is not None:
            splits = [split] if isinstance(split, str) else list(split)
            rows = rows[df["split"].isin(splits).to_numpy()]
        self.rows = rows
        self.df = df.iloc[rows].reset_index(drop=True)
        self.modalities = list(modalities or SHARD_MODALITIES)
        self.label_names = [c[len(LABEL_PREFIX) :] for c in label_columns(self.df)]
        self._labels = manifest_labels(self.df, self.label_names)
        self._arrays: dict[str, np.ndarray] | None = None
        self.root = self.meta["root"]

    @property
    def settings(self) -> dict[str, Any]:
        return self.meta["settings"]

    def __len__(self) -> int:
        return len(self.rows)

    def _open(self) -> dict[str, np.ndarray]:
        # opened lazily so that each loader worker maps the files itself
        if self._arrays is None:
            names = ("cxr", "ecg", "ecg_leads", "report_ids", "report_mask", "report_types", "present")
            self._arrays = {k: np.load(self.folder / f"{k}.npy", mmap_mode="r") for k in names}
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state

    def __getitem__(self, rows: np.ndarray) -> Batch:
        local = np.asarray(rows, dtype=np.int64)
        a = self._open()
        g = self.rows[local]
        order = np.argsort(g, kind="stable")  # sorted reads are sequential on disk
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))

        def take(name: str) -> np.ndarray:
            return np.asarray(a[name][g[order]])[inv]

        pres = take("present")
        inputs: dict[str, Any] = {}
        present: dict[str, torch.Tensor] = {}
        if "cxr" in self.modalities:
            inputs["cxr"] = torch.from_numpy(take("cxr")).float().div_(255.0)
            present["cxr"] = torch.from_numpy(pres[:, 0].copy())
        if "ecg" in self.modalities:
            inputs["ecg"] = torch.from_numpy(take("ecg")).float().div_(ECG_UNITS_PER_MV)
            inputs["ecg_lead_mask"] = torch.from_numpy(take("ecg_leads"))
            present["ecg"] = torch.from_numpy(pres[:, 1].copy())
        if "report" in self.modalities:
            mask = take("report_mask")
            width = max(int(mask.sum(axis=1).max(initial=1)), 1)  # trim padding columns
            inputs["report"] = {
                "input_ids": torch.from_numpy(take("report_ids")[:, :width].astype(np.int64)),
                "attention_mask": torch.from_numpy(mask[:, :width].astype(np.int64)),
                "token_type_ids": torch.from_numpy(take("report_types")[:, :width].astype(np.int64)),
            }
            present["report"] = torch.from_numpy(pres[:, 2].copy())
        ids = self.df["sample_id"].iloc[local].astype(str).tolist()
        return Batch(inputs, present, torch.from_numpy(self._labels[local]), torch.from_numpy(local), ids)


def prepare_shards_for_config(
    manifest: str | os.PathLike[str], out: str | os.PathLike[str], config: Any, workers: int | None = None,
    fail_fast: bool = False, progress: bool = True,
) -> Path:
    """`prepare_shards` with the preprocessing and tokenizer a full config describes."""
    from medtriad.models.text import TextEncoder, resolve_text_path

    text_cfg = config.model.report
    max_length = text_cfg.max_length or config.data.report.max_length
    encoder = TextEncoder(text_cfg, max_length)
    tokenizer_id = f"{resolve_text_path(text_cfg)}|pair={text_cfg.pair_sections}"
    return prepare_shards(
        manifest, out, config.data, encoder.tokenize, tokenizer_id, max_length,
        workers=workers, fail_fast=fail_fast, progress=progress, token_lengths=encoder.token_lengths,
    )
