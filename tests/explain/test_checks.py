"""The explanation checks on a generated cohort: a map that points inside every region scores 1,
one that points outside scores 0, baselines and files are what they say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medtriad.data.cxr import read_cxr
from medtriad.errors import ConfigError, DataError
from medtriad.explain.checks import CXR_FINDINGS, check_explanations, query_embedding, to_markdown
from medtriad.explain.maps import input_to_native_coords
from medtriad.explain.quality import random_hit_rate

from .conftest import tiny_config


@pytest.fixture(scope="module")
def checks_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 studies at 64 x 64: a few positives of every finding, in every split."""
    from medtriad.data.synthetic.cohort import generate_cohort

    root = tmp_path_factory.mktemp("checks-cohort")
    generate_cohort(root, n=40, seed=5, missing_fraction=0.0, image_size=64, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medtriad.models import build_model

    out = tmp_path_factory.mktemp("checks-model") / "model"
    build_model(tiny_config("data.cxr.size=64")).save_pretrained(out)  # an 8 x 8 patch grid
    return out


def _key(x: torch.Tensor) -> bytes:
    return x.numpy().tobytes()


def _oracle(run_dir: Path, root: Path, rows: pd.DataFrame, inside: bool):
    """A map function whose maximum lies on a grid cell whose centre (in native pixels) is inside
    (or, with `inside` False, outside) the finding's mask; it recognises the finding by the
    query embedding and the study by its pixels. Only inner cells are used: upsampling with
    border padding spreads an edge cell's value to the image edge."""
    from dataclasses import replace

    from medtriad.explain import load_explain_model
    from medtriad.models import build_model

    model = load_explain_model(run_dir)
    fresh = build_model(replace(model.config, seed=model.config.seed + 1))
    c = model.config.data.cxr
    grid = c.size // model.config.model.cxr.patch_size
    queries = {
        f: [query_embedding(m, f, "rad") for m in (model, fresh)] for f in CXR_FINDINGS
    }
    table: dict[tuple[str, bytes], np.ndarray] = {}
    wanted: dict[str, int] = {}
    for f in CXR_FINDINGS:
        pos = rows[rows[f"label_{f}"] == 1]
        for path, ann in zip(pos.cxr_path, pos.meta_annotation_path):
            mask = np.load(root / ann)[f"mask_{f}"]
            r_in, c_in = input_to_native_coords(mask.shape, c.size, c.fit)
            # native pixel nearest to each cell's centre in model-input pixels
            centres = (np.arange(grid) + 0.5) * (c.size / grid) - 0.5
            rr = np.abs(r_in[:, None] - centres[None]).argmin(0)
            cc = np.abs(c_in[:, None] - centres[None]).argmin(0)
            cell_in = mask[np.ix_(rr, cc)]
            inner = np.zeros_like(cell_in)
            inner[1:-1, 1:-1] = True
            choice = np.argwhere((cell_in if inside else ~cell_in) & inner)
            if len(choice) == 0:
                continue
            g = np.zeros((grid, grid), np.float32)
            g[tuple(choice[0])] = 1.0
            x = torch.from_numpy(read_cxr(root / path, size=c.size, fit=c.fit, clahe=c.clahe))
            table[(f, _key(x))] = g
            wanted[f] = wanted.get(f, 0) + 1

    def map_fn(m, xb, score, shifts):
        target = score.others[0]
        finding = next(f for f, qs in queries.items() if any(torch.allclose(q, target) for q in qs))
        maps = np.stack([table.get((finding, _key(x)), np.zeros((grid, grid), np.float32)) for x in xb])
        return {"similarity": maps, "relevance": maps}

    return map_fn, wanted


@pytest.mark.parametrize("inside", [True, False])
def test_a_map_inside_every_region_scores_one_and_outside_zero(checks_cohort: Path, run_dir: Path, inside: bool) -> None:
    manifest = pd.read_parquet(checks_cohort / "manifest.parquet")
    map_fn, wanted = _oracle(run_dir, checks_cohort, manifest, inside)
    res = check_explanations(run_dir, checks_cohort, splits=["all"], map_fn=map_fn, progress=False)
    scored = 0
    for f, r in res["pointing"].items():
        n_pos = int((manifest[f"label_{f}"] == 1).sum())
        assert r["n"] == n_pos
        if wanted.get(f, 0) != n_pos or n_pos == 0:
            continue  # some image had no grid cell on the wanted side
        scored += 1
        expected = 1.0 if inside else 0.0
        for tag in ("trained", "reinit"):
            assert r[f"{tag}/relevance/strict"]["rate"] == expected, (f, tag)
        lo, hi = r["trained/relevance/strict"]["ci"]
        assert lo <= expected <= hi and hi - lo > 0
        assert r["spearman/relevance"]["mean"] == pytest.approx(1.0)  # the same map for both models
    assert scored >= 3


def test_baselines_and_files(checks_cohort: Path, run_dir: Path, tmp_path: Path) -> None:
    res = check_explanations(run_dir, checks_cohort, splits=["val", "test"], out=tmp_path, progress=False)
    manifest = pd.read_parquet(checks_cohort / "manifest.parquet")
    rows = manifest[manifest.split.isin(["val", "test"])]
    for f, r in res["pointing"].items():
        pos = rows[rows[f"label_{f}"] == 1]
        assert r["n"] == len(pos)
        if not len(pos):
            continue
        masks = [np.load(checks_cohort / a)[f"mask_{f}"] for a in pos.meta_annotation_path]
        assert r["random/strict"] == pytest.approx(np.mean([random_hit_rate(m) for m in masks]))
        assert r["random/tolerant"] >= r["random/strict"]
        for method in ("similarity", "relevance", "occlusion"):
            rate = r[f"trained/{method}/strict"]["rate"]
            assert 0.0 <= rate <= r[f"trained/{method}/tolerant"]["rate"] <= 1.0
    saved = json.loads((tmp_path / "checks.json").read_text())
    assert saved["settings"]["splits"] == ["val", "test"]
    assert set(saved["randomisation"]) == {"cxr/similarity", "cxr/relevance", "cxr/occlusion", "ecg/similarity", "ecg/relevance"}
    text = (tmp_path / "checks.md").read_text()
    assert text == to_markdown(res)
    for f, r in res["pointing"].items():
        assert f"| {f} | {r['n']} |" in text
    png = (tmp_path / "pointing.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    for label in ("afib", "sinus"):
        e = res["ecg"][label]
        if e["n"]:
            assert 0.0 < e["time_share/tp"] < 1.0
            assert 0.0 <= e["trained/relevance/qrs"] <= 1.0


def test_clear_errors(checks_cohort: Path, run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no manifest"):
        check_explanations(run_dir, tmp_path, progress=False)
    with pytest.raises(DataError, match="no studies in split"):
        check_explanations(run_dir, checks_cohort, splits=["nope"], progress=False)
    with pytest.raises(ConfigError, match="query"):
        check_explanations(run_dir, checks_cohort, query="sideways", progress=False)
    bare = tmp_path / "bare"
    bare.mkdir()
    manifest = pd.read_parquet(checks_cohort / "manifest.parquet")
    manifest.assign(meta_annotation_path=None).to_parquet(bare / "manifest.parquet")
    with pytest.raises(DataError, match="region masks"):
        check_explanations(run_dir, bare, progress=False)


def test_cli_prints_the_tables_and_writes_the_files(checks_cohort: Path, run_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medtriad.cli import app

    out = tmp_path / "checks"
    res = CliRunner().invoke(app, ["explain-check", str(run_dir), "--data", str(checks_cohort), "--splits", "all",
                                   "--query", "contrast", "--out", str(out)])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "checks.json").read_text())
    assert saved["settings"]["query"] == "contrast" and saved["settings"]["splits"] == ["all"]
    assert "| cardiomegaly |" in res.output and "Randomisation check" in res.output
    assert (out / "pointing.png").is_file()
    assert saved["settings"]["occlusion"]["fill"] == "mean|mirror" and "cxr/occlusion" in saved["randomisation"]
    # occlusion can be switched off (it is the slowest map) and its settings are checked
    res = CliRunner().invoke(app, ["explain-check", str(run_dir), "--data", str(checks_cohort), "--splits", "all",
                                   "--no-occlusion", "--out", str(out)])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "checks.json").read_text())
    assert saved["settings"]["occlusion"] is None and "cxr/occlusion" not in saved["randomisation"]
    assert "| finding | n | similarity | relevance | random |" in res.output
    res = CliRunner().invoke(app, ["explain-check", str(run_dir), "--data", str(checks_cohort), "--occlusion-fill", "zeros"])
    assert res.exit_code != 0 and "--occlusion-fill" in res.output


def test_unreadable_files_are_skipped_and_listed_or_raised(checks_cohort: Path, run_dir: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "cohort"
    shutil.copytree(checks_cohort, bad)
    manifest = pd.read_parquet(bad / "manifest.parquet")
    victim = manifest[(manifest.label_effusion == 1) & manifest.cxr_path.notna()].iloc[0]
    (bad / victim.cxr_path).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cut = manifest[manifest.ecg_path.notna() & (manifest.sample_id != victim.sample_id)].iloc[0]
    ann = bad / cut.meta_annotation_path
    ann.write_bytes(ann.read_bytes()[:100])  # a cut-off annotation file
    others = manifest[~manifest.sample_id.isin([victim.sample_id, cut.sample_id]) & manifest.cxr_path.notna()
                      & (manifest.label_edema == 1)]
    lost = others.iloc[0].sample_id
    manifest.loc[manifest.sample_id == lost, "meta_annotation_path"] = None  # no annotation at all
    manifest.to_parquet(bad / "manifest.parquet")
    clean = check_explanations(run_dir, checks_cohort, splits=["all"], progress=False)
    res = check_explanations(run_dir, bad, splits=["all"], progress=False)
    assert victim.sample_id in res["skipped"] and victim.cxr_path.split("/")[-1] in res["skipped"][victim.sample_id]
    assert "no annotation file" in res["skipped"][lost]
    assert res["pointing"]["effusion"]["n"] == clean["pointing"]["effusion"]["n"] - 1
    assert len(res["skipped"]) == 3
    assert "Skipped 3 studies" in to_markdown(res)
    with pytest.raises(DataError, match=victim.cxr_path.split("/")[-1]):
        check_explanations(run_dir, bad, splits=["all"], progress=False, fail_fast=True)
