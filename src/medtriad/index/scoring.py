"""How a query of one or more modalities scores a study, in the geometry the model was trained in.

The geometry follows the model's loss (``config.loss.name``):

* ``cosine`` (clip, more, siglip, dhn_nce, the multi-view losses): one term per pair
  (query modality q, study modality m) over the target modalities (default: all), each the
  cosine ``<q, s_m>`` of unit vectors. Same-modality pairs (X-ray to X-ray) and cross-modal
  pairs (text to X-ray) both count. A study's score is the mean over the pairs it can answer,
  which equals ``<mean query vector, mean of the study's present target vectors>``: each study is
  its centroid in the shared space.
* ``mip`` (symile): the model scores whole tuples, one vector per modality. The query supplies
  its modalities Q and the study the rest R; the single term is ``MIP(q..., s_r...)``. When the
  query holds every modality, each study modality m in turn replaces the query's, and the terms
  ``MIP(q without m, s_m)`` are averaged.
* ``volume`` (gram): the same tuples, scored by minus the volume of the parallelotope they span
  (``-sqrt(det(A A^T))``, smaller volume = better match), as in training.

A tuple term needs every study modality it names; a study that can answer no term is not ranked.
Scores are comparable within one geometry only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from medtriad.errors import ConfigError

__all__ = ["Geometry", "Term", "geometry_of", "score_terms", "terms_for"]

Geometry = Literal["cosine", "mip", "volume"]
_TUPLE_GEOMETRIES = {"symile": "mip", "gram": "volume"}
GRAM_EPS = 1e-6
"""Floor of the Gram determinant before the square root, as the gram loss uses."""


def geometry_of(loss_name: str) -> Geometry:
    """The scoring geometry of a loss: ``mip`` for symile, ``volume`` for gram, else ``cosine``."""
    return _TUPLE_GEOMETRIES.get(loss_name, "cosine")  # type: ignore[return-value]


@dataclass(frozen=True)
class Term:
    """One similarity a study's score averages: query vectors of ``query`` modalities against the
    study's vectors of ``study`` modalities; ``name`` labels it in results (``report->cxr``)."""

    query: tuple[str, ...]
    study: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{'+'.join(self.query)}->{'+'.join(self.study)}"


def terms_for(
    geometry: Geometry,
    query: Sequence[str],
    modalities: Sequence[str],
    targets: Sequence[str] | None = None,
) -> list[Term]:
    """The terms scoring a query of modalities `query` against an index of `modalities`."""
    unknown = [m for m in (*query, *(targets or ())) if m not in modalities]
    if unknown:
        raise ConfigError(
            "query", f"modalities {unknown} are not in this index ({list(modalities)})"
        )
    if not query:
        raise ConfigError("query", "a query needs at least one modality")
    q = tuple(m for m in modalities if m in query)
    if geometry == "cosine":
        study = [m for m in modalities if targets is None or m in targets]
        return [Term((a,), (b,)) for a in q for b in study]
    if targets is not None:
        raise ConfigError(
            "targets",
            f"the {geometry} geometry scores whole tuples; targets apply to cosine models",
        )
    rest = tuple(m for m in modalities if m not in q)
    if rest:
        return [Term(q, rest)]
    return [Term(tuple(a for a in q if a != m), (m,)) for m in modalities]


def _term_scores(
    geometry: Geometry, query: Sequence[torch.Tensor], study: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Scores (n,) of one term: `query` vectors (d,) against `study` rows (n, d)."""
    if geometry == "cosine":
        return study[0] @ query[0]
    if geometry == "mip":
        from medtriad.losses.symile import mip

        return mip(*study, *query)  # (d,) query vectors broadcast over the study rows
    from medtriad.losses.gram import gram_volume

    # gram_volume pairs anchor rows with candidate tuples: the first query vector is the one
    # anchor, candidate j's tuple is the other query vectors and study row j.
    n = study[0].shape[0]
    others = [q.expand(n, -1) for q in query[1:]] + list(study)
    return -gram_volume(query[0][None], others, GRAM_EPS)[0]


def score_terms(
    geometry: Geometry,
    terms: Sequence[Term],
    query: Mapping[str, np.ndarray],
    study: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray],
) -> np.ndarray:
    """Per-term scores (n_terms, n) of n studies; NaN where a study lacks a modality of the term.

    `query` maps a modality to its (d,) vector; `study` maps a modality to (n, d) vectors (rows
    of absent modalities are ignored) and `present` to (n,) booleans.
    """
    n = len(next(iter(present.values())))
    out = np.full((len(terms), n), np.nan, dtype=np.float64)
    for i, term in enumerate(terms):
        ok = np.ones(n, dtype=bool)
        for m in term.study:
            ok &= present[m]
        if not ok.any():
            continue
        qv = [torch.from_numpy(np.asarray(query[m], np.float32)) for m in term.query]
        sv = [torch.from_numpy(np.asarray(study[m], np.float32)[ok]) for m in term.study]
        out[i, ok] = _term_scores(geometry, qv, sv).double().numpy()
    return out
