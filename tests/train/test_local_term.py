"""The local token-sentence term in training: sentence banks, the step, and refused settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medtriad.data.dataset import open_dataset
from medtriad.data.text import report_sentences
from medtriad.errors import ConfigError
from medtriad.models import build_model
from medtriad.train.sentences import build_sentence_bank, sentence_embeddings
from medtriad.train.trainer import EncodeStep, train

from .conftest import tiny_config


def test_training_with_the_local_term_logs_it_and_caches_sentences(tiny_shards: Path, tmp_path: Path) -> None:
    cfg = tiny_config("train.max_steps=3", "model.head.type=linear", "loss.local.weight=0.5", "loss.local.modalities=[cxr,ecg]")
    train(cfg, tiny_shards, tmp_path / "run", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 3
    for r in steps:
        parts = r["loss/local/cxr"], r["loss/local/ecg"]
        assert all(torch.isfinite(torch.tensor(p)) and p > 0 for p in parts)
        globals_ = sum(v for k, v in r.items() if k.startswith("loss/") and "local" not in k)
        assert r["loss"] == pytest.approx(globals_ + 0.5 * sum(parts), rel=1e-5)
    assert (tmp_path / "run" / "sentence_cache_cxr.pt").is_file()


def test_a_frozen_bank_holds_each_sentence_encoded_alone(tiny_shards: Path) -> None:
    cfg = tiny_config()
    model = build_model(cfg).eval()
    ds = open_dataset(tiny_shards, cfg.data, split="train")
    bank = build_sentence_bank(model, ds, "radiology", 16, ["findings", "impression"], frozen=True)
    text = str(ds.df["report_text"].iloc[3])
    expected = report_sentences(text)["radiology"]
    assert bank.texts[3] == expected and int(bank.mask[3].sum()) == len(expected)
    assert bank.width == max(len(r) for r in bank.texts)  # as wide as the longest part
    with torch.no_grad():
        direct = model.encoders["report"](expected)
    assert torch.allclose(bank.features[3, : len(expected)], direct, atol=1e-5)
    assert torch.all(bank.features[3, len(expected) :] == 0)
    # an ECG-only study has no radiology sentence
    no_rad = [i for i, t in enumerate(ds.df["report_text"]) if not report_sentences(t)["radiology"]]
    assert all(not bank.mask[i].any() for i in no_rad)


def test_a_trainable_text_encoder_gets_the_local_gradient(tiny_shards: Path) -> None:
    cfg = tiny_config("model.report.freeze=false", "model.head.type=linear")
    model = build_model(cfg)
    ds = open_dataset(tiny_shards, cfg.data, split="train")
    bank = build_sentence_bank(model, ds, "radiology", 4, ["findings", "impression"], frozen=False)
    assert bank.features is None
    index = torch.arange(4)
    looked = bank.lookup(index)
    emb = sentence_embeddings(model, looked)
    assert emb.shape == (4, 4, cfg.model.embed_dim)
    # rows follow the bank's texts: row 1's first sentence is the projection of that sentence
    with torch.no_grad():
        alone = model.heads["report"](model.features("report", bank.texts[1][:1])).float()
    assert torch.allclose(emb[1, 0].detach(), alone[0], atol=1e-5)
    assert torch.all(emb[~looked["mask"]] == 0)
    emb.sum().backward()
    grads = [p.grad for p in model.encoders["report"].parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_encode_step_returns_tokens_whose_mean_is_the_embedding(tiny_shards: Path) -> None:
    cfg = tiny_config("model.cxr.pool=mean", "model.head.type=linear")
    model = build_model(cfg).eval()
    ds = open_dataset(tiny_shards, cfg.data, split="train")
    batch = ds[torch.arange(6).numpy()]
    bank = build_sentence_bank(model, ds, "radiology", 8, ["findings", "impression"], frozen=True)
    inputs = {**batch.inputs, "sentences": {"cxr": bank.lookup(batch.index)}}
    with torch.no_grad():
        emb, _, local = EncodeStep(model)(inputs)
        plain = model.encode(batch.inputs)
    tokens, sentences, mask = local["cxr"]
    assert tokens.shape == (6, 4, cfg.model.embed_dim)  # a 16 px image in 8 px patches
    assert torch.allclose(emb["cxr"], plain["cxr"], atol=1e-6)
    assert torch.allclose(F.normalize(tokens.mean(1), dim=-1), emb["cxr"], atol=1e-5)
    assert sentences.shape == (6, bank.width, cfg.model.embed_dim) and torch.equal(mask, bank.mask[:6])


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        (("model.head.type=more",), "model.head.type"),
        (("model.head.type=linear", "train.chunk_size=4"), "train.chunk_size"),
        (("data.modalities=[cxr,report]", "loss.local.modalities=[ecg]"), "loss.local.modalities"),
    ],
)
def test_settings_the_local_term_cannot_serve_are_refused(
    tiny_shards: Path, tmp_path: Path, extra: tuple[str, ...], key: str
) -> None:
    cfg = tiny_config("train.max_steps=1", "loss.local.weight=1.0", *extra)
    with pytest.raises(ConfigError) as err:
        train(cfg, tiny_shards, tmp_path / "run", progress=False)
    assert err.value.key == key


def test_the_config_refuses_a_modality_without_tokens() -> None:
    with pytest.raises(ConfigError, match="no tokens"):
        tiny_config("loss.local.modalities=[report]")


def test_two_gloo_processes_train_with_the_local_term_and_neighbourhood_attention(
    tiny_shards: Path, tmp_path: Path
) -> None:
    """Each rank scores its own rows; the class token, which no patch reads under a radius and
    the mean-pooled embedding ignores, must not stall DDP."""
    from .test_trainer import finish, pretrain_args, run_cli

    extra = (
        "train.max_steps=3", "train.threads=1", "model.head.type=linear", "loss.local.weight=1.0",
        "model.cxr.pool=mean", "model.cxr.attention_radius=1",
    )
    finish(run_cli(pretrain_args(tiny_shards, tmp_path / "ddp", *extra), nproc=2))
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r["loss/local/cxr"] > 0 for r in steps)
