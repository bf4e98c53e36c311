"""Summing sample-weighted partial products across ``torch.distributed`` ranks.

Each rank holds a shard of the data and computes ``sum_b B_b P_b`` over its batches and its
sample count ``N_r``; one all-reduce of ``[sum_b B_b P_b, N_r]`` gives every rank the
full-data sum and ``N = sum_r N_r``, so the reduced product equals the single-process
full-data product exactly, whatever the shard sizes. The user-facing helpers (sharded
loaders, checks, launching) are in :mod:`jupyter_curvature.distributed`.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

_local = threading.local()


def is_distributed() -> bool:
    """A process group with more than one rank is initialised (and not inside :func:`local_only`)."""
    if getattr(_local, "depth", 0) > 0:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Operators built with ``distributed=None`` reduce nothing inside this block.

    For code that multiplies by per-rank (per-batch) operators and merges the results
    itself, such as mini-batch statistics: without it every per-batch product would be an
    all-reduce, wrong (it sums other ranks' batches) and a hang when ranks hold different
    numbers of batches.
    """
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


def backend_for(device: torch.device, group: dist.ProcessGroup | None = None) -> str:
    """The backend that reduces tensors of ``device`` (``"cpu:gloo,cuda:nccl"`` resolved)."""
    backend = str(dist.get_backend(group))
    if ":" not in backend:
        return backend
    # a mixed backend string "cpu:gloo,cuda:nccl" maps device types to backends
    mapping = dict(part.split(":", 1) for part in backend.split(","))
    return mapping.get(device.type, backend)


def check_backend_device(device: torch.device, group: dist.ProcessGroup | None = None) -> None:
    """Raise ValueError when the process group's backend cannot reduce tensors on ``device``.

    NCCL reduces CUDA tensors only; gloo reduces CPU tensors (CUDA ones only in CUDA builds,
    through host copies); neither reduces MPS tensors.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return  # nothing will be reduced
    backend = backend_for(device, group)
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(
            f"the process group uses the NCCL backend, which reduces CUDA tensors only, but the "
            f"curvature products are on {device}; move the model to this rank's GPU "
            "(model.to(f'cuda:{local_rank}')) or initialise the group with backend='gloo'"
        )
    if backend == "gloo" and device.type not in ("cpu", "cuda"):
        raise ValueError(
            f"the gloo backend cannot reduce tensors on {device}; move the model to the CPU "
            "(or to CUDA with backend='nccl')"
        )
    if backend == "gloo" and device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("the products are on CUDA but this process sees no GPU")


def all_reduce_sum(total: torch.Tensor, count: int | float) -> tuple[torch.Tensor, int | float]:
    """Sum ``total`` (a rank's ``sum_b w_b P_b``) and its ``count`` (``sum_b w_b``) over all ranks.

    Both travel in one all-reduce, so the result equals the single-process full-data
    product exactly, whatever the shard sizes (uneven shards included). The sample count
    travels in the product's dtype: exact for counts below ``2**53`` in float64 and
    ``2**24`` in float32.

    Raises:
        ValueError: the backend cannot reduce tensors on ``total``'s device.
        RuntimeError: the all-reduce failed (a rank died, or ranks disagree on the size of
            the product: their models differ; see
            :func:`jupyter_curvature.distributed.check_consistent_model`).
    """
    check_backend_device(total.device)
    packed = torch.cat(
        [total.reshape(-1), torch.tensor([float(count)], dtype=total.dtype, device=total.device)]
    )
    try:
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    except RuntimeError as err:
        raise RuntimeError(
            f"rank {dist.get_rank()}: the all-reduce of a curvature product of {packed.numel() - 1} "
            f"entries ({packed.dtype}, {packed.device}) failed: {err}. Another rank failed or "
            "timed out, or the ranks' models differ (check with "
            "jupyter_curvature.distributed.check_consistent_model(model))"
        ) from err
    summed = packed[-1].item()  # a count stays an int; summed class weights stay a float
    return packed[:-1].reshape(total.shape), int(round(summed)) if isinstance(
        count, int
    ) else summed


class DistributedMismatchError(ValueError):
    """Ranks disagree on something that must be the same everywhere (model, data, result)."""


def gather_objects(obj: Any) -> list[Any]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _describe_difference(
    ref: list[tuple[str, tuple[int, ...], str]], other: list[tuple[str, tuple[int, ...], str]]
) -> str:
    ref_d = {n: (s, d) for n, s, d in ref}
    oth_d = {n: (s, d) for n, s, d in other}
    parts = []
    missing = [n for n in ref_d if n not in oth_d]
    extra = [n for n in oth_d if n not in ref_d]
    if missing:
        parts.append(f"lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if extra:
        parts.append(f"has extra {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    for n in ref_d:
        if n in oth_d and oth_d[n] != ref_d[n]:
            (s0, d0), (s1, d1) = ref_d[n], oth_d[n]
            parts.append(f"{n}: shape {list(s1)} {d1} vs {list(s0)} {d0}")
            if len(parts) >= 6:
                break
    if not parts and [n for n, _, _ in ref] != [n for n, _, _ in other]:
        parts.append("the same parameters in a different order")
    return "; ".join(parts)


def check_signatures(signatures: list[list[tuple[str, tuple[int, ...], str]]]) -> None:
    """Raise :class:`DistributedMismatchError` unless every rank's ``(name, shape, dtype)`` list matches rank 0's."""
    ref = signatures[0]
    count = lambda s: sum(math.prod(shape) for _, shape, _ in s)  # noqa: E731
    problems = [
        f"rank {r} has {count(s)} parameters in {len(s)} tensors (rank 0: {count(ref)} in "
        f"{len(ref)}): {_describe_difference(ref, s)}"
        for r, s in enumerate(signatures)
        if s != ref
    ]
    if problems:
        raise DistributedMismatchError(
            "the ranks' models differ, so their curvature products cannot be summed: "
            + " | ".join(problems)
            + ". Build the same architecture on every rank (same constructor arguments and "
            "params=) and load the same weights"
        )


def check_start(names: list[str], params: list[torch.Tensor], device: torch.device) -> None:
    """Start-up checks of a sharded operator (a collective: every rank calls it once).

    The backend can reduce tensors on ``device``, and every rank chose parameters with the
    same names, shapes and dtypes (differences named, see
    :func:`jupyter_curvature.distributed.check_signatures`); without this a model mismatch
    shows up as an all-reduce of different lengths (an obscure backend error or a hang).
    """
    if not is_distributed():
        return
    check_backend_device(device)
    check_signatures(
        gather_objects([(n, tuple(p.shape), str(p.dtype)) for n, p in zip(names, params)])
    )
