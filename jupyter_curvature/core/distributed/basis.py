"""Where the rows of the Lanczos vectors live: all on this process, or in slices across ranks.

Lanczos stores ``m`` vectors of length ``n`` (``8 n m`` bytes in float64); with data-parallel
or FSDP products every rank holds the same full vectors. A :class:`ShardedSpace` splits every
vector into contiguous row slices, rank ``r`` holding rows ``[lo_r, hi_r)`` of the flat
parameter vector, so the basis costs ``n / W`` rows per rank. The Lanczos arithmetic then
needs two things (and nothing else changes):

* every contraction over ``n`` (inner products, norms, ``V^T x``) is a local partial sum
  followed by one all-reduce (sum, in float64): :meth:`VectorSpace.reduce`,
  :meth:`VectorSpace.norm`;
* an operator product takes the local slice, all-gathers it to the full vector
  (:meth:`VectorSpace.gather`), runs the full product (which already sums the ranks' data
  shards) and keeps the local slice of the result (:meth:`VectorSpace.local`).

Every rank gets the same all-reduced sums (the backend hands every rank the same result), so
every rank takes the same branches of the recurrence. Random vectors are drawn full-length
from their seed and sliced (:meth:`VectorSpace.local`), so a run on ``W`` ranks starts from
the same global vector as a run on one, and agrees with it to rounding.

:class:`VectorSpace` is the trivial layout (one process holds all rows): every method is the
identity or the plain local computation, so a spectral routine written against it computes
exactly what it computed before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from .primitives import backend_for
from .sharding import shard_bounds

__all__ = ["ShardedBasis", "ShardedSpace", "VectorSpace", "gather_rows"]


class VectorSpace:
    """All ``n`` rows of every Lanczos vector on this process (the default)."""

    sharded = False

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self.lo, self.hi = 0, self.n

    @property
    def n_local(self) -> int:
        """Rows of every vector held here."""
        return self.hi - self.lo

    @property
    def world_size(self) -> int:
        return 1

    def reduce(self, partial: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a contraction over this rank's rows (here: itself)."""
        return partial

    def norm(
        self, x: torch.Tensor, dim: int = 0, keepdim: bool = False, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """``||x||`` along the rows ``dim`` (in ``dtype``, default ``x``'s)."""
        return x.norm(dim=dim, keepdim=keepdim, dtype=dtype)

    def local(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a full-length ``(n, ...)`` tensor."""
        return full

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """The full ``(n, ...)`` tensor from every rank's rows (a collective when sharded)."""
        return rows


class ShardedSpace(VectorSpace):
    """Rows ``[lo, hi)`` of every vector on this rank; contractions all-reduced in float64.

    Args:
        n: the dimension (length of the flat parameter vector).
        sizes: rows of each rank, in rank order (must add up to ``n``); default: contiguous
            slices whose sizes differ by at most one (:func:`shard_bounds`).
        group: the process group (default: the world). Every rank of it must take part in
            every spectral call (the reductions are collectives).

    Raises:
        ValueError: no process group is initialised, or ``sizes`` is not a layout of ``n``
            over the group's ranks.
    """

    sharded = True

    def __init__(self, n: int, sizes: Sequence[int] | None = None, group: Any = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "shard_basis needs an initialised process group (the Lanczos vectors are "
                "split across its ranks): call jupyter_curvature.distributed.init_distributed() "
                "first (under torchrun or jupyter_curvature.distributed.launch)"
            )
        super().__init__(n)
        self.group = group
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        if sizes is None:
            sizes = [b - a for a, b in (shard_bounds(self.n, world, r) for r in range(world))]
        self.sizes = check_sizes(sizes, self.n, world)
        self.lo = sum(self.sizes[:rank])
        self.hi = self.lo + self.sizes[rank]
        # NCCL reduces CUDA tensors only: the sums of a CPU-held basis travel through the GPU
        nccl = backend_for(torch.device("cuda"), group) == "nccl"
        self._via = torch.device("cuda", torch.cuda.current_device()) if nccl else None

    @property
    def world_size(self) -> int:
        return len(self.sizes)

    def reduce(self, partial: torch.Tensor) -> torch.Tensor:
        via = self._via if self._via is not None and partial.device.type != "cuda" else None
        total = partial.to(dtype=torch.float64, device=via or partial.device, copy=True)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.group)
        return total.to(dtype=partial.dtype, device=partial.device)

    def norm(
        self, x: torch.Tensor, dim: int = 0, keepdim: bool = False, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        squares = x.square().sum(dim, keepdim=keepdim, dtype=torch.float64)
        return self.reduce(squares).sqrt().to(dtype or x.dtype)

    def local(self, full: torch.Tensor) -> torch.Tensor:
        if full.shape[0] != self.n:
            raise ValueError(f"expected a full-length vector of {self.n} rows, got {full.shape[0]}")
        return full[self.lo : self.hi]

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        return gather_rows(rows, self.sizes, self.group)


def check_sizes(sizes: Any, n: int, world_size: int) -> list[int]:
    """``sizes`` as a list of row counts, one per rank, that add up to ``n``."""
    try:
        sizes = [int(s) for s in sizes]
    except (TypeError, ValueError):
        raise TypeError(f"basis_sizes must be a sequence of row counts, got {sizes!r}") from None
    if len(sizes) != world_size or any(s < 0 for s in sizes) or sum(sizes) != n:
        raise ValueError(
            f"basis_sizes={sizes} is not a layout of the {n} rows of the Lanczos vectors over "
            f"{world_size} ranks: give {world_size} non-negative row counts that add up to {n} "
            "(or None for equal contiguous slices)"
        )
    return sizes


def gather_rows(
    rows: torch.Tensor, sizes: Sequence[int] | None = None, group: Any = None
) -> torch.Tensor:
    """Concatenate every rank's rows of a sharded vector block, in rank order (a collective).

    ``rows``: this rank's ``(n_r, ...)`` slice (the eigenvectors or Ritz vectors returned with
    ``shard_basis=True``). ``sizes``: every rank's row count, if known (else one extra
    all-gather finds them). Without a process group, ``rows`` itself.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return rows
    world = dist.get_world_size(group)
    if sizes is None:
        counts = [None] * world
        dist.all_gather_object(counts, int(rows.shape[0]), group=group)
        sizes = counts
    # the backends gather equal sizes only: pad every slice to the largest
    width = max(sizes)
    padded = rows.new_zeros((width, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


class ShardedBasis:
    """An operator whose Lanczos vectors are held in row slices across the ranks.

    Hand it to :func:`~jupyter_curvature.spectral.spectral_density` or
    :func:`~jupyter_curvature.spectral.eigenpairs` in place of ``op`` (or pass
    ``shard_basis=True`` to the :mod:`jupyter_curvature.distributed` entry points, which build
    it): the spectral routine then stores ``n / W`` rows of every vector per rank and returns
    Ritz vectors / eigenvectors as this rank's rows ``[space.lo, space.hi)``, to be gathered
    with :func:`gather_rows` if wanted.

    Args:
        op: the curvature operator (its products sum over the ranks' data shards, or an FSDP
            :class:`~jupyter_curvature.operators.ShardedOperator`): full-length in and out.
        sizes, group: the row layout (see :class:`ShardedSpace`).
    """

    def __init__(self, op: Any, sizes: Sequence[int] | None = None, group: Any = None) -> None:
        shape = getattr(op, "shape", None)
        if shape is None or len(shape) != 2:
            raise TypeError(f"op must be a square curvature operator, got {type(op).__name__}")
        self.op = op
        self.space = ShardedSpace(int(shape[0]), sizes, group)

    def __repr__(self) -> str:
        s = self.space
        return (
            f"ShardedBasis({type(self.op).__name__}, n={s.n}, rows [{s.lo}, {s.hi}) of "
            f"{s.world_size} slices)"
        )
