"""Checks run when a distributed computation starts, so that a mistake fails loudly, not late.

* :func:`check_consistent_model`: every rank has the same parameters (names, shapes, dtypes):
  otherwise the reduced products would have different lengths (a crash or a hang inside the
  backend) or would silently add up different models.
* :func:`check_shards`: the ranks' sample counts add up to the dataset size. A user who gives
  every rank the whole dataset (counts add up to ``world_size x N``) or overlapping/short
  shards is told so, with each rank's count.
* :func:`check_backend_device`: NCCL cannot reduce CPU tensors; gloo cannot reduce MPS ones.
* :func:`verify_identical`: a result that must be the same on every rank (Lanczos run on
  the same reduced products from the same seed) is, bit for bit or within ``atol``.

Each check is one small collective; every rank must call it (they are collective calls).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..params import ParamSpec, select_parameters
from .context import get_rank, get_world_size, is_initialized
from .primitives import (  # the operators' start-up check uses them too
    DistributedMismatchError,
    check_backend_device,
    check_signatures,
    gather_objects,
)

__all__ = [
    "DistributedMismatchError",
    "check_backend_device",
    "check_consistent_model",
    "check_signatures",
    "check_shards",
    "count_samples",
    "verify_identical",
]


def _signature(model: nn.Module, params: ParamSpec) -> list[tuple[str, tuple[int, ...], str]]:
    return [(n, tuple(p.shape), str(p.dtype)) for n, p in select_parameters(model, params)]


def check_consistent_model(model: nn.Module, params: ParamSpec = None) -> int:
    """Raise unless every rank's chosen parameters have the same names, shapes and dtypes.

    Args:
        model: this rank's model.
        params: the parameter selection of the computation (as for the operators).

    Returns:
        The number of parameters (the same on every rank).

    Raises:
        DistributedMismatchError: naming each differing rank, its parameter count against
            rank 0's and the first differing parameters.
    """
    sig = _signature(model, params)
    check_signatures(gather_objects(sig))
    return sum(math.prod(shape) for _, shape, _ in sig)


def count_samples(data: Any) -> int:
    """Samples in ``data`` (a loader, a re-iterable of ``(inputs, targets)`` or one batch).

    ``len(loader.sampler)`` when the loader keeps every sample (no ``drop_last``), else one
    pass over the batches.
    """
    from torch.utils.data import DataLoader

    from ..batches import BatchSource

    if isinstance(data, DataLoader) and data.batch_size is not None and not data.drop_last:
        try:
            return len(data.sampler)  # type: ignore[arg-type]
        except TypeError:
            pass
    return sum(batch.size for batch in BatchSource(data))


def check_shards(count: int | Any, total: int | None = None) -> list[int]:
    """Raise unless the ranks' sample counts add up to ``total`` and no rank is empty.

    Shards that overlap (a sample on two ranks) or leave samples out cannot be seen without
    the indices, but they change the sum of the counts, which is what is checked: it must be
    exactly the dataset size.

    Args:
        count: this rank's number of samples, or its data (counted by :func:`count_samples`).
        total: the dataset size; ``None`` checks only that no rank is empty.

    Returns:
        Every rank's count, in rank order.

    Raises:
        DistributedMismatchError: the counts (listed per rank) do not add up, or a rank holds
            no sample.
    """
    local = (
        count if isinstance(count, int) and not isinstance(count, bool) else count_samples(count)
    )
    counts = [int(c) for c in gather_objects(int(local))]
    seen = sum(counts)
    per_rank = ", ".join(f"rank {r}: {c}" for r, c in enumerate(counts))
    if total is not None and seen != total:
        if len(counts) > 1 and all(c == total for c in counts):
            hint = (
                "every rank holds the whole dataset; give each rank its shard with "
                "jupyter_curvature.distributed.shard_loader(dataset, batch_size)"
            )
        elif seen > total:
            hint = (
                "the shards overlap (some samples are on more than one rank, as with "
                "DistributedSampler's padding); use shard_loader, which never pads"
            )
        else:
            hint = "the shards leave samples out (drop_last?); use shard_loader, which keeps all"
        raise DistributedMismatchError(
            f"the ranks hold {seen} samples in all ({per_rank}) but the dataset has {total}: {hint}"
        )
    empty = [r for r, c in enumerate(counts) if c == 0]
    if empty:
        raise DistributedMismatchError(
            f"rank(s) {empty} hold no sample ({per_rank}); use fewer processes than batches"
        )
    return counts


def verify_identical(
    tensors: torch.Tensor | Iterable[torch.Tensor], what: str = "the result", atol: float = 0.0
) -> float:
    """Raise unless ``tensors`` are the same on every rank (within ``atol``, absolute).

    Costs one all-reduce of the tensors' size (max and min of every entry).

    Returns:
        The largest difference between ranks (0 without a process group).

    Raises:
        DistributedMismatchError: naming the largest difference, when above ``atol``.
    """
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    flat = [t.detach().reshape(-1).to(torch.float64) for t in tensors]
    if not flat or not is_initialized() or get_world_size() == 1:
        return 0.0
    values = torch.cat(flat)
    device = values.device
    check_backend_device(device)
    # sizes first: an all-reduce of tensors of different lengths would fail inside the backend
    sizes = torch.tensor([values.numel(), -values.numel()], dtype=torch.float64, device=device)
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX)
    if sizes[0] != -sizes[1]:
        raise DistributedMismatchError(
            f"{what} has {int(-sizes[1])} to {int(sizes[0])} entries depending on the rank"
        )
    hi, lo = values.clone(), values.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    spread = float((hi - lo).abs().max()) if values.numel() else 0.0
    if not spread <= atol:  # NaN counts as a difference
        raise DistributedMismatchError(
            f"rank {get_rank()}: {what} differs across ranks by up to {spread:.3e} (allowed "
            f"{atol:.1e}); the ranks did not compute the same thing: check that every rank uses "
            "the same seed, model weights and settings, and deterministic kernels"
        )
    return spread
