"""Shards that never overlap and never pad: every sample on exactly one rank.

PyTorch's :class:`~torch.utils.data.distributed.DistributedSampler` pads the index list to a
multiple of the world size by repeating samples (or drops the tail with ``drop_last``), so a
full-data curvature product over its shards counts some samples twice (or not at all).
:class:`ShardSampler` splits without padding, and by default along **batch boundaries**: the
``ceil(N / B)`` batches of the single-process loader (in the same order, with the same
seeded shuffle) are dealt out as contiguous runs, as evenly as possible. Every rank then
sees exactly batches of the single-process loader, so not only the full-data products (which
any partition gives exactly, :mod:`jupyter_curvature.core.distributed`) but also
everything that depends on the batching (mini-batch gradient and curvature variance,
BatchNorm with batch statistics) equals the single-process result.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from .context import get_rank, get_world_size


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    return value


def shard_bounds(num_samples: int, world_size: int, rank: int, align: int = 1) -> tuple[int, int]:
    """``[start, stop)`` of ``rank``'s contiguous block, cut at multiples of ``align``.

    The ``ceil(num_samples / align)`` blocks of ``align`` samples (the last may be shorter)
    are split into ``world_size`` runs whose lengths differ by at most one block; the first
    ``blocks % world_size`` ranks get the extra block.
    """
    blocks = -(-num_samples // align)
    base, extra = divmod(blocks, world_size)
    first = rank * base + min(rank, extra)
    last = first + base + (1 if rank < extra else 0)
    return min(first * align, num_samples), min(last * align, num_samples)


class ShardSampler(Sampler[int]):
    """This rank's indices of a dataset: disjoint across ranks, covering every sample once.

    Args:
        data_source: the dataset (or its length).
        batch_size: shards are cut at multiples of it (``1``: cut anywhere, sizes differ by at
            most one sample).
        rank, world_size: default: from the process group (0 and 1 without one).
        shuffle: deal out a seeded permutation (the same on every rank) instead of
            ``0 .. N - 1``.
        seed: the permutation's seed; :meth:`set_epoch` adds the epoch, as
            ``DistributedSampler`` does.

    Attributes:
        total: samples in the whole dataset (``sum`` of every rank's ``len``).
        start, stop: this rank's block in the (permuted) order.
    """

    def __init__(
        self,
        data_source: Sized | int,
        batch_size: int = 1,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        total = data_source if isinstance(data_source, int) else len(data_source)
        self.total = _check_int("len(dataset)", total, 0)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.world_size = _check_int(
            "world_size", get_world_size() if world_size is None else world_size, 1
        )
        self.rank = _check_int("rank", get_rank() if rank is None else rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be below world_size={self.world_size}, got {self.rank}")
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = 0
        self.start, self.stop = shard_bounds(
            self.total, self.world_size, self.rank, self.batch_size
        )

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (same permutation on every rank)."""
        self.epoch = int(epoch)

    def order(self) -> torch.Tensor:
        """All ``total`` indices in the order they are dealt out."""
        if not self.shuffle:
            return torch.arange(self.total)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.total, generator=generator)

    def indices(self) -> list[int]:
        """This rank's indices."""
        return self.order()[self.start : self.stop].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return self.stop - self.start


def shard_loader(
    dataset: Any,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    align: bool = True,
    **loader_kwargs: Any,
) -> DataLoader:
    """A DataLoader over this rank's shard of ``dataset`` (no padding, no overlap).

    With ``align`` (default) the shards are cut at multiples of ``batch_size``, so the
    batches of all ranks together are exactly the batches of
    ``DataLoader(dataset, batch_size)`` (with the same shuffle): products, spectra and
    mini-batch statistics over the shards equal the single-process ones. A rank may get
    one batch more than another (uneven shards are fine: products are weighted by sample
    counts). Without a process group it is a plain loader over the whole dataset.

    Args:
        dataset: a map-style dataset (with ``len``).
        batch_size: samples per batch.
        shuffle, seed: a seeded permutation shared by all ranks (call
            ``loader.sampler.set_epoch(e)`` each epoch when training).
        rank, world_size: default: from the process group.
        align: cut shards at batch boundaries (``False``: sizes differ by at most one).
        **loader_kwargs: passed to :class:`~torch.utils.data.DataLoader` (``num_workers``,
            ``pin_memory``, ...); ``sampler``, ``shuffle`` and ``drop_last`` are not allowed
            (they would duplicate or drop samples).

    Raises:
        ValueError: ``world_size`` above the number of batches (a rank would get nothing),
            or a forbidden loader option.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> import torch
        >>> ds = TensorDataset(torch.arange(70.0), torch.arange(70))
        >>> [len(shard_loader(ds, 16, rank=r, world_size=2).sampler) for r in (0, 1)]
        [48, 22]
    """
    for key in ("sampler", "batch_sampler", "shuffle", "drop_last"):
        if key in loader_kwargs:
            raise ValueError(
                f"shard_loader does not take {key}=: it would duplicate or drop samples "
                "across ranks; use shuffle=/seed= of shard_loader itself"
            )
    batch_size = _check_int("batch_size", batch_size, 1)
    sampler = ShardSampler(
        dataset,
        batch_size if align else 1,
        rank=rank,
        world_size=world_size,
        shuffle=shuffle,
        seed=seed,
    )
    blocks = -(-sampler.total // sampler.batch_size)
    if blocks < sampler.world_size:
        raise ValueError(
            f"the dataset's {sampler.total} samples make {blocks} "
            f"{'batches' if align else 'samples'} for {sampler.world_size} ranks: some rank "
            "would get no data; use fewer processes"
            + (", a smaller batch_size or align=False" if align else "")
        )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **loader_kwargs)
