"""How fast is one full training step, and how close to this machine's matmul peak?

For the demo config (batch 64) and the paper's base config (ViT-B/16 224, base ECG encoder,
MiniLM with LoRA standing in for the RoBERTa checkpoint; batch 8), times a complete step:
forward of all three encoders (a frozen text encoder's features cached, as in training), the `more` loss, backward, gradient clipping and the AdamW update.
FLOPs of the step are counted with `torch.utils.flop_counter`; the peak is a large float32
matmul measured in the same run. Prints samples/s, GFLOP/s and the fraction of the peak.

    python benchmarks/train_step.py [--threads N] [--steps N] [--skip-base]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from medtriad.config import load_config
from medtriad.losses import get_loss
from medtriad.models import build_model
from medtriad.train.optim import build_optimizer
from medtriad.train.trainer import EncodeStep, contrastive_step

ROOT = Path(__file__).resolve().parents[1]


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def make_step(config_path: Path, overrides: list[str], batch: int):
    cfg = load_config(config_path, overrides)
    model = build_model(cfg)
    step = EncodeStep(model)
    step.train()
    loss = get_loss(cfg.loss.name)
    opt = build_optimizer(step, cfg.train.lr, cfg.train.weight_decay)
    s, t = cfg.data.cxr.size, round(cfg.data.ecg.fs * cfg.data.ecg.seconds)
    text = (
        "[RAD] FINDINGS: The heart is enlarged. Small left pleural effusion. IMPRESSION: Cardiomegaly. "
        "[ECG] Atrial fibrillation. Low QRS voltages in limb leads. Abnormal ECG."
    )
    texts = [text] * batch
    inputs = {"cxr": torch.rand(batch, 1, s, s), "ecg": torch.randn(batch, 12, t) * 0.3, "report": texts}
    if cfg.model.report.freeze and cfg.train.cache_text:
        # as the trainer does: a frozen text encoder's features are computed once and cached
        with torch.no_grad():
            inputs["report_features"] = model.encoders["report"](texts)
    present = {m: torch.ones(batch, dtype=torch.bool) for m in ("cxr", "ecg", "report")}

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        contrastive_step(step, step, loss, inputs, present, None, contextlib.nullcontext)
        torch.nn.utils.clip_grad_norm_(step.parameters(), 1.0)
        opt.step()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--skip-base", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_peak()
    cases = [("demo (batch 64)", ROOT / "configs" / "demo.yaml", [], 64)]
    if not args.skip_base:
        base = ["model.report.path=null", "model.report.require_path=false", "data.report.max_length=128"]
        cases.append(("base / MoRE (batch 8)", ROOT / "configs" / "more.yaml", base, 8))
    print(f"threads {torch.get_num_threads()}; float32 matmul peak {peak:.0f} GFLOP/s")
    print(f"{'config':<24} | {'s/step':>7} | {'samples/s':>9} | {'GFLOP/step':>10} | {'GFLOP/s':>7} | {'of peak':>7}")
    print("-" * 80)
    for name, path, overrides, batch in cases:
        run = make_step(path, overrides, batch)
        run()  # warm-up
        with FlopCounterMode(display=False) as counter:
            run()
        flops = counter.get_total_flops()
        best = min(_timed(run) for _ in range(args.steps))
        gflops = flops / best / 1e9
        print(f"{name:<24} | {best:>7.3f} | {batch / best:>9.1f} | {flops / 1e9:>10.1f} | {gflops:>7.1f} | {gflops / peak:>6.0%}")
    peak_after = matmul_peak()
    print(f"matmul peak re-measured after the steps: {peak_after:.0f} GFLOP/s (ratio to first {peak_after / peak:.2f})")


if __name__ == "__main__":
    main()
