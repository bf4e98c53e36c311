"""The live dashboard for curvature checks made outside the package's Trainer.

The Lightning and Hugging Face callbacks and ``jc.track`` run their checks through a
:class:`~jupyter_curvature.integrations.tracker.Tracker`, which calls its loggers after each
check. :class:`CheckFeed` is such a logger: it keeps the records and draws them on a
:class:`~jupyter_curvature.widgets.TrainingDashboard`, the same panel ``%%curv_train``
shows::

    dash = TrainingDashboard("Lightning run")
    display(dash)
    callback = CurvatureCallback(curvature_batch, every=50, loggers=[dash.feed()])
    pl.Trainer(callbacks=[callback], max_steps=2000).fit(module)

The top-k against the step with ``2 / lr``, the latest density with its band over probes and
the statistics come from the checks; the loss curve from the losses the tracker is given
(``tracker.step(loss=...)``; the Lightning callback passes the training step's loss, the
Hugging Face one the losses of its logging steps). The accuracy panel stays empty: the loops
report no accuracy to a callback.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

__all__ = ["CheckFeed"]


class CheckFeed:
    """A tracker logger (``log(record, result)``) that draws the checks on a dashboard.

    Args:
        dashboard: the :class:`~jupyter_curvature.widgets.TrainingDashboard` to draw on.
        total_steps: the run's length, for the progress bar (``None``: the bar is hidden).

    Attributes:
        records: the check records, in order; ``densities``: the densities of the checks.
    """

    def __init__(self, dashboard: Any, total_steps: int | None = None) -> None:
        self.dashboard = dashboard
        self.total_steps = total_steps
        self.records: list[dict[str, Any]] = []
        self.densities: list[tuple[int, Any]] = []
        self.loss_steps: list[int] = []
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self.steps_done = 0
        self.curvature_seconds = 0.0
        self.status = "running"

    # --- the logger interface -------------------------------------------------------------
    def log_step(self, step: int, loss: float | None = None, lr: float | None = None) -> None:
        """One optimiser step: its loss (when known) and learning rate, for the curves."""
        self.steps_done = int(step)
        if loss is not None:
            self.loss_steps.append(int(step))
            self.losses.append(float(loss))
            self.lrs.append(float(lr) if lr is not None else float("nan"))
            self.dashboard.refresh(self, "curves")

    def log(self, record: dict[str, Any], result: Any) -> None:
        """One check: its record (``step``, ``top_eigenvalues``, ``lr``, ``stats``...)."""
        self.records.append(record)
        self.steps_done = max(self.steps_done, int(record["step"]))
        self.curvature_seconds += float(record.get("seconds", 0.0))
        density = getattr(result, "density", None)
        if density is not None and callable(getattr(density, "density", None)):
            self.densities.append((int(record["step"]), density))
        self.dashboard.refresh(self, "spectrum", force=True)

    def close(self) -> None:
        """The run ended: the status line says so (the panel stays open)."""
        self.status = "finished"
        self.dashboard.refresh(self, "all", force=True)

    # --- what the dashboard draws -----------------------------------------------------------
    def view(self) -> SimpleNamespace:
        """The fields of :func:`~jupyter_curvature.training.training_view`, from the checks."""
        checks = self.records
        last = checks[-1] if checks else {}
        stats = dict(last.get("stats") or {})
        for key in ("trace", "negative_mass"):
            if key in last:
                stats.setdefault(key, last[key])
        stats.setdefault("largest", last.get("lambda_max"))
        stats.setdefault("smallest", last.get("lambda_min"))
        lrs = [r.get("lr", float("nan")) for r in checks]  # the rate in force at each check
        return SimpleNamespace(
            steps=list(self.loss_steps), loss=list(self.losses), accuracy=[], lr=list(self.lrs),
            eval_steps=[], test_loss=[], test_accuracy=[],
            spectrum_steps=[s for s, _ in self.densities],
            spectra=[d for _, d in self.densities],
            curvature=last.get("curvature", "hessian"),
            top_steps=[r["step"] for r in checks],
            top_eigenvalues=[list(r.get("top_eigenvalues") or []) for r in checks],
            thresholds=[2.0 / lr if lr > 0 else float("nan") for lr in lrs],
            stats=stats if checks else {}, events=[], status=self.status,
            steps_done=self.steps_done, total_steps=self.total_steps or self.steps_done,
            curvature_seconds=self.curvature_seconds,
        )  # fmt: skip
