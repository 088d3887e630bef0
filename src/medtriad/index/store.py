"""`IndexStore`: every study of a dataset embedded by a trained model, searchable by any modality.

An index is a self-contained folder::

    index.json          format, model fingerprint, loss geometry, kinds and counts per modality
    meta.parquet        one row per study: sample_id, subject_id, split, cxr_path and ecg_path
                        (absolute), report_text, label_*/meta_* columns, has_<modality> flags
    model/              the model (config.yaml, model.safetensors, report/), copied from the run
    <m>.npy             float32 (n_m, d) unit vectors of modality m (exact rescoring, adding)
    <m>_rows.npy        int64 (n_m,): the meta row of each vector
    <m>.faiss           FAISS index over <m>.npy (ids = positions), see `medtriad.index.ann`

`IndexStore.open` reads only the small structures (milliseconds); the model is loaded on first
use, since only embedding a query needs it. A search asks each FAISS index for a shortlist, then
rescores the union exactly with the stored vectors in the model's own geometry
(`medtriad.index.scoring`). Files are written to a temporary name and renamed, ``index.json``
last, and `open` checks that the counts agree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medtriad.errors import ConfigError, DataError
from medtriad.index.ann import (
    EXACT_LIMIT,
    KINDS,
    build_ann,
    choose_kind,
    kind_of,
    read_ann,
    search_ann,
    write_ann,
)
from medtriad.index.scoring import Geometry, geometry_of, score_terms, terms_for

log = logging.getLogger(__name__)

__all__ = ["Hit", "IndexStore", "build_index", "resolve_model_dir"]

FORMAT = 1
INDEX_FILE = "index.json"
META_FILE = "meta.parquet"
MODEL_DIR = "model"
_MODEL_FILES = ("config.yaml", "model.safetensors")
_MODEL_SUBDIRS = ("report",)
_KEEP_PREFIXES = ("label_", "meta_")


@dataclass(frozen=True)
class Hit:
    """One ranked study: its meta ``row``, overall ``score`` and the score of each term."""

    sample_id: str
    row: int
    score: float
    scores: dict[str, float] = field(default_factory=dict)


def resolve_model_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The saved model of a run folder (``RUN_DIR/model``), or `run_dir` itself if it is one."""
    p = Path(run_dir)
    for candidate in (p / MODEL_DIR, p):
        if (candidate / "model.safetensors").is_file() and (candidate / "config.yaml").is_file():
            return candidate
    raise DataError(p, "no saved model here (expected model/model.safetensors and config.yaml)")


def _fingerprint(model_dir: Path) -> str:
    """SHA-256 of the weights file: tells whether two model folders hold the same model."""
    h = hashlib.sha256()
    with open(model_dir / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _copy_model(src: Path, dst: Path) -> None:
    """Copy the files `from_pretrained` reads (not optimiser state) into `dst`, atomically."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in _MODEL_FILES:
        shutil.copy2(src / name, tmp / name)
    for name in _MODEL_SUBDIRS:
        if (src / name).is_dir():
            shutil.copytree(src / name, tmp / name)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def _ours(name: str) -> bool:
    """Whether a file name is one an index writes (a failed build may leave them behind)."""
    return name in (META_FILE, MODEL_DIR) or name.endswith((".npy", ".faiss", ".tmp"))


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


def _save_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _save_meta(path: Path, meta: pd.DataFrame) -> None:
    tmp = path.with_name(path.name + ".tmp")
    meta.to_parquet(tmp, index=False)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- embedding


@dataclass
class _Embedded:
    meta: pd.DataFrame
    vectors: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]


def _absolute(root: str, col: pd.Series) -> pd.Series:
    """Manifest paths (relative to `root`) as absolute path strings; missing stays missing."""
    base = Path(root).resolve()
    return col.astype("string").map(lambda p: str(base / p), na_action="ignore").astype("string")


def _meta_table(df: pd.DataFrame, root: str, present: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """The stored metadata: ids, absolute file paths, report, labels, and what got a vector."""
    cols = ["sample_id", "subject_id", "split"]
    meta = df[cols].astype("string").reset_index(drop=True)
    for col in ("cxr_path", "ecg_path"):
        meta[col] = _absolute(root, df[col]).reset_index(drop=True)
    meta["report_text"] = df["report_text"].astype("string").reset_index(drop=True)
    for col in df.columns:
        if col.startswith(_KEEP_PREFIXES):
            meta[col] = df[col].reset_index(drop=True)
    for m, flags in present.items():
        meta[f"has_{m}"] = flags
    return meta


@torch.inference_mode()
def _embed(
    model: Any, data: str | os.PathLike[str], batch_size: int, workers: int, progress: bool
) -> _Embedded:
    from medtriad.data.dataset import EpochBatches, make_loader, open_dataset
    from medtriad.progress import track

    model.eval()
    dataset = open_dataset(data, model.config.data)
    n = len(dataset)
    if n == 0:
        raise DataError(data, "no studies to index")
    batches = EpochBatches(n, batch_size, seed=0, epoch=0, shuffle=False, drop_last=False)
    modalities = list(model.modalities)
    chunks: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    flags: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    loader = make_loader(dataset, batches, workers=workers)
    for batch in track(
        loader, total=len(batches), description="embedding studies", enabled=progress
    ):
        emb = model.encode(batch)
        for m in modalities:
            ok = batch.present[m].numpy() if m in emb else np.zeros(len(batch), bool)
            flags[m].append(ok)
            if m in emb:
                chunks[m].append(emb[m].cpu().numpy()[ok])
    d = int(model.config.model.embed_dim)
    present = {m: np.concatenate(flags[m]) for m in modalities}
    vectors = {
        m: np.ascontiguousarray(
            np.concatenate(chunks[m]) if chunks[m] else np.zeros((0, d)), dtype=np.float32
        )
        for m in modalities
    }
    rows = {m: np.flatnonzero(present[m]).astype(np.int64) for m in modalities}
    meta = _meta_table(dataset.df, str(dataset.root), present)
    return _Embedded(meta, vectors, rows)


# --------------------------------------------------------------------------- the store


class IndexStore:
    """An index folder opened for search (see the module doc for its layout)."""

    def __init__(
        self,
        directory: Path,
        info: dict[str, Any],
        meta: pd.DataFrame,
        vectors: dict[str, np.ndarray],
        rows: dict[str, np.ndarray],
        anns: dict[str, Any],
    ) -> None:
        self.directory = directory
        self.info = info
        self.meta = meta
        self.vectors = vectors
        self.rows = rows
        self.anns = anns
        self._ids = pd.Index(meta["sample_id"].astype(str))
        self._pos: dict[str, np.ndarray] = {}
        for m, r in rows.items():
            pos = np.full(len(meta), -1, dtype=np.int64)
            pos[r] = np.arange(len(r))
            self._pos[m] = pos
        self._model: Any = None
        self._data_config: Any = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> IndexStore:
        """Open an index folder: metadata, vectors (memory-mapped) and FAISS indexes, no model."""
        d = Path(directory)
        info_file = d / INDEX_FILE
        if not info_file.is_file():
            raise DataError(d, f"not an index folder (no {INDEX_FILE})")
        try:
            info = json.loads(info_file.read_text())
        except ValueError as exc:
            raise DataError(info_file, f"not valid JSON: {exc}") from exc
        if info.get("format") != FORMAT:
            raise DataError(
                info_file, f"index format {info.get('format')!r}; this version reads {FORMAT}"
            )
        try:
            meta = pd.read_parquet(d / META_FILE)
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise DataError(d / META_FILE, f"not a readable Parquet file: {exc}") from exc
        vectors, rows, anns = {}, {}, {}
        for m in info["modalities"]:
            try:
                vectors[m] = np.load(d / f"{m}.npy", mmap_mode="r")
                rows[m] = np.load(d / f"{m}_rows.npy")
            except (OSError, ValueError) as exc:
                raise DataError(d / f"{m}.npy", f"cannot read the vectors: {exc}") from exc
            anns[m] = read_ann(d / f"{m}.faiss")
            n = info["per_modality"][m]["count"]
            if not (len(vectors[m]) == len(rows[m]) == anns[m].ntotal == n) or (
                len(rows[m]) and int(rows[m].max()) >= len(meta)
            ):
                raise DataError(
                    d, f"the {m} files disagree (an interrupted write?): rebuild the index"
                )
        if len(meta) != info["count"]:
            raise DataError(
                d, "meta.parquet and index.json disagree (an interrupted write?): rebuild the index"
            )
        return cls(d, info, meta, vectors, rows, anns)

    @classmethod
    def build(
        cls,
        run_dir: str | os.PathLike[str],
        data: str | os.PathLike[str],
        out: str | os.PathLike[str],
        *,
        kind: str = "auto",
        exact_limit: int = EXACT_LIMIT,
        batch_size: int = 64,
        workers: int = 0,
        progress: bool = True,
    ) -> IndexStore:
        """Embed every study of `data` (manifest or shard folder) with the run's model into `out`."""
        from medtriad.models import MultiModalModel

        if kind not in KINDS:
            raise ConfigError("kind", f"must be one of {list(KINDS)}, got {kind!r}")
        src = resolve_model_dir(run_dir)
        if not Path(data).exists():
            raise DataError(data, "no manifest or shard folder here")
        out = Path(out)
        if (out / INDEX_FILE).exists():
            raise DataError(
                out, "an index already exists here: add studies to it, or choose another folder"
            )
        if out.exists() and not all(_ours(p.name) for p in out.iterdir()):
            raise DataError(
                out, "folder holds other files: choose an empty or new folder for the index"
            )
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        _copy_model(src, out / MODEL_DIR)
        model = MultiModalModel.from_pretrained(out / MODEL_DIR)
        emb = _embed(model, data, batch_size, workers, progress)
        info = {
            "format": FORMAT,
            "model_fingerprint": _fingerprint(out / MODEL_DIR),
            "model_source": str(src.resolve()),
            "loss": model.config.loss.name,
            "geometry": geometry_of(model.config.loss.name),
            "dim": int(model.config.model.embed_dim),
            "modalities": list(model.modalities),
            "kind": kind,
            "exact_limit": int(exact_limit),
            "count": 0,
            "per_modality": {},
            "sources": [],
        }
        store = cls(out, info, emb.meta.iloc[:0], {}, {}, {})
        store._model = model
        store._write(emb, str(Path(data).resolve()))
        log.info("indexed %d studies in %.1f s: %s", len(emb.meta), time.perf_counter() - t0, out)
        return cls.open(out)._adopt_model(model)

    def _adopt_model(self, model: Any) -> IndexStore:
        self._model = model
        return self

    def add(
        self,
        data: str | os.PathLike[str],
        *,
        batch_size: int = 64,
        workers: int = 0,
        progress: bool = True,
    ) -> int:
        """Embed the studies of `data` with the index's model and append them; returns how many.

        A sample_id already in the index raises DataError (nothing is written).
        """
        from medtriad.data.dataset import open_dataset

        ids = open_dataset(data, self.data_config).df["sample_id"].astype(str)
        dup = ids[ids.isin(self._ids)].tolist()
        if dup:
            shown = ", ".join(dup[:5]) + (" ..." if len(dup) > 5 else "")
            raise DataError(data, f"{len(dup)} studies are already in the index ({shown})")
        emb = _embed(self.model, data, batch_size, workers, progress)
        self._write(emb, str(Path(data).resolve()))
        fresh = IndexStore.open(self.directory)
        self.meta, self.vectors, self.rows, self.anns = (
            fresh.meta,
            fresh.vectors,
            fresh.rows,
            fresh.anns,
        )
        self._ids, self._pos = fresh._ids, fresh._pos
        return len(emb.meta)

    def _write(self, emb: _Embedded, source: str) -> None:
        """Append `emb` to the in-memory arrays and write every file, index.json last."""
        d, info = self.directory, dict(self.info)
        offset = len(self.meta)
        meta = pd.concat([self.meta, emb.meta], ignore_index=True) if offset else emb.meta
        per: dict[str, dict[str, Any]] = {}
        for m in info["modalities"]:
            old = self.vectors.get(m)
            old_n = 0 if old is None else len(old)
            vectors = (
                emb.vectors[m] if old is None else np.concatenate([np.asarray(old), emb.vectors[m]])
            )
            rows = (
                emb.rows[m] + offset
                if old is None
                else np.concatenate([self.rows[m], emb.rows[m] + offset])
            )
            kind = choose_kind(info["kind"], len(vectors), info["exact_limit"])
            ann = self.anns.get(m)
            if ann is not None and kind_of(ann) == kind and old_n:
                if len(emb.vectors[m]):
                    ann.add(np.ascontiguousarray(emb.vectors[m]))
            else:
                ann = build_ann(vectors, kind)
            _save_npy(d / f"{m}.npy", vectors)
            _save_npy(d / f"{m}_rows.npy", rows)
            write_ann(ann, d / f"{m}.faiss")
            per[m] = {"kind": kind_of(ann), "count": len(vectors)}
        _save_meta(d / META_FILE, meta)
        info.update(count=len(meta), per_modality=per, sources=[*info["sources"], source])
        _save_json(d / INDEX_FILE, info)
        self.info = info

    # ------------------------------------------------------------------ properties

    def __len__(self) -> int:
        return len(self.meta)

    @property
    def modalities(self) -> list[str]:
        return list(self.info["modalities"])

    @property
    def geometry(self) -> Geometry:
        return self.info["geometry"]

    @property
    def kinds(self) -> dict[str, str]:
        """The concrete FAISS kind of each modality's index."""
        return {m: v["kind"] for m, v in self.info["per_modality"].items()}

    @property
    def model_dir(self) -> Path:
        return self.directory / MODEL_DIR

    @property
    def model(self) -> Any:
        """The index's model in eval mode, loaded on first use."""
        with self._lock:
            if self._model is None:
                from medtriad.models import MultiModalModel

                t0 = time.perf_counter()
                with torch.inference_mode(
                    False
                ):  # weights made under inference mode refuse autograd
                    self._model = MultiModalModel.from_pretrained(self.model_dir).eval()
                log.info("loaded the index's model in %.1f s", time.perf_counter() - t0)
            return self._model

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    @property
    def data_config(self) -> Any:
        """The model's preprocessing settings (read from its config, without loading weights)."""
        if self._model is not None:
            return self._model.config.data
        if self._data_config is None:
            from medtriad.config import load_config

            self._data_config = load_config(self.model_dir / "config.yaml").data
        return self._data_config

    def same_model(self, run_dir: str | os.PathLike[str]) -> bool:
        """Whether a run folder holds the very model this index was built with."""
        return _fingerprint(resolve_model_dir(run_dir)) == self.info["model_fingerprint"]

    # ------------------------------------------------------------------ studies

    def row_of(self, sample_id: str) -> int | None:
        """The meta row of a study id, or None; ids are looked up, never used as paths."""
        loc = self._ids.get_indexer([str(sample_id)])[0]
        return None if loc < 0 else int(loc)

    def vector(self, row: int, modality: str) -> np.ndarray | None:
        """The stored unit vector of one study's modality, or None when it has none."""
        p = self._pos[modality][row]
        return None if p < 0 else np.array(self.vectors[modality][p])

    def study(self, row: int) -> dict[str, Any]:
        """A study's metadata as plain JSON-ready values (paths excluded)."""
        r = self.meta.iloc[row]
        labels = {
            c[len("label_") :]: (None if pd.isna(r[c]) else float(r[c]))
            for c in self.meta.columns
            if c.startswith("label_")
        }
        return {
            "sample_id": str(r["sample_id"]),
            "subject_id": None if pd.isna(r["subject_id"]) else str(r["subject_id"]),
            "split": None if pd.isna(r["split"]) else str(r["split"]),
            "report_text": None if pd.isna(r["report_text"]) else str(r["report_text"]),
            "has": self.has(row),
            "labels": labels,
        }

    def has(self, row: int) -> dict[str, bool]:
        """Which modalities a study has: an indexed vector, or (without one) a stored file/text."""
        r = self.meta.iloc[row]
        out = {m: bool(self._pos[m][row] >= 0) for m in self.modalities}
        for m, col in (("cxr", "cxr_path"), ("ecg", "ecg_path"), ("report", "report_text")):
            out.setdefault(m, not pd.isna(r[col]))
        return out

    def path(self, row: int, modality: str) -> Path | None:
        """The stored file of a study's X-ray or ECG (absolute, from the index's metadata)."""
        value = self.meta.iloc[row][{"cxr": "cxr_path", "ecg": "ecg_path"}[modality]]
        return None if pd.isna(value) else Path(str(value))

    def study_batch(self, rows: Sequence[int]) -> Any:
        """The model inputs of stored studies, read from their files with the model's settings."""
        from medtriad.data.dataset import ManifestDataset

        sub = self.meta.iloc[list(rows)].reset_index(drop=True)
        return ManifestDataset(sub, self.data_config, modalities=self.modalities)[
            np.arange(len(sub))
        ]

    # ------------------------------------------------------------------ queries

    def read_cxr_bytes(self, data: bytes, name: str = "cxr") -> np.ndarray:
        """An X-ray file's bytes as the model's (1, S, S) input (type detected on content)."""
        from medtriad.data.cxr import read_cxr_bytes

        c = self.data_config.cxr
        return read_cxr_bytes(data, name, size=c.size, fit=c.fit, clahe=c.clahe)

    def read_ecg(self, path: str | os.PathLike[str], npy_fs: float = 500.0) -> Any:
        """An ECG file (WFDB record or .npy) preprocessed as the model's input (an `Ecg`)."""
        from medtriad.data.ecg import read_ecg_input

        return read_ecg_input(path, self.data_config.ecg, npy_fs=npy_fs)

    @torch.inference_mode()
    def embed_query(
        self,
        *,
        text: str | None = None,
        cxr: np.ndarray | None = None,
        ecg: np.ndarray | None = None,
        ecg_lead_mask: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Unit vectors (d,) of the given query inputs: report text, a (1, S, S) X-ray from
        `read_cxr_bytes`, a (12, T) ECG (with its lead mask) from `read_ecg`."""
        from medtriad.data.text import check_report

        inputs: dict[str, Any] = {}
        if text is not None:
            try:
                inputs["report"] = [check_report(text, None)]
            except DataError as exc:
                raise DataError(None, "the query text has no words") from exc
        if cxr is not None:
            inputs["cxr"] = torch.as_tensor(np.asarray(cxr, np.float32)).reshape(
                1, 1, *np.shape(cxr)[-2:]
            )
        if ecg is not None:
            inputs["ecg"] = torch.as_tensor(np.asarray(ecg, np.float32))[None]
            mask = (
                np.ones(len(ecg), bool)
                if ecg_lead_mask is None
                else np.asarray(ecg_lead_mask, bool)
            )
            inputs["ecg_lead_mask"] = torch.as_tensor(mask)[None]
        missing = [m for m in inputs if m != "ecg_lead_mask" and m not in self.modalities]
        if missing:
            raise DataError(None, f"this index's model has no encoder for {missing}")
        emb = self.model.encode(inputs)
        return {m: v[0].cpu().numpy().astype(np.float32) for m, v in emb.items()}

    def search(
        self,
        query: Mapping[str, np.ndarray],
        k: int = 10,
        *,
        targets: Sequence[str] | None = None,
        shortlist: int | None = None,
    ) -> list[Hit]:
        """The `k` best studies for query vectors {modality: (d,)} (see `medtriad.index.scoring`).

        Each FAISS index proposes ``shortlist`` (default 10 k) candidates per query vector; the
        union is rescored exactly. Ties keep index order.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        terms = terms_for(self.geometry, list(query), self.modalities, targets)
        q = {m: np.asarray(v, np.float32).reshape(-1) for m, v in query.items()}
        width = shortlist or 10 * k
        found: list[np.ndarray] = []
        for term in terms:
            for s in term.study:
                qs = np.stack([q[m] for m in term.query])
                _, ids = search_ann(self.anns[s], qs, width)
                ids = ids[ids >= 0]
                found.append(self.rows[s][ids])
        cand = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
        if not len(cand):
            return []
        needed = sorted({m for t in terms for m in t.study})
        study: dict[str, np.ndarray | None] = {}
        present: dict[str, np.ndarray] = {}
        for m in needed:
            pos = self._pos[m][cand]
            present[m] = pos >= 0
            # a modality is only needed when some index proposed a study holding it
            study[m] = (
                np.asarray(self.vectors[m][np.where(present[m], pos, 0)])
                if present[m].any()
                else None
            )
        per_term = score_terms(self.geometry, terms, q, study, present)
        answered = ~np.isnan(per_term)
        valid = answered.any(axis=0)
        total = np.where(
            valid, np.nansum(per_term, axis=0) / np.maximum(answered.sum(axis=0), 1), -np.inf
        )
        order = np.lexsort((cand, -total))[: min(k, int(valid.sum()))]
        names = [t.name for t in terms]
        ids = self.meta["sample_id"].to_numpy()
        return [
            Hit(
                sample_id=str(ids[cand[j]]),
                row=int(cand[j]),
                score=float(total[j]),
                scores={n: float(per_term[i, j]) for i, n in enumerate(names) if answered[i, j]},
            )
            for j in order
        ]


def build_index(
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    kind: str = "auto",
    add: bool = False,
    exact_limit: int = EXACT_LIMIT,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = True,
) -> IndexStore:
    """`medtriad index`: build an index of `data` in `out`, or with `add` append to the index
    there (which must have been built with the same model)."""
    if not add:
        return IndexStore.build(
            run_dir,
            data,
            out,
            kind=kind,
            exact_limit=exact_limit,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
        )
    store = IndexStore.open(out)
    if not store.same_model(run_dir):
        raise DataError(run_dir, f"this is not the model the index in {out} was built with")
    n = store.add(data, batch_size=batch_size, workers=workers, progress=progress)
    log.info("added %d studies to %s (%d in all)", n, out, len(store))
    return store
