"""Data-parallel support: gathering with gradient and each rank's view of the global batch.

Every loss is written in the *local-loss form*: this rank's rows (the anchors) against the
columns of the whole global batch, with labels offset by the rank's position. Embeddings are
gathered with :func:`gather_with_grad`, whose backward sums the gradient over ranks and returns
this rank's slice, so gradient reaches a sample both through its own rows and through its
appearance as a column on every other rank.

Scaling (what every loss returns under ``torch.distributed`` with W > 1 ranks):

* each term is ``W * (sum of this rank's row terms) / (global number of valid rows)``;
* hence ``mean over ranks of total == full-batch loss`` (the value one process computes on the
  concatenated batch), and the same holds for every entry of ``parts``;
* ``sum over ranks of grad(total) == W * grad(full-batch loss)``; DistributedDataParallel
  *averages* gradients (divides by W), so the trainer gets exactly the full-batch gradient.

The reported ``total`` on one rank is therefore its share, not the global value; reduce it with
a mean over ranks to log the full-batch loss. All ranks must hold the same number of samples
(use ``drop_last=True`` on the sampler); unequal sizes raise ``ValueError`` on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "GlobalBatch",
    "RowSet",
    "all_gather_no_grad",
    "gather_batch",
    "gather_with_grad",
    "world_info",
]


def world_info() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0; backward sums the gradient over ranks and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:  # type: ignore[override]
        rank, world = world_info()
        t = t.contiguous()
        chunks = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(chunks, t)
        ctx.rank, ctx.rows = rank, t.shape[0]
        return torch.cat(chunks, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate ``t`` from every rank along dim 0, keeping the gradient path to this rank's part.

    Every rank must pass a tensor of the same shape. Without a process group (or with one rank)
    ``t`` is returned unchanged.
    """
    _, world = world_info()
    if world == 1:
        return t
    return _GatherWithGrad.apply(t)


def all_gather_no_grad(t: Tensor) -> Tensor:
    """Concatenate ``t`` from every rank along dim 0 without gradient (masks, sizes, statistics)."""
    _, world = world_info()
    if world == 1:
        return t
    t = t.detach().contiguous()
    chunks = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(chunks, t)
    return torch.cat(chunks, dim=0)


@dataclass(frozen=True)
class RowSet:
    """The rows of the global batch that take part in one term, as seen from one rank.

    ``index`` is a boolean mask over the global batch (``None``: every row). The selected rows
    keep their order, so this rank's rows form the contiguous block ``[start, start + local)``
    of the selection, and ``start + k`` is the label (diagonal column) of its k-th row.
    """

    index: Tensor | None
    count: int
    start: int
    local: int

    def take(self, t: Tensor) -> Tensor:
        """The selected rows of a global tensor."""
        return t if self.index is None else t[self.index]

    def mine(self, selected: Tensor) -> Tensor:
        """This rank's rows of an already selected tensor."""
        return selected[self.start : self.start + self.local]

    def labels(self, device: torch.device) -> Tensor:
        """Column of each of this rank's rows' positive."""
        return torch.arange(self.start, self.start + self.local, device=device)

    @property
    def is_whole(self) -> bool:
        """True when this rank holds every selected row (single process)."""
        return self.local == self.count


@dataclass(frozen=True)
class GlobalBatch:
    """The global batch from one rank's point of view.

    ``emb`` and ``present`` hold all N = world * local_size rows (gathered under data
    parallelism; the caller's tensors otherwise). This rank's own rows are
    ``[offset, offset + local_size)``.
    """

    emb: dict[str, Tensor]
    present: dict[str, Tensor]
    rank: int = 0
    world: int = 1

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.emb)

    @property
    def size(self) -> int:
        return next(iter(self.emb.values())).shape[0]

    @property
    def local_size(self) -> int:
        return self.size // self.world

    @property
    def offset(self) -> int:
        return self.rank * self.local_size

    def rows_with(self, *names: str) -> RowSet:
        """Rows where every modality in ``names`` is present."""
        valid = self.present[names[0]]
        for name in names[1:]:
            valid = valid & self.present[name]
        count = int(valid.sum())
        lo, hi = self.offset, self.offset + self.local_size
        if count == self.size:
            return RowSet(None, count, lo, hi - lo)
        start = int(valid[:lo].sum())
        local = int(valid[lo:hi].sum())
        return RowSet(valid, count, start, local)

    def share(self, local_sum: Tensor, count: int) -> Tensor:
        """This rank's share of a mean over ``count`` global terms (see the module docstring)."""
        return local_sum * (self.world / count)

    def zero(self) -> Tensor:
        """A zero connected to the embeddings: backward runs (with zero gradient) on every rank."""
        return next(iter(self.emb.values()))[:0].sum()


def gather_batch(
    emb: dict[str, Tensor], present: dict[str, Tensor], *, enabled: bool = True
) -> GlobalBatch:
    """Build this rank's :class:`GlobalBatch`; gathers across ranks when a process group runs.

    All modalities are stacked into one (B, M, d) tensor so that one collective moves them in
    the forward pass and one in the backward pass.
    """
    rank, world = world_info() if enabled else (0, 1)
    if world == 1:
        return GlobalBatch(dict(emb), dict(present))
    names = list(emb)
    first = emb[names[0]]
    sizes = all_gather_no_grad(torch.tensor([first.shape[0]], device=first.device))
    if bool((sizes != sizes[0]).any()):
        raise ValueError(
            f"distributed losses need the same batch size on every rank, got {sizes.tolist()}; "
            "use drop_last=True in the data loader"
        )
    stacked = gather_with_grad(torch.stack([emb[m] for m in names], dim=1))
    masks = torch.stack([present[m] for m in names], dim=1).to(torch.uint8)
    masks = all_gather_no_grad(masks).bool()
    return GlobalBatch(
        {m: stacked[:, k] for k, m in enumerate(names)},
        {m: masks[:, k] for k, m in enumerate(names)},
        rank,
        world,
    )
