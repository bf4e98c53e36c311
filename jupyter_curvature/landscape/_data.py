"""Batches for landscape evaluation: read once, moved to the model's device, reused.

``data`` follows the engine's convention (:mod:`jupyter_curvature.core.batches`): a
``DataLoader``, any re-iterable of ``(inputs, targets)`` batches, one such batch, or another
layout explained by ``batch_layout``. A one-shot iterator is read once and kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ..core.batches import Batch, BatchLayout
from ..core.batches import BatchSource as _RawSource

#: default cap on the bytes of one dataset kept in memory (on the model's device)
DEFAULT_CACHE_BYTES = 1 << 30


def _nbytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (tuple, list)):
        return sum(_nbytes(v) for v in x)
    if isinstance(x, dict):
        return sum(_nbytes(v) for v in x.values())
    return 0


class CachedBatches:
    """The batches of one dataset on ``device``, kept there if they fit in ``cache_bytes``.

    Iterating yields :class:`~jupyter_curvature.core.batches.Batch` records (``args``,
    ``targets``, ``size``) on ``device``, floating tensors in ``dtype``. Cached data is read
    once; larger data is streamed again at each pass (each pass still serves every point
    of a chunk).

    Raises:
        ValueError: the data yields no batches.
        TypeError: the data or a batch has a layout that is not understood.
    """

    def __init__(
        self,
        data: Any,
        device: torch.device,
        dtype: torch.dtype | None = None,
        *,
        name: str = "data",
        layout: BatchLayout | None = None,
        cache: bool | str = "auto",
        cache_bytes: int | None = DEFAULT_CACHE_BYTES,
    ) -> None:
        if data is None:
            raise TypeError(f"{name} is None; pass a DataLoader, an iterable of batches or a batch")
        if isinstance(data, Iterator):
            data, cache, cache_bytes = list(data), True, None  # one-shot: read it once, keep it
        self.name = name
        self.device = device
        self.dtype = dtype
        try:
            self._raw = _RawSource(data, layout)
        except TypeError as exc:
            raise TypeError(f"{name}: {str(exc).removeprefix('data: ')}") from None
        self._cache: list[Batch] | None = [] if cache is not False else None
        self.num_samples = 0
        self.num_batches = 0
        total = 0
        for batch in self._batches():
            self.num_samples += batch.size
            self.num_batches += 1
            if self._cache is not None:
                total += _nbytes((batch.args, batch.kwargs, batch.targets))
                if cache == "auto" and cache_bytes is not None and total > cache_bytes:
                    self._cache = None  # too large to keep: stream it at every pass
                else:
                    self._cache.append(batch)
        if self.num_batches == 0:
            raise ValueError(
                f"{name} yields no batches; check the DataLoader's dataset (and drop_last)"
            )

    def _batches(self) -> Iterator[Batch]:
        try:
            for batch in self._raw:
                yield batch.to(self.device, self.dtype)
        except TypeError as exc:
            raise TypeError(f"{self.name}: {str(exc).removeprefix('data: ')}") from None

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def __iter__(self) -> Iterator[Batch]:
        if self._cache is not None:
            return iter(self._cache)
        return self._batches()

    def first(self) -> Batch:
        return next(iter(self))


def subsample_data(
    data: Any, num_samples: int, *, seed: int = 0, layout: BatchLayout | None = None
) -> tuple[torch.Tensor, Any]:
    """A fixed, seeded subsample of ``data`` as one ``(inputs, targets)`` batch (on the CPU
    or wherever the data is).

    The samples are those at the positions ``sorted(torch.randperm(N, generator=
    torch.Generator().manual_seed(seed))[:num_samples])`` of the data read in order (``N``
    samples in all); all of them when ``num_samples >= N``. The data is read twice (count,
    then gather), so a loader that shuffles gives other samples at each call: keep the
    returned batch. For several sizes of the same data, :class:`NestedSubsamples` reads it
    once.

    Args:
        data: a DataLoader, a re-iterable of ``(inputs, targets)`` batches or one batch.
        num_samples: how many samples to keep (at least 1).
        seed: the seed of the choice.
        layout: ``layout(batch) -> (model_args, targets)`` for other batch layouts; the
            model must take one tensor argument.

    Raises:
        ValueError: ``num_samples < 1``, or data without samples.
        TypeError: batches that are not one input tensor and one target tensor.
    """
    return NestedSubsamples(data, num_samples, seed=seed, layout=layout).take(num_samples)


def _check_num_samples(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class NestedSubsamples:
    """Seeded subsamples of one dataset in any size up to ``max_samples``, from one read.

    The subsample of size ``s`` is :func:`subsample_data`'s (the positions
    ``sorted(randperm(N)[:s])``), so every smaller one is a subset of the largest: the data
    is counted once (or not at all when ``total`` is given) and the largest subsample
    gathered in one more pass; :meth:`take` then only indexes it. The landscape explorer
    tries several preview sizes of the same data this way.

    Args:
        data, seed, layout: as for :func:`subsample_data`.
        max_samples: the largest size :meth:`take` will be asked for.
        total: the number of samples in ``data`` when already known (it is checked while
            gathering).

    Raises:
        ValueError: ``max_samples < 1``, or data without samples.
        TypeError: batches that are not one input tensor and one target tensor.
    """

    def __init__(
        self,
        data: Any,
        max_samples: int,
        *,
        seed: int = 0,
        layout: BatchLayout | None = None,
        total: int | None = None,
    ) -> None:
        self.max_samples = _check_num_samples("num_samples", max_samples)
        source = _RawSource(data, layout)
        self.total = _count_samples(source) if total is None else int(total)
        if self.total == 0:
            raise ValueError("the data holds no samples")
        gen = torch.Generator().manual_seed(int(seed))
        self._order = torch.randperm(self.total, generator=gen)
        self._positions = self._order[: min(self.max_samples, self.total)].sort().values
        self._inputs, self._targets = _gather(source, self._positions, self.total)

    def take(self, num_samples: int) -> tuple[torch.Tensor, Any]:
        """The subsample of ``num_samples`` (all the data when it holds fewer)."""
        _check_num_samples("num_samples", num_samples)
        if num_samples > self.max_samples and self.max_samples < self.total:
            raise ValueError(
                f"num_samples={num_samples} is more than the {self.max_samples} gathered; "
                "build NestedSubsamples with a larger max_samples"
            )
        if num_samples >= min(self.max_samples, self.total):
            return self._inputs, self._targets
        wanted = self._order[:num_samples].sort().values
        rows = torch.searchsorted(self._positions, wanted)
        return self._inputs[rows.to(self._inputs.device)], self._targets[
            rows.to(self._targets.device)
        ]


def _one_tensor_batch(batch: Batch) -> Batch:
    if len(batch.args) != 1 or not isinstance(batch.args[0], torch.Tensor):
        raise TypeError(
            "a subsample needs batches of one input tensor and targets; this data has "
            f"{len(batch.args)} model argument(s) per batch"
        )
    if not isinstance(batch.targets, torch.Tensor):
        raise TypeError(f"a subsample needs target tensors, got {type(batch.targets).__name__}")
    return batch


def _count_samples(source: _RawSource) -> int:
    return sum(_one_tensor_batch(batch).size for batch in source)


def _gather(
    source: _RawSource, positions: torch.Tensor, total: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples at the sorted ``positions`` of the data read in order, in one pass."""
    xs, ys, start = [], [], 0
    for batch in source:
        _one_tensor_batch(batch)
        lo = int(torch.searchsorted(positions, start))
        hi = int(torch.searchsorted(positions, start + batch.size))
        if hi > lo:
            rows = positions[lo:hi] - start
            xs.append(batch.args[0][rows.to(batch.args[0].device)])
            ys.append(batch.targets[rows.to(batch.targets.device)])
        start += batch.size
    if start != total:
        raise ValueError(f"the data changed size between two passes ({total} then {start} samples)")
    return torch.cat(xs), torch.cat(ys)
