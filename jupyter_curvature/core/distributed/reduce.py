"""Merging per-rank partial results: streaming moments, gathered lists, split work.

* :func:`all_reduce_moments`: every rank's :class:`~jupyter_curvature.stats._common.WeightedMoments`
  (weight, count, weighted mean, scatter) merged with Chan, Golub and LeVeque's pairwise
  update (1979, eq. 2.1): for groups ``a`` and ``b`` with weights ``W_a, W_b``,

      mean    = mean_a + (W_b / W) (mean_b - mean_a)
      scatter = scatter_a + scatter_b + (W_a W_b / W) ||mean_b - mean_a||^2,

  in rank order, so every rank gets the same numbers, equal (up to rounding) to one
  process's streaming moments over all the batches. One ``all_gather`` of ``2 + 2 n``
  numbers per rank.
* :func:`split_map`: items (landscape grid points) dealt out across ranks, ``fn`` applied
  locally, the results gathered back in the original order on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .context import get_rank, get_world_size, is_initialized
from .primitives import check_backend_device

T = TypeVar("T")
R = TypeVar("R")


def _pack(moments: Any) -> torch.Tensor:
    mean = moments.mean
    scatter = moments.scatter
    if not isinstance(scatter, torch.Tensor):
        scatter = torch.tensor(float(scatter), dtype=torch.float64)
    mean = (
        mean if isinstance(mean, torch.Tensor) else torch.tensor(float(mean), dtype=torch.float64)
    )
    head = torch.tensor([float(moments.weight), float(moments.count)], dtype=torch.float64)
    device = mean.device
    return torch.cat(
        [
            head.to(device),
            mean.reshape(-1).to(torch.float64),
            scatter.reshape(-1).to(device, torch.float64),
        ]
    )


def all_reduce_moments(moments: Any, like: Any | None = None) -> Any:
    """Merge every rank's streaming moments (a ``WeightedMoments``) into the global ones.

    Args:
        moments: this rank's moments. A rank with no data (``moments.mean is None``) must
            pass ``like`` (another ``WeightedMoments`` with the right shapes, or a tensor
            shaped like the mean): the ranks' packed tensors must have the same length.
        like: see above.

    Returns:
        A new moments object of the same class, identical on every rank; the input's
        class, dtype and device are kept.
    """
    if not is_initialized() or get_world_size() == 1:
        return moments
    cls = type(moments)
    if moments.mean is None:
        template = like.mean if hasattr(like, "mean") else like
        if template is None:
            raise ValueError(
                "this rank has no data: pass like= (a tensor shaped like the other ranks' mean)"
            )
        empty = cls(getattr(moments, "reduce_dims", None))
        empty.mean = torch.zeros_like(template)
        empty.scatter = torch.zeros(())
        packed = _pack(empty)
        packed[0] = packed[1] = 0.0
        template_mean, dtype = template, template.dtype
    else:
        packed = _pack(moments)
        template_mean, dtype = (
            moments.mean,
            (moments.mean.dtype if isinstance(moments.mean, torch.Tensor) else torch.float64),
        )
    check_backend_device(packed.device)
    gathered = [torch.empty_like(packed) for _ in range(get_world_size())]
    dist.all_gather(gathered, packed)

    mean_size = template_mean.numel() if isinstance(template_mean, torch.Tensor) else 1
    merged = cls(getattr(moments, "reduce_dims", None))
    for row in gathered:
        weight, count = float(row[0]), int(round(float(row[1])))
        if weight == 0 and count == 0:
            continue  # an empty rank
        mean = row[2 : 2 + mean_size].to(dtype)
        scatter_part = row[2 + mean_size :].to(dtype)
        if isinstance(template_mean, torch.Tensor):
            mean = mean.reshape(template_mean.shape)
        else:
            mean = mean.reshape(())
        scatter: Any = scatter_part.reshape(()) if scatter_part.numel() == 1 else scatter_part
        if isinstance(moments.scatter, torch.Tensor) and moments.scatter.ndim > 0:
            scatter = scatter_part.reshape(moments.scatter.shape)
        merged.add_group(weight, mean, scatter, count=count)
    return merged


def split_indices(num_items: int, rank: int | None = None, world_size: int | None = None) -> range:
    """The items ``rank`` evaluates: every ``world_size``-th, from ``rank``.

    Strided (not blocks), so that in a landscape grid, where cost varies smoothly over the
    grid, each rank gets a similar share of cheap and expensive points.
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    return range(rank, num_items, world_size)


def split_map(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(x) for x in items]``, with the items split across ranks and gathered back.

    Every rank must call it with the same ``items`` (a collective). Each rank applies ``fn``
    to its share (:func:`split_indices`) and the results, any picklable objects, are
    gathered with one ``all_gather_object`` and returned in the original order on every
    rank. Without a process group it is a plain loop.

    ``fn`` must not itself run collectives (such as a sharded operator): different ranks
    evaluate different items, so their collectives would not match. Wrap it in
    :func:`~jupyter_curvature.core.distributed.local_only` if it builds operators.
    """
    world_size = get_world_size()
    if not is_initialized() or world_size == 1:
        return [fn(x) for x in items]
    mine: dict[int, Any] = {}
    error: str | None = None
    try:
        for i in split_indices(len(items)):
            mine[i] = fn(items[i])
    except Exception as err:  # tell the other ranks, which would otherwise wait in the gather
        error = f"{type(err).__name__}: {err}"
        failure = err
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, (mine, error))
    failed = [(r, e) for r, (_, e) in enumerate(gathered) if e is not None]
    if failed:
        if error is not None:
            raise failure
        raise RuntimeError("split_map: " + "; ".join(f"rank {r} failed: {e}" for r, e in failed))
    results: dict[int, R] = {}
    for part, _ in gathered:
        results.update(part)
    return [results[i] for i in range(len(items))]
