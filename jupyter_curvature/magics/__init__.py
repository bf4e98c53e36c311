"""The IPython extension: ``%load_ext jupyter_curvature`` and the ``%curv_*`` magics.

* ``%curv_help``: every magic, its options and examples.
* ``%%curv_train``: train a model with a live dashboard (loss, accuracy, spectral density,
  largest eigenvalues against ``2 / lr``, statistics, events); the cell body, if any, is the
  training step.
* ``%curv_spectrum``: the Hessian/GGN spectral density with its band, Ritz values, top
  eigenvalues and statistics, with broadening and log/linear controls.
* ``%curv_stats``: the advanced statistics as tables and a per-layer view.
* ``%curv_landscape``: the loss-landscape explorer (``jupyter_curvature.widgets.landscape``).

The modules: :mod:`.curv_magics` (the :class:`CurvMagics` class: settings, panels, the
worker, ``%curv_help``); one module per magic with its options and its body, a function whose
first argument is the :class:`CurvMagics` instance (the class takes it as a method):
:mod:`.train`, :mod:`.spectrum`, :mod:`.stats`, :mod:`.landscape`; and :mod:`.arguments`
(the flags they share, the task keywords each takes, parsing a line). This file registers
and removes them.

Pattern (anywidget's and jupysql's extensions): the package's ``__init__`` imports this
package only inside ``load_ipython_extension``; a :class:`CurvMagics` *instance* is registered
and appended to ``shell.configurables`` so ``%config CurvMagics.widgets = "off"`` works; user
mistakes are plain ``UsageError`` one-liners (no traceback; subclassing ``UsageError`` is
broken, ipython#14024); re-running a cell closes the panels its previous run made (a
``pre_run_cell`` hook keyed by ``info.cell_id``); training runs in the kernel's main thread
on the engine's :class:`~jupyter_curvature.training.Trainer` (through
:func:`jupyter_curvature.tasks.train`) and stops cleanly at a step boundary on an interrupt.
``%curv_spectrum`` and ``%curv_stats`` show a :class:`~jupyter_curvature.widgets.progress.ProgressPanel`
at once and run their task in a :class:`~jupyter_curvature.core.progress.Worker` thread while
the cell waits: Cancel or an interrupt stops it before the next product and keeps the partial
result; one such computation runs at a time.
The magics only parse their line; :func:`.arguments.keywords` maps it to task keywords
(deprecated flags such as ``--ggn`` or ``--iters`` are renamed there and shown as a one-line
note).
"""

from __future__ import annotations

from typing import Any

from IPython.display import display

from .curv_magics import HELP as HELP  # the text of %curv_help, importable from here as before
from .curv_magics import CurvMagics

__all__ = ["CurvMagics", "load_ipython_extension", "track_panel", "unload_ipython_extension"]


# --------------------------------------------------------------------------- extension
def load_ipython_extension(ip: Any) -> None:
    """Register :class:`CurvMagics` on ``ip`` (idempotent; called by ``%load_ext``)."""
    existing = _instance(ip)
    if existing is not None:
        return
    magics = CurvMagics(shell=ip, parent=ip)
    ip.register_magics(magics)
    if magics not in ip.configurables:  # some IPython versions add it already
        ip.configurables.append(magics)
    if magics.use_widgets:
        # installed now, before any panel's figures render (see widgets/_bqplot_guard.py)
        from ..widgets._bqplot_guard import BqplotAxisGuard

        magics._axis_guard = BqplotAxisGuard()
        display(magics._axis_guard)


def __getattr__(name: str) -> Any:
    # track_panel is public here too (%curv_landscape uses it), imported on first use: the
    # widgets module imports ipywidgets, which the magics must not need in text mode
    if name == "track_panel":
        from ..widgets._base import track_panel

        return track_panel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _instance(ip: Any) -> CurvMagics | None:
    return next((c for c in getattr(ip, "configurables", []) if isinstance(c, CurvMagics)), None)


def unload_ipython_extension(ip: Any) -> None:
    """Remove the magics, the cell hook and every panel they opened (``%unload_ext``)."""
    magics = _instance(ip)
    if magics is None:
        return
    magics.close_all()
    if magics._axis_guard is not None:
        magics._axis_guard.close()
    try:
        ip.events.unregister("pre_run_cell", magics._pre_run_cell)
    except ValueError:
        pass
    manager = ip.magics_manager
    for kind in ("line", "cell"):
        table = manager.magics[kind]
        for key in [k for k, f in table.items() if getattr(f, "__self__", None) is magics]:
            del table[key]
    manager.registry.pop(type(magics).__name__, None)
    ip.configurables[:] = [c for c in ip.configurables if c is not magics]
