"""MultiModalModel: encode any batch form, missing modalities, saving and loading, summaries."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from medtriad.config import load_config
from medtriad.errors import DataError
from medtriad.models import MultiModalModel, build_model
from medtriad.models.heads import LinearHead, MoreHead
from medtriad.models.summary import model_summary, summary_table

from .conftest import texts, tiny_config
from .test_vit import vit_param_count

ROOT = Path(__file__).resolve().parents[2]


def batch(b: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "cxr": torch.rand(b, 1, 32, 32, generator=g),
        "ecg": torch.randn(b, 12, 200, generator=g),
        "report": list(texts())[:b],
    }


@dataclass
class LoaderBatch:
    """The data loader's batch shape: inputs per modality and presence flags."""

    inputs: dict
    present: dict = field(default_factory=dict)


def test_every_modality_gives_unit_vectors_of_the_embedding_width(
    tiny_model: MultiModalModel,
) -> None:
    with torch.no_grad():
        emb = tiny_model.encode(batch())
    assert set(emb) == {"cxr", "ecg", "report"}
    for z in emb.values():
        assert z.shape == (4, 16)
        assert torch.allclose(z.norm(dim=-1), torch.ones(4), atol=1e-5)
    with torch.no_grad():
        raw = tiny_model.encode(batch(), normalize=False)
    assert not torch.allclose(raw["cxr"].norm(dim=-1), torch.ones(4), atol=1e-3)
    assert torch.allclose(torch.nn.functional.normalize(raw["cxr"], dim=-1), emb["cxr"], atol=1e-6)


def test_a_batch_missing_a_modality_encodes_the_others(tiny_model: MultiModalModel) -> None:
    full = batch()
    with torch.no_grad():
        reference = tiny_model.encode(full)
        no_ecg = tiny_model.encode({"cxr": full["cxr"], "report": full["report"]})
        only_ecg = tiny_model.encode({"ecg": full["ecg"], "report": None})
    assert set(no_ecg) == {"cxr", "report"} and set(only_ecg) == {"ecg"}
    assert torch.allclose(no_ecg["cxr"], reference["cxr"], atol=1e-6)
    assert torch.allclose(only_ecg["ecg"], reference["ecg"], atol=1e-6)


def test_loader_batches_are_encoded_whole_whatever_is_present(tiny_model: MultiModalModel) -> None:
    inputs = batch()
    inputs["cxr"][1] = 0  # an absent X-ray is zero-filled and still in the tensor
    present = {m: torch.tensor([True, False, True, True]) for m in ("cxr", "ecg", "report")}
    with torch.no_grad():
        from_loader = tiny_model.encode(LoaderBatch(inputs, present))
        plain = tiny_model.encode(inputs)
    assert all(from_loader[m].shape == (4, 16) for m in present)
    assert all(torch.equal(from_loader[m], plain[m]) for m in present)


def test_lead_mask_in_the_batch_reaches_the_ecg_encoder(tiny_model: MultiModalModel) -> None:
    inputs = batch()
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[:, 6:] = False
    garbage = inputs["ecg"].clone()
    garbage[:, 6:] = 50.0
    with torch.no_grad():
        masked = tiny_model.encode({"ecg": garbage, "ecg_lead_mask": mask})["ecg"]
        zeroed = tiny_model.encode({"ecg": inputs["ecg"] * mask.unsqueeze(-1)})["ecg"]
    assert torch.allclose(masked, zeroed, atol=1e-6)


def test_pre_tokenised_reports_match_raw_texts(tiny_model: MultiModalModel) -> None:
    ids = tiny_model.tokenize(texts())
    assert set(ids) >= {"input_ids", "attention_mask"} and ids["input_ids"].shape[1] <= 32
    shard_like = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}
    with torch.no_grad():
        a = tiny_model.encode({"report": list(texts())})["report"]
        b = tiny_model.encode({"report": shard_like})["report"]
    # texts without a cardiology part tokenise to one segment; the pair-free default has no type 1
    assert torch.allclose(a, b, atol=1e-5)


def test_bad_inputs_are_rejected_with_the_modality_named(tiny_model: MultiModalModel) -> None:
    with pytest.raises(ValueError, match="cxr"):
        tiny_model.encode({"cxr": torch.rand(2, 3, 32, 32)})
    with pytest.raises(ValueError, match="ecg"):
        tiny_model.encode({"ecg": torch.rand(2, 8, 200)})
    with pytest.raises(TypeError, match="report"):
        tiny_model.encode({"report": "one string, not a list"})
    with pytest.raises(TypeError):
        tiny_model.encode([torch.rand(2, 1, 32, 32)])


def test_tokens_and_projected_tokens(tiny_model: MultiModalModel) -> None:
    x = batch()
    with torch.no_grad():
        cxr_tokens = tiny_model.forward_tokens("cxr", x["cxr"])
        ecg_tokens = tiny_model.forward_tokens("ecg", x["ecg"])
        text_tokens = tiny_model.forward_tokens("report", x["report"])
        projected = tiny_model.project_tokens("cxr", cxr_tokens)
        pooled = tiny_model.encode({"cxr": x["cxr"]})["cxr"]
    assert cxr_tokens.shape == (4, 1 + 16, 32) and ecg_tokens.shape == (4, 1 + 20, 32)
    assert text_tokens.shape[:2] == tiny_model.tokenize(x["report"])["input_ids"].shape
    assert projected.shape == (4, 17, 16)
    assert torch.allclose(projected.norm(dim=-1), torch.ones(4, 17), atol=1e-5)
    assert torch.allclose(
        projected[:, 0], pooled, atol=1e-5
    )  # the class token is the pooled output


def test_save_then_load_gives_bit_identical_embeddings(tmp_path: Path) -> None:
    # the text checkpoint is copied, used, then deleted: loading must not need it
    from medtriad.models.text import default_text_path

    text_dir = tmp_path / "minilm"
    shutil.copytree(default_text_path(), text_dir)
    config = tiny_config(
        f"model.report.path={text_dir}", "model.head.type=linear", "model.logit_scale_init=20"
    )
    model = build_model(config)
    with torch.no_grad():
        model.log_logit_scale.add_(0.25)  # a trained value, not the init
    model.train()
    model.encode(batch(seed=3))  # update BatchNorm running statistics
    model.eval()
    out = model.save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(text_dir)
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "model.safetensors", "report"}
    loaded = MultiModalModel.from_pretrained(out).eval()
    with torch.no_grad():
        before, after = model.encode(batch()), loaded.encode(batch())
    assert all(torch.equal(before[m], after[m]) for m in before)
    assert torch.equal(model.logit_scale, loaded.logit_scale)
    assert isinstance(loaded.heads["cxr"], LinearHead)


def test_loading_from_a_folder_without_weights_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        MultiModalModel.from_pretrained(tmp_path)
    assert exc.value.path == str(tmp_path / "model.safetensors")


def test_building_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    config = tiny_config("data.modalities=[cxr, ecg]")
    state = torch.random.get_rng_state()
    a, b = build_model(config), build_model(config)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = build_model(tiny_config("data.modalities=[cxr, ecg]", "seed=1"))
    assert not torch.equal(a.encoders["cxr"].pos_embed, c.encoders["cxr"].pos_embed)


def test_logit_scale_starts_at_the_configured_value_and_is_capped() -> None:
    model = build_model(tiny_config("data.modalities=[cxr, ecg]"))
    assert model.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert model.log_logit_scale.requires_grad
    with torch.no_grad():
        model.log_logit_scale.fill_(10.0)
    assert model.logit_scale.item() == pytest.approx(100.0)
    assert isinstance(model.heads["cxr"], MoreHead)


@pytest.mark.parametrize("name", ["demo.yaml", "demo_fine.yaml"])
def test_demo_config_builds_and_encodes(name: str) -> None:
    config = load_config(ROOT / "configs" / name)
    model = build_model(config).eval()
    with torch.no_grad():
        emb = model.encode(
            {
                "cxr": torch.rand(2, 1, 64, 64),
                "ecg": torch.randn(2, 12, 1000),
                "report": list(texts())[:2],
            }
        )
    assert {m: z.shape for m, z in emb.items()} == {m: (2, 128) for m in ("cxr", "ecg", "report")}
    assert not any(p.requires_grad for p in model.encoders["report"].parameters())
    assert model.encoders["cxr"].grid == ((8, 8) if name == "demo.yaml" else (16, 16))


def test_parameter_summary_counts_per_modality(tiny_model: MultiModalModel) -> None:
    rows = tiny_model.parameter_summary()
    by = {(r.modality, r.part): r for r in rows}
    for m in ("cxr", "ecg", "report"):
        total = by[(m, "total")]
        assert total.total == by[(m, "encoder")].total + by[(m, "head")].total
        assert total.trainable == by[(m, "encoder")].trainable + by[(m, "head")].trainable
    assert by[("all", "total")].total == sum(p.numel() for p in tiny_model.parameters())
    assert by[("report", "encoder")].trainable < 0.02 * by[("report", "encoder")].total


def test_more_summary_counts_vit_b_and_estimates_the_missing_text_encoder() -> None:
    rows = model_summary(load_config(ROOT / "configs" / "more.yaml"))
    by = {(r.modality, r.part): r for r in rows}
    assert by[("cxr", "encoder")].total == vit_param_count(768, 12, 16, 197)
    assert by[("ecg", "encoder")].total > 80e6
    report = by[("report", "encoder")]
    assert (
        report.note and 120e6 < report.total < 130e6 and 0 < report.trainable < 0.02 * report.total
    )
    assert (
        by[("all", "total")].total
        == sum(by[(m, "total")].total for m in ("cxr", "ecg", "report")) + 1
    )
    assert summary_table(rows).row_count == len(rows)
