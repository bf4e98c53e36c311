"""The panel base class: owns its widgets, closes them all, shows callback errors, throttles.

Every panel of :mod:`jupyter_curvature.widgets` is a plain Python object that builds a tree
of ipywidgets/bqplot widgets under one root box. ipywidgets keeps every widget alive in
``ipywidgets.widgets.widget._instances`` until ``close()`` is called, and closing a bqplot
``Figure`` leaves its marks, scales, axes and layouts alive (ipywidgets#1345; verified by
``tests/test_widgets.py``), so :meth:`Panel.close` walks the whole tree
of widget-valued traits and closes every node.

Exceptions raised inside ``observe``/``on_click`` callbacks are silent in Jupyter (they go
to the kernel log). :meth:`Panel.callback` wraps a callback so that its traceback is written
into the panel's own ``Output`` widget (``panel.errors``) and counted, never swallowed.

Updates from a training loop are throttled by time (:class:`Throttle`): Jupyter Server drops
IOPub traffic beyond 1000 messages/s or 1 MB/s, and every bqplot update re-sends whole
arrays, so a panel pushes at most every ``interval`` seconds (0.25 s by default, 4/s).

A saved notebook keeps its panels in two ways. The front end (JupyterLab with widget-state
saving on, or nbclient's ``store_widget_state=True``) saves every widget model under the
notebook metadata's ``application/vnd.jupyter.widget-state+json``, so a reopened notebook
renders the views again. And a finished panel adds a *static fallback* to its own display
output (:meth:`Panel.publish_static`): the output's mime bundle carries, besides the widget
view, an ``image/png`` of the panel's :meth:`to_matplotlib` figure. Front ends that render
widgets choose the view; ``jupyter nbconvert --to html`` without widget state and GitHub's
notebook viewer, which render no widgets, show the image (nbconvert's
``WidgetsDataTypeFilter`` skips a view whose model is not in the saved state).
"""

from __future__ import annotations

import base64
import functools
import io
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ipywidgets as W

from ._bqplot_guard import BqplotAxisGuard

__all__ = ["Panel", "Throttle", "close_tree", "iter_widget_tree", "html_table", "png_base64"]

#: resolution of the static fallback images: a 10 x 7 inch figure is about 60 kB of PNG
STATIC_DPI = 72


class Throttle:
    """Time-based rate limiter: :meth:`ready` is True at most once per ``interval`` seconds.

    Args:
        interval: minimum seconds between two pushes (0 disables throttling).
        clock: a monotonic clock (injectable for tests).
    """

    def __init__(self, interval: float = 0.25, clock: Callable[[], float] = time.monotonic):
        if interval < 0:
            raise ValueError(f"interval must be >= 0 seconds, got {interval}")
        self.interval = float(interval)
        self._clock = clock
        self._last = -float("inf")
        self.pushes = 0  # how many times ready() said yes
        self.skipped = 0  # how many times it said no

    def ready(self, force: bool = False) -> bool:
        """True (and restart the interval) when a push is due or ``force`` is set."""
        now = self._clock()
        if force or now - self._last >= self.interval:
            self._last = now
            self.pushes += 1
            return True
        self.skipped += 1
        return False


def _widgets_in(value: Any) -> Iterator[W.Widget]:
    if isinstance(value, W.Widget):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _widgets_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _widgets_in(v)


def iter_widget_tree(roots: Iterable[W.Widget]) -> list[W.Widget]:
    """Every widget reachable from ``roots`` through synced traits (children, marks, scales...)."""
    seen: dict[int, W.Widget] = {}
    stack = list(roots)
    while stack:
        w = stack.pop()
        if id(w) in seen:
            continue
        seen[id(w)] = w
        for name in w.keys:  # the synced trait names
            try:
                value = getattr(w, name)
            except Exception:  # a trait that cannot be read is not a child
                continue
            stack.extend(_widgets_in(value))
    return list(seen.values())


def close_tree(roots: Iterable[W.Widget]) -> int:
    """Close every widget reachable from ``roots``; returns how many were open."""
    nodes = iter_widget_tree(roots)
    opened = 0
    for w in nodes:
        if w.comm is not None:
            opened += 1
        w.close()
    return opened


def html_table(headers: list[str], rows: list[list[Any]], title: str | None = None) -> str:
    """A small HTML table; floats get 6 significant digits, numbers are right-aligned."""
    import html

    def cell(v: Any) -> str:
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.6g}"
        if v is None:
            return "-"
        return html.escape(str(v))

    def align(v: Any) -> str:
        return "right" if isinstance(v, (int, float)) and not isinstance(v, bool) else "left"

    head = "".join(
        f"<th style='text-align:left;padding:0 8px'>{html.escape(h)}</th>" for h in headers
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td style='text-align:{align(v)};padding:0 8px;font-family:monospace'>{cell(v)}</td>"
            for v in row
        )
        + "</tr>"
        for row in rows
    )
    cap = f"<b>{html.escape(title)}</b>" if title else ""
    return f"{cap}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def png_base64(fig: Any, dpi: int = STATIC_DPI) -> str:
    """``fig`` (a matplotlib figure) as base64 PNG text, the form a notebook output stores.

    A figure made through pyplot is closed afterwards, so that the inline backend does not
    show it a second time at the end of the cell.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    if getattr(fig, "number", None) is not None:  # registered with pyplot
        import matplotlib.pyplot as plt

        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class Panel:
    """Base class of the panels: one root widget, owned children, an error area, close().

    Subclasses build their widgets in ``__init__`` (registering each with :meth:`_own` or
    just putting them under :attr:`root`), then call :meth:`_set_root`. Display a panel with
    ``display(panel)`` or by leaving it as the last expression of a cell.

    Attributes:
        root: the top-level ``VBox``.
        errors: an ``Output`` that receives the traceback of any failing callback.
        error_count: how many callback errors were shown.
        closed: True after :meth:`close`.
        display_handle: the ``DisplayHandle`` of :meth:`display` (``None`` before).
        static: the static fallback added to the panel's mime bundle (``{}`` before
            :meth:`publish_static`): ``{"image/png": base64 text}``.
    """

    #: True for panels that are finished when built (a spectrum, statistics): they carry
    #: their static fallback from the first display on
    static_on_display = False

    def __init__(self) -> None:
        self._owned: list[W.Widget] = []
        self._children: list[Panel] = []
        self.errors = self._own(W.Output(layout=W.Layout(max_height="240px", overflow="auto")))
        self.error_count = 0
        self.last_error: BaseException | None = None
        self.closed = False
        self.root: W.Box | None = None
        self._lock = threading.RLock()  # callbacks may run on a comm subshell thread
        self.display_handle: Any = None
        self.static: dict[str, str] = {}

    # ownership ---------------------------------------------------------------------------
    def _own(self, widget: Any) -> Any:
        """Register a widget (or a child panel) so that :meth:`close` closes it."""
        if isinstance(widget, Panel):
            self._children.append(widget)
        else:
            self._owned.append(widget)
        return widget

    def _set_root(self, children: list[W.Widget], **layout: Any) -> None:
        # the hidden guard comes first, so that it is in place before any figure renders
        guard = BqplotAxisGuard()
        self.root = self._own(W.VBox([guard, *children, self.errors], layout=W.Layout(**layout)))

    def widgets(self) -> list[W.Widget]:
        """Every widget this panel owns, its children's included (for tests and leak checks)."""
        roots = list(self._owned)
        for child in self._children:
            roots.extend(child.widgets())
        return iter_widget_tree(roots)

    def close(self) -> None:
        """Close every widget of the panel and of its child panels (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for child in self._children:
            child.close()
        close_tree(self._owned)

    def __enter__(self) -> Panel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # errors ------------------------------------------------------------------------------
    def show_error(self, exc: BaseException, where: str = "callback") -> None:
        """Write ``exc``'s traceback into :attr:`errors` (visible in the panel)."""
        self.error_count += 1
        self.last_error = exc
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if self.closed:  # the Output is gone: the error is still counted and kept
            return
        self.errors.append_stderr(f"Error in {where}:\n{text}")

    def callback(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a widget callback so that an exception shows in the panel instead of vanishing."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                with self._lock:
                    return fn(*args, **kwargs)
            except Exception as exc:  # shown, counted, and kept for tests
                self.show_error(exc, getattr(fn, "__name__", "callback"))
                return None

        return wrapper

    # display -----------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        if self.root is None:
            return {"text/plain": repr(self)}
        if self.static_on_display and not self.static and not self.closed:
            self._render_static_or_show_error()
        bundle = self.root._repr_mimebundle_(**kwargs)
        if bundle is not None and self.static:
            bundle = {**bundle, **self.static}
        return bundle

    def display(self) -> Any:
        """Display the panel and keep the handle, so that :meth:`publish_static` can add the
        static fallback to this output when the panel is finished. Returns the handle."""
        from IPython.display import display

        self.display_handle = display(self, display_id=True)
        return self.display_handle

    def to_matplotlib(self, **kw: Any) -> Any:
        """The panel's figures as one matplotlib figure (``None``: the panel has none)."""
        return None

    def render_static(self) -> dict[str, str]:
        """Draw :meth:`to_matplotlib` into :attr:`static` (``{}`` when there is no figure)."""
        fig = self.to_matplotlib()
        self.static = {} if fig is None else {"image/png": png_base64(fig)}
        return self.static

    def _render_static_or_show_error(self) -> dict[str, str]:
        # the fallback is an extra: a figure that fails to draw is shown in the panel, never
        # raised from a display or a magic
        try:
            return self.render_static()
        except Exception as exc:
            self.static = {}
            self.show_error(exc, "the static figure")
            return {}

    def publish_static(self) -> bool:
        """The panel is finished: add its static fallback to the output :meth:`display` made.

        Sends an ``update_display_data`` message with the same widget view plus the
        ``image/png``; front ends that render widgets re-render the view, the saved
        notebook keeps the image as its fallback. Returns False (and does nothing) for a
        closed panel, one not shown through :meth:`display`, or one without a figure.
        """
        if self.closed or self.display_handle is None:
            return False
        if not self._render_static_or_show_error():
            return False
        self.display_handle.update(self)
        return True

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} ({state})>"


def track_panel(shell: Any, panel: Any) -> None:
    """Attach ``panel`` to the running cell through the shell's ``CurvMagics`` (re-running the
    cell or ``%unload_ext`` closes it); nothing without ``%load_ext jupyter_curvature``.

    Found among the shell's configurables by its method, so that the widgets need not import
    the magics package (which imports them).
    """
    for configurable in getattr(shell, "configurables", []):
        track = getattr(configurable, "track_panel", None)
        if callable(track):
            track(panel)
            return
