"""The magic-free Python API behind the ``%curv_*`` magics.

The magics only parse their line, look names up with the resolvers here and call
:func:`train`, :func:`spectrum` or :func:`statistics`; everything they do can be done from
plain Python (scripts, tests, other front ends)::

    from jupyter_curvature import api
    model = api.resolve_model("mlp")
    data = api.resolve_data("digits")
    result = api.train(model, data, steps=50, spectrum_every=25)
    result.history.loss[-1], result.history.top_eigenvalues[-1]

This module adds no numerics: :func:`train` runs the engine's
:class:`~jupyter_curvature.training.Trainer` (losses, accuracies and test evaluations are
its own), spectra come from
:func:`jupyter_curvature.spectral.spectral_density` / :func:`~jupyter_curvature.spectral.eigenpairs`
on :class:`~jupyter_curvature.operators.HessianOperator` / ``GGNOperator``, statistics from
:mod:`jupyter_curvature.stats`. Like the engine it imports no IPython or widget library.

Errors in the *user's input* (unknown names, wrong types, an absent GPU) raise
:class:`InputError`, a ``ValueError`` whose message is one line; the magics turn it into a
``UsageError``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .core.files import atomic_write, atomic_write_text

__all__ = [
    "InputError",
    "TrainCallback",
    "TrainHistory",
    "TrainResult",
    "TrainState",
    "StateRecorder",
    "TqdmProgress",
    "SpectrumResult",
    "StatsResult",
    "DATASETS",
    "OPTIMIZERS",
    "LOSSES",
    "lookup",
    "resolve_model",
    "resolve_data",
    "resolve_test_data",
    "resolve_optimizer",
    "resolve_loss",
    "resolve_device",
    "train",
    "spectrum",
    "statistics",
]


class InputError(ValueError):
    """Bad input from the user (a name, a type, an option); the message is one line."""


# --------------------------------------------------------------------------- resolvers
_MISSING = object()


def lookup(name: str, namespace: Mapping[str, Any] | None) -> Any:
    """The value of ``name`` (a variable or a dotted attribute path ``run.model``) or a sentinel."""
    if namespace is None or not name:
        return _MISSING
    head, *rest = name.split(".")
    if head not in namespace:
        return _MISSING
    value = namespace[head]
    for attr in rest:
        if not hasattr(value, attr):
            raise InputError(
                f"{head!r} has no attribute path {name!r} ({type(value).__name__} has no {attr!r})"
            )
        value = getattr(value, attr)
    return value


def _type_name(value: Any) -> str:
    """``"an int"``, ``"a torch.Tensor"``: the article and the type of ``value``."""
    t = type(value)
    name = t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def resolve_model(
    spec: Any,
    namespace: Mapping[str, Any] | None = None,
    *,
    num_classes: int = 10,
    option: str = "--model",
) -> nn.Module:
    """A model from a variable holding an ``nn.Module`` or a registry name (``"mlp"``).

    Raises:
        InputError: the variable is not a module, or the name is neither a variable nor a
            registered model.
    """
    if isinstance(spec, nn.Module):
        return spec
    if not isinstance(spec, str):
        raise InputError(f"{option} must be a name, got {_type_name(spec)}")
    value = lookup(spec, namespace)
    if value is not _MISSING:
        if not isinstance(value, nn.Module):
            raise InputError(f"{option} {spec!r} is {_type_name(value)}, not a torch.nn.Module")
        return value
    from . import models

    try:
        return models.create(spec, num_classes=num_classes)
    except ValueError:
        raise InputError(
            f"{option} {spec!r} is neither a variable nor a registered model; "
            f"known models: {', '.join(models.available())}"
        ) from None


def _digits(split: str, batch_size: int, shuffle: bool, seed: int) -> Any:
    from .data import digits_loader

    return digits_loader(split, batch_size=batch_size, shuffle=shuffle, seed=seed)


#: built-in dataset names -> loader factory ``f(split, batch_size, shuffle, seed)``
DATASETS: dict[str, Callable[..., Any]] = {"digits": _digits}


def _check_batches(value: Any, name: str, option: str) -> Any:
    from torch.utils.data import DataLoader, Dataset

    if isinstance(value, DataLoader):
        return value
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, torch.Tensor) for v in value)
    ):
        return value  # one (inputs, targets) batch
    if isinstance(value, Dataset):
        raise InputError(
            f"{option} {name!r} is {_type_name(value)} (a Dataset); wrap it in a "
            "torch.utils.data.DataLoader"
        )
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(b, (list, tuple)) and len(b) == 2 for b in value)
    ):
        return value  # a list of (inputs, targets) batches
    raise InputError(
        f"{option} {name!r} is {_type_name(value)}, not a DataLoader, a list of "
        "(inputs, targets) batches or one (inputs, targets) tuple of tensors"
    )


def resolve_data(
    spec: Any,
    namespace: Mapping[str, Any] | None = None,
    *,
    split: str = "train",
    batch_size: int = 128,
    shuffle: bool = False,
    seed: int = 0,
    option: str = "--data",
) -> Any:
    """Data from a variable (a DataLoader, batches, one batch) or a built-in name (``"digits"``).

    ``"digits"`` gives the training split; ``"digits:test"`` the test split.
    """
    if not isinstance(spec, str):
        return _check_batches(spec, "<value>", option)
    value = lookup(spec, namespace)
    if value is not _MISSING:
        return _check_batches(value, spec, option)
    name, _, part = spec.partition(":")
    if name.lower() in DATASETS:
        part = part or split
        if part not in ("train", "test", "all"):
            raise InputError(f"{option} {spec!r}: the split must be train, test or all")
        return DATASETS[name.lower()](part, batch_size, shuffle, seed)
    raise InputError(
        f"{option} {spec!r} is neither a variable nor a built-in dataset; "
        f"built-in datasets: {', '.join(sorted(DATASETS))}"
    )


def resolve_test_data(
    spec: str | None, train_spec: Any, namespace: Mapping[str, Any] | None, batch_size: int = 256
) -> Any:
    """The test data: ``spec`` if given, else the test split of a built-in training set, else None."""
    if spec is not None:
        return resolve_data(
            spec, namespace, split="test", batch_size=batch_size, option="--test-data"
        )
    if isinstance(train_spec, str) and lookup(train_spec, namespace) is _MISSING:
        name = train_spec.partition(":")[0].lower()
        if name in DATASETS:
            return DATASETS[name]("test", batch_size, False, 0)
    return None


#: loss names -> criterion factories
LOSSES: dict[str, Callable[[], nn.Module]] = {
    "cross_entropy": nn.CrossEntropyLoss,
    "mse": nn.MSELoss,
    "nll": nn.NLLLoss,
}


def resolve_loss(spec: Any = None, namespace: Mapping[str, Any] | None = None) -> Callable:
    """A criterion: ``None`` (cross-entropy), a name from :data:`LOSSES`, or a callable variable."""
    if spec is None:
        return nn.CrossEntropyLoss()
    if callable(spec) and not isinstance(spec, str):
        return spec
    value = lookup(spec, namespace)
    if value is not _MISSING:
        if not callable(value):
            raise InputError(
                f"--loss {spec!r} is {_type_name(value)}, not a callable loss function"
            )
        return value
    key = spec.lower().replace("-", "_")
    if key in LOSSES:
        return LOSSES[key]()
    raise InputError(
        f"--loss {spec!r} is neither a variable nor a known loss; known losses: {', '.join(LOSSES)}"
    )


#: optimiser names accepted by --optimizer
OPTIMIZERS = ("sgd", "adam", "adamw", "kfac", "swats")


def _is_optimizer(value: Any) -> bool:
    return isinstance(value, torch.optim.Optimizer) or (
        hasattr(value, "step") and hasattr(value, "zero_grad") and hasattr(value, "param_groups")
    )


def resolve_optimizer(
    spec: Any,
    model: nn.Module,
    namespace: Mapping[str, Any] | None = None,
    *,
    lr: float | None = None,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    **options: Any,
) -> torch.optim.Optimizer:
    """An optimiser: a variable holding one, or a name (``sgd``, ``adam``, ``adamw``, ``kfac``, ``swats``).

    Defaults for names: ``sgd`` lr 0.1, ``adam``/``adamw`` lr 1e-3 (Kingma & Ba 2015),
    ``kfac`` and ``swats`` the defaults of :mod:`jupyter_curvature.optim`.
    """
    if _is_optimizer(spec):
        return spec
    if spec is None:
        spec = "sgd"
    if not isinstance(spec, str):
        raise InputError(f"--optimizer must be a name, got {_type_name(spec)}")
    value = lookup(spec, namespace)
    if value is not _MISSING:
        if not _is_optimizer(value):
            raise InputError(
                f"--optimizer {spec!r} is {_type_name(value)}, not a torch.optim.Optimizer"
            )
        return value
    key = spec.lower()
    params = [p for p in model.parameters() if p.requires_grad]
    if key == "sgd":
        return torch.optim.SGD(
            params, lr=0.1 if lr is None else lr, momentum=momentum, weight_decay=weight_decay
        )
    if key in ("adam", "adamw"):
        cls = torch.optim.Adam if key == "adam" else torch.optim.AdamW
        return cls(params, lr=1e-3 if lr is None else lr, weight_decay=weight_decay)
    if key in ("kfac", "swats"):
        from .optim import create_optimizer

        kwargs = dict(options)
        if weight_decay:
            kwargs["weight_decay"] = weight_decay
        if momentum and key == "kfac":
            kwargs["momentum"] = momentum
        try:
            return create_optimizer(key, model, lr=1e-3 if lr is None else lr, **kwargs)
        except (TypeError, ValueError) as exc:
            raise InputError(f"--optimizer {key}: {exc}") from None
    raise InputError(
        f"--optimizer {spec!r} is neither a variable nor a known optimiser; known: {', '.join(OPTIMIZERS)}"
    )


def resolve_device(spec: str | None) -> torch.device | None:
    """``None`` (leave the model where it is) or a device; CUDA/MPS must be present."""
    if spec is None:
        return None
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise InputError(
            f"--device {spec!r} is not a device name (use cpu, cuda or cuda:N)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"--device {spec}: no CUDA GPU is available on this machine; use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {spec}: MPS is not available on this machine; use --device cpu")
    return device


# --------------------------------------------------------------------------- records
@dataclass
class TrainHistory:
    """Everything a training run recorded, step by step.

    Attributes:
        steps, loss, accuracy, lr: per optimisation step: the 1-based step number, the
            mini-batch loss, the mini-batch top-1 accuracy (NaN when unknown) and the learning
            rate of the first parameter group.
        eval_steps, test_loss, test_accuracy: test-set evaluations (``stats.evaluate``).
        spectrum_steps, spectra: the step and :class:`SpectralDensity` of each curvature check.
        top_eigenvalues: for each check, the largest Ritz values (descending) of the probe
            with the widest spectrum; ``top_residuals`` their residuals ``|beta_m s_i[m-1]|``.
        events: ``(step, text)``: optimiser switches, checkpoints, stops.
        status: ``"running"``, ``"finished"``, ``"interrupted"`` or ``"failed"``.
        steps_done: completed optimisation steps.
        seconds: wall time; ``curvature_seconds`` of it spent in curvature checks.
    """

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    spectrum_steps: list[int] = field(default_factory=list)
    spectra: list[Any] = field(default_factory=list)
    top_eigenvalues: list[list[float]] = field(default_factory=list)
    top_residuals: list[list[float]] = field(default_factory=list)
    events: list[tuple[int, str]] = field(default_factory=list)
    status: str = "running"
    steps_done: int = 0
    seconds: float = 0.0
    curvature_seconds: float = 0.0
    curvature: str = "hessian"

    def to_dict(self) -> dict[str, Any]:
        """Plain Python (JSON-ready); each spectrum as its ``to_dict()``."""
        out = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "spectra"
        }
        out["events"] = [list(e) for e in self.events]
        out["spectra"] = [s.to_dict() for s in self.spectra]
        return out

    def save(self, path: str | Path) -> Path:
        """Write the history as JSON (spectra included as their dicts)."""
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".json")
        return atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> TrainHistory:
        """Read a history written by :meth:`save` (spectra come back as ``SpectralDensity``)."""
        data = json.loads(Path(path).read_text())
        spectra = data.pop("spectra", [])
        data["events"] = [tuple(e) for e in data.get("events", [])]
        hist = cls(**data)
        if spectra:
            from .spectral import SpectralDensity

            hist.spectra = [_density_from_dict(SpectralDensity, s) for s in spectra]
        return hist

    def __repr__(self) -> str:
        last = f"{self.loss[-1]:.4g}" if self.loss else "-"
        test = f"{self.test_loss[-1]:.4g}" if self.test_loss else "-"
        acc = f"{self.test_accuracy[-1]:.3f}" if self.test_accuracy else "-"
        top = f"{self.top_eigenvalues[-1][0]:.4g}" if self.top_eigenvalues else "-"
        return (
            f"TrainHistory(status={self.status!r}, steps={self.steps_done}, loss={last}, "
            f"test_loss={test}, test_acc={acc}, lambda_max={top}, spectra={len(self.spectra)}, "
            f"seconds={self.seconds:.2f})"
        )


def _density_from_dict(cls: Any, d: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in d.items():
        if k in names:
            kwargs[k] = (
                torch.tensor(v, dtype=torch.float64)
                if k in ("ritz_values", "weights", "residuals")
                else v
            )
    if kwargs.get("ritz_vectors") is not None:
        kwargs["ritz_vectors"] = torch.tensor(kwargs["ritz_vectors"])
    return cls(**kwargs)


@dataclass
class TrainResult:
    """What :func:`train` (and ``%%curv_train --out NAME``) returns: the run's objects and history."""

    model: nn.Module
    optimizer: Any
    loss_fn: Any
    history: TrainHistory
    #: the :class:`~jupyter_curvature.training.Trainer` that ran (``trainer.fit()`` goes on)
    trainer: Any = None

    @property
    def status(self) -> str:
        return self.history.status

    def __repr__(self) -> str:
        return f"TrainResult(model={type(self.model).__name__}, optimizer={type(self.optimizer).__name__}, history={self.history!r})"


@dataclass
class TrainState:
    """The live state handed to callbacks."""

    model: nn.Module
    optimizer: Any
    loss_fn: Any
    history: TrainHistory
    total_steps: int
    step: int = 0
    epoch: int = 0
    started: float = field(default_factory=time.perf_counter)
    #: the :class:`~jupyter_curvature.training.Trainer` running the steps
    trainer: Any = None

    @property
    def lr(self) -> float:
        """The step size in force (the trainer's, which knows SWATS's phases)."""
        return self.trainer.lr if self.trainer is not None else current_lr(self.optimizer)


def current_lr(optimizer: Any) -> float:
    """The step size of the first parameter group (SWATS after its switch: its SGD rate)."""
    groups = getattr(optimizer, "param_groups", None)
    if groups:
        g = groups[0]
        if g.get("phase") == "sgd" and g.get("sgd_lr") is not None:
            return float(g["sgd_lr"])
        return float(g.get("lr", float("nan")))
    return float(getattr(optimizer, "lr", float("nan")))


class TrainCallback:
    """Hooks called by :func:`train`; all optional. ``TrainingDashboard`` implements them."""

    def on_train_begin(self, state: TrainState) -> None: ...
    def on_step_end(self, state: TrainState) -> None: ...
    def on_evaluate(self, state: TrainState) -> None: ...
    def on_spectrum(self, state: TrainState) -> None: ...
    def on_event(self, state: TrainState, text: str) -> None: ...
    def on_train_end(self, state: TrainState) -> None: ...


class StateRecorder(TrainCallback):
    """Keeps the live :class:`TrainState`, so a caller still has the history if training raises."""

    def __init__(self) -> None:
        self.state: TrainState | None = None

    def on_train_begin(self, state: TrainState) -> None:
        self.state = state

    def result(self) -> TrainResult | None:
        s = self.state
        return None if s is None else TrainResult(s.model, s.optimizer, s.loss_fn, s.history)


class TqdmProgress(TrainCallback):
    """The terminal fallback of the dashboard: a tqdm bar with the loss, and one line per event."""

    def __init__(self, **tqdm_kwargs: Any) -> None:
        self.bar: Any = None
        self.kwargs = tqdm_kwargs

    def on_train_begin(self, state: TrainState) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=state.total_steps, unit="step", **self.kwargs)

    def on_step_end(self, state: TrainState) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{state.history.loss[-1]:.4g}", refresh=False)

    def on_spectrum(self, state: TrainState) -> None:
        h = state.history
        self.bar.write(
            f"step {h.spectrum_steps[-1]}: largest {h.curvature} eigenvalues "
            + ", ".join(f"{v:.4g}" for v in h.top_eigenvalues[-1])
            + f" (2/lr = {2 / state.lr:.4g})"
        )

    def on_evaluate(self, state: TrainState) -> None:
        h = state.history
        self.bar.write(
            f"step {h.eval_steps[-1]}: test loss {h.test_loss[-1]:.4g}, accuracy {h.test_accuracy[-1]:.4f}"
        )

    def on_event(self, state: TrainState, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)

    def on_train_end(self, state: TrainState) -> None:
        if self.bar is not None:
            self.bar.close()


def _batches(data: Any) -> Iterable[Any]:
    if (
        isinstance(data, tuple)
        and len(data) == 2
        and all(isinstance(v, torch.Tensor) for v in data)
    ):
        return [data]
    return data


def _subset(data: Any, max_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``max_samples`` samples of ``data`` as one batch (fixed data for the spectra).

    A shuffling DataLoader's generator is restored afterwards, so taking the subset does not
    change the order in which training then sees the data.
    """
    gen = getattr(data, "generator", None)
    state = gen.get_state() if isinstance(gen, torch.Generator) else None
    try:
        return _first_samples(data, max_samples)
    finally:
        if state is not None:
            gen.set_state(state)


def _first_samples(data: Any, max_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys, count = [], [], 0
    for x, y in _batches(data):
        xs.append(x)
        ys.append(y)
        count += len(x)
        if count >= max_samples:
            break
    return torch.cat(xs)[:max_samples], torch.cat(ys)[:max_samples]


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
    batches = list(_batches(data))
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


def _default_step(
    model: nn.Module, x: Any, y: Any, ctx: dict[str, Any]
) -> tuple[torch.Tensor, Any]:
    outputs = model(x)
    return ctx["loss_fn"](outputs, y), outputs


def make_operator(
    model: nn.Module, loss_fn: Any, data: Any, *, ggn: bool = False, params: Any = None
):
    """``HessianOperator`` or ``GGNOperator`` (``ggn=True``) of ``loss_fn`` over ``data``."""
    from .operators import GGNOperator, HessianOperator

    cls = GGNOperator if ggn else HessianOperator
    return cls(model, loss_fn, data, params=params)


def top_of_density(density: Any, k: int) -> tuple[list[float], list[float]]:
    """The ``k`` largest Ritz values (descending) of the probe reaching the largest one, with residuals."""
    theta = density.ritz_values
    res = density.residuals
    probe = int(theta.max(dim=1).values.argmax())
    order = torch.argsort(theta[probe], descending=True)[:k]
    return theta[probe][order].tolist(), res[probe][order].tolist()


#: the TrainHistory status of each Trainer status
_STATUS = {"completed": "finished", "interrupted": "interrupted", "stopped": "stopped"}


class _Bridge:
    """A :class:`~jupyter_curvature.training.Trainer` callback that keeps the
    :class:`TrainHistory` and calls the :class:`TrainCallback` hooks (the dashboard's).

    It also runs the test evaluations (every ``eval_every`` steps, on the side: RNG states,
    buffers and K-FAC statistics are left as they were, so they never change the training;
    each is recorded in the trainer's history as an ``evaluation`` event, so it is in the
    checkpoints) and gives every ``checkpoint-last.pt`` the trainer writes a numbered copy
    ``checkpoint-<step>.pt``, announced as an event.
    """

    def __init__(
        self,
        state: TrainState,
        callbacks: list[Any],
        *,
        test_data: Any,
        eval_every: int | None,
        spectrum_every: int,
        curvature: Any,
        top_k: int,
    ) -> None:
        self.state = state
        self.callbacks = callbacks
        self.test_data = test_data
        self.eval_every = eval_every
        self.spectrum_every = spectrum_every
        self.curvature = curvature
        self.top_k = top_k
        self.numbered: set[int] = set()

    def emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self.state, *args)

    def event(self, step: int, text: str) -> None:
        self.state.history.events.append((step, text))
        self.emit("on_event", text)

    # --- Trainer hooks ------------------------------------------------------------
    def on_train_begin(self, trainer: Any) -> None:
        st, h = self.state, self.state.history
        st.trainer, st.total_steps = trainer, trainer.total_steps
        st.step, st.epoch = trainer.step, trainer.epoch
        if self.eval_every is None:
            self.eval_every = self.spectrum_every or trainer.steps_per_epoch
        if trainer.step and not h.steps:  # resumed: the finished steps come from the checkpoint
            s = trainer.history.steps
            h.steps, h.loss = list(s["step"]), list(s["loss"])
            h.accuracy, h.lr = list(s["accuracy"]), list(s["lr"])
            for ev in trainer.history.events:
                self._record(ev, emit=False)
            h.steps_done = trainer.step
        self.emit("on_train_begin")

    def on_epoch_begin(self, trainer: Any, epoch: int) -> None:
        self.state.epoch = epoch

    def on_step_end(self, trainer: Any, logs: dict[str, Any]) -> None:
        st, h = self.state, self.state.history
        st.step = h.steps_done = trainer.step
        h.steps.append(logs["step"])
        h.loss.append(logs["loss"])
        h.accuracy.append(logs["accuracy"])
        h.lr.append(logs["lr"])
        self.emit("on_step_end")
        if self.test_data is not None and trainer.step % self.eval_every == 0:
            self.evaluate(trainer)

    def on_curvature(self, trainer: Any, record: dict[str, Any]) -> None:
        h = self.state.history
        step, density = self.curvature.results[-1]
        top, res = top_of_density(density, self.top_k)
        h.spectrum_steps.append(step)
        h.spectra.append(density)
        h.top_eigenvalues.append(top)
        h.top_residuals.append(res)
        h.curvature_seconds += record["seconds"]
        self.emit("on_spectrum")

    def on_event(self, trainer: Any, event: dict[str, Any]) -> None:
        if event.get("event") == "checkpoint":
            event = self._numbered_copy(trainer, event)
            if event is None:
                return
        self._record(event, emit=True)

    # --- helpers ------------------------------------------------------------------
    def evaluate(self, trainer: Any) -> None:
        """Test loss and accuracy now, recorded as an ``evaluation`` event."""
        t0 = time.perf_counter()
        with trainer.quiet():
            ev = trainer.evaluate(self.test_data)
        self.state.history.curvature_seconds += time.perf_counter() - t0
        trainer.record_event(
            {"event": "evaluation", "test_loss": ev["loss"], "test_accuracy": ev["accuracy"]}
        )

    def _record(self, event: dict[str, Any], *, emit: bool) -> None:
        h, step, kind = self.state.history, event.get("step", 0), event.get("event")
        if kind == "evaluation":
            h.eval_steps.append(step)
            h.test_loss.append(float(event["test_loss"]))
            h.test_accuracy.append(float(event["test_accuracy"]))
            if emit:
                self.emit("on_evaluate")
            return
        if kind in ("interrupted", "stopped"):
            text = f"{kind} at step {step}"
        elif kind == "checkpoint":
            text = f"checkpoint {Path(event['path']).name}"
        else:
            text = _describe_event(event)
        if emit:
            self.event(step, text)
        else:
            h.events.append((step, text))

    def _numbered_copy(self, trainer: Any, event: dict[str, Any]) -> dict[str, Any] | None:
        """Copy a fresh ``checkpoint-last.pt`` to ``checkpoint-<step>.pt`` (atomically: a
        temporary file, then ``os.replace``); ``None`` if this step has its copy already."""
        import shutil

        step = event["step"]
        if step in self.numbered:
            return None
        self.numbered.add(step)
        last = Path(event["path"])
        target = last.with_name(f"checkpoint-{step:06d}.pt")
        if trainer.rank == 0:  # under DDP only rank 0 writes files
            with open(last, "rb") as source:
                atomic_write(target, lambda f: shutil.copyfileobj(source, f), what="checkpoint")
        return {**event, "path": str(target)}


def train(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: Any = None,
    optimizer: Any = None,
    epochs: int | None = None,
    steps: int | None = None,
    step_fn: StepFn | None = None,
    test_data: Any = None,
    eval_every: int | None = None,
    spectrum_every: int = 0,
    ggn: bool = False,
    spectrum_iters: int = 30,
    spectrum_probes: int = 2,
    spectrum_samples: int = 256,
    top_k: int = 3,
    max_overhead: float | None = None,
    device: torch.device | str | None = None,
    callbacks: Iterable[TrainCallback] = (),
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool | str | Path | None = None,
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
    the Hessian (GGN with ``ggn=True``) of ``loss_fn`` on ``spectrum_samples`` training
    samples drawn once by ``seed`` is computed by SLQ
    (:class:`~jupyter_curvature.training.CurvatureCallback`: ``spectrum_iters`` Lanczos
    steps, ``spectrum_probes`` probes; it never changes the training), and its ``top_k``
    largest Ritz values are recorded: the quantity to compare with the stability threshold
    ``2 / lr`` of gradient descent (Cohen et al., ICLR 2021, "edge of stability"). With
    ``max_overhead`` (a fraction such as 0.15) a due spectrum is skipped when spectra would
    take more than that share of the training time; ``None`` computes every one.

    An interrupt (SIGINT, the kernel's Interrupt button) stops at once at the last finished
    step (a step in its forward or backward pass is undone; one in its update is completed
    first), with ``history.status == "interrupted"``. An exception from ``step_fn`` ends the
    run with status ``"failed"`` (the failing step undone) and propagates after the
    callbacks' ``on_train_end``.

    Args:
        model: the network (trained in place).
        data: a DataLoader (its dataset, batch size and shuffling are used), a list of
            ``(inputs, targets)`` tensor batches (read in order), or one batch.
        loss_fn: the criterion (default cross-entropy).
        optimizer: a ``torch.optim.Optimizer`` (default SGD, lr 0.1).
        epochs, steps: how long; ``steps`` wins; default one epoch.
        step_fn: a custom step ``(model, x, y, ctx) -> (loss, outputs or None)``; ``ctx``
            holds ``loss_fn``, ``optimizer`` and ``state`` (the :class:`TrainState`).
        test_data: evaluated every ``eval_every`` steps (default: every ``spectrum_every``
            steps if set, else each epoch) and at the end.
        max_overhead: budget of the live spectra as a fraction of the training time.
        device: move the model there; the batches follow.
        callbacks: objects with :class:`TrainCallback` hooks (the dashboard is one).
        seed: seeds the data order of a shuffling DataLoader, the spectrum samples and probes.
        checkpoint_dir: the trainer's atomic checkpoints (model, optimiser, RNG states,
            position in the data, history): ``checkpoint-last.pt`` at the end of every epoch,
            every ``checkpoint_every`` steps, at the end and when interrupted, each with a
            numbered copy ``checkpoint-<step>.pt`` announced as an event.
        resume: a checkpoint path, or ``True`` for ``checkpoint_dir/checkpoint-last.pt`` (if
            it exists), to continue from.

    Raises:
        InputError: unusable data or settings (one-line message).
    """
    from .training import CurvatureCallback, Trainer

    loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    if device is not None:
        model.to(device)
    if optimizer is None:
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise InputError(
            f"the optimiser is {_type_name(optimizer)}; training needs a torch.optim.Optimizer"
        )
    if steps is not None and steps < 1:
        raise InputError(f"the number of steps must be at least 1, got {steps}")
    if resume is True and checkpoint_dir is None:
        raise InputError("resuming needs the checkpoint folder (--checkpoint-dir)")
    source, loader_kwargs = _train_source(data)
    history = TrainHistory(curvature="ggn" if ggn else "hessian")
    state = TrainState(model, optimizer, loss_fn, history, total_steps=0)
    curvature = None
    if spectrum_every:
        curvature = CurvatureCallback(
            every=spectrum_every, curvature=history.curvature, num_iters=spectrum_iters,
            num_probes=spectrum_probes, subsample=spectrum_samples, seed=seed,
            max_overhead=max_overhead, at_start=True, top_k=top_k,
        )  # fmt: skip
    bridge = _Bridge(
        state, list(callbacks), test_data=test_data, eval_every=eval_every,
        spectrum_every=spectrum_every, curvature=curvature, top_k=top_k,
    )  # fmt: skip
    trainer_step = None
    if step_fn is not None:
        ctx: dict[str, Any] = {"loss_fn": loss_fn, "optimizer": optimizer, "state": state}
        user_step = step_fn

        def trainer_step(module: nn.Module, x: Any, y: Any) -> tuple[torch.Tensor, Any]:
            calls: list[Any] = []
            hook = module.register_forward_hook(lambda _m, _args, out: calls.append(out))
            try:
                loss, outputs = user_step(module, x, y, ctx)
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

    try:
        trainer = Trainer(
            model, optimizer, source, loss_fn=loss_fn,
            epochs=None if steps is not None else (1 if epochs is None else int(epochs)),
            steps=steps, callbacks=[bridge] + ([curvature] if curvature else []),
            checkpoint_dir=checkpoint_dir, checkpoint_steps=checkpoint_every,
            step_fn=trainer_step, seed=seed, **loader_kwargs,
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise InputError(str(exc).splitlines()[0]) from None
    state.trainer, state.total_steps = trainer, trainer.total_steps
    t_start = time.perf_counter()
    try:
        trainer.fit(resume=resume or None)
        history.status = _STATUS.get(trainer.status, trainer.status)
        if (
            history.status == "finished"
            and test_data is not None
            and history.eval_steps[-1:] != [trainer.step]
        ):
            bridge.evaluate(trainer)
    except BaseException as exc:
        history.status = "failed"
        bridge.event(
            trainer.step, f"failed at step {trainer.step + 1}: {type(exc).__name__}: {exc}"
        )
        raise
    finally:
        history.steps_done = state.step = trainer.step
        history.seconds = time.perf_counter() - t_start
        bridge.emit("on_train_end")
    return TrainResult(model, optimizer, loss_fn, history, trainer)


def _describe_event(ev: Any) -> str:
    if isinstance(ev, dict) and ev.get("event") == "swats_switch":
        return (
            f"SWATS switched group {ev.get('group')} from Adam to SGD "
            f"(lr {ev.get('sgd_lr', float('nan')):.4g})"
        )
    return str(ev)


# --------------------------------------------------------------------------- spectrum
@dataclass
class SpectrumResult:
    """What :func:`spectrum` returns: the density, optional certified top eigenpairs, the setup."""

    density: Any
    eigen: Any = None
    curvature: str = "hessian"
    params: Any = None
    num_params: int = 0

    def __repr__(self) -> str:
        return f"SpectrumResult(curvature={self.curvature!r}, n={self.num_params}, density={self.density!r})"


def spectrum(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: Any = None,
    ggn: bool = False,
    num_iters: int = 80,
    num_probes: int = 4,
    top: int = 0,
    params: Any = None,
    seed: int = 0,
    tol: float = 1e-3,
) -> SpectrumResult:
    """SLQ spectral density of the Hessian (or GGN) and, with ``top=k``, the ``k`` largest eigenpairs.

    The density is :func:`~jupyter_curvature.spectral.spectral_density` (``num_iters``,
    ``num_probes``, ``seed``); the eigenpairs :func:`~jupyter_curvature.spectral.eigenpairs`
    with ``which="LA"`` and relative tolerance ``tol``, each with its residual.
    """
    from .spectral import eigenpairs, spectral_density

    loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    op = make_operator(model, loss_fn, data, ggn=ggn, params=params)
    dens = spectral_density(op, num_iters=num_iters, num_probes=num_probes, seed=seed)
    eig = None
    if top:
        if top >= op.shape[0]:
            raise InputError(
                f"--top {top}: must be smaller than the number of parameters ({op.shape[0]})"
            )
        eig = eigenpairs(op, k=top, which="LA", tol=tol, seed=seed, warn=False)
    return SpectrumResult(dens, eig, "ggn" if ggn else "hessian", params, op.shape[0])


# --------------------------------------------------------------------------- statistics
@dataclass
class StatsResult:
    """What :func:`statistics` returns: the engine's records, any of which may be None."""

    evaluation: Any = None
    gradients: Any = None
    curvature: Any = None
    norms: Any = None
    layers: Any = None

    def records(self) -> list[Any]:
        return [
            r
            for r in (self.evaluation, self.gradients, self.curvature, self.norms, self.layers)
            if r is not None
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (getattr(self, k).to_dict() if getattr(self, k) is not None else None)
            for k in ("evaluation", "gradients", "curvature", "norms", "layers")
        }

    def __str__(self) -> str:
        return "\n\n".join(str(r) for r in self.records())

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


#: the statistics %curv_stats can compute
STATS_KINDS = ("evaluation", "gradients", "curvature", "norms", "layers")


def statistics(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: Any = None,
    include: Iterable[str] = STATS_KINDS,
    ggn: bool = False,
    num_probes: int = 8,
    batch_size: int = 128,
    seed: int = 0,
    layers: Any = None,
) -> StatsResult:
    """The advanced statistics of :mod:`jupyter_curvature.stats` in one call.

    ``include`` picks from ``evaluation`` (loss, accuracy), ``gradients`` (gradient mean,
    variance, SNR over mini-batches of ``batch_size``), ``curvature`` (Hutchinson-type
    statistics with ``num_probes`` probes), ``norms`` (weight norms) and ``layers`` (per-layer
    largest eigenvalue and trace).
    """
    from . import stats

    include = list(include)
    bad = [k for k in include if k not in STATS_KINDS]
    if bad:
        raise InputError(f"unknown statistics {bad}; choose from {', '.join(STATS_KINDS)}")
    loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    curv = "ggn" if ggn else "hessian"
    out = StatsResult()
    if "evaluation" in include:
        out.evaluation = stats.evaluate(model, loss_fn, data, topk=(1,))
    if "gradients" in include:
        out.gradients = stats.gradient_statistics(model, loss_fn, data, batch_size=batch_size)
    if "curvature" in include:
        out.curvature = stats.curvature_statistics(
            model,
            loss_fn,
            data,
            curvature=curv,
            num_probes=num_probes,
            batch_size=batch_size,
            seed=seed,
        )
    if "norms" in include:
        out.norms = stats.weight_norms(model)
    if "layers" in include:
        out.layers = stats.layer_curvature(model, loss_fn, data, layers, curvature=curv, seed=seed)
    return out
