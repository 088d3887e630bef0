"""Cases and the per-rank worker of the 2-process gloo test.

Loaded under a top-level name (not as part of the test package) so that processes started with
the ``spawn`` method can import it by name; it therefore imports nothing from the tests.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from medtriad.losses import get_loss

NAMES = ("cxr", "ecg", "report")
WORLD = 2
LOCAL = 6
DIM = 4
SCALE = 4.0

CASES = {
    "clip": ("clip", {"label_smoothing": 0.1}),
    "more": ("more", {}),
    "symile": ("symile", {"seed": 7}),
    "symile_n_squared": ("symile", {"negatives": "n_squared", "chunk_elements": 50}),
    "siglip": ("siglip", {"chunk_size": 4, "bias_init": -3.0}),
    "gram": ("gram", {}),
    "dhn_nce": ("dhn_nce", {}),
    "mv_infonce": ("mv_infonce", {}),
    "mv_dhel": ("mv_dhel", {}),
    "clip_regularized": (
        "clip",
        {"regularizers": {"uniformity": 0.3, "cross_uniformity": 0.2, "alignment": 0.5}},
    ),
}


def full_batch() -> dict[str, torch.Tensor]:
    """The concatenated batch of both ranks (float64 unit vectors, fixed seed)."""
    g = torch.Generator().manual_seed(30)
    return {
        m: F.normalize(torch.randn(WORLD * LOCAL, DIM, generator=g, dtype=torch.float64), dim=-1)
        for m in NAMES
    }


def presence_patterns() -> dict[str, dict[str, torch.Tensor]]:
    n = WORLD * LOCAL
    full = {m: torch.ones(n, dtype=torch.bool) for m in NAMES}
    scattered = {m: torch.ones(n, dtype=torch.bool) for m in NAMES}
    scattered["cxr"][[1, 8]] = False
    scattered["ecg"][[2, 5, 7]] = False
    scattered["report"][[10]] = False
    one_sided = dict(full, ecg=torch.arange(n) >= LOCAL)  # rank 0 holds no ecg at all
    return {"full": full, "scattered": scattered, "one_sided": one_sided}


def run_case(case: str, emb: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> dict:
    """Value, parts and gradients (embeddings, logit scale, SigLIP bias) of one case."""
    name, settings = CASES[case]
    loss = get_loss(name, **settings).double()
    leaves = {m: t.detach().clone().requires_grad_() for m, t in emb.items()}
    scale = torch.tensor(SCALE, dtype=torch.float64, requires_grad=True)
    out = loss(leaves, present, scale)
    out.total.backward()
    bias = getattr(loss, "bias", None)
    return {
        "total": out.total.detach(),
        "parts": {k: v.detach() for k, v in out.parts.items()},
        "grads": {
            m: t.grad if t.grad is not None else torch.zeros_like(t) for m, t in leaves.items()
        },
        "scale_grad": scale.grad
        if scale.grad is not None
        else torch.zeros((), dtype=torch.float64),
        "bias_grad": None if bias is None else bias.grad.clone(),
    }


def worker(rank: int, store: str, out_dir: str) -> None:
    """Run every case on this rank's half of the batch and save the results."""
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        torch.set_num_threads(1)
        full = full_batch()
        mine = slice(rank * LOCAL, (rank + 1) * LOCAL)
        results: dict = {}
        for pattern, present in presence_patterns().items():
            for case in CASES:
                emb = {m: t[mine] for m, t in full.items()}
                results[(pattern, case)] = run_case(
                    case, emb, {m: p[mine] for m, p in present.items()}
                )
        rows = LOCAL - rank  # unequal per-rank batches must fail loudly on every rank
        try:
            get_loss("clip")({m: t[:rows] for m, t in full.items()}, {}, 1.0)
            results["unequal"] = None
        except ValueError as exc:
            results["unequal"] = str(exc)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
