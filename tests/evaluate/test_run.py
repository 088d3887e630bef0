"""`evaluate_run` end to end on a tiny trained model: results.json and a complete report.html."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from medtriad.errors import DataError
from medtriad.evaluate.run import evaluate_run


class _Figures(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.images: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "figure":
            self._open = a.get("data-figure")
        if tag == "img":
            self.images.append(a.get("src") or "")
            self.names.append(self._open or "")


@pytest.fixture(scope="module")
def evaluated(
    tiny_run: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("evaluation")
    results = evaluate_run(
        tiny_run,
        tiny_data,
        out=out,
        label_set=["demo_cxr", "demo_ecg"],
        bootstrap=50,
        seed=0,
        fractions=(0.5, 1.0),
        finetune_epochs=1,
        finetune_min_steps=2,
        corruptions={"cxr": ["gaussian_noise", "jpeg"], "ecg": ["lead_dropout"]},
        severities=(1, 5),
    )
    return results, out


def test_results_json_holds_every_task(evaluated: tuple[dict, Path]) -> None:
    results, out = evaluated
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    for key in (
        "zeroshot",
        "retrieval",
        "probe",
        "robustness",
        "missing_modality",
        "embedding_map",
        "timing_s",
    ):
        assert key in on_disk, key
    assert on_disk["split"] == "test" and on_disk["n_rows"] > 0

    zs = on_disk["zeroshot"]["demo_cxr"]["cxr"]
    assert set(zs["per_class"]) == {
        "cardiomegaly",
        "effusion",
        "edema",
        "pneumothorax",
        "consolidation",
    }
    assert zs["threshold_source"] == "val"
    for entry in [*zs["per_class"].values(), zs["macro"]]:
        lo, p, hi = entry["auroc"]
        if p is not None:
            assert lo <= p <= hi

    r = on_disk["retrieval"]
    assert len(r["pairwise"]) == 6 and r["geometry"] == "cosine"
    assert set(r["tuple"]) == {"(ecg,report)->cxr", "(cxr,report)->ecg", "(cxr,ecg)->report"}
    for v in r["tuple"].values():
        assert 2 <= v["n_candidates"] <= 10

    probe = on_disk["probe"]["demo_ecg"]["ecg"]
    assert set(probe) == {"linear", "finetune"} and set(probe["linear"]) == {"0.5", "1"}
    assert probe["linear"]["0.5"]["n_train"] < probe["linear"]["1"]["n_train"]

    rob = on_disk["robustness"]
    assert set(rob["cxr"]["corrupted"]) == {"gaussian_noise", "jpeg"} and set(
        rob["ecg"]["corrupted"]
    ) == {"lead_dropout"}
    per = rob["ecg"]["corrupted"]["lead_dropout"]
    assert "zeroshot/demo_ecg/macro_auroc" in per and all(len(v) == 2 for v in per.values())
    assert rob["ecg"]["levels"]["lead_dropout"] == [1.0, 2.0, 4.0, 6.0, 9.0]

    mm = on_disk["missing_modality"]
    assert {"all", "without cxr", "without ecg"} <= set(mm["zeroshot"]["demo_cxr"])
    assert set(mm["retrieval"]["(ecg,report)->cxr"]) == {"all", "without ecg", "without report"}


def test_report_embeds_every_figure_as_a_png(evaluated: tuple[dict, Path]) -> None:
    results, out = evaluated
    parser = _Figures()
    parser.feed((out / "report.html").read_text())
    assert sorted(parser.names) == sorted(results["figures"])
    expected = {
        "roc/demo_cxr/cxr",
        "roc/demo_ecg/ecg",
        "confusion/demo_cxr/cxr",
        "retrieval",
        "probe",
        "embedding_map",
        "robustness/cxr",
        "robustness/ecg",
    }
    assert expected <= set(parser.names)
    prefix = "data:image/png;base64,"
    for src in parser.images:
        assert src.startswith(prefix)
        raw = base64.b64decode(src[len(prefix) :], validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(io.BytesIO(raw)) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 100


def test_a_folder_without_a_model_or_rows_is_a_data_error(
    tiny_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    with pytest.raises(DataError, match="no trained model"):
        evaluate_run(tmp_path, tiny_data, out=tmp_path / "e")
    with pytest.raises(DataError, match="no rows"):
        evaluate_run(
            tiny_run, tiny_data, out=tmp_path / "e", split="nonexistent", tasks=("retrieval",)
        )


def test_a_user_yaml_label_set_is_evaluated(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    spec = tmp_path / "mine.yaml"
    spec.write_text(
        "name: heart\nmodalities: [cxr, ecg]\nclasses:\n"
        "  big heart:\n    column: cardiomegaly\n    positive: [The heart is enlarged.]\n"
        "    negative: [Heart size is normal.]\n"
        "  missing:\n    column: not_in_data\n    positive: [x]\n    negative: [y]\n"
    )
    res = evaluate_run(tiny_run, tiny_data, out=tmp_path / "e", tasks=("zeroshot",), label_set=spec, bootstrap=20)
    assert set(res["zeroshot"]["heart"]) == {"cxr", "ecg"}
    for entry in res["zeroshot"]["heart"].values():
        assert list(entry["per_class"]) == ["big heart"] and entry["missing_columns"] == ["not_in_data"]
    assert "retrieval" not in res and (tmp_path / "e" / "report.html").is_file()
