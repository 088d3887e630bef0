"""Report encoder: LoRA, freezing, pooling, sentence pairs, local checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medtriad.config import TextEncoderConfig, load_config
from medtriad.data.text import ECG_MARKER, RAD_MARKER, combine_report
from medtriad.errors import ConfigError, DataError
from medtriad.models import MultiModalModel, build_model
from medtriad.models.text import TextEncoder

from .conftest import texts, tiny_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer RoBERTa saved with MiniLM's (BERT) tokenizer files: a local checkpoint dir."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    from medtriad.models.text import default_text_path

    path = tmp_path_factory.mktemp("tiny-roberta")
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=300,
        pad_token_id=0,
        type_vocab_size=1,
    )
    RobertaModel(config).save_pretrained(str(path))
    AutoTokenizer.from_pretrained(str(default_text_path())).save_pretrained(str(path))
    return path


def text_encoder(model: MultiModalModel) -> TextEncoder:
    return model.encoders["report"]  # type: ignore[return-value]


def test_lora_trains_under_two_percent_and_leaves_base_weights_unchanged() -> None:
    model = build_model(tiny_config("data.modalities=[cxr, report]")).train()
    encoder = text_encoder(model)
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    total = sum(p.numel() for p in encoder.parameters())
    assert 0 < trainable < 0.02 * total
    names = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    emb = model.encode({"report": list(texts()), "cxr": torch.randn(4, 1, 32, 32)})
    (emb["report"] * emb["cxr"]).sum().backward()
    opt.step()
    after = dict(encoder.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed and changed <= names
    assert any("lora_B" in n for n in changed)


def test_frozen_encoder_has_no_trainable_weights_and_ignores_train_mode() -> None:
    model = build_model(tiny_config("model.report.freeze=true", "model.report.lora.enabled=false"))
    encoder = text_encoder(model)
    assert not any(p.requires_grad for p in encoder.parameters())
    model.train()
    assert not encoder.backbone.training
    with torch.no_grad():
        assert torch.equal(encoder(texts()), encoder(texts()))  # no dropout: cacheable


def test_freeze_and_lora_together_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["model.report.freeze=true"])
    assert exc.value.key == "model.report.freeze"


def test_mean_pooling_ignores_padding(tiny_model: MultiModalModel) -> None:
    encoder = text_encoder(tiny_model)
    short = "Heart size normal."
    longer = (
        "Moderate cardiomegaly with pulmonary vascular congestion and bilateral pleural effusions."
    )
    with torch.no_grad():
        alone = encoder([short])
        padded_batch = encoder([short, longer])[0]
        ids = encoder.tokenize([short])
        extra = 7
        padded = {
            "input_ids": torch.cat([ids["input_ids"], torch.zeros(1, extra, dtype=torch.long)], 1),
            "attention_mask": torch.cat(
                [ids["attention_mask"], torch.zeros(1, extra, dtype=torch.long)], 1
            ),
        }
        by_ids = encoder(padded)
        naive = encoder.forward_tokens(padded).mean(
            dim=1
        )  # averaging padding in, as MoRE's code did
    batch = encoder.tokenize([short, longer])
    assert (
        batch["attention_mask"][0].sum() < batch["input_ids"].shape[1]
    )  # the short text was padded
    assert torch.allclose(alone[0], padded_batch, atol=1e-5)
    assert torch.allclose(alone, by_ids, atol=1e-5)
    assert not torch.allclose(alone, naive, atol=1e-3)


def test_mean_is_over_real_tokens_and_cls_takes_the_first(tiny_model: MultiModalModel) -> None:
    encoder = text_encoder(tiny_model)
    inputs = encoder.tokenize(texts())
    with torch.no_grad():
        tokens = encoder.forward_tokens(inputs)
        n = int(inputs["attention_mask"][1].sum())
        assert torch.allclose(
            encoder.pool(tokens, inputs["attention_mask"])[1], tokens[1, :n].mean(0), atol=1e-6
        )
        encoder.pooling = "cls"
        try:
            assert torch.equal(encoder.pool(tokens, inputs["attention_mask"]), tokens[:, 0])
        finally:
            encoder.pooling = "mean"


def test_sections_become_a_sentence_pair_and_markers_never_reach_the_tokenizer(
    tiny_model: MultiModalModel,
) -> None:
    encoder = text_encoder(tiny_model)
    both = combine_report("No pneumothorax.", "Sinus bradycardia.")
    rad_only = combine_report("No pneumothorax.", None)
    previous = encoder.pair_sections
    try:
        encoder.pair_sections = True
        paired = encoder.tokenize([both, rad_only])
        encoder.pair_sections = False
        joined = encoder.tokenize([both])
    finally:
        encoder.pair_sections = previous
    assert paired["token_type_ids"][0].max() == 1  # second segment: cardiology
    assert paired["token_type_ids"][1].max() == 0  # one part only: a single sequence
    sep = encoder.tokenizer.sep_token_id
    assert (paired["input_ids"][0] == sep).sum() == 2 and (joined["input_ids"][0] == sep).sum() == 1
    for ids in (paired["input_ids"][0], joined["input_ids"][0]):
        decoded = encoder.tokenizer.decode(ids, skip_special_tokens=True).lower()
        assert "bradycardia" in decoded and "pneumothorax" in decoded
        assert "rad" not in decoded.split() and "ecg" not in decoded.split()
    assert RAD_MARKER in both and ECG_MARKER in both


def test_more_config_without_a_text_path_names_the_setting() -> None:
    config = load_config(ROOT / "configs" / "more.yaml")
    with pytest.raises(ConfigError) as exc:
        build_model(config)
    assert exc.value.key == "model.report.path"
    assert "RoBERTa" in str(exc.value)


def test_more_config_builds_with_a_local_roberta_checkpoint(tiny_roberta: Path) -> None:
    # the paper's text settings as written; X-ray and ECG encoders shrunk to keep the test fast
    config = load_config(
        ROOT / "configs" / "more.yaml",
        [
            f"model.report.path={tiny_roberta}",
            "model.cxr.size=mini",
            "data.cxr.size=32",
            "model.ecg.size=mini",
        ],
    )
    model = build_model(config).eval()
    encoder = text_encoder(model)
    lora = [m for n, m in encoder.named_modules() if n.endswith("query") and hasattr(m, "lora_A")]
    assert (
        len(lora) == 2
        and lora[0].r["default"] == 16
        and lora[0].scaling["default"] == pytest.approx(8 / 16)
    )
    assert encoder.pair_sections and encoder.pooling == "mean"
    assert model.logit_scale.item() == pytest.approx(50.0)
    with torch.no_grad():
        emb = model.encode({"report": list(texts()), "ecg": torch.randn(4, 12, 1000)})
    assert emb["report"].shape == (4, 128) and emb["ecg"].shape == (4, 128)
    assert torch.allclose(emb["report"].norm(dim=-1), torch.ones(4), atol=1e-5)


def test_bad_text_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        TextEncoder(TextEncoderConfig(path=str(tmp_path / "nowhere")), 32)
    assert exc.value.key == "model.report.path"
    with pytest.raises(DataError) as data_exc:
        TextEncoder(TextEncoderConfig(path=str(tmp_path)), 32)
    assert data_exc.value.path == str(tmp_path)
