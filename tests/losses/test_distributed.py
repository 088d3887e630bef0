"""Two gloo processes on halves of a batch reproduce the single-process full-batch loss.

Each rank holds a leaf for its own half, returns its local-loss share and back-propagates.
DistributedDataParallel averages gradients over ranks, so the comparison is: the mean over
ranks of ``total`` (and of every part) equals the full-batch value, the concatenated per-rank
leaf gradients divided by the world size equal the full-batch embedding gradient, and the mean
over ranks of the logit-scale (and SigLIP bias) gradients equals the full-batch one.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

HERE = Path(__file__).resolve().parent
WORKER = "_medtriad_loss_worker"


def _load_worker():
    """Import the worker under its top-level name, as the spawned processes will."""
    if WORKER not in sys.modules:
        spec = importlib.util.spec_from_file_location(WORKER, HERE / f"{WORKER}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[WORKER] = module
        spec.loader.exec_module(module)
    return sys.modules[WORKER]


gloo = _load_worker()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("gloo")
    sys.path.insert(0, str(HERE))  # copied into the children at spawn time
    try:
        ctx = mp.spawn(
            gloo.worker,
            args=(str(tmp / "store"), str(tmp)),
            nprocs=gloo.WORLD,
            join=False,
            start_method="spawn",
        )
    finally:
        sys.path.remove(str(HERE))
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("the gloo workers did not finish within 120 s")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(gloo.WORLD)]


@pytest.mark.parametrize("pattern", ["full", "scattered", "one_sided"])
@pytest.mark.parametrize("case", sorted(gloo.CASES))
def test_two_ranks_equal_one_process(ranks: list[dict], case: str, pattern: str) -> None:
    single = gloo.run_case(case, gloo.full_batch(), gloo.presence_patterns()[pattern])
    per_rank = [r[(pattern, case)] for r in ranks]
    tol = {"atol": 1e-9, "rtol": 1e-9}

    def mean(key: str) -> torch.Tensor:
        return torch.stack([r[key] for r in per_rank]).mean()

    torch.testing.assert_close(mean("total"), single["total"], **tol)
    assert all(set(r["parts"]) == set(single["parts"]) for r in per_rank)
    for key, value in single["parts"].items():
        torch.testing.assert_close(
            torch.stack([r["parts"][key] for r in per_rank]).mean(), value, **tol
        )
    for m in gloo.NAMES:
        ddp_grad = torch.cat([r["grads"][m] for r in per_rank]) / gloo.WORLD
        torch.testing.assert_close(ddp_grad, single["grads"][m], **tol)
    torch.testing.assert_close(mean("scale_grad"), single["scale_grad"], **tol)
    if single["bias_grad"] is not None:
        torch.testing.assert_close(mean("bias_grad"), single["bias_grad"], **tol)


def test_unequal_rank_batches_raise_on_every_rank(ranks: list[dict]) -> None:
    assert all(r["unequal"] is not None and "same batch size" in r["unequal"] for r in ranks)
