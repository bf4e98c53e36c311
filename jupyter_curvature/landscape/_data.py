"""Batches for landscape evaluation: read once, moved to the model's device, reused.

``data`` follows the engine's convention (:mod:`jupyter_curvature.operators._batches`): a
``DataLoader``, any re-iterable of ``(inputs, targets)`` batches, one such batch, or another
layout explained by ``batch_layout``. A one-shot iterator is read once and kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ..operators._batches import Batch, BatchLayout
from ..operators._batches import BatchSource as _RawSource

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

    Iterating yields :class:`~jupyter_curvature.operators._batches.Batch` records (``args``,
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
            raise TypeError(f"{name}: {exc}") from None
        self._cache: list[Batch] | None = [] if cache is not False else None
        self.num_samples = 0
        self.num_batches = 0
        total = 0
        for batch in self._batches():
            self.num_samples += batch.size
            self.num_batches += 1
            if self._cache is not None:
                total += _nbytes(batch.args) + _nbytes(batch.targets)
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
            raise TypeError(f"{self.name}: {exc}") from None

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def __iter__(self) -> Iterator[Batch]:
        if self._cache is not None:
            return iter(self._cache)
        return self._batches()

    def first(self) -> Batch:
        return next(iter(self))
