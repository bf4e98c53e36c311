"""The train task: one call that trains a model with the engine's
:class:`~jupyter_curvature.training.Trainer` (``%%curv_train``, ``jupyter-curvature train``,
the report's first step).

Models, data and optimisers may be objects or names (:mod:`.names`). With registry names
for both the model and the data (the CLI) the dataset is the registry's (seeded subsets,
per-epoch test evaluation, the learning-rate schedule); otherwise (the magics) the data are
what was given, the curvature is checked every ``spectrum_every`` steps and the test data
evaluated every ``eval_every`` steps, recorded live (:mod:`.live`) for the dashboard.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.batches import is_single_batch
from ..core.vocabulary import accepts_aliases
from ..training import (
    Callback,
    CheckpointOptions,
    CurvatureCallback,
    DataOptions,
    EvaluationCallback,
    Trainer,
    named_trainer,
    training_view,
)
from .names import (
    MISSING,
    InputError,
    lookup,
    resolve_data,
    resolve_device,
    resolve_loss,
    resolve_model,
    resolve_optimizer,
    resolve_test_data,
)
from .outputs import output_folder, save_figure, save_json

__all__ = ["StateRecorder", "TrainResult", "train"]


@dataclass
class TrainResult:
    """What :func:`train` (and ``%%curv_train --out NAME``) returns: the run's objects.

    ``history`` is the trainer's :class:`~jupyter_curvature.training.History` (steps,
    epochs, evaluations, curvature checks, events); ``trainer`` the
    :class:`~jupyter_curvature.training.Trainer` that ran (``trainer.fit()`` goes on).
    """

    model: nn.Module
    optimizer: Any
    loss_fn: Any
    trainer: Any

    @property
    def history(self) -> Any:
        """The trainer's :class:`~jupyter_curvature.training.History`."""
        return self.trainer.history

    @property
    def status(self) -> str:
        """``"completed"``, ``"interrupted"``, ``"stopped"``, ``"failed"`` or ``"running"``."""
        return getattr(self.trainer, "status", "running")

    @property
    def last_checkpoint(self) -> Path | None:
        """The newest checkpoint file the run wrote (``None`` without ``checkpoint_dir``)."""
        return getattr(self.trainer, "last_checkpoint", None)

    @property
    def spectra(self) -> list[Any]:
        """The :class:`~jupyter_curvature.spectral.SpectralDensity` of each curvature check."""
        return training_view(self.trainer).spectra

    def to_dict(self) -> dict[str, Any]:
        """The status and the trainer's history (JSON-ready; NaN becomes ``null`` when written
        through :func:`jupyter_curvature.core.records.write_json`)."""
        return {
            "status": self.status,
            "model": type(self.model).__name__,
            "optimizer": type(self.optimizer).__name__,
            "history": self.history.to_dict(),
        }

    def plot(self, axes: Any = None) -> Any:
        """The training figure (:func:`jupyter_curvature.plotting.plot_training`): per step
        with the curvature checks when there were any, else per epoch; returns the figure."""
        from ..plotting import plot_training

        view = training_view(self.trainer)
        if view.spectra or not self.history.epochs:
            return plot_training(view, axes=axes)
        return plot_training(self.history, axes=axes)

    def save(self, out: str | Path) -> Path:
        """``history.json`` (the trainer's history), ``train.json`` (:meth:`to_dict`) and,
        once a step was taken, ``training.png`` in ``out``."""
        out = output_folder(out)
        save_json(out / "history.json", self.history.to_dict())
        if self.trainer.step:
            save_figure(self.plot(), out / "training.png")
        save_json(out / "train.json", self.to_dict())
        return out

    def __repr__(self) -> str:
        return (
            f"TrainResult(model={type(self.model).__name__}, "
            f"optimizer={type(self.optimizer).__name__}, status={self.status!r}, "
            f"steps={getattr(self.trainer, 'step', 0)})"
        )


class StateRecorder(Callback):
    """Keeps the running trainer, so a caller still has the run if training raises."""

    def __init__(self) -> None:
        self.trainer: Any = None

    def on_train_begin(self, trainer: Any) -> None:
        self.trainer = trainer

    def result(self) -> TrainResult | None:
        """The run so far as a :class:`TrainResult` (``None`` before it started)."""
        t = self.trainer
        return None if t is None else TrainResult(t.model, t.optimizer, t.loss_fn, t)


StepFn = Callable[[nn.Module, Any, Any, dict[str, Any]], tuple[torch.Tensor, Any]]


def _train_source(data: Any) -> tuple[Any, dict[str, Any]]:
    """The training data as the :class:`~jupyter_curvature.training.Trainer` takes it.

    A DataLoader is used as it is (the trainer reads its dataset, batch size and shuffling
    and draws the order of each epoch from ``seed``); one batch or a list of tensor batches
    becomes a ``TensorDataset`` read in the given order and batch sizes.
    """
    from torch.utils.data import DataLoader, IterableDataset, TensorDataset

    if isinstance(data, DataLoader):
        ds = data.dataset
        if isinstance(ds, IterableDataset) or not hasattr(ds, "__len__"):
            raise InputError(
                "the training DataLoader reads an iterable dataset without a length; "
                "give a DataLoader over a map-style Dataset"
            )
        return data, {}
    batches = [data] if is_single_batch(data) else list(data)
    if not batches:
        raise InputError("data holds no batches")
    if not all(
        isinstance(b, (list, tuple))
        and len(b) == 2
        and all(isinstance(t, torch.Tensor) and t.ndim > 0 for t in b)
        for b in batches
    ):
        raise InputError(
            "data must be a DataLoader, a list of (inputs, targets) tensor batches or one batch"
        )
    sizes = [len(b[1]) for b in batches]
    try:
        ds = TensorDataset(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    except (RuntimeError, AssertionError) as exc:
        raise InputError(f"the batches of data do not stack into one dataset: {exc}") from None
    if all(s == sizes[0] for s in sizes[:-1]) and 0 < sizes[-1] <= sizes[0]:
        return ds, {"batch_size": sizes[0], "shuffle": False}
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    order = [list(range(a, a + s)) for a, s in zip(starts, sizes)]
    return DataLoader(ds, batch_sampler=order), {}


@accepts_aliases
def train(
    model: Any = "small_cnn",
    data: Any = "digits",
    *,
    loss_fn: Any = None,
    optimizer: Any = "sgd",
    lr: float | None = None,
    momentum: float | None = None,
    weight_decay: float = 0.0,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 128,
    schedule: Any = None,
    step_fn: StepFn | None = None,
    test_data: Any = None,
    eval_every: int | None = None,
    spectrum_every: int = 0,
    curvature: str = "hessian",
    num_iters: int | None = None,
    num_probes: int | None = None,
    spectrum_samples: int = 256,
    top_k: int = 3,
    max_overhead: float | None = None,
    warm_start: bool = True,
    num_samples: int | None = None,
    data_root: str | Path | None = None,
    download: bool = False,
    device: torch.device | str | None = None,
    callbacks: Iterable[Any] = (),
    tensorboard: str | Path | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool | str | Path | None = None,
    progress: bool = False,
    namespace: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` with the engine's :class:`~jupyter_curvature.training.Trainer`,
    with test evaluations and curvature spectra along the way.

    One step: ``optimizer.zero_grad()``, ``loss, outputs = step_fn(model, x, y, ctx)``,
    ``loss.backward()`` (K-FAC's sampled-Fisher pass first), ``optimizer.step()``. The
    default ``step_fn`` is ``loss_fn(model(x), y)``. The trainer gives the run its
    guarantees: the data order of each epoch is drawn from ``seed`` and the epoch, so a run
    resumed from a checkpoint is bitwise the run without the stop (on CPU); checkpoints are
    atomic; under ``torchrun`` it trains with DistributedDataParallel.

    From step 0 and then every ``spectrum_every`` steps (0: never) the spectral density of
    the ``curvature`` matrix (``"hessian"`` or ``"ggn"``) of ``loss_fn`` on
    ``spectrum_samples`` training samples drawn once by ``seed`` is computed by SLQ
    (:class:`~jupyter_curvature.training.CurvatureCallback`: ``num_iters`` Lanczos
    steps, ``num_probes`` probes; it never changes the training), and its ``top_k``
    largest Ritz values are recorded: the quantity to compare with the stability threshold
    ``2 / lr`` of gradient descent (Cohen et al., ICLR 2021, "edge of stability"). With
    ``max_overhead`` (a fraction such as 0.15) a due spectrum is skipped when spectra would
    take more than that share of the training time; ``None`` computes every one.

    An interrupt (SIGINT, the kernel's Interrupt button) stops at once at the last finished
    step (a step in its forward or backward pass is undone; one in its update is completed
    first), with ``result.status == "interrupted"``. An exception from ``step_fn`` ends the
    run with status ``"failed"`` (the failing step undone) and propagates after the
    callbacks' ``on_train_end``.

    Args:
        model: the network (trained in place), or a registry name (``"mlp"``) or a variable
            of ``namespace``.
        data: a DataLoader (its dataset, batch size and shuffling are used), a list of
            ``(inputs, targets)`` tensor batches (read in order), one batch, or a name
            (``"digits"``; ``"digits:test"``) or variable of ``namespace``.
        loss_fn: the criterion (default cross-entropy) or its name.
        optimizer: an optimiser, or a name (``sgd``, ``adam``, ``adamw``, ``kfac``,
            ``swats``) built with ``lr``, ``momentum`` and ``weight_decay``.
        epochs, steps: how long; default one epoch (10 epochs when both ``model`` and
            ``data`` are registry names).
        batch_size: of named data.
        schedule: the learning-rate schedule (see :class:`~jupyter_curvature.training.Trainer`;
            ``"linear"`` when both are registry names).
        step_fn: a custom step ``(model, x, y, ctx) -> (loss, outputs or None)``; ``ctx``
            holds ``loss_fn``, ``optimizer`` and ``trainer`` (the running Trainer).
        test_data: evaluated every ``eval_every`` steps (default: every ``spectrum_every``
            steps if set, else each epoch) and at the end.
        curvature, num_iters, num_probes, spectrum_samples, top_k, max_overhead: the live
            spectra (``None``: 30 steps and 2 probes; with registry names the defaults of
            :class:`~jupyter_curvature.training.CurvatureCallback`).
        warm_start: start each live check's certified top-k from the last check's
            eigenvectors (:func:`~jupyter_curvature.spectral.warm_eigenpairs`).
        num_samples: train on this many samples of a named dataset (drawn by the seed 0).
        data_root: the folder of a named dataset's files.
        download: download a named torchvision dataset missing from ``data_root``.
        device: move the model there (``"auto"``: CUDA when present); the batches follow.
        callbacks: Trainer callbacks (:class:`~jupyter_curvature.training.Callback` hooks;
            the live dashboard is one), called after the curvature and evaluation ones.
        seed: seeds a named model's initial weights, the data order of a shuffling
            DataLoader, the spectrum samples and probes.
        out: a folder for the checkpoints (unless ``checkpoint_dir``), ``history.json`` (the
            trainer's history) and ``training.png``.
        checkpoint_dir: the trainer's atomic checkpoints (model, optimiser, RNG states,
            position in the data, history): ``checkpoint-last.pt`` at the end of every epoch,
            every ``checkpoint_every`` steps, at the end and when interrupted, each with a
            numbered copy ``checkpoint-<step>.pt`` announced as an event.
        resume: a checkpoint path, or ``True`` for ``checkpoint_dir/checkpoint-last.pt`` (if
            it exists), to continue from.
        progress: a tqdm bar (registry names; the magics pass their own callbacks).
        tensorboard: a folder for TensorBoard event files (training metrics and each live
            curvature check; :func:`jupyter_curvature.integrations.tensorboard_callback`,
            needs ``pip install "jupyter_curvature[tensorboard]"``).
        namespace: where names are looked up first (the magics' user namespace).

    Old keywords (``ggn=True``, ``spectrum_iters``, ``spectrum_probes``, ``subset``,
    ``root``, ``out_dir``) still work and warn.

    Raises:
        InputError: unusable names, data or settings (one-line message).
    """
    from .spectrum import check_curvature

    check_curvature(curvature)
    if out is not None:
        out = output_folder(out)
    if checkpoint_dir is None:
        checkpoint_dir = out
    if steps is not None and steps < 1:
        raise InputError(f"the number of steps must be at least 1, got {steps}")
    # checked now: the trainer writes them only after steps have run
    check_folder(checkpoint_dir, "--checkpoint-dir")
    check_folder(tensorboard, "--tensorboard")
    # a loss given by its registry name (the default's included) keeps the named path: giving
    # the default explicitly must not change the run
    named_loss = loss_fn is None or _is_name(loss_fn, namespace)
    plain = step_fn is None and named_loss
    callbacks = list(callbacks) + _loggers(tensorboard)
    if plain and _is_name(model, namespace) and _is_name(data, namespace):
        return _train_named(
            model, data, optimizer=optimizer, lr=lr, momentum=momentum,
            weight_decay=weight_decay, epochs=epochs, steps=steps, batch_size=batch_size,
            schedule="linear" if schedule is None else schedule, spectrum_every=spectrum_every,
            curvature=curvature, num_iters=num_iters, num_probes=num_probes,
            spectrum_samples=spectrum_samples, top_k=top_k, max_overhead=max_overhead,
            warm_start=warm_start, num_samples=num_samples, data_root=data_root,
            download=download,
            device=device, seed=seed, out=out, checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every, resume=resume, progress=progress,
            callbacks=callbacks, loss_fn=resolve_loss(loss_fn, namespace),
        )  # fmt: skip
    if num_samples is not None:
        raise InputError("num_samples needs a named dataset; give fewer batches instead")
    data_spec = data
    dev = resolve_device(device)
    if isinstance(model, str) and lookup(model, namespace) is MISSING:
        torch.manual_seed(seed)
    data_name = data_spec.partition(":")[0] if _is_name(data_spec, namespace) else None
    if data_name is not None:
        resolve_data(data_spec, namespace)  # an unknown dataset: its InputError says what to do
    model = resolve_model(model, namespace, data=data_name)
    data = resolve_data(data, namespace, batch_size=batch_size, shuffle=True, seed=seed,
                        data_root=data_root, download=download)  # fmt: skip
    if test_data is not None or isinstance(data_spec, str):
        test_data = resolve_test_data(test_data, data_spec, namespace)
    loss_fn = resolve_loss(loss_fn, namespace)
    if dev is not None:
        model.to(dev)
    optimizer = resolve_optimizer(optimizer, model, namespace, lr=lr, momentum=momentum or 0.0,
                                  weight_decay=weight_decay)  # fmt: skip
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise InputError(
            f"the optimiser is a {type(optimizer).__name__}; training needs a torch.optim.Optimizer"
        )
    if resume is True and checkpoint_dir is None:
        raise InputError("resuming needs the checkpoint folder (--checkpoint-dir)")
    source, loader_kwargs = _train_source(data)
    checks: list[Any] = []
    if spectrum_every:
        checks.append(CurvatureCallback(
            every=spectrum_every, curvature=curvature, num_iters=num_iters or 30,
            num_probes=num_probes or 2, spectrum_samples=spectrum_samples, seed=seed,
            max_overhead=max_overhead, at_start=True, top_k=top_k, warm_start=warm_start,
        ))  # fmt: skip
    ctx: dict[str, Any] = {"loss_fn": loss_fn, "optimizer": optimizer, "trainer": None}
    trainer_step = None if step_fn is None else _cell_step(step_fn, ctx, optimizer)
    try:
        trainer = Trainer(
            model, optimizer, source, loss_fn=loss_fn,
            epochs=None if steps is not None else (1 if epochs is None else int(epochs)),
            steps=steps, callbacks=checks, checkpoint=CheckpointOptions(
                checkpoint_dir, steps=checkpoint_every, keep_steps=True),
            step_fn=trainer_step, seed=seed,
            schedule=schedule,
            data_options=DataOptions(**loader_kwargs) if loader_kwargs else None,
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise InputError(str(exc).splitlines()[0]) from None
    if test_data is not None:
        every = eval_every or spectrum_every or trainer.steps_per_epoch
        trainer.callbacks.append(EvaluationCallback(test_data, every=max(1, int(every))))
    trainer.callbacks.extend(callbacks)
    ctx["trainer"] = trainer
    trainer.fit(resume=resume or None)
    result = TrainResult(model, optimizer, loss_fn, trainer)
    if out is not None:
        result.save(out)
    return result


def _cell_step(step_fn: StepFn, ctx: dict[str, Any], optimizer: Any):
    """The Trainer's ``step_fn`` from a user step ``(model, x, y, ctx) -> (loss, outputs)``:
    the outputs, when not returned, are those of the body's one call of the model."""

    def trainer_step(module: nn.Module, x: Any, y: Any) -> tuple[torch.Tensor, Any]:
        calls: list[Any] = []
        hook = module.register_forward_hook(lambda _m, _args, out: calls.append(out))
        try:
            loss, outputs = step_fn(module, x, y, ctx)
        finally:
            hook.remove()
        if outputs is None and len(calls) == 1:
            outputs = calls[0]  # the body called the model once: those are the outputs
        wants = getattr(optimizer, "wants_fisher", None)
        if callable(wants) and wants():
            if not (isinstance(outputs, torch.Tensor) and outputs.requires_grad):
                raise InputError(
                    "K-FAC needs the model outputs of each step: the cell body called the "
                    f"model {len(calls)} times; set `outputs` to the ones K-FAC should use"
                )
        return loss, outputs

    return trainer_step


def check_folder(path: str | Path | None, flag: str) -> None:
    """Refuse a folder the run could not write into, before any work: an existing file, a
    path under a file, or a place where no folder can be made. Nothing is left behind."""
    if path is None:
        return
    folder = Path(path)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"lies under the file {existing}"
        raise InputError(f"{flag} {folder} {where}, not a folder; give a folder path")
    try:  # a real probe (root passes os.access everywhere, /proc refuses anyway)
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=existing))
    except OSError as exc:
        raise InputError(
            f"{flag} {folder} cannot be made in {existing} ({exc.strerror}); "
            "give a folder you can write to"
        ) from None


def _loggers(tensorboard: str | Path | None) -> list[Any]:
    """The logging callbacks asked for (TensorBoard), or a one-line error naming the extra."""
    if tensorboard is None:
        return []
    from ..integrations import tensorboard_callback

    try:
        return [tensorboard_callback(tensorboard)]
    except ImportError as exc:
        raise InputError(str(exc).splitlines()[0]) from None


def _is_name(spec: Any, namespace: Any) -> bool:
    """Whether ``spec`` is a registry name (a string that is not a variable of ``namespace``)."""
    return isinstance(spec, str) and lookup(spec.partition(":")[0], namespace) is MISSING


def _train_named(model: str, data: str, *, optimizer: Any, lr: Any, momentum: Any,
                 weight_decay: float, epochs: Any, steps: Any, batch_size: int, schedule: Any,
                 spectrum_every: int, curvature: str, num_iters: Any, num_probes: Any,
                 spectrum_samples: int, top_k: int, max_overhead: Any, warm_start: bool,
                 num_samples: Any, data_root: Any, download: bool, device: Any, seed: int,
                 out: Any,
                 checkpoint_dir: Any, checkpoint_every: Any,
                 resume: Any, progress: bool, callbacks: list[Any],
                 loss_fn: Any) -> TrainResult:  # fmt: skip
    """A registry model on a registry dataset: the trainer of
    :func:`jupyter_curvature.training.named_trainer` (seeded subsets, per-epoch test
    evaluation, the linear schedule), run, then saved in ``out``."""
    from .. import data as data_mod
    from .. import models as models_mod

    try:
        models_mod.model_info(model)
    except (KeyError, ValueError):
        resolve_model(model)  # raises the InputError with the closest name
    try:
        data_mod.dataset_info(data)
    except (KeyError, ValueError):
        resolve_data(data)
    torch.manual_seed(seed)
    optimizer_kwargs: dict[str, Any] = {}
    if weight_decay:
        optimizer_kwargs["weight_decay"] = weight_decay
    if isinstance(optimizer, str) and optimizer.lower() == "sgd":
        optimizer_kwargs["momentum"] = 0.9 if momentum is None else momentum
    # max_overhead=None: every check, as on the other path (not the callback's own default)
    settings = {"curvature": curvature, "top_k": top_k, "spectrum_samples": spectrum_samples,
                "max_overhead": max_overhead, "warm_start": warm_start}  # fmt: skip
    for key, value in (("num_iters", num_iters), ("num_probes", num_probes)):
        if value is not None:
            settings[key] = value
    trainer = named_trainer(
        model, data, optimizer=optimizer, lr=lr, optimizer_kwargs=optimizer_kwargs,
        epochs=epochs if epochs is not None or steps is not None else 10, steps=steps,
        batch_size=batch_size, schedule=schedule, data_root=data_root, num_samples=num_samples,
        data_kwargs={"download": True} if download else None,
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, seed=seed,
        device=resolve_device(device), spectrum_every=spectrum_every or None,
        curvature=settings, progress=progress, callbacks=callbacks,
    )  # fmt: skip
    trainer.loss_fn = loss_fn  # read at each step, so the criterion may be set after building
    trainer.fit(resume=resume)
    result = TrainResult(trainer.model, trainer.optimizer, trainer.loss_fn, trainer)
    if out is not None:
        result.save(out)
    return result
