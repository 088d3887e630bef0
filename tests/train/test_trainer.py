"""End-to-end training: DDP equals one process, a killed run resumes exactly, files are written."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from medtriad.config import save_config

from .conftest import tiny_config


def run_cli(args: list[str], env_extra: dict[str, str] | None = None, nproc: int = 1, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    if nproc > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={port}", "-m", "medtriad", *args]
    else:
        cmd = [sys.executable, "-m", "medtriad", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def pretrain_args(shards: Path, out: Path, *extra: str) -> list[str]:
    """CLI arguments: a tiny config file plus `--set` overrides, as a user would pass them."""
    cfg = out.parent / f"{out.name}.yaml"
    save_config(tiny_config(), cfg)
    return ["pretrain", str(cfg), "--data", str(shards), "--out", str(out), *[a for kv in extra for a in ("--set", kv)]]


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def finish(p: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-4000:]
    return out


def test_two_gloo_processes_match_one(tiny_shards: Path, tmp_path: Path) -> None:
    # float32: bf16 rounding (``auto`` on CPUs with native bf16) depends on how the batch is split
    extra = ("train.max_steps=6", "train.epochs=2", "loss.name=more", "train.lr=0.0001", "train.precision=fp32")
    one = run_cli(pretrain_args(tiny_shards, tmp_path / "one", *extra))
    finish(one)
    two = run_cli(pretrain_args(tiny_shards, tmp_path / "two", *extra, "train.threads=1"), nproc=2)
    finish(two)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 7))
    for (_, x), (_, y) in zip(a, b):
        assert abs(x - y) < 1e-4, (a, b)
    assert abs(a[0][1] - a[-1][1]) > 1e-3  # it did train
    wa = load_file(tmp_path / "one" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "two" / "model" / "model.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa if wa[k].is_floating_point()) < 1e-4


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tiny_shards: Path, tmp_path: Path) -> None:
    extra = ("train.max_steps=40", "train.epochs=10", "train.checkpoint_every=2", "loss.name=clip",
             "model.cxr.dropkey=0.2")
    ref = run_cli(pretrain_args(tiny_shards, tmp_path / "ref", *extra))
    assert "reference X-ray: the mean of" in finish(ref)

    run = tmp_path / "killed"
    p = run_cli(pretrain_args(tiny_shards, run, *extra))
    target = run / "checkpoints" / "step_00000010"
    deadline = time.time() + 240
    while not target.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert not (run / "model").exists(), "the run finished before it could be killed"
    resumed = run_cli([*pretrain_args(tiny_shards, run, *extra), "--resume", "latest"])
    out = finish(resumed)
    assert "resuming from" in out
    wa = load_file(tmp_path / "ref" / "model" / "model.safetensors")
    wb = load_file(run / "model" / "model.safetensors")
    assert set(wa) == set(wb)
    for k in wa:
        assert (wa[k] == wb[k]).all(), k
    # the resumed run keeps the reference X-ray its checkpoint holds
    import numpy as np

    assert "reference X-ray: the mean of" not in out.split("resuming from")[1]
    ra, rb = (np.load(r / "model" / "reference_cxr.npz") for r in (tmp_path / "ref", run))
    assert np.array_equal(ra["image"], rb["image"]) and int(ra["count"]) == int(rb["count"]) > 0
    # the metrics log continues without duplicated or missing steps
    assert [s for s, _ in losses(run)] == list(range(1, 41))
    assert losses(run) == losses(tmp_path / "ref")


def test_run_folder_contents(tiny_shards: Path, tmp_path: Path) -> None:
    p = run_cli(pretrain_args(tiny_shards, tmp_path / "r", "train.max_steps=12", "train.epochs=3", "loss.name=siglip"))
    finish(p)
    r = tmp_path / "r"
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "model/model.safetensors", "model/config.yaml"):
        assert (r / name).is_file(), name
    rows = [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in rows if "val/loss" in x]
    assert val and all("val/report->cxr/R@5" in x and "val/report->ecg/R@1" in x for x in val)
    from medtriad.models import MultiModalModel

    model = MultiModalModel.from_pretrained(r / "model")
    assert model.config.loss.name == "siglip"
    # the reference X-ray: the mean of the training X-rays whose five findings are all absent
    import numpy as np
    import pandas as pd

    df = pd.read_parquet(tiny_shards / "manifest.parquet")
    findings = ["cardiomegaly", "effusion", "edema", "pneumothorax", "consolidation"]
    keep = (df.split == "train").to_numpy() & (df[[f"label_{f}" for f in findings]] == 0).all(axis=1).to_numpy()
    keep &= np.load(tiny_shards / "present.npy")[:, 0]
    assert 0 < keep.sum() < (df.split == "train").sum()
    want = np.load(tiny_shards / "cxr.npy")[keep].astype(np.float64).mean(0) / 255.0
    ref = model.reference_cxr
    assert (ref.count, ref.rule) == (int(keep.sum()), "findings")
    assert np.allclose(ref.image, want, atol=1e-5)
    # a run saved without one gets it from `medtriad reference`
    (r / "model" / "reference_cxr.npz").unlink()
    assert MultiModalModel.from_pretrained(r / "model").reference_cxr is None
    out = finish(run_cli(["reference", str(r), str(tiny_shards)]))
    assert f"mean of {int(keep.sum())} X-rays (rule findings)" in out
    again = MultiModalModel.from_pretrained(r / "model").reference_cxr
    assert again.count == ref.count and np.array_equal(again.image, ref.image)
