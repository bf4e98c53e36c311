"""The trainer: epochs or steps, schedules, evaluation, history, atomic checkpoints, exact
resume, callbacks with live curvature, and clean interruption.

**Exact resume.** The data order of epoch ``e`` is a permutation drawn from a generator
seeded by ``(seed, e)``, not from the global RNG, so it can be rebuilt at any step; the
global RNG states (torch CPU/CUDA, numpy, Python: dropout and augmentation draw from
them), the optimiser, scheduler and K-FAC states, the position inside the epoch and the
running epoch sums all go into the checkpoint. On CPU, stopping after any step and
resuming from the checkpoint then gives bitwise the same weights as an uninterrupted run
(with ``num_workers=0``; with worker processes, resume at epoch boundaries is exact and
mid-epoch resume reproduces the data order but not random augmentations).

**Interruption.** A step is atomic: a ``KeyboardInterrupt`` (Ctrl-C, the notebook's
Interrupt button) that arrives during the forward or backward pass undoes the step's side
effects (BatchNorm running statistics, RNG draws, K-FAC statistics) and training stops at
the last finished step; one that arrives during the update is held back until the update
is complete (a SIGINT handler is installed while ``fit`` runs in the main thread). Either
way the model, the optimiser, the step counter and the history agree, ``interrupted`` is
true, a checkpoint is written if a folder is set, and ``fit`` returns normally.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler, TensorDataset

from ..core.files import atomic_write_text
from . import ddp as _ddp
from .callbacks import CurvatureCallback, ProgressBar, as_callbacks, describe_event
from .checkpoint import (
    FORMAT,
    VERSION,
    atomic_save,
    check_state_fits,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from .ddp import step_split

LAST = "checkpoint-last.pt"


# --- history --------------------------------------------------------------------------------


@dataclass
class History:
    """What a training run recorded.

    Attributes:
        steps: per optimisation step, columns ``step`` (1-based), ``epoch``, ``loss``,
            ``accuracy`` (NaN when the outputs are not class scores) and ``lr``.
        epochs: one record per finished epoch: ``epoch``, ``step``, ``train_loss``,
            ``train_accuracy`` (running averages over the epoch), ``test_loss``,
            ``test_accuracy`` (when evaluated), ``lr``, ``seconds``.
        curvature: one record per spectrum (see :class:`CurvatureCallback`).
        events: SWATS switches, checkpoints, stops (``{"event": ..., "step": ...}``).
    """

    steps: dict[str, list] = field(
        default_factory=lambda: {k: [] for k in ("step", "epoch", "loss", "accuracy", "lr")}
    )
    epochs: list[dict[str, Any]] = field(default_factory=list)
    curvature: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def metric(self, name: str) -> list[float]:
        """One column: a step column (``"loss"``, ...) or an epoch key (``"test_accuracy"``)."""
        if name in self.steps:
            return list(self.steps[name])
        if any(name in e for e in self.epochs):
            return [e.get(name) for e in self.epochs]
        raise KeyError(f"no metric {name!r}; steps: {list(self.steps)}, epochs: "
                       f"{list(self.epochs[0]) if self.epochs else []}")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and dicts (JSON-ready, and loadable with ``weights_only``)."""
        return {
            "steps": {k: list(v) for k, v in self.steps.items()},
            "epochs": [dict(e) for e in self.epochs],
            "curvature": [dict(c) for c in self.curvature],
            "events": [dict(e) for e in self.events],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        h = cls()
        h.steps = {k: list(v) for k, v in d.get("steps", {}).items()} or h.steps
        h.epochs = [dict(e) for e in d.get("epochs", [])]
        h.curvature = [dict(c) for c in d.get("curvature", [])]
        h.events = [dict(e) for e in d.get("events", [])]
        return h

    def save(self, path: str | Path) -> Path:
        """Write JSON (NaN written as ``NaN``, as Python's json does)."""
        return atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> History:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def __len__(self) -> int:
        return len(self.steps["step"])

    def __repr__(self) -> str:
        lines = [f"History: {len(self)} steps, {len(self.epochs)} epochs, "
                 f"{len(self.curvature)} spectra, {len(self.events)} events"]  # fmt: skip
        if self.epochs:
            lines.append(f"{'epoch':>6} {'step':>7} {'train_loss':>11} {'train_acc':>10} "
                         f"{'test_loss':>10} {'test_acc':>9} {'lr':>10}")  # fmt: skip
            for e in self.epochs[-10:]:
                lines.append(
                    f"{e['epoch']:>6} {e['step']:>7} {_fmt(e.get('train_loss'), 11)} "
                    f"{_fmt(e.get('train_accuracy'), 10)} {_fmt(e.get('test_loss'), 10)} "
                    f"{_fmt(e.get('test_accuracy'), 9)} {_fmt(e.get('lr'), 10)}"
                )
        return "\n".join(lines)


def _fmt(v: Any, width: int) -> str:
    return f"{v:>{width}.4g}" if isinstance(v, (int, float)) else f"{'-':>{width}}"


# --- data ---------------------------------------------------------------------------------


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xBF58476D1CE4E5B9) % (2**63 - 1)


class _Batches:
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
        n = len(self.dataset)
        if self.shuffle:
            idx = torch.randperm(
                n, generator=torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            )
        else:
            idx = torch.arange(n)
        chunks = list(idx.split(self.batch_size))
        return chunks[: self.count]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Any]:
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
            generator=torch.Generator().manual_seed(_epoch_seed(self.seed, epoch) ^ start),
            **kwargs,
        )
        yield from loader


def _as_eval_batches(data: Any, batch_size: int) -> Iterable[Any] | None:
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


def _rank_batches(batches: Iterable[Any], rank: int, world_size: int) -> Iterable[Any]:
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


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _accuracy_counts(outputs: Any, targets: Any) -> tuple[int, int] | None:
    if (
        isinstance(outputs, torch.Tensor)
        and isinstance(targets, torch.Tensor)
        and outputs.ndim == 2
        and targets.ndim == 1
        and not targets.is_floating_point()
        and outputs.shape[0] == targets.shape[0]
    ):
        return int((outputs.argmax(1) == targets).sum()), int(targets.shape[0])
    return None


# --- the trainer ----------------------------------------------------------------------------

StepFn = Callable[[nn.Module, Any, Any], Any]


class Trainer:
    """Train ``model`` with ``optimizer`` on ``train_data``.

    >>> import torch
    >>> from jupyter_curvature.models import create
    >>> from jupyter_curvature.data import get_dataset
    >>> model = create("small_cnn")
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> trainer = Trainer(model, opt, get_dataset("digits"), get_dataset("digits", split="test"),
    ...                   epochs=2, schedule="linear")
    >>> history = trainer.fit()
    >>> len(history.epochs), trainer.step
    (2, 24)

    Args:
        model: the network (trained in place).
        optimizer: any ``torch.optim.Optimizer``; :class:`~jupyter_curvature.optim.KFAC`
            gets its sampled-Fisher pass automatically.
        train_data: a ``Dataset`` (preferred: exact resume) or a ``DataLoader`` (its
            dataset, batch size, shuffling and workers are used; a custom sampler is used
            as it is, without the exact-resume guarantee).
        test_data: evaluated after every ``eval_every`` epochs (a Dataset, DataLoader,
            batches or one batch); ``None`` for none.
        loss_fn: the criterion (default ``nn.CrossEntropyLoss()``).
        epochs, steps: the plan: so many epochs, or so many optimisation steps (exactly
            one of them; default 1 epoch).
        batch_size: for a Dataset (128).
        shuffle: reshuffle every epoch (seeded by ``seed`` and the epoch).
        schedule: ``None``/``"constant"``, ``"linear"`` (the original's: constant to 50%,
            linear to 1% at 90%), a ``torch.optim.lr_scheduler`` object, or a function
            ``optimizer -> scheduler``.
        schedule_interval: ``"epoch"`` or ``"step"``: when the scheduler steps (default
            ``"epoch"`` when training by epochs, else ``"step"``). ``ReduceLROnPlateau``
            steps on the test (else train) loss each epoch.
        preconditioner: a :class:`~jupyter_curvature.optim.KFACPreconditioner` run before
            each ``optimizer.step()``.
        callbacks: objects with the hooks of :class:`~jupyter_curvature.training.Callback`.
        checkpoint_dir: folder for ``checkpoint-last.pt`` (after every epoch, on stop and on
            interruption) and ``checkpoint-%05d.pt`` (every ``checkpoint_every`` epochs).
        checkpoint_every: epochs between kept epoch checkpoints (``None``: only the last).
        checkpoint_steps: also refresh ``checkpoint-last.pt`` every so many steps.
        eval_every: epochs between evaluations (1).
        step_fn: a custom step ``step_fn(model, inputs, targets)`` returning the loss, or
            ``(loss, outputs)``: K-FAC's Fisher pass and the accuracy need the outputs.
        seed: seeds the data order.
        device: move the model there first (default: where its parameters are).
        num_workers, drop_last: DataLoader settings for a Dataset.
        stop_on_nonfinite: a NaN/inf loss raises ``FloatingPointError`` (the model is left
            at the last finished step) instead of training on.
        model_name: a registry name stored in checkpoints (for the CLI and messages).
        distributed: ``None`` (default): train under ``DistributedDataParallel`` when a
            process group with more than one rank is initialised or ``model`` is a DDP
            module; ``True``: require it; ``False``: train this rank's model alone.
        ddp_kwargs: more ``DistributedDataParallel`` settings (``find_unused_parameters``,
            ``broadcast_buffers``, ...) when the trainer wraps the model.

    **Under DistributedDataParallel** (``torchrun``; see ``docs/training.md``) every rank
    builds the same ``Trainer``; ``model`` is wrapped in DDP (or a DDP module is accepted
    and ``trainer.model`` is its ``.module``), ``batch_size`` is the *global* batch and
    each rank computes on its contiguous part of every global batch (sizes within one
    sample), reading only those samples. Each rank's loss is weighted by its share of the
    global batch, so the gradient DDP averages is exactly the gradient of the global
    batch's mean loss, uneven parts included: **the weights equal those of a
    single-process run on the same global batches** (up to rounding; models whose forward
    pass couples samples, such as BatchNorm with batch statistics, need ``SyncBatchNorm``
    for that). The step and epoch metrics and the evaluation are summed over the ranks, so
    the history is the same on every rank; rank 0's BatchNorm buffers are copied to all
    ranks after each step; only rank 0 writes checkpoints (every rank's RNG state goes
    into them); a resumed run (any rank count; bitwise with the same one) continues from
    rank 0's file. Ranks with different models or settings, a failure in one rank's
    forward pass, ``stop()`` or Ctrl-C on one rank: every rank stops at the same step, with
    an error naming the cause. K-FAC is not supported under DDP (per-rank factors would
    make the ranks' weights drift apart).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_data: Dataset | DataLoader,
        test_data: Any = None,
        *,
        loss_fn: Callable | None = None,
        epochs: int | None = None,
        steps: int | None = None,
        batch_size: int = 128,
        shuffle: bool = True,
        schedule: Any = None,
        schedule_interval: str | None = None,
        preconditioner: Any = None,
        callbacks: Sequence[Any] = (),
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
        checkpoint_steps: int | None = None,
        eval_every: int = 1,
        step_fn: StepFn | None = None,
        seed: int = 0,
        device: str | torch.device | None = None,
        num_workers: int = 0,
        drop_last: bool = False,
        stop_on_nonfinite: bool = True,
        model_name: str | None = None,
        distributed: bool | None = None,
        ddp_kwargs: dict[str, Any] | None = None,
    ) -> None:
        ddp_model = model if isinstance(model, DDP) else None
        if ddp_model is not None:
            model = ddp_model.module
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if epochs is not None and steps is not None:
            raise ValueError("give epochs or steps, not both")
        for name, value in (("epochs", epochs), ("steps", steps), ("checkpoint_every", checkpoint_every),
                            ("checkpoint_steps", checkpoint_steps)):  # fmt: skip
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, value in (("batch_size", batch_size), ("eval_every", eval_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for group in optimizer.param_groups:
            lr = group.get("lr")
            if (
                isinstance(lr, (int, float))
                and not lr > 0
                and not isinstance(schedule, torch.optim.lr_scheduler.LRScheduler)
            ):
                raise ValueError(f"the optimiser's learning rate must be positive, got {lr!r}")
        use_ddp = self._wants_ddp(distributed, ddp_model, ddp_kwargs)
        #: this process's rank and the number of ranks training together (0 and 1 alone)
        self.rank = _ddp.get_rank() if use_ddp else 0
        self.world_size = _ddp.get_world_size() if use_ddp else 1
        if device is not None:
            if ddp_model is not None and torch.device(device) != _device_of(model):
                raise ValueError(
                    f"device={device} but the DistributedDataParallel model is on "
                    f"{_device_of(model)}; move the model before wrapping it, or omit device="
                )
            model.to(device)
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
        self.preconditioner = preconditioner
        self.step_fn = step_fn
        self.seed = int(seed)
        self.stop_on_nonfinite = stop_on_nonfinite
        self.model_name = model_name
        self._batches = _Batches(
            train_data, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
            num_workers=num_workers, seed=self.seed, rank=self.rank, world_size=self.world_size,
        )  # fmt: skip
        self.train_dataset = self._batches.dataset
        self.test_data = test_data
        self._eval_batches = _as_eval_batches(test_data, batch_size)
        self.steps_per_epoch = self._batches.count
        self.epochs = epochs if epochs is not None else (None if steps is not None else 1)
        self.total_steps = steps if steps is not None else self.epochs * self.steps_per_epoch
        self.eval_every = eval_every
        self.schedule_interval = schedule_interval or (
            "epoch" if self.epochs is not None else "step"
        )
        if self.schedule_interval not in ("epoch", "step"):
            raise ValueError(
                f"schedule_interval must be 'epoch' or 'step', got {schedule_interval!r}"
            )
        self.scheduler = self._make_scheduler(schedule)
        self.callbacks = as_callbacks(callbacks)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every = checkpoint_every
        self.checkpoint_steps = checkpoint_steps
        self.ddp: DDP | None = None
        if use_ddp:
            self._setup_ddp(ddp_model, ddp_kwargs, batch_size, shuffle, drop_last)
        self.history = History()
        # progress
        self.step = 0
        self.epoch = 0  # the epoch in progress (0-based); == epochs done at a boundary
        self.batch_in_epoch = 0
        self._sums = {"loss": 0.0, "correct": 0, "counted": 0, "samples": 0, "seconds": 0.0}
        self.train_seconds = 0.0  # wall time inside training steps (callbacks excluded)
        self.interrupted = False
        self.status = "new"
        self.last_checkpoint: Path | None = None
        self._stop = threading.Event()
        self._critical = False
        self._pending_interrupt = False

    # --- set-up helpers --------------------------------------------------------------
    def _wants_ddp(
        self, distributed: bool | None, ddp_model: DDP | None, ddp_kwargs: dict[str, Any] | None
    ) -> bool:
        if distributed not in (None, True, False):
            raise TypeError(f"distributed must be None, True or False, got {distributed!r}")
        if ddp_kwargs is not None and not isinstance(ddp_kwargs, dict):
            raise TypeError(f"ddp_kwargs must be a dict, got {type(ddp_kwargs).__name__}")
        if distributed is False:
            if ddp_model is not None:
                raise ValueError(
                    "distributed=False but model is a DistributedDataParallel module; pass "
                    "model.module to train this rank's copy alone"
                )
            return False
        group = _ddp.is_initialized()
        if distributed is True and not group:
            raise ValueError(
                "distributed=True needs a torch.distributed process group: launch with "
                "torchrun and call jupyter_curvature.distributed.init_distributed() first"
            )
        return ddp_model is not None or (group and (distributed or _ddp.active()))

    def _setup_ddp(
        self,
        ddp_model: DDP | None,
        ddp_kwargs: dict[str, Any] | None,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
    ) -> None:
        """Checks (every rank raises the same error), then the DDP wrapper."""
        from ..core.distributed.primitives import check_backend_device

        device = self.device
        check_backend_device(device)
        for obj in (self.optimizer, self.preconditioner):
            if obj is not None and callable(getattr(obj, "wants_fisher", None)):
                raise ValueError(
                    f"{type(obj).__name__} (K-FAC) is not supported under "
                    "DistributedDataParallel: each rank's factors would come from its own "
                    "samples and the ranks' weights would drift apart; train K-FAC in one "
                    "process (distributed=False) or use SGD, Adam or SWATS"
                )
        if self.preconditioner is not None:
            raise ValueError(
                "preconditioner= is not supported under DistributedDataParallel; pass "
                "distributed=False to train each rank alone"
            )
        curvature = [
            (
                cb.every,
                cb.curvature,
                cb.num_iters,
                cb.num_probes,
                cb.subsample,
                cb.seed,
                cb.max_overhead,
                cb.at_start,
                cb.at_end,
            )  # fmt: skip
            for cb in self.callbacks
            if isinstance(cb, CurvatureCallback)
        ]
        _ddp.check_same_settings(
            self.model,
            {
                "len(train_data)": len(self.train_dataset),
                "batch_size": batch_size if self._batches.opaque is None else None,
                "shuffle": shuffle if self._batches.opaque is None else None,
                "drop_last": drop_last if self._batches.opaque is None else None,
                "seed": self.seed,
                "steps per epoch": self.steps_per_epoch,
                "epochs": self.epochs,
                "total steps": self.total_steps,
                "test data": self._eval_batches is not None,
                "eval_every": self.eval_every,
                "checkpoint_dir": self.checkpoint_dir is not None,
                "checkpoint_every": self.checkpoint_every,
                "checkpoint_steps": self.checkpoint_steps,
                "optimizer": type(self.optimizer).__name__,
                "curvature callbacks": curvature,
            },
        )
        if ddp_model is None:
            ids = [device.index] if device.type == "cuda" else None
            ddp_model = DDP(self.model, device_ids=ids, **(ddp_kwargs or {}))
        self.ddp = ddp_model

    @property
    def distributed(self) -> bool:
        """Training runs under DistributedDataParallel (every rank must call ``fit`` and
        the other collective methods: ``evaluate``, ``state_dict``, checkpoints)."""
        return self.ddp is not None

    @property
    def _train_module(self) -> nn.Module:
        return self.ddp if self.ddp is not None else self.model

    def _make_scheduler(self, schedule: Any) -> Any:
        from ..optim.schedules import ConstantSchedule, LinearSchedule

        if schedule is None:
            return None
        if isinstance(schedule, str):
            if schedule == "constant":
                return torch.optim.lr_scheduler.LambdaLR(self.optimizer, ConstantSchedule())
            if schedule == "linear":
                total = self.epochs if self.schedule_interval == "epoch" else self.total_steps
                if total is None:
                    total = math.ceil(self.total_steps / self.steps_per_epoch)
                return torch.optim.lr_scheduler.LambdaLR(self.optimizer, LinearSchedule(total))
            raise ValueError(
                f"schedule must be 'linear', 'constant', a scheduler or a function, got {schedule!r}"
            )
        if hasattr(schedule, "step") and hasattr(schedule, "state_dict"):
            return schedule
        if callable(schedule):
            return schedule(self.optimizer)
        raise TypeError(
            f"schedule must be a name, a scheduler or a function, got {type(schedule).__name__}"
        )

    @property
    def device(self) -> torch.device:
        return _device_of(self.model)

    @property
    def lr(self) -> float:
        """The step size of the first parameter group (SWATS after its switch: its SGD rate)."""
        g = self.optimizer.param_groups[0]
        if g.get("phase") == "sgd" and g.get("sgd_lr") is not None:
            return float(g["sgd_lr"]) * (
                g["lr"] / g["lr_at_switch"] if g.get("lr_at_switch") else 1.0
            )
        return float(g["lr"])

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def stop(self) -> None:
        """Ask training to end after the current step (thread-safe; for buttons and hooks)."""
        self._stop.set()

    @contextlib.contextmanager
    def quiet(self):
        """Run side computations (curvature, statistics) without touching the training:
        K-FAC statistics paused; RNG states, BatchNorm buffers and train/eval flags restored."""
        stack = contextlib.ExitStack()
        with stack:
            for obj in (self.optimizer, self.preconditioner):
                paused = getattr(obj, "paused", None)
                if callable(paused):
                    stack.enter_context(paused())
            devices = [self.device] if self.device.type == "cuda" else []
            stack.enter_context(torch.random.fork_rng(devices=devices))
            saved_rng = rng_state()
            buffers = [b.detach().clone() for b in self.model.buffers()]
            modes = [m.training for m in self.model.modules()]
            try:
                yield
            finally:
                with torch.no_grad():
                    for b, saved in zip(self.model.buffers(), buffers):
                        b.copy_(saved)
                for m, mode in zip(self.model.modules(), modes):
                    m.training = mode
                set_rng_state(saved_rng)

    # --- events and records -----------------------------------------------------------
    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, *args)

    def record_event(self, event: dict[str, Any]) -> None:
        """Add an event to the history and tell the callbacks."""
        event = {"step": self.step, **event}
        self.history.events.append(event)
        self._emit("on_event", event)

    def record_curvature(self, record: dict[str, Any]) -> None:
        """Add a curvature record to the history and tell the callbacks (``on_curvature``)."""
        self.history.curvature.append(record)
        self._emit("on_curvature", record)

    # --- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, data: Any = None) -> dict[str, float]:
        """Mean loss and accuracy over ``data`` (default the test data), in eval mode.

        Under DDP a collective: every rank evaluates every ``world_size``-th batch and the
        sums are reduced, so every rank returns the figures of the whole ``data``.
        """
        batches = self._eval_batches if data is None else _as_eval_batches(data, 256)
        if batches is None:
            raise ValueError("no test data to evaluate: pass test_data= or data=")
        if self.distributed:
            batches = _rank_batches(batches, self.rank, self.world_size)
        modes = [m.training for m in self.model.modules()]
        self.model.eval()
        total, correct, counted, n = 0.0, 0, 0, 0
        try:
            with contextlib.ExitStack() as stack:
                for obj in (self.optimizer, self.preconditioner):
                    if callable(getattr(obj, "paused", None)):
                        stack.enter_context(obj.paused())
                for batch in batches:
                    x, y = _to(batch, self.device)
                    out = self.model(x)
                    b = y.shape[0]
                    total += float(self.loss_fn(out, y)) * b
                    n += b
                    acc = _accuracy_counts(out, y)
                    if acc is not None:
                        correct += acc[0]
                        counted += acc[1]
        finally:
            for m, mode in zip(self.model.modules(), modes):
                m.training = mode
        if self.distributed:
            total, n, correct, counted, _ = _ddp.reduce_step(
                total, n, correct, counted, False, self.device
            )
        if n == 0:
            raise ValueError("the evaluation data holds no samples")
        return {"loss": total / n, "accuracy": correct / counted if counted else float("nan")}

    # --- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (tensors, numbers, strings and containers).

        Under DDP a collective (every rank's RNG state is gathered into ``rng_ranks``).
        """
        devices = [self.device] if self.device.type == "cuda" else []
        return {
            "format": FORMAT,
            "version": VERSION,
            "model_class": type(self.model).__name__,
            "model_name": self.model_name,
            "model": self.model.state_dict(),
            "optimizer_class": type(self.optimizer).__name__,
            "optimizer": self.optimizer.state_dict(),
            "preconditioner": self.preconditioner.state_dict()
            if self.preconditioner is not None
            else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "trainer": {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "seed": self.seed,
                "total_steps": self.total_steps,
                "sums": dict(self._sums),
                "train_seconds": self.train_seconds,
            },
            "rng": rng_state(devices),
            "history": self.history.to_dict(),
            **self._ranks_state(devices),
        }

    def _ranks_state(self, devices: list[torch.device]) -> dict[str, Any]:
        if not self.distributed:
            return {}
        from ..core.distributed.primitives import gather_objects

        return {"world_size": self.world_size, "rng_ranks": gather_objects(rng_state(devices))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (checks the model's keys and shapes first)."""
        if state.get("format") != FORMAT:
            raise ValueError("not a jupyter_curvature training checkpoint (no 'format' entry)")
        check_state_fits(
            self.model, state["model"], state.get("model_name") or state.get("model_class", "")
        )
        saved_opt = state.get("optimizer_class")
        if saved_opt and saved_opt != type(self.optimizer).__name__:
            raise ValueError(
                f"the checkpoint was trained with {saved_opt}, this trainer has "
                f"{type(self.optimizer).__name__}; resume with the same optimiser"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.preconditioner is not None and state.get("preconditioner") is not None:
            self.preconditioner.load_state_dict(state["preconditioner"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        t = state["trainer"]
        self.step, self.epoch, self.batch_in_epoch = t["step"], t["epoch"], t["batch_in_epoch"]
        self._sums = dict(t["sums"])
        self.train_seconds = float(t.get("train_seconds", 0.0))
        self.history = History.from_dict(state["history"])
        ranks = state.get("rng_ranks")
        if self.distributed and ranks is not None and len(ranks) == self.world_size:
            set_rng_state(ranks[self.rank])  # bitwise resume with the same number of ranks
        else:
            set_rng_state(state["rng"])

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write the state atomically (default ``checkpoint_dir/checkpoint-last.pt``).

        Under DDP a collective: only rank 0 writes, every rank returns once the file is
        complete (or raises if rank 0 could not write it).
        """
        if path is None:
            if self.checkpoint_dir is None:
                raise ValueError("no checkpoint path: pass path= or set checkpoint_dir")
            path = self.checkpoint_dir / LAST
        return self._write([Path(path)], self.state_dict())[0]

    def _write(self, paths: list[Path], state: dict[str, Any]) -> list[Path]:
        error: BaseException | None = None
        if self.rank == 0:
            try:
                for path in paths:
                    atomic_save(state, path)
            except BaseException as exc:  # told to every rank below, then raised
                error = exc
        if self.distributed:
            (failed,) = _ddp.any_flags([error is not None], self.device)
            if failed and error is None:
                raise RuntimeError(
                    f"rank 0 could not write the checkpoint {paths[0]}; see rank 0's error"
                )
        if error is not None:
            raise error
        self.last_checkpoint = paths[0]
        return paths

    def load_checkpoint(self, path: str | Path) -> None:
        """Resume from a checkpoint file (read with ``weights_only=True``).

        Under DDP a collective: rank 0 reads the file and sends it to every rank (the other
        ranks need not see the file system), and every rank raises rank 0's error if any.
        """
        self.load_state_dict(self._read(path, required=True))

    def _read(self, path: str | Path, *, required: bool) -> dict[str, Any] | None:
        """The checkpoint at ``path`` (rank 0's copy under DDP); ``None`` if it is missing
        and not ``required``."""
        if not self.distributed:
            if not required and not Path(path).is_file():
                return None
            return load_checkpoint(path, map_location=self.device)
        message: tuple[str, str] | None = None
        state = None
        if self.rank == 0:
            try:
                if required or Path(path).is_file():
                    state = load_checkpoint(path, map_location="cpu")
            except (FileNotFoundError, ValueError) as exc:
                message = (type(exc).__name__, str(exc))
        state, message = _ddp.broadcast_object((state, message))
        if message is not None:
            kind = FileNotFoundError if message[0] == "FileNotFoundError" else ValueError
            raise kind(f"rank 0: {message[1]}")
        return state

    def _checkpoint(self, epoch_file: bool = False) -> None:
        if self.checkpoint_dir is None:
            return
        paths = [self.checkpoint_dir / LAST]
        if epoch_file:
            paths.append(self.checkpoint_dir / f"checkpoint-{self.epoch:05d}.pt")
        self._write(paths, self.state_dict())
        for path in paths:
            self.record_event({"event": "checkpoint", "path": str(path)})

    # --- interruption --------------------------------------------------------------------
    @contextlib.contextmanager
    def _sigint(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            # under DDP the ranks agree after each step (a lone rank leaving would hang the
            # rest); a second Ctrl-C before that forces the interrupt
            if self.distributed and self._pending_interrupt:
                raise KeyboardInterrupt
            if self._critical or self.distributed:
                self._pending_interrupt = True
            else:
                raise KeyboardInterrupt

        try:
            previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main interpreter
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _snapshot(self) -> tuple[list[torch.Tensor], dict[str, Any]]:
        devices = [self.device] if self.device.type == "cuda" else []
        return [b.detach().clone() for b in self.model.buffers()], rng_state(devices)

    def _rollback(self, snapshot: tuple[list[torch.Tensor], dict[str, Any]]) -> None:
        buffers, rng = snapshot
        with torch.no_grad():
            for b, saved in zip(self.model.buffers(), buffers):
                b.copy_(saved)
        set_rng_state(rng)
        for obj in (self.optimizer, self.preconditioner):
            if callable(getattr(obj, "discard_pending", None)):
                obj.discard_pending()
        self.optimizer.zero_grad(set_to_none=True)

    # --- one step -------------------------------------------------------------------------
    def _forward(self, x: Any, y: Any) -> tuple[torch.Tensor, Any]:
        module = self._train_module
        if self.step_fn is None:
            outputs = module(x)
            return self.loss_fn(outputs, y), outputs
        result = self.step_fn(module, x, y)
        if isinstance(result, dict):
            return result["loss"], result.get("outputs")
        if isinstance(result, (tuple, list)):
            return result[0], result[1]
        return result, None

    def _loss_weight(self, local: int, total: int) -> float:
        """Factor on this rank's loss so that DDP's average of the ranks' gradients is the
        gradient of the global batch's loss: ``world_size * b_r / b`` for a mean over the
        samples (the default), ``world_size`` for a sum (``reduction="sum"``)."""
        if self.step_fn is None and getattr(self.loss_fn, "reduction", "mean") == "sum":
            return float(self.world_size)
        return self.world_size * local / total

    def _train_step(
        self, batch: Any, snapshot: Any, fetch_error: BaseException | None = None
    ) -> dict[str, Any]:
        start = time.perf_counter()
        error: BaseException | None = None
        loss_value, b, acc = float("nan"), 0, None
        try:
            if fetch_error is not None:
                raise fetch_error
            x, y = _to(batch, self.device) if isinstance(batch, (tuple, list)) else (batch, None)
            self._train_module.train()
            self.optimizer.zero_grad(set_to_none=True)
            loss, outputs = self._forward(x, y)
            if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                raise ValueError("the training step must give a scalar loss tensor")
            loss_value = float(loss.detach())
            b = int(y.shape[0]) if isinstance(y, torch.Tensor) and y.ndim > 0 else 1
            acc = _accuracy_counts(
                outputs.detach() if isinstance(outputs, torch.Tensor) else None, y
            )
        except BaseException as exc:
            if not self.distributed:
                self._rollback(snapshot)
                raise
            error = exc
        total = b
        if self.distributed:
            # before the backward pass: its all-reduce would wait for a rank that failed here
            loss_sum, total, correct, counted, failed = _ddp.reduce_step(
                loss_value * b if error is None else 0.0,
                b if error is None else 0,
                acc[0] if acc and error is None else 0,
                acc[1] if acc and error is None else 0,
                error is not None,
                self.device,
            )
            if failed:
                self._rollback(snapshot)
                if error is not None:
                    raise error
                raise RuntimeError(
                    f"rank(s) {failed} failed in step {self.step + 1}; every rank stops at step "
                    f"{self.step} (see the failing rank's error)"
                )
            loss_value = loss_sum / total
            acc = (correct, counted) if counted else None
        try:
            if self.stop_on_nonfinite and not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"the loss became {loss_value} at step {self.step + 1} (epoch {self.epoch + 1}); "
                    f"the model and optimiser are left at step {self.step}. Lower the learning "
                    "rate (or raise the damping)."
                )
            if self.distributed:
                weight = self._loss_weight(b, total)
                (loss * weight if weight != 1.0 else loss).backward()
            else:
                for obj in (self.preconditioner, self.optimizer):
                    wants = getattr(obj, "wants_fisher", None)
                    if callable(wants) and wants():
                        if isinstance(outputs, torch.Tensor) and outputs.requires_grad:
                            obj.fisher_backward(outputs)
                loss.backward()
        except BaseException:
            self._rollback(snapshot)
            raise
        # the update: a SIGINT arriving now waits until the step is complete
        self._critical = True
        try:
            if self.preconditioner is not None:
                self.preconditioner.step()
            self.optimizer.step()
            if self.distributed:
                _ddp.sync_buffers(self.model)
            if self.scheduler is not None and self.schedule_interval == "step":
                self._scheduler_step(None)
            self.step += 1
            self.batch_in_epoch += 1
            s = self._sums
            s["loss"] += loss_value * total
            s["samples"] += total
            if acc is not None:
                s["correct"] += acc[0]
                s["counted"] += acc[1]
            lr = self.lr
            logs = {
                "step": self.step,
                "epoch": self.epoch + 1,
                "loss": loss_value,
                "accuracy": acc[0] / acc[1] if acc else float("nan"),
                "lr": lr,
                "batch_size": total,
            }
            h = self.history.steps
            for key in ("step", "epoch", "loss", "accuracy", "lr"):
                h[key].append(logs[key])
            elapsed = time.perf_counter() - start
            self.train_seconds += elapsed
            s["seconds"] += elapsed
        finally:
            self._critical = False
        pop = getattr(self.optimizer, "pop_events", None)
        if callable(pop):
            for event in pop():
                self.record_event(dict(event))
        if self._pending_interrupt and not self.distributed:
            self._pending_interrupt = False
            raise KeyboardInterrupt
        return logs

    def _agree_to_stop(self) -> None:
        """Under DDP: every rank learns of a ``stop()`` or Ctrl-C on any rank (one small
        all-reduce per step), so that all of them leave the loop at the same step."""
        if not self.distributed:
            return
        stop, interrupt = _ddp.any_flags(
            [self._stop.is_set(), self._pending_interrupt], self.device
        )
        if stop:
            self._stop.set()
        if interrupt:
            self._pending_interrupt = False
            raise KeyboardInterrupt

    def _scheduler_step(self, metric: float | None) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if metric is not None:
                self.scheduler.step(metric)
        else:
            self.scheduler.step()

    def _finish_epoch(self) -> None:
        s = self._sums
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "train_loss": s["loss"] / s["samples"] if s["samples"] else float("nan"),
            "train_accuracy": s["correct"] / s["counted"] if s["counted"] else float("nan"),
            "lr": self.lr,
            "seconds": s["seconds"],
        }
        if self._eval_batches is not None and (self.epoch + 1) % self.eval_every == 0:
            ev = self.evaluate()
            record["test_loss"], record["test_accuracy"] = ev["loss"], ev["accuracy"]
        self.history.epochs.append(record)
        if self.scheduler is not None and self.schedule_interval == "epoch":
            self._scheduler_step(record.get("test_loss", record["train_loss"]))
        self.epoch += 1
        self.batch_in_epoch = 0
        self._sums = {"loss": 0.0, "correct": 0, "counted": 0, "samples": 0, "seconds": 0.0}
        self._emit("on_epoch_end", record)
        every = self.checkpoint_every
        self._checkpoint(epoch_file=every is not None and self.epoch % every == 0)

    # --- the loop ----------------------------------------------------------------------------
    def fit(self, resume: str | Path | bool | None = None) -> History:
        """Train to the planned end (or until stopped); return the :class:`History`.

        Args:
            resume: a checkpoint path, or ``True`` for ``checkpoint_dir/checkpoint-last.pt``
                (if it exists), to continue from. Calling ``fit()`` again on a stopped or
                interrupted trainer also continues where it stopped.

        Returns the history; ``interrupted`` and ``status`` say how it ended. A
        ``KeyboardInterrupt`` ends training at the last finished step without raising.
        """
        if resume:
            path = (
                (self.checkpoint_dir / LAST) if resume is True and self.checkpoint_dir else resume
            )
            if resume is True and self.checkpoint_dir is None:
                raise ValueError("resume=True needs checkpoint_dir")
            state = self._read(path, required=resume is not True)
            if state is not None:
                self.load_state_dict(state)
        self._stop.clear()
        self.interrupted = False
        self.status = "running"
        end_logs: dict[str, Any] = {}
        try:
            with self._sigint():
                try:
                    self._emit("on_train_begin")
                    self._loop()
                    self.status = (
                        "stopped" if (self._stop.is_set() and not self.done) else "completed"
                    )
                except KeyboardInterrupt:
                    self.status = "interrupted"
                if self.status in ("stopped", "interrupted"):
                    self.interrupted = True
                    self.record_event({"event": self.status})
                    self._checkpoint()
                elif self.checkpoint_dir is not None and self.batch_in_epoch:
                    self._checkpoint()  # a steps plan ending inside an epoch
        except BaseException:
            self.status = "failed"
            raise
        finally:
            end_logs = {"status": self.status, "step": self.step, "epoch": self.epoch}
            self._emit_end(end_logs)
        return self.history

    def _emit_end(self, logs: dict[str, Any]) -> None:
        try:
            self._emit("on_train_end", logs)
        except KeyboardInterrupt:
            self.interrupted = True

    def _loop(self) -> None:
        while not self.done and not self._stop.is_set():
            if self.epochs is not None and self.epoch >= self.epochs:
                break
            if self.batch_in_epoch == 0:
                self._emit("on_epoch_begin", self.epoch + 1)
            batches = self._batches.epoch(self.epoch, self.batch_in_epoch)
            while True:
                # the snapshot precedes the fetch: augmentations draw on the global RNG
                snapshot = self._snapshot()
                fetch_error = None
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except BaseException as exc:
                    if not self.distributed:
                        self._rollback(snapshot)
                        raise
                    batch, fetch_error = None, exc  # told to the other ranks in the step
                logs = self._train_step(batch, snapshot, fetch_error)
                self._emit("on_step_end", logs)
                if self.checkpoint_steps and self.step % self.checkpoint_steps == 0:
                    self._checkpoint()
                self._agree_to_stop()
                if self.done or self._stop.is_set():
                    break
            if self.batch_in_epoch >= self.steps_per_epoch:
                self._finish_epoch()
        if (
            self.done
            and self.epochs is None
            and self.batch_in_epoch
            and self._eval_batches is not None
        ):
            ev = self.evaluate()
            self.record_event(
                {"event": "evaluation", "test_loss": ev["loss"], "test_accuracy": ev["accuracy"]}
            )

    def __repr__(self) -> str:
        plan = f"epochs={self.epochs}" if self.epochs is not None else f"steps={self.total_steps}"
        return (
            f"Trainer({type(self.model).__name__}, {type(self.optimizer).__name__}, {plan}, "
            f"step={self.step}/{self.total_steps}, status={self.status!r})"
        )


# --- one call for the CLI and scripts ----------------------------------------------------------

DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3, "swats": 1e-3, "kfac": 0.05}


def train(
    model: str | nn.Module = "small_cnn",
    data: str = "digits",
    *,
    optimizer: str | torch.optim.Optimizer = "sgd",
    lr: float | None = None,
    optimizer_kwargs: dict[str, Any] | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 128,
    schedule: Any = "linear",
    root: str | Path | None = None,
    val_size: int = 0,
    subset: int | None = None,
    augment: bool | None = None,
    data_kwargs: dict[str, Any] | None = None,
    test: bool = True,
    num_classes: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool | str | Path | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    spectrum_every: int | None = None,
    curvature: dict[str, Any] | None = None,
    callbacks: Iterable[Any] = (),
    progress: bool = False,
) -> Trainer:
    """Train a zoo model on a named dataset in one call (the CLI's ``train``).

    Builds the model (:func:`jupyter_curvature.models.create`), the data
    (:func:`jupyter_curvature.data.get_dataset`: the training split, and for evaluation the
    validation split when ``val_size`` is set, else the test split), the optimiser
    (:func:`jupyter_curvature.optim.create_optimizer`; ``sgd`` with momentum 0.9), then
    runs a :class:`Trainer` and returns it (``trainer.model``, ``trainer.history``,
    ``trainer.last_checkpoint``). With ``out_dir``, checkpoints go there and the history
    is saved as ``history.json``.

    Args:
        model: a registry name or a module.
        data: a dataset name (``"digits"``, ``"cifar10"``, ...).
        optimizer: ``sgd``, ``adam``, ``adamw``, ``kfac``, ``swats`` or an optimiser object.
        lr: learning rate (default per optimiser: :data:`DEFAULT_LR`).
        optimizer_kwargs: more optimiser settings (``weight_decay``, ``damping``, ...).
        epochs, steps: the plan (default 10 epochs).
        schedule: ``"linear"`` (default, the original's), ``"constant"``, a scheduler or a
            function ``optimizer -> scheduler``.
        root, val_size, subset, augment: dataset options (see ``get_dataset``).
        data_kwargs: more dataset options for both splits (``rgb32=True``, ``download=True``).
        test: evaluate every epoch.
        num_classes: default from the dataset.
        model_kwargs: more model settings (``in_channels`` defaults to the data's).
        out_dir: folder for checkpoints and ``history.json``.
        checkpoint_every: keep an epoch checkpoint every so many epochs.
        resume: ``True`` (``out_dir/checkpoint-last.pt``) or a path.
        spectrum_every: add a :class:`CurvatureCallback` with this period (settings from
            ``curvature``).
        callbacks: more callbacks; ``progress=True`` adds a tqdm bar.

    Under ``torchrun`` (a process group initialised, e.g. by
    :func:`jupyter_curvature.distributed.init_distributed`) every rank calls it with the
    same arguments and the :class:`Trainer` trains under ``DistributedDataParallel``:
    ``batch_size`` is the global batch, split across the ranks; rank 0 writes the
    checkpoints and ``history.json`` and shows the progress bar.
    """
    from ..data import dataset_info, get_dataset
    from ..models import create, model_info
    from ..optim import create_optimizer

    if epochs is None and steps is None:
        epochs = 10
    info = dataset_info(data)
    name = None
    if isinstance(model, str):
        mi = model_info(model)
        name = mi.name
        kwargs = dict(model_kwargs or {})
        rgb32 = bool((data_kwargs or {}).get("rgb32"))
        channels = 3 if rgb32 else info.input_shape[0]
        size = 32 if rgb32 else info.input_shape[1]
        if (
            mi.input_shape[0] != channels
            and "in_channels" not in kwargs
            and mi.name not in ("mlp",)
        ):
            kwargs["in_channels"] = channels
        if mi.name == "mlp":
            kwargs.setdefault("in_features", channels * size * size)
        if mi.name == "small_cnn":
            kwargs.setdefault("image_size", size)
        model = create(mi.name, num_classes=num_classes or info.num_classes, **kwargs)
    if device is not None:
        model.to(device)
    data_kw: dict[str, Any] = {"root": root, **(data_kwargs or {})}
    if augment is not None:
        data_kw["augment"] = augment
    train_set = get_dataset(info.name, split="train", val_size=val_size, subset=subset,
                            subset_seed=seed, **data_kw)  # fmt: skip
    test_set = None
    if test:
        extra = {k: v for k, v in data_kw.items() if k != "augment"}
        test_set = get_dataset(
            info.name, split="val" if val_size else "test", val_size=val_size, **extra
        )
    if isinstance(optimizer, str):
        key = optimizer.lower()
        opt = create_optimizer(key, model, lr=DEFAULT_LR.get(key, 1e-3) if lr is None else lr,
                               **(optimizer_kwargs or {}))  # fmt: skip
    else:
        opt = optimizer
    cbs = list(callbacks)
    if spectrum_every:
        cbs.append(CurvatureCallback(every=spectrum_every, seed=seed, **(curvature or {})))
    if progress:
        cbs.append(ProgressBar())
    trainer = Trainer(
        model, opt, train_set, test_set, epochs=epochs, steps=steps, batch_size=batch_size,
        schedule=schedule, callbacks=cbs, checkpoint_dir=out_dir, checkpoint_every=checkpoint_every,
        seed=seed, num_workers=num_workers, model_name=name,
    )  # fmt: skip
    trainer.fit(resume=resume if resume is not None else None)
    if out_dir is not None and trainer.rank == 0:
        trainer.history.save(Path(out_dir) / "history.json")
    return trainer


__all__ = ["DEFAULT_LR", "History", "Trainer", "describe_event", "train"]
