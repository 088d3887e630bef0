"""Shards hold exactly what the raw readers produce (to the storage precision), resume, and
mark bad files absent instead of failing."""

from pathlib import Path

import numpy as np
import pytest
import torch

from medtriad.config import DataConfig
from medtriad.data.dataset import EpochBatches, ManifestDataset, make_loader, open_dataset
from medtriad.data.manifest import read_manifest, write_manifest
from medtriad.data.shards import ShardDataset, prepare_shards
from medtriad.data.synthetic.cohort import generate_cohort
from medtriad.errors import DataError


def word_tokenize(texts, max_length: int = 24):
    """A real (if simple) tokenizer: hashed words, right padding."""
    ids = torch.zeros((len(texts), max_length), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, t in enumerate(texts):
        words = [101] + [1000 + (hash(w) % 5000) for w in t.lower().split()][: max_length - 2] + [102]
        ids[i, : len(words)] = torch.tensor(words)
        mask[i, : len(words)] = 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("c")
    generate_cohort(out, n=40, seed=3, missing_fraction=0.3, image_size=96, workers=1, progress=False)
    return out / "manifest.parquet"


@pytest.fixture(scope="module")
def data_cfg() -> DataConfig:
    cfg = DataConfig()
    cfg.cxr.size = 32
    return cfg


def test_shards_match_the_raw_loader(cohort: Path, data_cfg: DataConfig, tmp_path: Path) -> None:
    prepare_shards(cohort, tmp_path / "s", data_cfg, word_tokenize, "words", 24, workers=2, progress=False)
    shards = ShardDataset(tmp_path / "s")
    raw = ManifestDataset(cohort, data_cfg)
    rows = np.array([5, 0, 17, 33, 2])
    a, b = shards[rows], raw[rows]
    assert a.sample_ids == b.sample_ids
    for m in ("cxr", "ecg", "report"):
        assert torch.equal(a.present[m], b.present[m])
    assert torch.allclose(a.inputs["cxr"], b.inputs["cxr"], atol=0.5 / 255 + 1e-6)
    assert torch.allclose(a.inputs["ecg"], b.inputs["ecg"], atol=0.5e-3 + 1e-6)
    assert torch.equal(a.inputs["ecg_lead_mask"], b.inputs["ecg_lead_mask"])
    tok = word_tokenize(b.inputs["report"])
    width = a.inputs["report"]["input_ids"].shape[1]
    assert torch.equal(a.inputs["report"]["input_ids"], tok["input_ids"][:, :width])
    assert np.allclose(a.labels.numpy(), b.labels.numpy(), equal_nan=True)


def test_bad_files_are_marked_absent_and_listed(cohort: Path, data_cfg: DataConfig, tmp_path: Path) -> None:
    df = read_manifest(cohort)
    root = Path(df.attrs["root"])
    copy = tmp_path / "m"
    copy.mkdir()
    for sub in ("cxr", "ecg"):
        (copy / sub).symlink_to(root / sub)
    bad_png = copy / "broken.png"
    bad_png.write_bytes(b"not a png at all")
    df.loc[0, "cxr_path"] = "broken.png"
    write_manifest(df, copy / "manifest.parquet")
    prepare_shards(copy / "manifest.parquet", tmp_path / "s", data_cfg, word_tokenize, "words", 24, workers=1, progress=False)
    ds = ShardDataset(tmp_path / "s")
    assert not bool(ds[np.array([0])].present["cxr"][0])
    import json

    bad = json.loads((tmp_path / "s" / "shards.json").read_text())["bad"]
    assert list(bad) == [f"{df.loc[0, 'sample_id']}:cxr"] and "broken.png" in next(iter(bad.values()))
    with pytest.raises(DataError):
        prepare_shards(copy / "manifest.parquet", tmp_path / "s2", data_cfg, word_tokenize, "words", 24, workers=1,
                       fail_fast=True, progress=False)


def test_interrupted_shards_resume_and_incomplete_ones_refuse(cohort: Path, data_cfg: DataConfig, tmp_path: Path) -> None:
    calls = []

    def tokenize_then_die(texts):
        calls.append(len(texts))
        if len(calls) == 1:
            return word_tokenize(texts)
        raise KeyboardInterrupt

    import medtriad.data.shards as shards_mod

    old = shards_mod.CHUNK
    shards_mod.CHUNK = 16
    try:
        with pytest.raises(KeyboardInterrupt):
            prepare_shards(cohort, tmp_path / "s", data_cfg, tokenize_then_die, "words", 24, workers=1, progress=False)
        with pytest.raises(DataError, match="incomplete"):
            ShardDataset(tmp_path / "s")
        seen = []
        prepare_shards(cohort, tmp_path / "s", data_cfg, lambda t: (seen.append(len(t)), word_tokenize(t))[1], "words", 24,
                       workers=1, progress=False)
        assert sum(seen) == 40 - 16  # the first chunk was kept
    finally:
        shards_mod.CHUNK = old
    full = tmp_path / "full"
    prepare_shards(cohort, full, data_cfg, word_tokenize, "words", 24, workers=1, progress=False)
    for name in ("cxr", "ecg", "report_ids", "present"):
        assert np.array_equal(np.load(tmp_path / "s" / f"{name}.npy"), np.load(full / f"{name}.npy"))


def test_epoch_batches_split_the_global_batch_across_ranks() -> None:
    single = list(EpochBatches(50, 8, seed=1, epoch=2))
    r0 = list(EpochBatches(50, 8, seed=1, epoch=2, rank=0, world=2))
    r1 = list(EpochBatches(50, 8, seed=1, epoch=2, rank=1, world=2))
    assert len(single) == 6 and len(r0) == 6
    for s, a, b in zip(single, r0, r1):
        assert sorted(np.concatenate([a, b])) == sorted(s)
    assert [list(x) for x in EpochBatches(50, 8, seed=1, epoch=2, start=4)] == [list(x) for x in single[4:]]
    assert [list(x) for x in EpochBatches(50, 8, seed=1, epoch=3)] != [list(x) for x in single]


def test_loader_with_workers_gives_the_same_batches(cohort: Path, data_cfg: DataConfig, tmp_path: Path) -> None:
    prepare_shards(cohort, tmp_path / "s", data_cfg, word_tokenize, "words", 24, workers=1, progress=False)
    ds = open_dataset(tmp_path / "s", data_cfg, split="train")
    assert isinstance(ds, ShardDataset) and len(ds) == int((read_manifest(cohort)["split"] == "train").sum())
    a = [b.sample_ids for b in make_loader(ds, EpochBatches(len(ds), 4, seed=0, epoch=0), workers=0)]
    b = [b.sample_ids for b in make_loader(ds, EpochBatches(len(ds), 4, seed=0, epoch=0), workers=2)]
    assert a == b and len(a) == len(ds) // 4


def test_reports_longer_than_max_length_are_counted_and_warned(
    cohort: Path, data_cfg: DataConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def word_lengths(texts):
        return np.array([len((t or "").split()) + 2 for t in texts])

    raw = ManifestDataset(cohort, data_cfg)
    texts = [t for t in raw.df["report_text"] if isinstance(t, str) and t]
    lengths = word_lengths(texts)
    limit = int(np.median(lengths))
    expected = int((lengths > limit).sum())
    assert 0 < expected < len(texts)
    with caplog.at_level("WARNING", logger="medtriad.data.shards"):
        prepare_shards(cohort, tmp_path / "s", data_cfg, lambda t: word_tokenize(t, limit), "words", limit,
                       workers=1, progress=False, token_lengths=word_lengths)
    meta = __import__("json").loads((tmp_path / "s" / "shards.json").read_text())
    assert meta["truncated_reports"] == expected
    assert f"{expected} of {len(texts)} reports are longer than max_length={limit}" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="medtriad.data.shards"):
        prepare_shards(cohort, tmp_path / "t", data_cfg, lambda t: word_tokenize(t, 10_000), "words", 10_000,
                       workers=1, progress=False, token_lengths=word_lengths)
    assert "longer than max_length" not in caplog.text


def test_text_encoder_token_lengths_are_untruncated() -> None:
    from medtriad.config import LoraConfig, TextEncoderConfig
    from medtriad.models.text import TextEncoder

    enc = TextEncoder(TextEncoderConfig(freeze=True, lora=LoraConfig(enabled=False)), max_length=8)
    long = "There is a small left pleural effusion and mild cardiomegaly without pneumothorax."
    n = enc.token_lengths([long, ""])
    assert n[0] > 8 and n[1] == 2
    assert enc.tokenize([long])["input_ids"].shape[1] == 8
