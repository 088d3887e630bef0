"""`explain_inputs`: files in, arrays and explain.html / explain.json / PNGs out; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medtriad.errors import ConfigError, DataError
from medtriad.explain import explain_inputs, load_explain_model
from medtriad.explain.attribution import unit_embeddings
from medtriad.explain.render import text_html

from .conftest import tiny_config


@pytest.fixture(scope="module")
def study(cohort: Path) -> dict[str, object]:
    row = pd.read_parquet(cohort / "manifest.parquet").iloc[0]
    return {"cxr": cohort / row.cxr_path, "ecg": cohort / row.ecg_path, "text": row.report_text}


def test_three_inputs_write_every_file_with_the_documented_keys(
    tiny_model, study, tmp_path: Path
) -> None:
    ex = explain_inputs(
        tiny_model, cxr=study["cxr"], ecg=study["ecg"], text=study["text"], out=tmp_path, ig_steps=4
    )
    assert {p.name for p in tmp_path.iterdir()} >= {
        "explain.html",
        "explain.json",
        "cxr.png",
        "ecg.png",
        "maps.npz",
    }
    doc = json.loads((tmp_path / "explain.json").read_text())
    assert {"modalities", "geometry", "scores", "targets", "methods", "peaks", "files"} <= set(doc)
    assert set(doc["scores"]["pairs"]) == {"cxr-ecg", "cxr-report", "ecg-report"}
    assert doc["scores"]["tuple"] == pytest.approx(
        sum(doc["scores"]["pairs"].values())
    )  # cosine loss
    assert doc["methods"] == {
        "cxr": ["similarity", "relevance", "occlusion"],
        "ecg": ["similarity", "relevance", "occlusion"],
        "report": ["integrated_gradients"],
    }
    # peaks are in the original image's pixels (64 x 64 phantom, model sees 32 x 32)
    h, w = doc["cxr"]["native_size"]
    assert (h, w) == (64, 64)
    for method, p in doc["peaks"]["cxr"].items():
        assert 0 <= p["row"] < h and 0 <= p["col"] < w
        assert p["value"] == pytest.approx(float(np.nanmax(ex.cxr.native_maps[method])))
    for p in doc["peaks"]["ecg"].values():
        assert 0 <= p["time_s"] < doc["ecg"]["seconds"]
    assert len(doc["ecg"]["lead_importance"]) == 12
    assert doc["peaks"]["report"]["integrated_gradients"][0]["word"] in study["text"]
    page = (tmp_path / "explain.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<span" in page
    for name in ("cxr.png", "ecg.png"):
        assert Image.open(tmp_path / name).size[0] > 100
    arrays = np.load(tmp_path / "maps.npz")
    assert arrays["cxr_native_relevance"].shape == (64, 64)
    patch = tiny_model.encoders["cxr"].patch_size  # the default window; a quarter of it the stride
    assert doc["cxr"]["occlusion"] == {"window": patch, "stride": max(1, patch // 4), "fill": "mean|mirror"}
    assert arrays["cxr_occlusion"].shape == (32, 32) and arrays["cxr_native_occlusion"].shape == (64, 64)
    assert arrays["ecg_similarity"].shape == (100,) and arrays["ecg_occlusion"].shape == (12,)


def test_scores_are_the_model_similarities(tiny_model, study) -> None:
    ex = explain_inputs(tiny_model, cxr=study["cxr"], text=study["text"], ig_steps=2)
    assert ex.modalities == ("cxr", "report") and ex.tuple_score is None and ex.ecg is None
    emb = unit_embeddings(
        tiny_model, {"cxr": torch.from_numpy(ex.cxr.image)[None, None], "report": [study["text"]]}
    )
    assert ex.pair_scores["cxr-report"] == pytest.approx(
        float(emb["cxr"][0] @ emb["report"][0]), abs=1e-5
    )
    assert ex.report.score == pytest.approx(ex.pair_scores["cxr-report"], abs=1e-5)


@pytest.mark.parametrize("pair", [("cxr", "ecg"), ("ecg", "text")])
def test_any_two_inputs(tiny_model, study, pair: tuple[str, str]) -> None:
    ex = explain_inputs(tiny_model, **{k: study[k] for k in pair}, ig_steps=2)
    assert len(ex.pair_scores) == 1 and ex.tuple_score is None
    assert (ex.cxr is not None) == ("cxr" in pair) and (ex.report is not None) == ("text" in pair)
    if ex.ecg is not None:
        assert ex.ecg.maps["relevance"].shape == (100,) and ex.ecg.lead_importance.shape == (12,)


def test_symile_tuple_maps_explain_the_mip(study) -> None:
    from medtriad.models import build_model

    model = build_model(tiny_config("loss.name=symile")).eval()
    ex = explain_inputs(model, cxr=study["cxr"], ecg=study["ecg"], text=study["text"], ig_steps=2)
    emb = unit_embeddings(
        model,
        {
            "cxr": torch.from_numpy(ex.cxr.image)[None, None],
            "ecg": torch.from_numpy(ex.ecg.signal)[None],
            "ecg_lead_mask": torch.from_numpy(ex.ecg.lead_mask)[None],
            "report": [study["text"]],
        },
    )
    mip = float((emb["cxr"] * emb["ecg"] * emb["report"]).sum())
    assert ex.geometry == "mip" and ex.tuple_score == pytest.approx(mip, abs=1e-6)
    assert ex.report.score == pytest.approx(mip, abs=1e-5)  # the report's maps explain the MIP
    assert "MIP" in ex.targets["cxr"]


def test_arrays_are_accepted_and_native_images_are_mapped_back(tiny_model, study) -> None:
    from medtriad.data.cxr import decode_cxr

    native = decode_cxr(study["cxr"])[:, 8:]  # a non-square picture (64 x 56)
    ecg = np.zeros((12, 100), np.float32)
    ecg[1] = np.sin(np.linspace(0, 20, 100))
    ex = explain_inputs(tiny_model, cxr=native, ecg=ecg)
    assert ex.cxr.native_maps["similarity"].shape == (64, 56)
    assert ex.ecg.lead_importance[0] == pytest.approx(0.0, abs=1e-6)  # an empty lead cannot matter


def test_run_folder_and_model_folder_both_load(tiny_model, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "run" / "model")
    for source in (tmp_path / "run", tmp_path / "run" / "model"):
        assert load_explain_model(source).modalities == tiny_model.modalities
    with pytest.raises(DataError):
        load_explain_model(tmp_path)


def test_clear_errors(tiny_model, study, tmp_path: Path) -> None:
    from medtriad.models import build_model

    with pytest.raises(ConfigError, match="at least two"):
        explain_inputs(tiny_model, cxr=study["cxr"])
    two = build_model(tiny_config("data.modalities=[cxr,report]")).eval()
    with pytest.raises(ConfigError, match="no encoder for \\['ecg'\\]"):
        explain_inputs(two, cxr=study["cxr"], ecg=study["ecg"])
    with pytest.raises(DataError, match="empty"):
        explain_inputs(tiny_model, cxr=study["cxr"], text="   ")
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError) as err:
        explain_inputs(tiny_model, cxr=bad, text="Cardiomegaly.")
    assert err.value.path == str(bad)
    with pytest.raises(DataError, match="12, 100"):
        explain_inputs(tiny_model, ecg=np.zeros((12, 50)), text="Sinus rhythm.")


def test_text_html_shades_by_attribution_and_escapes() -> None:
    parts = ["a <b> c"]
    spans = [(0, 0, 1), (0, 2, 5), (0, 6, 7)]
    page = text_html(parts, spans, np.array([0.5, -1.0, 0.0]))
    assert "&lt;b&gt;" in page and "<b>" not in page
    assert "rgba(220,40,40,0.50)" in page and "rgba(40,90,220,1.00)" in page


def test_shifts_give_finer_x_ray_maps_that_still_map_back(tiny_model, study, tmp_path: Path) -> None:
    ex = explain_inputs(tiny_model, cxr=study["cxr"], text=str(study["text"]), shifts=2, out=tmp_path)
    h, w = tiny_model.encoders["cxr"].grid
    assert ex.cxr.token_maps["relevance"].shape == (2 * h, 2 * w)  # the patch grid read twice as finely
    assert ex.cxr.native_maps["relevance"].shape == ex.cxr.native.shape
    assert json.loads((tmp_path / "explain.json").read_text())["cxr"]["shifts"] == 2
