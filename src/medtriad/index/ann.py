"""FAISS indexes of unit vectors under inner product: exact, HNSW or IVF-PQ.

The index only proposes candidates; every score a search returns is recomputed exactly from the
stored vectors (`medtriad.index.scoring`), so an approximate kind can only miss a study, never
misreport its score. Vector ids are positions in the modality's vector array.

Kinds:

* ``flat``: exact ``IndexFlatIP``; the default up to :data:`EXACT_LIMIT` vectors.
* ``hnsw``: ``IndexHNSWFlat`` (inner product, M = 32); the default above it. Adding is cheap.
* ``ivfpq``: ``IndexIVFPQ`` (inverted lists of product-quantised codes), for collections too
  large to keep as float32 in memory; needs :data:`IVFPQ_MIN_VECTORS` vectors to train its
  codebooks and falls back to ``flat`` below that.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Literal

import numpy as np

from medtriad.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = [
    "EXACT_LIMIT",
    "IVFPQ_MIN_VECTORS",
    "KINDS",
    "Kind",
    "build_ann",
    "choose_kind",
    "kind_of",
    "read_ann",
    "search_ann",
    "write_ann",
]

Kind = Literal["auto", "flat", "hnsw", "ivfpq"]
KINDS: tuple[str, ...] = ("auto", "flat", "hnsw", "ivfpq")
EXACT_LIMIT = 100_000
"""Largest number of vectors searched exactly when the kind is ``auto``."""
IVFPQ_MIN_VECTORS = 1024
"""Fewest vectors an IVF-PQ index is trained on (256 codewords per sub-quantiser need several
points each); a smaller collection gets an exact index instead."""
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80


def choose_kind(kind: str, n: int, exact_limit: int = EXACT_LIMIT) -> str:
    """The concrete kind for `n` vectors: ``auto`` is flat up to `exact_limit`, HNSW above."""
    if kind not in KINDS:
        raise ConfigError("kind", f"must be one of {list(KINDS)}, got {kind!r}")
    if kind == "auto":
        return "flat" if n <= exact_limit else "hnsw"
    if kind == "ivfpq" and n < IVFPQ_MIN_VECTORS:
        log.warning("%d vectors are too few to train IVF-PQ; using an exact index", n)
        return "flat"
    return kind


def _pq_subquantizers(d: int) -> int:
    """Number of PQ sub-vectors: a divisor of `d` leaving about 4 dimensions each."""
    target = max(1, d // 4)
    divisors = [m for m in range(1, d + 1) if d % m == 0]
    return min(divisors, key=lambda m: (abs(m - target), m))


def build_ann(vectors: np.ndarray, kind: str) -> object:
    """A FAISS index of the given concrete kind holding `vectors` (n, d) float32 as ids 0..n-1."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    elif kind == "ivfpq":
        if n < IVFPQ_MIN_VECTORS:
            raise ConfigError("kind", f"ivfpq needs at least {IVFPQ_MIN_VECTORS} vectors, got {n}")
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 64))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFPQ(
            quantizer, d, nlist, _pq_subquantizers(d), 8, faiss.METRIC_INNER_PRODUCT
        )
        index.train(x)  # faiss keeps `quantizer` referenced from the Python wrapper
    else:
        raise ConfigError("kind", f"no index of kind {kind!r}")
    if n:
        index.add(x)
    return index


def kind_of(index: object) -> str:
    """The concrete kind of a FAISS index built here."""
    import faiss

    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVF):
        return "ivfpq"
    return "flat"


def search_ann(index: object, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the `k` best vectors per query row; ids are -1 where fewer exist."""
    import faiss

    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    k = max(1, min(int(k), max(int(index.ntotal), 1)))
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = max(64, 2 * k)
    elif isinstance(index, faiss.IndexIVF):
        index.nprobe = min(index.nlist, max(16, index.nlist // 8))
    if index.ntotal == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    return index.search(q, k)


def write_ann(index: object, path: Path) -> None:
    """Write atomically: a temporary file renamed into place."""
    import faiss

    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)


def read_ann(path: Path) -> object:
    import faiss

    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise DataError(path, f"not a readable FAISS index: {exc}") from exc
