"""The one record of a training run: :class:`History`.

The :class:`~jupyter_curvature.training.Trainer` appends to it (a step's row only once the
step is complete, see :mod:`jupyter_curvature.training.atomic_step`), it travels inside
every checkpoint as :meth:`History.to_dict` (plain lists and dicts, readable with
``torch.load(weights_only=True)``), and it is saved as JSON through the package's one JSON
policy (:func:`jupyter_curvature.core.records.write_json`: NaN and infinities become
``null``; :meth:`History.load` turns the ``null`` of a number column back into NaN).

Besides the stored columns it offers the views that front ends draw (the live dashboard,
the static figures): the test evaluations against the step (:attr:`History.eval_steps`,
:attr:`History.test_loss`, :attr:`History.test_accuracy`), the curvature checks
(:attr:`History.spectrum_steps`, :attr:`History.top_eigenvalues`,
:attr:`History.curvature_seconds`) and one line per event (:meth:`History.event_lines`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.records import write_json

__all__ = ["STEP_COLUMNS", "History", "describe_event"]

#: the per-step columns, in order
STEP_COLUMNS = ("step", "epoch", "loss", "accuracy", "lr")
#: columns and record keys that hold floats (a JSON ``null`` there reads back as NaN)
_FLOAT_KEYS = frozenset(
    {"loss", "accuracy", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
     "seconds"}
)  # fmt: skip


def describe_event(event: dict[str, Any], with_step: bool = True) -> str:
    """One line for an event record (SWATS switch, checkpoint, stop, evaluation); without
    ``with_step`` no ``"step N: "`` prefix and checkpoints by file name (the dashboard's log)."""
    kind = event.get("event")
    prefix = f"step {event.get('step', 0)}: " if with_step else ""
    if kind == "swats_switch":
        return (
            f"{prefix}SWATS switched group {event['group']} from Adam to SGD "
            f"(lr {event['sgd_lr']:.4g})"
        )
    if kind == "checkpoint":
        path = event["path"] if with_step else Path(event["path"]).name
        return f"{prefix}checkpoint {path}"
    if kind in ("interrupted", "stopped"):
        return f"{kind} at step {event['step']}"
    if kind == "evaluation":
        return f"{prefix}test loss {event['test_loss']:.4g}, accuracy {event['test_accuracy']:.4f}"
    return str(event)


def _nan_if_none(key: str, value: Any) -> Any:
    return float("nan") if value is None and key in _FLOAT_KEYS else value


@dataclass
class History:
    """What a training run recorded.

    Attributes:
        steps: per optimisation step, columns ``step`` (1-based), ``epoch``, ``loss``,
            ``accuracy`` (NaN when the outputs are not class scores) and ``lr``.
        epochs: one record per finished epoch: ``epoch``, ``step``, ``train_loss``,
            ``train_accuracy`` (running averages over the epoch), ``test_loss``,
            ``test_accuracy`` (when evaluated), ``lr``, ``seconds``.
        curvature: one record per spectrum (see
            :class:`~jupyter_curvature.training.CurvatureCallback`): ``step``, ``epoch``,
            ``seconds``, ``lr``, ``curvature``, ``ritz_values``, ``weights``,
            ``lambda_max``, ``top_eigenvalues``, ``stats``, ...
        events: SWATS switches, checkpoints, evaluations, stops
            (``{"event": ..., "step": ...}``).
    """

    steps: dict[str, list] = field(default_factory=lambda: {k: [] for k in STEP_COLUMNS})
    epochs: list[dict[str, Any]] = field(default_factory=list)
    curvature: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    # --- columns --------------------------------------------------------------------------
    def metric(self, name: str) -> list[float]:
        """One column: a step column (``"loss"``, ...) or an epoch key (``"test_accuracy"``)."""
        if name in self.steps:
            return list(self.steps[name])
        if any(name in e for e in self.epochs):
            return [e.get(name) for e in self.epochs]
        raise KeyError(f"no metric {name!r}; steps: {list(self.steps)}, epochs: "
                       f"{list(self.epochs[0]) if self.epochs else []}")  # fmt: skip

    @property
    def steps_done(self) -> int:
        """Finished optimisation steps recorded (``len(history)``)."""
        return len(self)

    @property
    def loss(self) -> list[float]:
        """The mini-batch loss of every step."""
        return list(self.steps["loss"])

    @property
    def accuracy(self) -> list[float]:
        """The mini-batch top-1 accuracy of every step (NaN when unknown)."""
        return list(self.steps["accuracy"])

    @property
    def lr(self) -> list[float]:
        """The learning rate of the first parameter group after every step."""
        return list(self.steps["lr"])

    def _evaluations(self) -> list[tuple[int, float, float]]:
        """``(step, test_loss, test_accuracy)`` of every test evaluation, by step: the epoch
        records that hold test metrics and the ``evaluation`` events (one per step)."""
        found: dict[int, tuple[float, float]] = {}
        for e in self.epochs:  # records made by hand (or by old versions) may lack the step
            if e.get("test_loss") is not None and e.get("step") is not None:
                found[int(e["step"])] = (e["test_loss"], e.get("test_accuracy", float("nan")))
        for e in self.events:
            if e.get("event") == "evaluation":
                found[int(e["step"])] = (e["test_loss"], e.get("test_accuracy", float("nan")))
        return [(s, *found[s]) for s in sorted(found)]

    @property
    def eval_steps(self) -> list[int]:
        """The step of every test evaluation (epoch ends and ``evaluation`` events)."""
        return [s for s, _, _ in self._evaluations()]

    @property
    def test_loss(self) -> list[float]:
        """The test loss of every evaluation (aligned with :attr:`eval_steps`)."""
        return [float(v) for _, v, _ in self._evaluations()]

    @property
    def test_accuracy(self) -> list[float]:
        """The test accuracy of every evaluation (aligned with :attr:`eval_steps`)."""
        return [_nan_if_none("test_accuracy", a) for _, _, a in self._evaluations()]

    @property
    def spectrum_steps(self) -> list[int]:
        """The step of every curvature spectrum."""
        return [int(r["step"]) for r in self.curvature]

    @property
    def top_eigenvalues(self) -> list[list[float]]:
        """The largest Ritz values (descending) of every spectrum."""
        return [list(r.get("top_eigenvalues", [])) for r in self.curvature]

    @property
    def curvature_seconds(self) -> float:
        """Seconds spent computing the spectra."""
        return float(sum(r.get("seconds", 0.0) or 0.0 for r in self.curvature))

    def event_lines(self) -> list[tuple[int, str]]:
        """``(step, text)`` for every event (:func:`describe_event`, without the step)."""
        return [(int(e.get("step", 0)), describe_event(e, with_step=False)) for e in self.events]

    # --- records ----------------------------------------------------------------------------
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
        """The inverse of :meth:`to_dict` (``null`` in a number column reads as NaN)."""
        h = cls()
        steps = {k: [_nan_if_none(k, x) for x in v] for k, v in d.get("steps", {}).items()}
        h.steps = steps or h.steps
        h.epochs = [{k: _nan_if_none(k, v) for k, v in e.items()} for e in d.get("epochs", [])]
        h.curvature = [dict(c) for c in d.get("curvature", [])]
        h.events = [dict(e) for e in d.get("events", [])]
        return h

    def save(self, path: str | Path) -> Path:
        """Write the history as JSON (:func:`~jupyter_curvature.core.records.write_json`:
        NaN and infinities as ``null``), atomically; a path without suffix gets ``.json``."""
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".json")
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> History:
        """Read a history written by :meth:`save`."""
        import json

        return cls.from_dict(json.loads(Path(path).read_text()))

    def plot(self, **kwargs: Any) -> Any:
        """Loss and accuracy curves, train and test, as a matplotlib figure's axes
        (:func:`jupyter_curvature.plotting.plot_training_history`): per epoch when the run
        finished epochs, else per step. ``kwargs`` go to the plotter (``axes=``)."""
        from ..plotting import plot_training_history

        if self.epochs:
            return plot_training_history(self.epochs, x="epoch", **kwargs)
        columns = {"step": self.steps["step"], "train_loss": self.loss,
                   "train_accuracy": self.accuracy}  # fmt: skip
        return plot_training_history(columns, x="step", **kwargs)

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
