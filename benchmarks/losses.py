"""Forward+backward time and peak memory of each loss next to a straightforward reference.

Run: ``python benchmarks/losses.py`` (defaults: N in {256, 1024, 4096}, d in {128, 256}).
Prints a Markdown table; ratios are reference / ours (above 1: ours is faster or smaller).

References (written the obvious way, one dense tensor per formula):

* ``clip``, ``more``: full N x N logit matrices and ``F.cross_entropy`` in both directions;
  ``clip @W`` is the per-rank work of the local-loss form at a simulated world size W (this
  rank's N/W rows against all N columns; the all_gather itself is not timed) against the full
  global logit matrix that a rank computes without it;
* ``symile``: the (N, N, d) tensor of explicit products r_i * c_j, summed over d;
* ``symile n^2``: the (N, N, N) logits built from the explicit (N, N, d) products r_i * u_j;
* ``gram``: (N, N, k, k) Gram matrices and batched ``torch.linalg.det``;
* ``siglip``: the full N x N logit matrix with a dense +1/-1 label matrix;
* ``dhn_nce``: the weights w_ij and the denominators formed literally in exp space;
* ``mv_infonce``, ``mv_dhel``: one (N M) x (N M) similarity matrix with dense boolean masks.

Peak memory is the rise of the process's resident set (``VmHWM`` minus ``VmRSS`` before the
call; the high-water mark is reset through ``/proc/self/clear_refs``) over one forward+backward
pass, inputs excluded, their gradients included. glibc is told to serve every block above
64 KiB with mmap (``mallopt``) so that freed tensors leave the resident set at once and
successive measurements do not share pages. Linux only.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from medtriad.losses import get_loss
from medtriad.losses.distributed import GlobalBatch

NAMES = ("cxr", "ecg", "report")
Fn = Callable[[dict[str, Tensor], Tensor], Tensor]


# --------------------------------------------------------------------------- memory probe


def _pin_malloc() -> bool:
    """Make glibc mmap every block >= 64 KiB and trim eagerly; False if not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 64 * 1024)) and bool(
            libc.mallopt(m_trim_threshold, 0)
        )
    except OSError:
        return False


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


# --------------------------------------------------------------------------- references


def ref_infonce_pair(x: Tensor, y: Tensor, s: Tensor) -> Tensor:
    logits = s * x @ y.T
    labels = torch.arange(x.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def ref_clip(emb: dict[str, Tensor], s: Tensor) -> Tensor:
    pairs = list(itertools.combinations(emb, 2))
    return sum(ref_infonce_pair(emb[a], emb[b], s) for a, b in pairs) / len(pairs)


def ref_more(emb: dict[str, Tensor], s: Tensor) -> Tensor:
    return sum(ref_infonce_pair(emb["report"], emb[m], s) for m in emb if m != "report")


def ref_symile(perms: dict[str, dict[str, Tensor]]) -> Fn:
    def fn(emb: dict[str, Tensor], s: Tensor) -> Tensor:
        n = next(iter(emb.values())).shape[0]
        labels = torch.arange(n)
        total = 0
        for a in emb:
            others = [m for m in emb if m != a]
            cand = emb[others[0]][perms[a][others[0]]]
            true = emb[others[0]]
            for m in others[1:]:
                cand = cand * emb[m][perms[a][m]]
                true = true * emb[m]
            logits = s * (emb[a][:, None, :] * cand[None, :, :]).sum(-1)
            logits = torch.where(
                torch.eye(n, dtype=torch.bool), s * (emb[a] * true).sum(-1)[:, None], logits
            )
            total = total + F.cross_entropy(logits, labels)
        return total / len(emb)

    return fn


def ref_symile_n_squared(emb: dict[str, Tensor], s: Tensor) -> Tensor:
    n = next(iter(emb.values())).shape[0]
    labels = torch.arange(n) * (n + 1)
    total = 0
    for a in emb:
        u, v = (emb[m] for m in emb if m != a)
        products = emb[a][:, None, :] * u[None, :, :]  # (n, n, d)
        logits = s * (products @ v.T)  # (n, n, n)
        total = total + F.cross_entropy(logits.reshape(n, n * n), labels)
    return total / len(emb)


def ref_gram(emb: dict[str, Tensor], s: Tensor) -> Tensor:
    a = emb["report"]
    others = [emb[m] for m in emb if m != "report"]
    n, k = a.shape[0], len(others) + 1
    rows = []
    for p in range(k):
        cols = []
        for q in range(k):
            if p == 0 and q == 0:
                cols.append((a * a).sum(-1)[:, None].expand(n, n))
            elif p == 0 or q == 0:
                cols.append(a @ others[max(p, q) - 1].T)
            else:
                cols.append((others[p - 1] * others[q - 1]).sum(-1)[None, :].expand(n, n))
        rows.append(torch.stack(cols, -1))
    gram = torch.stack(rows, -2)  # (n, n, k, k)
    vol = torch.linalg.det(gram).clamp_min(1e-6).sqrt()
    labels = torch.arange(n)
    return (F.cross_entropy(-s * vol, labels) + F.cross_entropy(-s * vol.T, labels)) / 2


def ref_siglip(bias: Tensor) -> Fn:
    def fn(emb: dict[str, Tensor], s: Tensor) -> Tensor:
        pairs = list(itertools.combinations(emb, 2))
        n = next(iter(emb.values())).shape[0]
        z = 2 * torch.eye(n) - 1
        total = 0
        for a, b in pairs:
            logits = s * emb[a] @ emb[b].T + bias
            total = total - F.logsigmoid(z * logits).sum() / n
        return total / len(pairs)

    return fn


def ref_dhn_nce(emb: dict[str, Tensor], s: Tensor, tau: float = 0.6, beta: float = 0.15) -> Tensor:
    def direction(sim: Tensor) -> Tensor:
        n = sim.shape[0]
        off = 1 - torch.eye(n)
        hardness = torch.exp(beta * sim) * off
        weights = (n - 1) * hardness / hardness.sum(1, keepdim=True)
        denominator = (weights * torch.exp(sim)).sum(1)
        return -torch.log(torch.exp(sim.diagonal()) / denominator).mean()

    pairs = list(itertools.combinations(emb, 2))
    total = 0
    for a, b in pairs:
        sim = emb[a] @ emb[b].T / tau
        total = total + direction(sim) + direction(sim.T)
    return total / len(pairs)


def _mv_dense(emb: dict[str, Tensor], s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x = torch.stack(list(emb.values()), 1)  # (n, m, d)
    n, m, _ = x.shape
    flat = x.reshape(n * m, -1)
    sim = s * flat @ flat.T
    instance = torch.arange(n).repeat_interleave(m)
    view = torch.arange(m).repeat(n)
    same_instance = instance[:, None] == instance[None, :]
    same_view = view[:, None] == view[None, :]
    return sim, same_instance, same_view, torch.eye(n * m, dtype=torch.bool)


def ref_mv_infonce(emb: dict[str, Tensor], s: Tensor) -> Tensor:
    sim, same_instance, _, itself = _mv_dense(emb, s)
    low = torch.finfo(sim.dtype).min
    positives = sim.masked_fill(~(same_instance & ~itself), low).logsumexp(1)
    everything = sim.masked_fill(itself, low).logsumexp(1)
    return (everything - positives).mean()


def ref_mv_dhel(emb: dict[str, Tensor], s: Tensor) -> Tensor:
    sim, same_instance, same_view, itself = _mv_dense(emb, s)
    positive = same_instance & ~itself
    align = (sim * positive).sum(1) / positive.sum(1)
    uniform = sim.masked_fill(~(same_view & ~same_instance), torch.finfo(sim.dtype).min).logsumexp(
        1
    )
    return (uniform - align).mean()


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    label: str
    ours: Fn
    reference: Fn
    ref_bytes: Callable[[int, int], float]  # rough peak of the reference, to skip what cannot fit
    max_n: int = 1 << 30  # ours is not run above this N (time)
    max_repeats: int = 7


def _ours(name: str, world: int = 1, **settings) -> Fn:
    loss = get_loss(name, **settings)

    def fn(emb: dict[str, Tensor], s: Tensor) -> Tensor:
        present = {m: torch.ones(t.shape[0], dtype=torch.bool) for m, t in emb.items()}
        return loss.compute(GlobalBatch(emb, present, rank=0, world=world), s).total

    return fn


def build_cases(n: int, world: int) -> list[Case]:
    symile = get_loss("symile", seed=0)
    perms = symile.draw_permutations(NAMES, n)
    siglip = get_loss("siglip")

    def symile_ours(emb: dict[str, Tensor], s: Tensor) -> Tensor:
        present = {m: torch.ones(n, dtype=torch.bool) for m in emb}
        return symile.compute(GlobalBatch(emb, present), s, permutations=perms).total

    def siglip_ours(emb: dict[str, Tensor], s: Tensor) -> Tensor:
        present = {m: torch.ones(n, dtype=torch.bool) for m in emb}
        return siglip.compute(GlobalBatch(emb, present), s).total

    f32 = 4
    return [
        Case("clip", _ours("clip"), ref_clip, lambda n, d: 0),
        Case(f"clip @W={world}", _ours("clip", world=world), ref_clip, lambda n, d: 0),
        Case("more", _ours("more"), ref_more, lambda n, d: 0),
        Case("symile", symile_ours, ref_symile(perms), lambda n, d: 3 * n * n * d * f32),
        Case(
            "symile n^2",
            _ours("symile", negatives="n_squared"),
            ref_symile_n_squared,
            lambda n, d: 3 * (2 * n**3 + n * n * d) * f32,
            max_n=256,
            max_repeats=2,
        ),
        Case("gram", _ours("gram"), ref_gram, lambda n, d: 40 * n * n * f32),
        Case("siglip", siglip_ours, ref_siglip(siglip.bias), lambda n, d: 0),
        Case("dhn_nce", _ours("dhn_nce"), ref_dhn_nce, lambda n, d: 0),
        Case("mv_infonce", _ours("mv_infonce"), ref_mv_infonce, lambda n, d: 0),
        Case("mv_dhel", _ours("mv_dhel"), ref_mv_dhel, lambda n, d: 0),
    ]


# --------------------------------------------------------------------------- measuring


def _fresh(emb: dict[str, Tensor], scale: Tensor) -> None:
    for t in (*emb.values(), scale):
        t.grad = None


def time_them(fns: list[Fn], emb: dict[str, Tensor], scale: Tensor, repeats: int) -> list[float]:
    """Fastest forward+backward of each function, in seconds.

    The functions take turns (after one warm-up round when ``repeats > 1``) so that a burst of
    load from other processes hits them alike; the minimum filters such bursts out.
    """
    best = [float("inf")] * len(fns)
    for k in range(repeats + (repeats > 1)):
        for i, fn in enumerate(fns):
            _fresh(emb, scale)
            start = time.perf_counter()
            fn(emb, scale).backward()
            if k or repeats == 1:
                best[i] = min(best[i], time.perf_counter() - start)
    _fresh(emb, scale)
    return best


def peak_mib(fn: Fn, emb: dict[str, Tensor], scale: Tensor) -> float:
    """Rise of the resident set over one forward+backward pass, in MiB."""
    _fresh(emb, scale)
    gc.collect()
    before = _status_kib("VmRSS")
    _reset_peak()
    fn(emb, scale).backward()
    peak = _status_kib("VmHWM") - before
    _fresh(emb, scale)
    return max(peak, 0) / 1024


def batch(n: int, d: int, seed: int = 0) -> tuple[dict[str, Tensor], Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = {m: F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_() for m in NAMES}
    return emb, torch.tensor(10.0, requires_grad=True)


def wanted(case: Case, n: int, d: int, args: argparse.Namespace) -> tuple[bool, bool]:
    """(run ours, run the reference) for this case and size."""
    if (args.only is not None and case.label not in args.only) or n > case.max_n:
        return False, False
    return True, case.ref_bytes(n, d) <= args.budget_gb * 2**30


def memory_child(n: int, d: int, args: argparse.Namespace) -> dict[str, list[float | None]]:
    """Peak memory of every case, measured in a fresh process with mallopt pinned."""
    cmd = [sys.executable, __file__, "--memory-of", str(n), str(d), "--world", str(args.world)]
    cmd += ["--budget-gb", str(args.budget_gb), "--threads", str(torch.get_num_threads())]
    if args.only is not None:
        cmd += ["--only", *args.only]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def memory_main(n: int, d: int, args: argparse.Namespace) -> None:
    if not _pin_malloc():
        raise SystemExit("peak memory needs glibc's mallopt")
    emb, scale = batch(n, d)
    ref_clip(emb, scale).backward()  # one-time runtime set-up, kept out of the first measurement
    result: dict[str, list[float | None]] = {}
    for case in build_cases(n, args.world):
        run_ours, run_ref = wanted(case, n, d, args)
        if run_ours:
            ours = peak_mib(case.ours, emb, scale)
            result[case.label] = [ours, peak_mib(case.reference, emb, scale) if run_ref else None]
    print(json.dumps(result))


def check_agreement(case: Case, emb: dict[str, Tensor], scale: Tensor) -> None:
    """Ours and the reference compute the same value (the simulated-rank row excepted)."""
    if "@W" in case.label:
        return
    with torch.no_grad():
        ours, ref = float(case.ours(emb, scale)), float(case.reference(emb, scale))
    if abs(ours - ref) > 1e-3 * max(1.0, abs(ref)):
        raise RuntimeError(f"{case.label}: ours {ours} != reference {ref}")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}" if seconds < 0.1 else f"{seconds * 1e3:.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 256])
    parser.add_argument(
        "--world", type=int, default=8, help="simulated world size of the 'clip @W' row"
    )
    parser.add_argument(
        "--budget-gb", type=float, default=6.0, help="skip references estimated above this"
    )
    parser.add_argument("--only", nargs="*", default=None, help="labels of the cases to run")
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: torch's choice)"
    )
    parser.add_argument("--memory-of", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_of is not None:
        memory_main(*args.memory_of, args)
        return

    print(
        f"# {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, float32"
    )
    print("| loss | N | d | ours ms | ref ms | time ratio | ours MiB | ref MiB | memory ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, d in itertools.product(args.sizes, args.dims):
        memory = memory_child(n, d, args)
        repeats = 7 if n <= 256 else 3 if n <= 1024 else 1
        emb, scale = batch(n, d)
        for case in build_cases(n, args.world):
            run_ours, run_ref = wanted(case, n, d, args)
            if not run_ours:
                if args.only is None or case.label in args.only:
                    print(
                        f"| {case.label} | {n} | {d} | skipped (time: O(N^3 d)) | | | | | |",
                        flush=True,
                    )
                continue
            m_ours, m_ref = memory[case.label]
            reps = min(repeats, case.max_repeats)
            if run_ref:
                if n <= 1024:
                    check_agreement(case, emb, scale)
                t_ours, t_ref = time_them([case.ours, case.reference], emb, scale, reps)
                m_ratio = f"{m_ref / m_ours:.1f}" if m_ours >= 1 else "n/a"
                row = [
                    _ms(t_ours),
                    _ms(t_ref),
                    f"{t_ref / t_ours:.2f}",
                    f"{m_ours:.0f}",
                    f"{m_ref:.0f}",
                    m_ratio,
                ]
            else:
                (t_ours,) = time_them([case.ours], emb, scale, reps)
                row = [_ms(t_ours), "skipped (memory)", "", f"{m_ours:.0f}", "", ""]
            print(f"| {case.label} | {n} | {d} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
