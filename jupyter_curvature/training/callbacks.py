"""Trainer callbacks: the protocol, a progress bar, and live curvature spectra.

A callback overrides any of these hooks; the :class:`~jupyter_curvature.training.Trainer`
calls them in the thread that runs ``fit()`` (the main thread in a notebook), in order:

``on_train_begin(trainer)``, then per epoch ``on_epoch_begin(trainer, epoch)``, per step
``on_step_end(trainer, logs)`` (``logs``: ``step``, ``epoch``, ``loss``, ``accuracy``,
``lr``, ``batch_size``), ``on_epoch_end(trainer, logs)`` (the epoch record with the test
metrics), and at any time ``on_curvature(trainer, record)`` (a new spectrum) and
``on_event(trainer, event)`` (SWATS switch, checkpoint, interruption); finally
``on_train_end(trainer, logs)`` (``status``: ``"completed"``, ``"stopped"``,
``"interrupted"`` or ``"failed"``). Hooks run between steps, so the model and optimiser
they see are always consistent; ``trainer.stop()`` from a hook ends training after the
current step.

This is the package's one callback protocol: the live dashboard
(``jupyter_curvature.widgets.TrainingDashboard``) is an ordinary callback. The ``trainer``
argument is the running :class:`~jupyter_curvature.training.Trainer` (its ``history``,
``step``, ``total_steps``, ``lr``, ``status``, ``callbacks``, ...); this module does not
import the trainer (the trainer imports it).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils.data import Dataset

from ..core.distributed.primitives import local_only
from ..core.vocabulary import accepts_aliases
from .budget import CheckBudget
from .history import describe_event

#: the running :class:`~jupyter_curvature.training.Trainer` (not imported here: the trainer
#: imports this module)
TrainerLike = Any


class Callback:
    """Base class: every hook does nothing."""

    def on_train_begin(self, trainer: TrainerLike) -> None:
        pass

    def on_epoch_begin(self, trainer: TrainerLike, epoch: int) -> None:
        pass

    def on_step_end(self, trainer: TrainerLike, logs: dict[str, Any]) -> None:
        pass

    def on_epoch_end(self, trainer: TrainerLike, logs: dict[str, Any]) -> None:
        pass

    def on_curvature(self, trainer: TrainerLike, record: dict[str, Any]) -> None:
        pass

    def on_event(self, trainer: TrainerLike, event: dict[str, Any]) -> None:
        pass

    def on_train_end(self, trainer: TrainerLike, logs: dict[str, Any]) -> None:
        pass


HOOKS = (
    "on_train_begin",
    "on_epoch_begin",
    "on_step_end",
    "on_epoch_end",
    "on_curvature",
    "on_event",
    "on_train_end",
)


class LambdaCallback(Callback):
    """A callback from functions: ``LambdaCallback(on_step_end=lambda trainer, logs: ...)``."""

    def __init__(self, **hooks: Callable[..., None]) -> None:
        unknown = set(hooks) - set(HOOKS)
        if unknown:
            raise TypeError(f"unknown hooks {sorted(unknown)}; known: {', '.join(HOOKS)}")
        for name, fn in hooks.items():
            if not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
            setattr(self, name, fn)


class ProgressBar(Callback):
    """A tqdm progress bar over the planned steps, with the loss and one line per epoch.

    Under ``torch.distributed`` only rank 0 shows it (the figures are the same on every
    rank: the trainer reduces them).
    """

    def __init__(self, **tqdm_kwargs: Any) -> None:
        self.kwargs = tqdm_kwargs
        self.bar: Any = None
        self.shown = True

    def on_train_begin(self, trainer: TrainerLike) -> None:
        from tqdm import tqdm  # not tqdm.auto: the engine never imports IPython

        from ..core.distributed.context import is_main_process

        self.shown = is_main_process()
        kwargs = dict(self.kwargs)
        if not self.shown:
            kwargs["disable"] = True
        self.bar = tqdm(total=trainer.total_steps, initial=trainer.step, unit="step", **kwargs)

    def _write(self, line: str) -> None:
        if self.bar is not None and self.shown:  # tqdm.write prints even when disabled
            self.bar.write(line)

    def on_step_end(self, trainer: TrainerLike, logs: dict[str, Any]) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{logs['loss']:.4g}", refresh=False)

    def on_epoch_end(self, trainer: TrainerLike, logs: dict[str, Any]) -> None:
        parts = [f"epoch {logs['epoch']}", f"train loss {logs['train_loss']:.4g}"]
        if logs.get("test_loss") is not None:
            parts.append(f"test loss {logs['test_loss']:.4g}")
        if logs.get("test_accuracy") is not None:
            parts.append(f"test accuracy {logs['test_accuracy']:.4f}")
        self._write(", ".join(parts))

    def on_curvature(self, trainer: TrainerLike, record: dict[str, Any]) -> None:
        top = record.get("top_eigenvalues")
        if top:
            self._write(
                f"step {record['step']}: largest {record['curvature']} eigenvalues "
                + ", ".join(f"{v:.4g}" for v in top)
            )

    def on_event(self, trainer: TrainerLike, event: dict[str, Any]) -> None:
        if event.get("event") != "checkpoint":
            self._write(describe_event(event))

    def on_train_end(self, trainer: TrainerLike, logs: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()


# --- live curvature --------------------------------------------------------------------------


def default_compute(
    model: torch.nn.Module,
    loss_fn: Callable,
    batch: tuple[torch.Tensor, torch.Tensor],
    *,
    curvature: str,
    num_iters: int,
    num_probes: int,
    seed: int,
    params: Any,
) -> Any:
    """The SLQ spectral density of the Hessian (or GGN) of ``loss_fn`` on ``batch``."""
    from ..spectral import spectral_density

    op = _operator(model, loss_fn, batch, curvature, params)
    return spectral_density(op, num_iters=num_iters, num_probes=num_probes, seed=seed)


def _operator(model: Any, loss_fn: Callable, batch: Any, curvature: str, params: Any) -> Any:
    """The ``curvature`` operator (Hessian or GGN) of ``loss_fn`` on ``batch``."""
    from ..operators import GGNOperator, HessianOperator

    cls = GGNOperator if curvature == "ggn" else HessianOperator
    return cls(model, loss_fn, batch, params=params)


def tracked_check(
    model: torch.nn.Module,
    loss_fn: Callable,
    batch: tuple[torch.Tensor, torch.Tensor],
    *,
    top_k: int,
    tol: float,
    start: torch.Tensor | None,
    **settings: Any,
) -> tuple[Any, Any, int]:
    """The default live check: the certified ``top_k`` (warm-started from ``start``, the last
    check's eigenvectors, when given) and the SLQ density, sharing one gradient graph.
    ``settings`` are :func:`default_compute`'s keywords (``curvature``, ``num_iters``,
    ``num_probes``, ``seed``, ``params``).

    Returns:
        ``(density, eigen, products)``: the
        :class:`~jupyter_curvature.spectral.SpectralDensity`, the
        :class:`~jupyter_curvature.spectral.EigenpairsResult` and the products of both.
    """
    from ..spectral import eigenpairs, spectral_density

    op = _operator(model, loss_fn, batch, settings["curvature"], settings["params"])
    seed = settings["seed"]
    with op.kept_graphs(None):  # one gradient graph for the whole check
        eigen = eigenpairs(op, k=top_k, tol=tol, seed=seed, warn=False, start=start)
        density = spectral_density(op, num_iters=settings["num_iters"],
                                   num_probes=settings["num_probes"], seed=seed)  # fmt: skip
    return density, eigen, op.num_matvecs


def summarize(result: Any, top_k: int = 3) -> dict[str, Any]:
    """Plain numbers from a spectrum result: Ritz values and weights (per probe), the
    largest/smallest Ritz value, the ``top_k`` largest of the probe reaching the largest
    one, and the result's scalar statistics when it has them."""
    out: dict[str, Any] = {}
    ritz = getattr(result, "ritz_values", None)
    if ritz is None and isinstance(result, dict):
        ritz = result.get("ritz_values")
    weights = getattr(result, "weights", None)
    if weights is None and isinstance(result, dict):
        weights = result.get("weights")
    if ritz is not None:
        theta = torch.as_tensor(ritz, dtype=torch.float64).detach().cpu()
        if theta.ndim == 1:
            theta = theta[None]
        out["ritz_values"] = theta.tolist()
        out["lambda_max"] = float(theta.max())
        out["lambda_min"] = float(theta.min())
        probe = int(theta.max(dim=1).values.argmax())
        out["top_eigenvalues"] = torch.sort(theta[probe], descending=True).values[:top_k].tolist()
    if weights is not None:
        w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
        out["weights"] = (w[None] if w.ndim == 1 else w).tolist()
    stats = getattr(result, "stats", None)
    if callable(stats):
        stats = stats()
    if stats is not None and hasattr(stats, "to_dict"):
        stats = stats.to_dict()
    if isinstance(stats, dict):
        scalars = {
            k: float(v)
            for k, v in stats.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if scalars:
            out["stats"] = scalars
    return out


def _fixed_batch(source: Any, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` samples of ``source`` as one ``(inputs, targets)`` batch, fixed once.

    A dataset is subsampled by ``seed`` (and read under that seed, so random
    augmentations are drawn once and then kept); a batch is cut; an iterable of batches
    is read until ``size`` samples are there.
    """
    if (
        isinstance(source, (tuple, list))
        and len(source) == 2
        and all(isinstance(t, torch.Tensor) for t in source)
    ):
        return source[0][:size], source[1][:size]
    if isinstance(source, Dataset) and hasattr(source, "__len__"):
        n = len(source)
        take = min(size, n)
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=gen)[:take].sort().values
        if isinstance(source, torch.utils.data.TensorDataset):
            return source.tensors[0][idx], source.tensors[1][idx]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            items = [source[int(i)] for i in idx]
        xs = torch.stack([torch.as_tensor(x) for x, _ in items])
        ys = torch.stack([torch.as_tensor(y) for _, y in items])
        return xs, ys
    xs, ys, count = [], [], 0
    for x, y in source:
        xs.append(x)
        ys.append(y)
        count += len(x)
        if count >= size:
            break
    if not xs:
        raise ValueError("the curvature data holds no batches")
    return torch.cat(xs)[:size], torch.cat(ys)[:size]


class CurvatureCallback(Callback):
    """A curvature spectrum every ``every`` steps on a fixed subsample, for live views.

    The default computation is the SLQ spectral density
    (:func:`jupyter_curvature.spectral.spectral_density`) of the Hessian or GGN
    (:mod:`jupyter_curvature.operators`) of the training loss on ``spectrum_samples`` samples
    drawn once from the training data. The computation never changes the training: the
    model's weights, buffers and train/eval flags, the RNG states and K-FAC's statistics
    are as before it (training with and without this callback gives bitwise the same
    weights).

    Each spectrum becomes a record in ``trainer.history.curvature`` (step, epoch, seconds,
    learning rate, Ritz values and weights per probe, largest and smallest Ritz value, the
    ``top_k`` largest, the result's scalar statistics) and is passed to every callback's
    ``on_curvature``; the full result objects are kept in :attr:`results`.

    **The certified top-k, tracked.** The default computation (no ``compute=``) is
    :func:`tracked_check`: besides the density, the ``top_k`` largest eigenpairs certified
    by their residuals (``tol``, :func:`~jupyter_curvature.spectral.eigenpairs`), each check
    warm-started from the last one's eigenvectors (``warm_start``,
    :func:`~jupyter_curvature.spectral.warm_eigenpairs`: the same certificate), both on one
    kept gradient graph. The record's ``top_eigenvalues`` are then the certified ones, with
    ``residuals``, ``converged``, ``matvecs`` (the check's products) and ``eigen_matvecs``.

    **Cost control.** With ``max_overhead`` (default 0.15) the checks take at most about
    that share of the training time so far. With the default computation (one process)
    :class:`~jupyter_curvature.training.budget.CheckBudget` plans each due check from the
    measured seconds per product and the top-k's last product count: in full, with fewer
    SLQ steps (at least ``MIN_ITERS``; the record's ``num_iters`` says how many), or skipped.
    With ``compute=`` or under DDP a due spectrum is skipped when the time spent plus the
    last one's (before the first, ``2.5 * num_iters * num_probes`` gradients on the fixed
    batch, timed once at the start) would exceed the budget.
    ``max_overhead=None`` computes strictly every ``every`` steps, in full.

    **Under DistributedDataParallel** (a :class:`~jupyter_curvature.training.Trainer` with
    ``trainer.distributed``) every rank takes part: each holds its contiguous part of the
    fixed batch (sizes within one sample), the spectrum is computed on the unwrapped model
    (``trainer.model``, DDP's ``.module``), and the operators sum the ranks' partial
    products, so every rank gets the same spectrum (checked, bit for bit), equal to the
    single-process spectrum of the whole fixed batch. Whether a due spectrum is computed
    or skipped is rank 0's budget decision, sent to every rank (ranks deciding apart would
    wait for each other forever). ``compute=`` then gets this rank's part of the batch and
    must be a collective computation like the default one. ``spectrum_samples`` must be at
    least the number of ranks.

    Args:
        data: the samples to use: a dataset, one ``(inputs, targets)`` batch, or batches;
            default the trainer's training data.
        every: steps between spectra.
        curvature: ``"hessian"`` or ``"ggn"``.
        num_iters, num_probes: Lanczos steps and probe vectors of SLQ.
        spectrum_samples: number of samples in the fixed batch (old name ``subsample``).
        seed: seeds the subsample and the probes.
        max_overhead: budget as a fraction of training time, or ``None``.
        at_start: also compute before the first step (and on resuming), whatever the
            budget (its time counts against later spectra).
        at_end: also compute after the last step (outside the budget).
        loss_fn: the loss (default the trainer's).
        params: parameter subset (as for the operators): per-layer spectra.
        top_k: how many of the largest Ritz values to record.
        compute: ``compute(model, loss_fn, batch, *, curvature, num_iters, num_probes,
            seed, params) -> result``; replaces the default computation (then no certified
            top-k: ``top_eigenvalues`` are the result's largest Ritz values).
        keep_results: keep the result objects in :attr:`results`.
        tol: the certified top-k's relative residual tolerance.
        warm_start: start each check's top-k from the last check's eigenvectors.
        clock: the timer (default :func:`time.perf_counter`; tests inject a fake one).
    """

    @accepts_aliases(subsample="spectrum_samples")
    def __init__(
        self,
        data: Any = None,
        *,
        every: int = 50,
        curvature: str = "hessian",
        num_iters: int = 20,
        num_probes: int = 1,
        spectrum_samples: int = 256,
        seed: int = 0,
        max_overhead: float | None = 0.15,
        at_start: bool = False,
        at_end: bool = False,
        loss_fn: Callable | None = None,
        params: Any = None,
        top_k: int = 3,
        compute: Callable[..., Any] | None = None,
        keep_results: bool = True,
        tol: float = 1e-3,
        warm_start: bool = True,
        clock: Callable[[], float] | None = None,
    ) -> None:
        for name, value in (("every", every), ("num_iters", num_iters),
                            ("num_probes", num_probes), ("spectrum_samples", spectrum_samples), ("top_k", top_k)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if curvature not in ("hessian", "ggn"):
            raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
        if max_overhead is not None and not max_overhead > 0:
            raise ValueError(f"max_overhead must be positive or None, got {max_overhead!r}")
        if compute is not None and not callable(compute):
            raise TypeError(f"compute must be callable, got {type(compute).__name__}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
            raise ValueError(f"tol must be a positive number, got {tol!r}")
        self.data = data
        self.every = every
        self.curvature = curvature
        self.num_iters = num_iters
        self.num_probes = num_probes
        self.spectrum_samples = spectrum_samples
        self.seed = seed
        self.max_overhead = max_overhead
        self.at_start = at_start
        self.at_end = at_end
        self.loss_fn = loss_fn
        self.params = params
        self.top_k = top_k
        self.compute = compute or default_compute
        self.tracked = compute is None  # the default check: certified top-k, warm-started
        self.keep_results = keep_results
        self.tol = float(tol)
        self.warm_start = bool(warm_start)
        self.clock = clock or time.perf_counter
        self.vectors: torch.Tensor | None = None  # the last check's eigenvectors
        self.budget = (
            CheckBudget(max_overhead, num_iters, num_probes, top_k)
            if max_overhead is not None and self.tracked
            else None
        )
        self.planned_iters: int | None = None  # the budget's choice for the next check
        self.results: list[tuple[int, Any]] = []
        self.spent = 0.0
        self.last_cost: float | None = None
        self.computed = 0
        self.skipped = 0
        self.gradient_cost: float | None = None
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.total = 0

    def collective_settings(self) -> tuple:
        """The settings that fix this callback's collectives under DDP (every rank must
        have the same: :func:`~jupyter_curvature.training.ddp.setup_ddp` checks them)."""
        return (self.every, self.curvature, self.num_iters, self.num_probes, self.spectrum_samples,
                self.seed, self.max_overhead, self.at_start, self.at_end)  # fmt: skip

    def on_train_begin(self, trainer: TrainerLike) -> None:
        source = self.data if self.data is not None else trainer.train_dataset
        x, y = _fixed_batch(source, self.spectrum_samples, self.seed)
        self.total = len(y)
        if getattr(trainer, "distributed", False):
            world, rank = trainer.world_size, trainer.rank
            if len(y) < world:
                raise ValueError(
                    f"the curvature batch holds {len(y)} samples for {world} ranks (a rank "
                    f"would get none): set CurvatureCallback(spectrum_samples=) to at least {world}"
                )
            x, y = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
        self.batch = (x.to(trainer.device), y.to(trainer.device))
        if self.max_overhead is not None:
            self.gradient_cost = self._time_gradient(trainer)
            if self.budget is not None:
                self.budget.calibrate(self.gradient_cost)
        if self.at_start and not any(
            r.get("step") == trainer.step for r in trainer.history.curvature
        ):
            self.run(trainer)

    def _time_gradient(self, trainer: TrainerLike) -> float:
        """Seconds of one forward and backward pass on the fixed batch (for the budget)."""
        loss_fn = self.loss_fn or trainer.loss_fn
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        with trainer.quiet():
            start = self.clock()
            loss = loss_fn(trainer.model(self.batch[0]), self.batch[1])
            torch.autograd.grad(loss, params, allow_unused=True)
            return self.clock() - start

    def estimated_cost(self) -> float:
        """Seconds the next spectrum is expected to take."""
        if self.last_cost is not None:
            return self.last_cost
        return 2.5 * self.num_iters * self.num_probes * (self.gradient_cost or 0.0)

    def on_step_end(self, trainer: TrainerLike, logs: dict[str, Any]) -> None:
        if logs["step"] % self.every:
            return
        distributed = getattr(trainer, "distributed", False)
        if self.budget is not None and not distributed:
            plan = self.budget.plan(trainer.train_seconds, self.spent)
            if plan.skip:
                self.skipped += 1
                return
            self.planned_iters = plan.num_iters
        elif self.max_overhead is not None:
            budget = self.max_overhead * trainer.train_seconds
            skip = self.spent + self.estimated_cost() > budget
            if distributed:
                from .ddp import broadcast_decision

                skip = broadcast_decision(skip, trainer.device)
            if skip:
                self.skipped += 1
                return
        self.run(trainer)

    def on_train_end(self, trainer: TrainerLike, logs: dict[str, Any]) -> None:
        if self.at_end and logs.get("status") in ("completed", "stopped"):
            if not any(r.get("step") == trainer.step for r in trainer.history.curvature):
                self.run(trainer)

    def run(self, trainer: TrainerLike) -> dict[str, Any]:
        """Compute one spectrum now and record it."""
        if self.batch is None:
            raise RuntimeError("CurvatureCallback.run needs on_train_begin first")
        loss_fn = self.loss_fn or trainer.loss_fn
        num_iters, self.planned_iters = self.planned_iters or self.num_iters, None
        start = self.clock()
        eigen, products = None, 0
        # a rank training alone under a process group (distributed=False) must not sum its
        # products with the other ranks' (the operators would by default)
        distributed = getattr(trainer, "distributed", False)
        alone = contextlib.nullcontext() if distributed else local_only()
        settings = dict(curvature=self.curvature, num_iters=num_iters,
                        num_probes=self.num_probes, seed=self.seed, params=self.params)  # fmt: skip
        with trainer.quiet(), alone:
            if self.tracked:
                start_vectors = self.vectors if self.warm_start else None
                result, eigen, products = tracked_check(
                    trainer.model, loss_fn, self.batch, top_k=self.top_k, tol=self.tol,
                    start=start_vectors, **settings,
                )  # fmt: skip
            else:
                result = self.compute(trainer.model, loss_fn, self.batch, **settings)
        cost = self.clock() - start
        if getattr(trainer, "distributed", False):
            ritz = getattr(result, "ritz_values", None)
            if isinstance(ritz, torch.Tensor):
                from ..core.distributed.checks import verify_identical

                verify_identical(ritz, "the live curvature spectrum")
        self.spent += cost
        self.last_cost = cost
        self.computed += 1
        if self.keep_results:
            self.results.append((trainer.step, result))
        record = {
            "step": trainer.step,
            "epoch": trainer.epoch,
            "seconds": cost,
            # the rate that led to these weights (trainer.lr may be the next step's already)
            "lr": getattr(trainer, "used_lr", trainer.lr),
            "curvature": self.curvature,
            "num_iters": num_iters,
            "num_probes": self.num_probes,
            "spectrum_samples": self.total,
            **summarize(result, self.top_k),
        }
        if eigen is not None:
            if self.budget is not None:
                self.budget.measured(cost, products, eigen.num_matvecs)
            record.update(
                top_eigenvalues=eigen.eigenvalues.tolist(),
                residuals=eigen.residuals.tolist(),
                converged=bool(eigen.converged),
                tol=self.tol,
                matvecs=int(products),
                eigen_matvecs=int(eigen.num_matvecs),
                warm_start=self.warm_start and self.vectors is not None,
            )
            self.vectors = eigen.eigenvectors
        trainer.record_curvature(record)
        return record


class EvaluationCallback(Callback):
    """Test loss and accuracy every ``every`` steps (the trainer itself evaluates at the end
    of every ``eval_every`` epochs, and at the end of a steps plan).

    Each evaluation runs on the side (:meth:`Trainer.quiet`: RNG states, buffers, train/eval
    flags and K-FAC statistics are left as they were, so it never changes the training),
    is recorded in ``trainer.history.events`` as ``{"event": "evaluation", "step",
    "test_loss", "test_accuracy"}`` (so it is in the checkpoints and in
    :attr:`History.eval_steps`) and passed to every callback's ``on_event``. Under DDP it
    is a collective, like :meth:`Trainer.evaluate`.

    Args:
        data: what to evaluate (a Dataset, DataLoader, batches or one batch); default the
            trainer's test data.
        every: steps between evaluations.
        at_end: also evaluate after the last step of a completed run, unless that step
            was evaluated already.
    """

    def __init__(self, data: Any = None, *, every: int = 50, at_end: bool = True) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.data = data
        self.every = every
        self.at_end = at_end

    def collective_settings(self) -> tuple:
        """The settings that fix this callback's collectives under DDP."""
        return ("evaluation", self.every, self.at_end)

    def evaluate(self, trainer: TrainerLike) -> dict[str, Any]:
        """Evaluate now and record it (see the class docstring)."""
        with trainer.quiet():
            ev = trainer.evaluate(self.data)
        event = {"event": "evaluation", "test_loss": ev["loss"], "test_accuracy": ev["accuracy"]}
        trainer.record_event(event)
        return ev

    def on_step_end(self, trainer: TrainerLike, logs: dict[str, Any]) -> None:
        if logs["step"] % self.every == 0:
            self.evaluate(trainer)

    def on_train_end(self, trainer: TrainerLike, logs: dict[str, Any]) -> None:
        if self.at_end and logs.get("status") == "completed" and trainer.step:
            if trainer.history.eval_steps[-1:] != [trainer.step]:
                self.evaluate(trainer)


def as_callbacks(callbacks: Iterable[Any] | None) -> list[Any]:
    """Check that each object has at least one hook (a typo would otherwise be silent)."""
    out = []
    for cb in callbacks or ():
        if not any(callable(getattr(cb, h, None)) for h in HOOKS):
            raise TypeError(
                f"{type(cb).__name__} is not a callback: it has none of the hooks {', '.join(HOOKS)}"
            )
        out.append(cb)
    return out
