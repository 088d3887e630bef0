"""How fast does each encoder train on this CPU, and how close to the machine's matmul peak?

For every encoder at the demo size and at the paper's (base) size, times a training step
(forward + backward, train mode: DropKey and BatchNorm active, no optimiser step) and prints
samples/s, seconds per step, and the fraction of this CPU's matmul peak that the step reaches.
The peak is measured in the same run from a large float32 ``torch.matmul``, before and after
the encoders (the larger is kept); a step's FLOPs are counted by ``torch.utils.flop_counter``
(matmuls, convolutions, attention). Times are the fastest of several steps, which other load on
the machine disturbs least.

    python benchmarks/encoders.py [--threads N] [--steps N] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from medtriad.config import EcgEncoderConfig, LoraConfig, TextEncoderConfig, VitConfig
from medtriad.models.ecg import build_ecg_encoder
from medtriad.models.text import TextEncoder, default_text_path
from medtriad.models.vit import build_vit


@dataclass
class Case:
    name: str
    batch: int
    make: Callable[[], tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor]]]
    backward: bool = True


def matmul_peak(n: int = 2048, repeats: int = 20) -> float:
    """Best GFLOP/s of an n x n float32 matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def vit_case(name: str, cfg: VitConfig, image: int, batch: int) -> Case:
    def make() -> tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor]]:
        x = torch.rand(batch, 1, image, image)
        return build_vit(cfg, image).train(), lambda m: m(x)

    return Case(name, batch, make)


def ecg_case(name: str, cfg: EcgEncoderConfig, length: int, batch: int) -> Case:
    def make() -> tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor]]:
        x = torch.randn(batch, 12, length)
        return build_ecg_encoder(cfg, length).train(), lambda m: m(x)

    return Case(name, batch, make)


def text_case(
    name: str, cfg: TextEncoderConfig, tokens: int, batch: int, source: Path | None = None
) -> Case:
    def make() -> tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor]]:
        enc = TextEncoder(cfg, tokens, source=source).train()
        vocab = enc.tokenizer.vocab_size
        ids = torch.randint(1000, vocab, (batch, tokens))
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        return enc, lambda m: m(inputs)

    return Case(name, batch, make, backward=not cfg.freeze)


def roberta_base_source(directory: Path) -> Path:
    """A RoBERTa-base architecture (config only, random weights at build) with MiniLM's tokenizer."""
    from transformers import AutoTokenizer, RobertaConfig

    RobertaConfig(
        vocab_size=30522, max_position_embeddings=514, type_vocab_size=1, pad_token_id=0
    ).save_pretrained(str(directory))
    AutoTokenizer.from_pretrained(str(default_text_path())).save_pretrained(str(directory))
    return directory


def prepare(case: Case) -> tuple[Callable[[], None], float]:
    """A callable running one step of `case` (after a warm-up), and the step's FLOPs."""
    model, forward = case.make()
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        if case.backward:
            out = forward(model)
            out.float().square().mean().backward()
            for p in params:
                p.grad = None
        else:
            with torch.no_grad():
                forward(model)

    step()  # warm-up (allocations, kernel selection)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return step, float(counter.get_total_flops())


def time_interleaved(steps: list[Callable[[], None]], rounds: int) -> list[float]:
    """Fastest seconds per step of each callable, timed round-robin.

    Interleaving spreads a burst of other load on the machine over all cases instead of one, and
    the minimum is the time least disturbed by it.
    """
    best = [float("inf")] * len(steps)
    for _ in range(rounds):
        for i, step in enumerate(steps):
            t0 = time.perf_counter()
            step()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per demo-size encoder")
    parser.add_argument("--quick", action="store_true", help="demo sizes only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    logging.basicConfig(level=logging.WARNING)

    mini_lora = TextEncoderConfig(lora=LoraConfig(enabled=True))
    mini_frozen = TextEncoderConfig(freeze=True, lora=LoraConfig(enabled=False))
    demo = [
        vit_case("cxr  demo  ViT mini 64px p8 conv stem", VitConfig(stem="conv"), 64, 64),
        vit_case("cxr  demo  ViT mini 64px p8 patch stem", VitConfig(stem="patch"), 64, 64),
        vit_case(
            "cxr  demo  ViT mini 64px p8 no DropKey", VitConfig(stem="conv", dropkey=0.0), 64, 64
        ),
        ecg_case(
            "ecg  demo  mini 12x1000 p10 c256",
            EcgEncoderConfig(patch_size=10),
            1000,
            64,
        ),
        text_case("text demo  MiniLM frozen, fwd only, 48 tok", mini_frozen, 48, 64),
        text_case("text demo  MiniLM LoRA r16, 48 tok", mini_lora, 48, 64),
    ]
    base: list[Case] = []
    tmp = tempfile.TemporaryDirectory()
    if not args.quick:
        roberta = roberta_base_source(Path(tmp.name))
        base = [
            vit_case("cxr  base  ViT-B/16 224px", VitConfig(size="base", patch_size=16), 224, 8),
            ecg_case("ecg  base  base 12x1000 p5 c256", EcgEncoderConfig(size="base"), 1000, 8),
            text_case(
                "text base  RoBERTa-base LoRA r16, 128 tok", TextEncoderConfig(), 128, 8, roberta
            ),
        ]

    peak = matmul_peak()
    results = []
    for group, rounds in ((demo, args.steps), (base, 2)):
        prepared = [prepare(case) for case in group]
        times = time_interleaved([step for step, _ in prepared], rounds)
        results += [(case, t, flops) for case, t, (_, flops) in zip(group, times, prepared)]
        del prepared
    peak = max(peak, matmul_peak())

    print(f"torch {torch.__version__}, {args.threads} threads; matmul peak {peak:.1f} GFLOP/s")
    header = (
        f"{'encoder':44s} {'batch':>5s} {'s/step':>7s} {'samples/s':>9s} "
        f"{'GFLOP/step':>10s} {'GFLOP/s':>8s} {'of peak':>7s}"
    )
    print(header)
    print("-" * len(header))
    for case, seconds, flops in results:
        rate = flops / seconds / 1e9
        print(
            f"{case.name:44s} {case.batch:5d} {seconds:7.3f} {case.batch / seconds:9.1f} "
            f"{flops / 1e9:10.1f} {rate:8.1f} {rate / peak:7.1%}"
        )
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
