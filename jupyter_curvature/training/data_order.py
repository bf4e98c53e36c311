"""The seeded, resumable data order of the :class:`~jupyter_curvature.training.Trainer`.

The order of epoch ``e`` is a permutation drawn from a generator seeded by
:func:`epoch_seed` ``(seed, e)``, never from the global RNG, so any epoch's order can be
rebuilt at any step and a run resumed from a checkpoint reads exactly the batches the
uninterrupted run would have read (:meth:`DataOrder.epoch` with ``start``). Under
``DistributedDataParallel`` each global batch is split across the ranks
(:func:`~jupyter_curvature.training.ddp.step_split`), so the ranks together read the
batches of a single-process run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler, TensorDataset

from .ddp import step_split

__all__ = ["DataOrder", "as_eval_batches", "epoch_seed", "rank_batches", "to_device"]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s permutation (a fixed mix of ``seed`` and ``epoch``)."""
    return (seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xBF58476D1CE4E5B9) % (2**63 - 1)


class DataOrder:
    """Batches of a dataset in an order that depends only on ``(seed, epoch)``.

    With ``world_size > 1`` each global batch is split across the ranks
    (:func:`~jupyter_curvature.training.ddp.step_split`) and this rank reads only its part;
    a loader with its own distributed sampler (one with ``set_epoch``) is used as it is,
    with ``set_epoch(epoch)`` called at the start of every epoch.
    """

    def __init__(
        self,
        data: Dataset | DataLoader,
        *,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        num_workers: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.rank, self.world_size = rank, world_size
        self.opaque: DataLoader | None = None
        self.collate_fn = None
        self.pin_memory = False
        if isinstance(data, DataLoader):
            plain = isinstance(data.sampler, (RandomSampler, SequentialSampler)) and (
                data.batch_sampler is None or type(data.batch_sampler).__name__ == "BatchSampler"
            )
            if not plain or data.batch_size is None:
                self.opaque = data  # a custom sampler: used as is
            shuffle = isinstance(data.sampler, RandomSampler)
            batch_size = data.batch_size or batch_size
            drop_last = data.drop_last
            num_workers = data.num_workers
            self.collate_fn = data.collate_fn
            self.pin_memory = data.pin_memory
            data = data.dataset
        if not isinstance(data, Dataset) or not hasattr(data, "__len__"):
            raise TypeError(
                f"training data must be a Dataset with a length or a DataLoader, got "
                f"{type(data).__name__}"
            )
        self.dataset = data
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.num_workers, self.seed = num_workers, seed
        n = len(data)
        if n == 0:
            raise ValueError("the training data is empty")
        if self.opaque is not None:
            self.count = len(self.opaque)
        else:
            self.count = n // batch_size if drop_last else math.ceil(n / batch_size)
        if self.count == 0:
            raise ValueError(
                f"batch_size={batch_size} with drop_last leaves no batch ({n} samples)"
            )
        if world_size > 1 and self.opaque is not None:
            if not callable(getattr(self.opaque.sampler, "set_epoch", None)):
                raise ValueError(
                    "train_data is a DataLoader with a custom sampler that is not a distributed "
                    "sampler (no set_epoch): under DistributedDataParallel every rank would "
                    "train on the same samples; pass the Dataset (the trainer splits each "
                    "global batch across the ranks) or a loader with a DistributedSampler"
                )
        elif world_size > 1:
            last = n - (self.count - 1) * batch_size if not drop_last else batch_size
            smallest = min(batch_size, last)
            if smallest < world_size:
                raise ValueError(
                    f"batch_size={batch_size} on {n} samples leaves a batch of {smallest} "
                    f"samples for {world_size} ranks (a rank would get none): set "
                    "drop_last=True or a batch_size whose last batch holds at least one "
                    "sample per rank"
                )

    def order(self, epoch: int) -> list[torch.Tensor]:
        """The global batches of ``epoch`` as index tensors (a permutation drawn from
        :func:`epoch_seed` when shuffling, else ``0..n-1``, cut into batches)."""
        n = len(self.dataset)
        if self.shuffle:
            idx = torch.randperm(
                n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            )
        else:
            idx = torch.arange(n)
        chunks = list(idx.split(self.batch_size))
        return chunks[: self.count]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """This rank's batches of ``epoch`` from batch ``start`` on (resume inside an epoch)."""
        if self.opaque is not None:
            set_epoch = getattr(self.opaque.sampler, "set_epoch", None)
            if self.world_size > 1 and callable(set_epoch):
                set_epoch(epoch)
            it = iter(self.opaque)
            for _ in range(start):
                next(it, None)
            yield from it
            return
        batches = self.order(epoch)[start:]
        if self.world_size > 1:
            batches = [step_split(b, self.rank, self.world_size) for b in batches]
        ds = self.dataset
        if isinstance(ds, TensorDataset) and self.num_workers == 0:
            for idx in batches:  # fast path: no per-sample indexing and collation
                yield tuple(t[idx] for t in ds.tensors)
            return
        kwargs: dict[str, Any] = {}
        if self.collate_fn is not None:
            kwargs["collate_fn"] = self.collate_fn
        loader = DataLoader(
            ds,
            batch_sampler=[b.tolist() for b in batches],
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch) ^ start),
            **kwargs,
        )
        yield from loader


def as_eval_batches(data: Any, batch_size: int) -> Iterable[Any] | None:
    """Evaluation data (a Dataset, DataLoader, batches or one batch) as batches in order."""
    if data is None:
        return None
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        return [tuple(data)]
    if isinstance(data, TensorDataset):
        return [
            tuple(t[i : i + batch_size] for t in data.tensors)
            for i in range(0, len(data), batch_size)
        ]
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    return data


def rank_batches(batches: Iterable[Any], rank: int, world_size: int) -> Iterable[Any]:
    """Every ``world_size``-th batch from ``rank`` (a dataset's loader reads only those)."""
    if isinstance(batches, DataLoader) and batches.batch_size is not None:
        if isinstance(batches.sampler, SequentialSampler) and not batches.drop_last:
            n, b = len(batches.dataset), batches.batch_size
            mine = [list(range(i, min(i + b, n))) for i in range(rank * b, n, world_size * b)]
            return DataLoader(
                batches.dataset,
                batch_sampler=mine,
                num_workers=batches.num_workers,
                collate_fn=batches.collate_fn,
            )
    return (batch for i, batch in enumerate(batches) if i % world_size == rank)


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch (tensors in tuples, lists and dicts) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch
