"""Summing sample-weighted partial products across ``torch.distributed`` ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """A process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(total: torch.Tensor, count: int) -> tuple[torch.Tensor, int]:
    """Sum ``total`` (a rank's ``sum_b w_b P_b``) and its sample ``count`` over all ranks.

    Both travel in one all-reduce, so the result equals the single-process full-data
    product exactly, whatever the shard sizes (uneven shards included).
    """
    packed = torch.cat(
        [total.reshape(-1), torch.tensor([float(count)], dtype=total.dtype, device=total.device)]
    )
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return packed[:-1].reshape(total.shape), int(round(packed[-1].item()))
