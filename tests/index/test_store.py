from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtriad.data.manifest import read_manifest, write_manifest
from medtriad.errors import DataError
from medtriad.index import IndexStore, build_index
from medtriad.index.ann import kind_of
from medtriad.index.scoring import terms_for
from medtriad.index.store import _Embedded

from .conftest import tiny_config


@pytest.fixture(scope="module")
def store(index_dir: Path) -> IndexStore:
    return IndexStore.open(index_dir)


def _brute_force(store: IndexStore, query: dict[str, np.ndarray], k: int) -> list[str]:
    """Top-k by scoring every study with plain numpy, independent of FAISS and the shortlist."""
    terms = terms_for("cosine", list(query), store.modalities)
    n = len(store)
    sums, counts = np.zeros(n), np.zeros(n)
    for t in terms:
        (q,), (m,) = t.query, t.study
        rows = store.rows[m]
        sums[rows] += np.asarray(store.vectors[m]) @ query[q]
        counts[rows] += 1
    score = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)
    order = np.lexsort((np.arange(n), -score))[:k]
    return store.meta["sample_id"].iloc[order].astype(str).tolist()


def test_build_indexes_every_study_and_modality(store: IndexStore, cohort: Path) -> None:
    manifest = read_manifest(cohort)
    assert len(store) == len(manifest)
    assert set(store.meta["sample_id"]) == set(manifest["sample_id"])
    for m, col in (("cxr", "cxr_path"), ("ecg", "ecg_path"), ("report", "report_text")):
        assert (
            store.info["per_modality"][m]["count"]
            == int(manifest[col].notna().sum())
            == len(store.vectors[m])
        )
        norms = np.linalg.norm(np.asarray(store.vectors[m]), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    paths = store.meta["cxr_path"].dropna()
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in paths)
    assert store.kinds == {"cxr": "flat", "ecg": "flat", "report": "flat"}
    assert store.geometry == "cosine" and not store.model_loaded


def test_index_folder_is_self_contained(index_dir: Path, run_dir: Path) -> None:
    assert (index_dir / "model" / "model.safetensors").is_file()
    assert not (index_dir / "model" / "trainer_state.pt").exists()
    assert IndexStore.open(index_dir).same_model(run_dir)


def test_own_vector_retrieves_its_study_first(store: IndexStore) -> None:
    for m in store.modalities:
        for row in store.rows[m][:10]:
            v = store.vector(int(row), m)
            hit = store.search({m: v}, k=1, targets=[m])[0]
            # a study with an identical vector (same report text) may tie; it then comes first by row
            assert hit.row == row or np.allclose(store.vector(hit.row, m), v, atol=1e-6)
            assert hit.score == pytest.approx(1.0, abs=1e-5)


def test_search_matches_brute_force_and_reports_its_terms(store: IndexStore) -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        q = {m: rng.normal(size=8).astype(np.float32) for m in ("cxr", "report")}
        q = {m: v / np.linalg.norm(v) for m, v in q.items()}
        hits = store.search(q, k=7)
        assert [h.sample_id for h in hits] == _brute_force(store, q, 7)
        for h in hits:
            assert h.score == pytest.approx(np.mean(list(h.scores.values())), abs=1e-6)
            present = [m for m in store.modalities if store.vector(h.row, m) is not None]
            assert set(h.scores) == {f"{a}->{b}" for a in q for b in present}


def test_query_inputs_embed_like_the_indexed_study(store: IndexStore) -> None:
    row = int(
        np.flatnonzero(store.meta["has_cxr"] & store.meta["has_ecg"] & store.meta["has_report"])[0]
    )
    cxr = store.read_cxr_bytes(store.path(row, "cxr").read_bytes())
    ecg = store.read_ecg(store.path(row, "ecg"))
    text = store.meta["report_text"].iloc[row]
    q = store.embed_query(text=text, cxr=cxr, ecg=ecg.signal, ecg_lead_mask=ecg.lead_mask)
    assert set(q) == {"cxr", "ecg", "report"}
    for m, v in q.items():
        np.testing.assert_allclose(v, store.vector(row, m), atol=1e-5)
    hit = store.search({"report": q["report"]}, k=1, targets=["report"])[0]
    assert np.allclose(store.vector(hit.row, "report"), q["report"], atol=1e-5)


def test_tuple_geometries_rank_by_their_own_score(index_dir: Path) -> None:
    store = IndexStore.open(index_dir)
    q = {"report": store.vector(int(store.rows["report"][0]), "report")}
    full = np.flatnonzero(store.meta["has_cxr"] & store.meta["has_ecg"])
    for geometry in ("mip", "volume"):
        store.info["geometry"] = geometry
        hits = store.search(q, k=len(store))
        assert {h.row for h in hits} == set(full.tolist())  # only complete tuples are ranked
        cxr = np.stack([store.vector(int(r), "cxr") for r in full])
        ecg = np.stack([store.vector(int(r), "ecg") for r in full])
        if geometry == "mip":
            want = (q["report"] * cxr * ecg).sum(-1)
        else:
            a = np.stack([np.broadcast_to(q["report"], cxr.shape), cxr, ecg], axis=1).astype(
                np.float64
            )
            want = -np.sqrt(np.clip(np.linalg.det(a @ a.transpose(0, 2, 1)), 1e-6, None))
        got = {h.row: h.score for h in hits}
        np.testing.assert_allclose([got[int(r)] for r in full], want, rtol=1e-4, atol=1e-6)
        assert [h.score for h in hits] == sorted(got.values(), reverse=True)


def _split_manifest(cohort: Path, tmp: Path) -> tuple[Path, Path]:
    """Two manifests over the cohort's files (kept beside them so relative paths still resolve)."""
    df = read_manifest(cohort)
    first = write_manifest(df.iloc[:25], cohort.parent / f"part_a_{tmp.name}.parquet")
    second = write_manifest(df.iloc[25:], cohort.parent / f"part_b_{tmp.name}.parquet")
    return first, second


@pytest.fixture(scope="module")
def grown(
    tmp_path_factory: pytest.TempPathFactory, run_dir: Path, cohort: Path
) -> tuple[Path, Path, list[str]]:
    """An index built from 25 studies under an exact limit of 30 vectors, then grown by 15."""
    tmp = tmp_path_factory.mktemp("grown")
    first, second = _split_manifest(cohort, tmp)
    out = tmp / "idx"
    store = build_index(run_dir, first, out, exact_limit=30, progress=False)
    kinds = list(store.kinds.values())
    build_index(run_dir, second, out, add=True, progress=False)
    return out, second, kinds


def test_add_appends_studies_that_search_finds(grown: tuple[Path, Path, list[str]]) -> None:
    out, second, _ = grown
    store = IndexStore.open(out)
    assert len(store) == 40 and store.info["sources"][-1] == str(second.resolve())
    for sid in read_manifest(second)["sample_id"].astype(str):
        row = store.row_of(sid)
        v = store.vector(row, "report")
        if v is None:
            continue
        hit = store.search({"report": v}, k=1, targets=["report"])[0]
        assert hit.row == row or np.allclose(store.vector(hit.row, "report"), v, atol=1e-6)


def test_add_refuses_duplicates_and_writes_nothing(grown: tuple[Path, Path, list[str]]) -> None:
    out, second, _ = grown
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(DataError, match="already in the index"):
        IndexStore.open(out).add(second, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_auto_kind_switches_to_hnsw_above_the_limit(grown: tuple[Path, Path, list[str]]) -> None:
    out, _, kinds_before = grown
    assert set(kinds_before) == {"flat"}
    store = IndexStore.open(out)
    assert store.info["kind"] == "auto"
    assert store.kinds["report"] == "hnsw" and store.kinds["report"] == kind_of(
        store.anns["report"]
    )
    assert (
        store.anns["report"].ntotal
        == store.info["per_modality"]["report"]["count"]
        == int(store.meta["has_report"].sum())
    )
    v = store.vector(int(store.rows["report"][-1]), "report")
    assert store.search({"report": v}, k=1, targets=["report"])[0].score == pytest.approx(
        1.0, abs=1e-5
    )


def test_add_with_another_model_is_refused(tmp_path: Path, index_dir: Path, cohort: Path) -> None:
    from medtriad.models import build_model

    other = tmp_path / "other"
    build_model(tiny_config("seed=99")).save_pretrained(other / "model")
    with pytest.raises(DataError, match="not the model"):
        build_index(other, cohort, index_dir, add=True, progress=False)


def test_build_refuses_a_foreign_or_existing_folder(
    tmp_path: Path, run_dir: Path, cohort: Path, index_dir: Path
) -> None:
    foreign = tmp_path / "busy"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="other files"):
        build_index(run_dir, cohort, foreign, progress=False)
    with pytest.raises(DataError, match="already exists"):
        build_index(run_dir, cohort, index_dir, progress=False)
    with pytest.raises(DataError, match="no saved model"):
        build_index(tmp_path, cohort, tmp_path / "x", progress=False)


def test_open_detects_inconsistent_files(tmp_path: Path, index_dir: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(index_dir, copy, ignore=shutil.ignore_patterns("model"))
    rows = np.load(copy / "ecg_rows.npy")
    np.save(copy / "ecg_rows.npy", rows[:-1])
    with pytest.raises(DataError, match="disagree"):
        IndexStore.open(copy)
    with pytest.raises(DataError, match="not an index"):
        IndexStore.open(tmp_path)


def test_open_of_thousands_of_vectors_takes_milliseconds(tmp_path: Path, index_dir: Path) -> None:
    n, d = 5000, 64
    rng = np.random.default_rng(0)
    meta = pd.DataFrame(
        {
            "sample_id": [f"S{i:05d}" for i in range(n)],
            "subject_id": [f"P{i:05d}" for i in range(n)],
            "split": "train",
            "cxr_path": pd.NA,
            "ecg_path": pd.NA,
            "report_text": "text",
        }
    ).astype("string")
    vectors, rows = {}, {}
    for m in ("cxr", "ecg", "report"):
        v = rng.normal(size=(n, d)).astype(np.float32)
        vectors[m], rows[m] = v / np.linalg.norm(v, axis=1, keepdims=True), np.arange(n)
        meta[f"has_{m}"] = True
    info = json.loads((index_dir / "index.json").read_text())
    info.update(dim=d, count=0, per_modality={}, sources=[])
    out = tmp_path / "big"
    out.mkdir()
    IndexStore(out, info, meta.iloc[:0], {}, {}, {})._write(
        _Embedded(meta, vectors, rows), "synthetic"
    )
    IndexStore.open(out)  # warm the file cache, as a server restart would find it
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        store = IndexStore.open(out)
        times.append(time.perf_counter() - t0)
    assert len(store) == n and store.anns["cxr"].ntotal == n
    assert sorted(times)[2] < 0.1
