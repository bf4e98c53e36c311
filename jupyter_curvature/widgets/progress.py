"""The panel of a running computation: a progress line, a Cancel button, partial results.

A magic shows this panel at once, runs its task in a
:class:`~jupyter_curvature.core.progress.Worker` and feeds it every
:class:`~jupyter_curvature.core.progress.ProgressEvent`: the line says the phase, step ``k`` of
``n``, the products so far, the elapsed time and an ETA; the partial results fill in below
(the current largest-eigenvalue estimates with their residuals, the density of the Lanczos
steps done, the statistics finished). **Cancel** stops the computation before its next
product and keeps what is done; so does a kernel interrupt (the worker's wait turns it into a
cancel). When the task ends, :meth:`ProgressPanel.finish` puts the finished panel (spectrum,
statistics) in place of the partial results.

Closing the panel while its worker runs cancels the worker and waits for its thread to end
(the engine restores the model as it found it), so no thread is left running; events that
arrive after the close are ignored.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as W

from ..core.progress import ProgressEvent, Worker
from ._base import Panel, Throttle, html_table

__all__ = ["ProgressPanel"]


class ProgressPanel(Panel):
    """Progress line, Cancel button and partial results of one computation.

    Args:
        title: what runs (``"Hessian spectrum of run.model"``).
        interval: least seconds between two redraws of the partial results (events that
            end a phase always redraw).

    Attributes:
        status: the progress line (``HTML``).
        cancel_button: the Cancel button.
        partial_html: the partial results (``HTML``).
        body: where the finished panel goes.
        events: how many progress events arrived (redrawn or not).
        result_panel: the finished panel, once :meth:`finish` has put it in.
    """

    def __init__(self, title: str, interval: float = 0.25) -> None:
        super().__init__()
        self.title = title
        self.worker: Worker | None = None
        self.events = 0
        self.last_event: ProgressEvent | None = None
        self.result_panel: Any = None
        self._throttle = Throttle(interval)
        self._partials: dict[str, str] = {}
        self.status = self._own(W.HTML(f"<b>{html.escape(title)}</b>: starting"))
        self.cancel_button = self._own(
            W.Button(description="Cancel", icon="stop", tooltip="stop at the next product")
        )
        self.cancel_button.on_click(self.callback(lambda _b: self.cancel()))
        self.partial_html = self._own(W.HTML(""))
        self.body = self._own(W.VBox([]))
        self._set_root(
            [self._own(W.HBox([self.status, self.cancel_button])), self.partial_html, self.body]
        )

    # ------------------------------------------------------------------ the worker
    def attach(self, worker: Worker) -> Worker:
        """Let Cancel (and closing the panel) stop ``worker``."""
        self.worker = worker
        return worker

    def cancel(self) -> None:
        """Stop the computation before its next product (any number of times, at any time)."""
        worker = self.worker
        if worker is None or worker.done.is_set():
            return
        worker.cancel()
        if not self.closed:
            self.cancel_button.description = "Cancelling..."
            self.cancel_button.disabled = True

    def close(self) -> None:
        """Cancel a running worker, wait for its thread to end, then close every widget."""
        worker = self.worker
        if worker is not None:
            worker.cancel()
            if worker.started.is_set() and not worker.done.is_set():
                worker.join()
        super().close()

    # ------------------------------------------------------------------ events
    def update(self, event: ProgressEvent) -> None:
        """Show ``event`` (called in the worker thread); ignored once the panel is closed."""
        with self._lock:
            if self.closed:
                return
            self.events += 1
            self.last_event = event
            if not self._throttle.ready(force=event.done):
                return
            self.status.value = f"<b>{html.escape(self.title)}</b>: {html.escape(event.describe())}"
            text = _partial_html(event)
            if text:
                self._partials[event.phase] = text
                self.partial_html.value = "".join(self._partials.values())

    def finish(self, panel: Any = None, message: str | None = None) -> None:
        """The computation has ended: show ``panel`` (the finished result) and ``message``."""
        with self._lock:
            if self.closed:
                if panel is not None:
                    panel.close()
                return
            self.cancel_button.layout.display = "none"
            event = self.last_event
            if message is None:
                cancelled = self.worker is not None and self.worker.token.cancelled
                took = f" in {event.elapsed:.1f} s" if event is not None else ""
                message = (
                    f"cancelled{took}: partial result (not certified)"
                    if cancelled
                    else f"done{took}"
                )
            self.status.value = f"<b>{html.escape(self.title)}</b>: {html.escape(message)}"
            if panel is not None:
                self.result_panel = self._own(panel)
                self.partial_html.value = ""
                self.body.children = (panel.root,)


def _partial_html(event: ProgressEvent) -> str:
    """The partial result of ``event`` as a small HTML table ("" if it has none to show)."""
    if event.phase == "eigenpairs":
        part = event.partial
        if isinstance(part, dict):
            rows = [
                [i + 1, f"{v:.6g}", f"{r:.2e}"]
                for i, (v, r) in enumerate(zip(part["eigenvalues"], part["residuals"]))
            ]
            return html_table(
                ["#", "eigenvalue (estimate)", "residual"], rows, "Largest eigenvalues so far"
            )
    if event.phase == "density":
        part = event.partial
        if part is not None and hasattr(part, "ritz_values"):
            lo, hi = float(part.ritz_values.min()), float(part.ritz_values.max())
            rows = [
                ["Lanczos steps", f"{part.num_steps} of {part.num_iters}"],
                ["Ritz values", f"[{lo:.4g}, {hi:.4g}]"],
            ]
            return html_table(["", "so far"], rows, "Spectral density so far")
    if event.phase == "statistics":
        part = event.partial
        records = part.records() if part is not None and hasattr(part, "records") else []
        if records:
            names = ", ".join(getattr(r, "title", "") or type(r).__name__ for r in records)
            return html_table(["", ""], [["finished", names]], "Statistics so far")
    return ""
