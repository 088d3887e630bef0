"""Local token-sentence alignment: the packed form against the padded-grid reference.

`medtriad.losses.local.local_scores` scores only the sentences present. The reference writes
the formula over the padded (N, M, S, P) grid of every image, report slot and token, then
masks the padding. Both run forward + backward in float32 on the same batch (N = M images and
reports, S sentence slots of which a fraction is filled, P tokens, d = 128) in one run; the
table gives the fastest of several repeats and the ratio (above 1: the packed form is faster).

    python benchmarks/local_loss.py [--threads N] [--repeats N] [--fill F]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from medtriad.losses.local import local_scores


def padded_reference(tokens: Tensor, sentences: Tensor, mask: Tensor, tau: float) -> Tensor:
    """The formula over the padded grid: v_ijm for every slot, then the masked mean over m."""
    sims = torch.einsum("ikd,jmd->ijmk", tokens, sentences)  # (N, M, S, P)
    v = tau * (torch.logsumexp(sims / tau, dim=-1) - math.log(tokens.shape[1]))
    w = mask.to(v.dtype)
    return (v * w).sum(-1) / w.sum(-1).clamp_min(1.0)


def fastest(fn: Callable[[], None], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def timed(
    scores: Callable[..., Tensor], tokens: Tensor, sentences: Tensor, mask: Tensor, repeats: int
) -> float:
    """Fastest forward + backward of `scores` at tau 0.1."""
    return fastest(lambda: scores(tokens, sentences, mask, 0.1).sum().backward(), repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--fill",
        type=float,
        default=0.44,
        help="fraction of sentence slots filled (demo: 4.9 of 11)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.fill:.0%} of the sentence slots filled"
    )
    print("| N | S | P | packed ms | padded ms | speed-up | max abs difference |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, s, p in ((64, 11, 64), (64, 11, 256), (64, 16, 196), (256, 16, 196)):
        tokens = F.normalize(torch.randn(n, p, 128, generator=g), dim=-1).requires_grad_()
        sentences = F.normalize(torch.randn(n, s, 128, generator=g), dim=-1).requires_grad_()
        mask = torch.rand(n, s, generator=g) < args.fill
        diff = (
            (
                local_scores(tokens, sentences, mask, 0.1)
                - padded_reference(tokens, sentences, mask, 0.1)
            )
            .abs()
            .max()
        )
        ours = timed(local_scores, tokens, sentences, mask, args.repeats)
        ref = timed(padded_reference, tokens, sentences, mask, args.repeats)
        print(
            f"| {n} | {s} | {p} | {ours * 1e3:.1f} | {ref * 1e3:.1f} | {ref / ours:.2f} | {diff.item():.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
