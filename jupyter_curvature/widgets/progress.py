"""The panel of a running computation: a progress line, a Cancel button, partial results.

A magic shows this panel at once, runs its task in a
:class:`~jupyter_curvature.core.progress.Worker` and feeds it every
:class:`~jupyter_curvature.core.progress.ProgressEvent`: the line says the phase, step ``k`` of
``n``, the products so far, the elapsed time and an ETA; the partial results fill in below
(the current largest-eigenvalue estimates with their residuals, the density of the Lanczos
steps done, the statistics finished). **Cancel** stops the computation before its next
product and keeps what is done; so does a kernel interrupt (the worker's wait turns it into a
cancel). When the task ends, :meth:`ProgressPanel.finish` puts the finished panel (spectrum,
statistics) in place of the partial results, and the magic adds the finished figure to the
output as its static fallback (:meth:`~jupyter_curvature.widgets._base.Panel.publish_static`).

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
        receive_while_cells_run(self.cancel_button)
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

    def to_matplotlib(self, **kw: Any) -> Any:
        """The finished panel's figure (``None`` before :meth:`finish` put one in)."""
        panel = self.result_panel
        return None if panel is None else panel.to_matplotlib(**kw)

    def render_static(self) -> dict[str, str]:
        """The finished figure as PNG; without one (cancelled, failed), the progress line and
        the partial results as HTML."""
        if self.result_panel is not None:
            return super().render_static()
        self.static = {"text/html": self.status.value + self.partial_html.value}
        return self.static


def receive_while_cells_run(widget: W.Widget) -> bool:
    """Let the front end's messages to ``widget`` run on the subshell it sends them on.

    ipykernel 7 routes a comm message to the subshell that last *published* on that comm
    (``BaseComm._reply_subshell_for``: a reply goes back to the loop that asked). A panel
    built by a running cell published from the main shell, so a click on Cancel waited in
    the main shell's queue until the cell ended, too late to stop anything (seen in
    JupyterLab 4.6 with ipykernel 7.4 by ``tests/browser``). A click asks for no reply: it
    is routed to the subshell the front end chose (JupyterLab >= 4.4 sends comm messages on
    one subshell per comm target), where it runs while the cell runs. Kernels without this
    routing are left as they are. Returns whether the routing was changed.
    """
    comm = getattr(widget, "comm", None)
    if comm is None or not callable(getattr(comm, "_reply_subshell_for", None)):
        return False
    comm._reply_subshell_for = lambda data, default: default  # the front end's subshell
    return True


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
