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

**Where the parts live.** This module is the loop. The record is
:mod:`~jupyter_curvature.training.history`, the data order
:mod:`~jupyter_curvature.training.data_order`, the atomic step and the SIGINT policy
:mod:`~jupyter_curvature.training.atomic_step`, the checkpoint state
:mod:`~jupyter_curvature.training.checkpoint`, the DDP set-up and collectives
:mod:`~jupyter_curvature.training.ddp`, the grouped settings
:mod:`~jupyter_curvature.training.options`, and :func:`~jupyter_curvature.training.train`
(names to a trained model) :mod:`~jupyter_curvature.training.from_names`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset

from ..core.batches import Batch
from ..core.losses import class_dim, counted_labels, mean_weight
from . import ddp as _ddp
from .atomic_step import AtomicStep, InterruptGuard
from .callbacks import as_callbacks
from .checkpoint import LAST, CheckpointState, rng_state, set_rng_state
from .data_order import DataOrder, as_eval_batches, rank_batches, to_device
from .history import History
from .options import CheckpointOptions, DataOptions, DistributedOptions, merge_flat

__all__ = ["Trainer"]


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _reduction_is_sum(loss_fn: Any) -> bool:
    return getattr(loss_fn, "reduction", "mean") == "sum"


def _batch_weight(loss_fn: Any, targets: Any, size: int) -> int | float:
    """The batch's weight in the loss's mean over the data: what its ``"mean"`` divides by
    (:func:`~jupyter_curvature.core.losses.mean_weight`: samples, counted labels, summed
    class weights), so that batch means combine into the loss of all data as one batch."""
    if not isinstance(targets, torch.Tensor):
        return size
    return mean_weight(loss_fn, Batch((), targets, size, 0))


def _accuracy_counts(loss_fn: Any, outputs: Any, targets: Any) -> tuple[int, int] | None:
    """Top-1 hits and the labels judged (those that count for ``loss_fn``: not its
    ``ignore_index``), as :func:`~jupyter_curvature.stats.evaluate` counts them; ``None``
    when the batch is no classification."""
    dim = class_dim(loss_fn, outputs, targets)
    if dim is None:
        return None
    counted = counted_labels(loss_fn, targets)
    hits = (outputs.argmax(dim) == targets) & counted
    return int(hits.sum()), int(counted.sum())


# --- the trainer ----------------------------------------------------------------------------

StepFn = Callable[[nn.Module, Any, Any], Any]


class Trainer(CheckpointState):
    """Train ``model`` with ``optimizer`` on ``train_data``.

    >>> import torch
    >>> from jupyter_curvature.models import create
    >>> from jupyter_curvature.data import get_dataset
    >>> model = create("small_cnn")
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> trainer = Trainer(model, opt, get_dataset("digits"), get_dataset("digits", split="test"),
    ...                   epochs=2, schedule="linear", data_options=DataOptions(batch_size=128))
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
        loss_fn: the criterion (default ``nn.CrossEntropyLoss()``; ``reduction="mean"`` or
            ``"sum"``). Every loss reported (steps, epochs, :meth:`evaluate`) is the mean
            per term of the data as one batch, whatever the reduction: batches weighted by
            what the loss's mean divides by (samples, or counted labels), as
            :func:`~jupyter_curvature.stats.evaluate` does (``docs/training.md``).
        epochs, steps: the plan: so many epochs, or so many optimisation steps (exactly
            one of them; default 1 epoch).
        data_options: how a Dataset is read (:class:`~jupyter_curvature.training.DataOptions`:
            ``batch_size`` 128, ``shuffle``, ``num_workers``, ``drop_last``).
        schedule: ``None``/``"constant"``, ``"linear"`` (the original's: constant to 50%,
            linear to 1% at 90%), a ``torch.optim.lr_scheduler`` object, or a function
            ``optimizer -> scheduler``.
        schedule_interval: ``"epoch"`` or ``"step"``: when the scheduler steps (default
            ``"epoch"`` when training by epochs, else ``"step"``). ``ReduceLROnPlateau``
            steps on the test (else train) loss each epoch.
        preconditioner: a :class:`~jupyter_curvature.optim.KFACPreconditioner` run before
            each ``optimizer.step()``.
        callbacks: objects with the hooks of :class:`~jupyter_curvature.training.Callback`.
        checkpoint: where and when checkpoints are written
            (:class:`~jupyter_curvature.training.CheckpointOptions`: ``dir`` for
            ``checkpoint-last.pt``, after every epoch, on stop and on interruption, and
            ``checkpoint-%05d.pt`` every ``every`` epochs; ``steps``: also refresh the last
            one every so many steps). Default: none.
        eval_every: epochs between evaluations (1).
        step_fn: a custom step ``step_fn(model, inputs, targets)`` returning the loss, or
            ``(loss, outputs)``: K-FAC's Fisher pass and the accuracy need the outputs.
        seed: seeds the data order.
        device: move the model there first (default: where its parameters are).
        stop_on_nonfinite: a NaN/inf loss raises ``FloatingPointError`` (the model is left
            at the last finished step) instead of training on.
        model_name: a registry name stored in checkpoints (for the CLI and messages).
        distributed: :class:`~jupyter_curvature.training.DistributedOptions`:
            ``enabled=None`` (default): train under ``DistributedDataParallel`` when a
            process group with more than one rank is initialised or ``model`` is a DDP
            module; ``True``: require it; ``False``: train this rank's model alone;
            ``ddp_kwargs``: more ``DistributedDataParallel`` settings
            (``find_unused_parameters``, ``broadcast_buffers``, ...).
        **deprecated: the flat keywords ``batch_size``, ``shuffle``, ``num_workers``,
            ``drop_last``, ``checkpoint_dir``, ``checkpoint_every``, ``checkpoint_steps``,
            ``ddp_kwargs`` and a bool ``distributed`` still work for one release, with a
            ``FutureWarning`` naming the option object that replaces them; giving a group
            both ways is a ``TypeError``.

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
        schedule: Any = None,
        schedule_interval: str | None = None,
        preconditioner: Any = None,
        callbacks: Sequence[Any] = (),
        eval_every: int = 1,
        step_fn: StepFn | None = None,
        seed: int = 0,
        device: str | torch.device | None = None,
        stop_on_nonfinite: bool = True,
        model_name: str | None = None,
        data_options: DataOptions | None = None,
        checkpoint: CheckpointOptions | None = None,
        distributed: DistributedOptions | bool | None = None,
        **deprecated: Any,
    ) -> None:
        if isinstance(distributed, bool):  # the deprecated flat form
            deprecated["distributed"] = distributed
            distributed = None
        options = merge_flat(
            {"data_options": data_options, "checkpoint": checkpoint, "distributed": distributed},
            deprecated,
        )
        #: how a Dataset is read, where checkpoints go, whether to train under DDP
        self.data_options: DataOptions = options["data_options"]
        self.checkpoint: CheckpointOptions = options["checkpoint"]
        self._kept_checkpoints: set[Path] = set()  # numbered copies written (keep_steps)
        self.distributed_options: DistributedOptions = options["distributed"]
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
        for name, value in (("epochs", epochs), ("steps", steps)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 1:
            raise ValueError(f"eval_every must be a positive integer, got {eval_every!r}")
        for group in optimizer.param_groups:
            lr = group.get("lr")
            if (
                isinstance(lr, (int, float))
                and not lr > 0
                and not isinstance(schedule, torch.optim.lr_scheduler.LRScheduler)
            ):
                raise ValueError(f"the optimiser's learning rate must be positive, got {lr!r}")
        use_ddp = _ddp.wants_ddp(self.distributed_options.enabled, ddp_model)
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
        d = self.data_options
        #: the seeded, resumable order of the training batches
        self.data_order = DataOrder(
            train_data, batch_size=d.batch_size, shuffle=d.shuffle, drop_last=d.drop_last,
            num_workers=d.num_workers, seed=self.seed, rank=self.rank, world_size=self.world_size,
        )  # fmt: skip
        self.train_dataset = self.data_order.dataset
        self.test_data = test_data
        self._eval_batches = as_eval_batches(test_data, d.batch_size)
        self.steps_per_epoch = self.data_order.count
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
        self.ddp: DDP | None = None
        if use_ddp:
            self.ddp = _ddp.setup_ddp(self, ddp_model, self.distributed_options.ddp_kwargs)
        self.history = History()
        # progress
        self.step = 0
        self.epoch = 0  # the epoch in progress (0-based); == epochs done at a boundary
        self.batch_in_epoch = 0
        # "samples" sums the batches' weights in the loss's mean (samples, or counted labels)
        self._sums = {"loss": 0.0, "correct": 0, "counted": 0, "samples": 0, "seconds": 0.0}
        self._used_lr: float | None = None
        self.train_seconds = 0.0  # wall time inside training steps (callbacks excluded)
        self.interrupted = False
        self.status = "new"
        self.last_checkpoint = None
        self._stop = threading.Event()
        self._interrupts = InterruptGuard(distributed=self.distributed)

    @property
    def has_test_data(self) -> bool:
        """Test data was given (evaluated every ``eval_every`` epochs)."""
        return self._eval_batches is not None

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
    def used_lr(self) -> float:
        """The step size the last finished step used (:attr:`lr` before any step): what
        the history records, whereas :attr:`lr` is the next step's once a scheduler moved."""
        return self._used_lr if self._used_lr is not None else self.lr

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
        """Mean loss and top-1 accuracy over ``data`` (default the test data), in eval mode.

        The loss is that of all of ``data`` as one batch, per term of the loss's mean:
        batches are weighted by what the mean divides by
        (:func:`~jupyter_curvature.core.losses.mean_weight`: samples, or the counted labels
        / summed class weights of a cross-entropy with ``ignore_index`` or ``weight=``), and
        a ``reduction="sum"`` loss is divided by that weight (the mean it would report with
        ``"mean"``). The accuracy is over the labels that count (not ``ignore_index``), as
        in :func:`~jupyter_curvature.stats.evaluate`.

        Under DDP a collective: every rank evaluates every ``world_size``-th batch and the
        sums are reduced, so every rank returns the figures of the whole ``data``.
        """
        batches = self._eval_batches if data is None else as_eval_batches(data, 256)
        if batches is None:
            raise ValueError("no test data to evaluate: pass test_data= or data=")
        if self.distributed:
            batches = rank_batches(batches, self.rank, self.world_size)
        modes = [m.training for m in self.model.modules()]
        self.model.eval()
        total, terms, correct, counted, n = 0.0, 0, 0, 0, 0
        is_sum = _reduction_is_sum(self.loss_fn)
        try:
            with contextlib.ExitStack() as stack:
                for obj in (self.optimizer, self.preconditioner):
                    if callable(getattr(obj, "paused", None)):
                        stack.enter_context(obj.paused())
                for batch in batches:
                    x, y = to_device(batch, self.device)
                    out = self.model(x)
                    b = y.shape[0]
                    n += b
                    weight = _batch_weight(self.loss_fn, y, b)
                    if weight == 0:  # every label ignored: no term of the mean (its loss is 0/0)
                        continue
                    loss = float(self.loss_fn(out, y))
                    # the batch's share of the sum over all terms
                    total += loss if is_sum else loss * weight
                    terms += weight
                    acc = _accuracy_counts(self.loss_fn, out, y)
                    if acc is not None:
                        correct += acc[0]
                        counted += acc[1]
        finally:
            for m, mode in zip(self.model.modules(), modes):
                m.training = mode
        if self.distributed:
            total, terms, n, correct, counted, _ = _ddp.reduce_step(
                total, terms, n, correct, counted, False, self.device
            )
        if n == 0:
            raise ValueError("the evaluation data holds no samples")
        return {
            "loss": total / terms if terms else float("nan"),
            "accuracy": correct / counted if counted else float("nan"),
        }

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

    def _loss_weight(self, local: float, total: float) -> float:
        """Factor on this rank's loss so that DDP's average of the ranks' gradients is the
        gradient of the global batch's loss: ``world_size * W_r / W`` for a mean (``W`` the
        weights of :func:`_batch_weight`: samples, or counted labels / summed class
        weights), ``world_size`` for a sum (``reduction="sum"``)."""
        if self.step_fn is None and _reduction_is_sum(self.loss_fn):
            return float(self.world_size)
        return self.world_size * local / total

    def _train_step(
        self, batch: Any, guard: AtomicStep, fetch_error: BaseException | None = None
    ) -> dict[str, Any]:
        """One step inside ``guard``: an exception before the update undoes it (the guard's
        rollback); under DDP the ranks first agree that every one got that far."""
        start = time.perf_counter()
        error: BaseException | None = None
        # the step's mean loss per term (a "sum" divided by its weight), samples, weight
        loss_value, b, weight, acc = float("nan"), 0, 0, None
        try:
            if fetch_error is not None:
                raise fetch_error
            x, y = (
                to_device(batch, self.device) if isinstance(batch, (tuple, list)) else (batch, None)
            )
            self._train_module.train()
            self.optimizer.zero_grad(set_to_none=True)
            loss, outputs = self._forward(x, y)
            if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                raise ValueError("the training step must give a scalar loss tensor")
            b = int(y.shape[0]) if isinstance(y, torch.Tensor) and y.ndim > 0 else 1
            loss_value = float(loss.detach())
            weight = b
            if self.step_fn is None:  # a step_fn's loss is its own: weighted by its samples
                weight = _batch_weight(self.loss_fn, y, b)
                if _reduction_is_sum(self.loss_fn):
                    loss_value = loss_value / weight if weight else 0.0
            if isinstance(outputs, torch.Tensor) and isinstance(y, torch.Tensor):
                acc = _accuracy_counts(self.loss_fn, outputs.detach(), y)
        except BaseException as exc:
            if not self.distributed:
                raise
            error = exc
        total, samples = weight, b
        if self.distributed:
            # before the backward pass: its all-reduce would wait for a rank that failed here
            ok = error is None and weight != 0
            loss_sum, total, samples, correct, counted, failed = _ddp.reduce_step(
                loss_value * weight if ok else 0.0,
                weight if ok else 0,
                b if error is None else 0,
                acc[0] if acc and error is None else 0,
                acc[1] if acc and error is None else 0,
                error is not None,
                self.device,
            )
            if failed:
                if error is not None:
                    raise error
                raise RuntimeError(
                    f"rank(s) {failed} failed in step {self.step + 1}; every rank stops at step "
                    f"{self.step} (see the failing rank's error)"
                )
            loss_value = loss_sum / total if total else float("nan")
            acc = (correct, counted) if counted else None
        if self.stop_on_nonfinite and not math.isfinite(loss_value):
            raise FloatingPointError(
                f"the loss became {loss_value} at step {self.step + 1} (epoch {self.epoch + 1}); "
                f"the model and optimiser are left at step {self.step}. Lower the learning "
                "rate (or raise the damping)."
            )
        if self.distributed:
            factor = self._loss_weight(weight, total)
            (loss * factor if factor != 1.0 else loss).backward()
        else:
            for obj in (self.preconditioner, self.optimizer):
                wants = getattr(obj, "wants_fisher", None)
                if callable(wants) and wants():
                    if isinstance(outputs, torch.Tensor) and outputs.requires_grad:
                        obj.fisher_backward(outputs)
            loss.backward()
        # the update: a SIGINT arriving now waits until the step is complete
        with guard.commit():
            if self.preconditioner is not None:
                self.preconditioner.step()
            self.optimizer.step()
            if self.distributed:
                _ddp.sync_buffers(self.model)
            # the rate this step used: a per-step scheduler moves on to the next one now
            lr = self._used_lr = self.lr
            if self.scheduler is not None and self.schedule_interval == "step":
                self._scheduler_step(None)
            self.step += 1
            self.batch_in_epoch += 1
            s = self._sums
            if total:  # a batch whose labels are all ignored adds no term to the mean
                s["loss"] += loss_value * total
                s["samples"] += total
            if acc is not None:
                s["correct"] += acc[0]
                s["counted"] += acc[1]
            logs = {
                "step": self.step,
                "epoch": self.epoch + 1,
                "loss": loss_value,
                "accuracy": acc[0] / acc[1] if acc else float("nan"),
                "lr": lr,
                "batch_size": samples,
            }
            h = self.history.steps
            for key in ("step", "epoch", "loss", "accuracy", "lr"):
                h[key].append(logs[key])
            elapsed = time.perf_counter() - start
            self.train_seconds += elapsed
            s["seconds"] += elapsed
        pop = getattr(self.optimizer, "pop_events", None)
        if callable(pop):
            for event in pop():
                self.record_event(dict(event))
        self._interrupts.raise_pending()
        return logs

    def _agree_to_stop(self) -> None:
        """Under DDP: every rank learns of a ``stop()`` or Ctrl-C on any rank (one small
        all-reduce per step), so that all of them leave the loop at the same step."""
        if not self.distributed:
            return
        stop, interrupt = _ddp.any_flags(
            [self._stop.is_set(), self._interrupts.pending], self.device
        )
        if stop:
            self._stop.set()
        if interrupt:
            self._interrupts.pending = False
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
            "lr": self.used_lr,
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
        every = self.checkpoint.every
        self._write_checkpoints(epoch_file=every is not None and self.epoch % every == 0)

    # --- the loop ----------------------------------------------------------------------------
    def fit(self, resume: str | Path | bool | None = None) -> History:
        """Train to the planned end (or until stopped); return the :class:`History`.

        Args:
            resume: a checkpoint path, or ``True`` for ``checkpoint.dir/checkpoint-last.pt``
                (if it exists), to continue from. Calling ``fit()`` again on a stopped or
                interrupted trainer also continues where it stopped.

        Returns the history; ``interrupted`` and ``status`` say how it ended. A
        ``KeyboardInterrupt`` ends training at the last finished step without raising.
        """
        if resume:
            path = (
                (self.checkpoint.dir / LAST) if resume is True and self.checkpoint.dir else resume
            )
            if resume is True and self.checkpoint.dir is None:
                raise ValueError("resume=True needs checkpoint=CheckpointOptions(dir=...)")
            state = self._read(path, required=resume is not True)
            if state is not None:
                self.load_state_dict(state)
        self._stop.clear()
        self.interrupted = False
        self.status = "running"
        end_logs: dict[str, Any] = {}
        try:
            with self._interrupts.installed():
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
                    self._write_checkpoints()
                elif self.checkpoint.dir is not None and self.batch_in_epoch:
                    self._write_checkpoints()  # a steps plan ending inside an epoch
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
            batches = self.data_order.epoch(self.epoch, self.batch_in_epoch)
            while True:
                # the snapshot precedes the fetch: augmentations draw on the global RNG
                with AtomicStep(self.model, (self.optimizer, self.preconditioner),
                                self._interrupts) as guard:  # fmt: skip
                    fetch_error = None
                    try:
                        batch = next(batches)
                    except StopIteration:
                        break
                    except BaseException as exc:
                        if not self.distributed:
                            raise
                        batch, fetch_error = None, exc  # told to the other ranks in the step
                    logs = self._train_step(batch, guard, fetch_error)
                self._emit("on_step_end", logs)
                steps = self.checkpoint.steps
                if steps and self.step % steps == 0:
                    self._write_checkpoints()
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
