"""The live view of a training run for the magics' dashboard and progress bar.

:class:`LiveRecorder` is a :class:`~jupyter_curvature.training.Trainer` callback that keeps a
step-by-step :class:`TrainHistory` (losses, test evaluations, spectra with their largest Ritz
values) and calls the :class:`TrainCallback` hooks of the dashboard
(:class:`~jupyter_curvature.widgets.dashboard.TrainingDashboard`) and of :class:`TqdmProgress`.
It also runs the step-based test evaluations (recorded as ``evaluation`` events in the
trainer's own history, so they are in the checkpoints) and gives every ``checkpoint-last.pt``
a numbered copy.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.files import atomic_write
from ..core.records import write_json

__all__ = ["LiveRecorder", "TqdmProgress", "TrainCallback", "TrainHistory",
           "TrainState", "current_lr", "top_of_density"]  # fmt: skip


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
        """Write the history as JSON (spectra included as their dicts) through
        :func:`jupyter_curvature.core.records.write_json`: NaN is written as ``null``."""
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".json")
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TrainHistory:
        """Read a history written by :meth:`save` (spectra come back as ``SpectralDensity``)."""
        data = json.loads(Path(path).read_text())
        spectra = data.pop("spectra", [])
        data["events"] = [tuple(e) for e in data.get("events", [])]
        for key in ("loss", "accuracy", "lr", "test_loss", "test_accuracy"):  # null: NaN
            data[key] = [float("nan") if v is None else v for v in data.get(key, [])]
        for key in ("top_eigenvalues", "top_residuals"):
            data[key] = [
                [float("nan") if v is None else v for v in row] for row in data.get(key, [])
            ]
        hist = cls(**data)
        if spectra:
            from ..spectral import SpectralDensity

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


def batches_of(data: Any) -> Iterable[Any]:
    if (
        isinstance(data, tuple)
        and len(data) == 2
        and all(isinstance(v, torch.Tensor) for v in data)
    ):
        return [data]
    return data


def top_of_density(density: Any, k: int) -> tuple[list[float], list[float]]:
    """The ``k`` largest Ritz values (descending) of the probe reaching the largest one, with residuals."""
    theta = density.ritz_values
    res = density.residuals
    probe = int(theta.max(dim=1).values.argmax())
    order = torch.argsort(theta[probe], descending=True)[:k]
    return theta[probe][order].tolist(), res[probe][order].tolist()


#: the TrainHistory status of each Trainer status
STATUS = {"completed": "finished", "interrupted": "interrupted", "stopped": "stopped"}


class LiveRecorder:
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


def _describe_event(ev: Any) -> str:
    if isinstance(ev, dict) and ev.get("event") == "swats_switch":
        return (
            f"SWATS switched group {ev.get('group')} from Adam to SGD "
            f"(lr {ev.get('sgd_lr', float('nan')):.4g})"
        )
    return str(ev)
