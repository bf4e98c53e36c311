"""The :class:`CurvMagics` class: its settings (traitlets), the panels it shows and closes
(re-running a cell closes the panels its previous run made), the task it runs in a worker
behind a progress panel, and ``%curv_help``. The other magics are functions of their own
modules, each with its options, taken here as methods.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.display import display
from traitlets import Bool, CaselessStrEnum, Float

from .. import tasks
from . import landscape, spectrum, stats, train

__all__ = ["HELP", "CurvMagics"]

HELP = """\
jupyter_curvature magics  (each has its own help: %curv_train?  %curv_spectrum?  %curv_stats?)

%%curv_train --model NAME --data NAME [options]      train with a live dashboard
    %%curv_train --model mlp --data digits --steps 200 --lr 0.1 --spectrum-every 50 --out run
    %%curv_train --model net --data loader --optimizer adam --lr 1e-3 --epochs 2
    x = x.flatten(1)              # the cell body is the training step: x, y, batch, model,
    outputs = model(x)            # loss_fn, optimizer and step are bound; it must set `loss`
    loss = loss_fn(outputs, y)    # (`outputs`: needed only when the body calls model twice)
  Interrupt the kernel to stop at the last finished step: the model, the optimiser and
  the history (--out) are kept. --checkpoint-dir DIR writes exact-resume checkpoints;
  --resume continues from DIR/checkpoint-last.pt.

%curv_spectrum --model NAME --data NAME [--curvature hessian|ggn] [--num-iters N] [--num-probes N] [--top-k K] [--tol T] [--params PATTERN] [--blocks [NAMES]] [--memory-budget SIZE] [--basis-dtype float64|float32] [--basis-device DEV] [--reorthogonalize full|none] [--out NAME]
    %curv_spectrum --model run.model --data digits --top-k 5 --out dens
    %curv_spectrum --model run.model --data digits --blocks    (each block's spectrum too)
    %curv_spectrum --model net --data loader --curvature ggn --params classifier
    %curv_spectrum --model big --data loader --memory-budget 8GB    (picks the basis that fits)

%curv_stats --model NAME --data NAME [--include LIST] [--num-probes N] [--out NAME]
    %curv_stats --model run.model --data digits:test --out st

%curv_landscape --model NAME --data NAME [...]       loss landscape along eigenvectors

NAME is a variable of the notebook (a model, a DataLoader, an optimiser; dotted paths such
as run.model work) or a built-in name: models {models}; data {datasets} (digits:test for
the test split). Settings: %config CurvMagics.widgets = "auto" | "on" | "off";
%config CurvMagics.interval = 0.25 (seconds between dashboard updates).
"""


def _has_ipywidgets() -> bool:
    """Whether ipywidgets can be imported (without it the magics print text)."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


@magics_class
class CurvMagics(Magics):
    """The ``%curv_*`` magics. Settings are traitlets (``%config CurvMagics.widgets = "off"``)."""

    widgets = CaselessStrEnum(
        ["auto", "on", "off"],
        default_value="auto",
        help="Show ipywidgets panels: 'auto' (in a Jupyter kernel), 'on', or 'off' (text and tqdm).",
    ).tag(config=True)
    static_figures = Bool(
        True,
        help="Add a PNG of each finished panel to its output (saved notebooks show it where "
        "widgets do not render: nbconvert --to html, GitHub).",
    ).tag(config=True)
    interval = Float(
        0.25,
        help="Minimum seconds between two updates of a dashboard or progress line "
        "(4 per second by default; 0 draws every event).",
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._panels: dict[Any, list[Any]] = {}
        self._cell_key: Any = None
        self.last_panel: Any = None
        self.last_result: Any = None
        self._axis_guard: Any = None  # the hidden bqplot axis guard shown by %load_ext
        self._running: tuple[str, Any] | None = None  # (magic, Worker) of the computation
        if shell is not None:
            shell.events.register("pre_run_cell", self._pre_run_cell)

    # ------------------------------------------------------------------ panel lifecycle
    def _pre_run_cell(self, info: Any) -> None:
        cell_id = getattr(info, "cell_id", None)
        self._cell_key = cell_id or ("raw", getattr(info, "raw_cell", None))
        self._close_panels(self._cell_key)

    def _close_panels(self, key: Any) -> None:
        for panel in self._panels.pop(key, []):
            try:
                panel.close()
            except Exception:  # an already closed or broken panel must not block the cell
                pass

    def _show(self, panel: Any, key_hint: str) -> None:
        key = self._cell_key if self._cell_key is not None else ("direct", key_hint)
        if self._cell_key is None:
            self._close_panels(key)
        self._panels.setdefault(key, []).append(panel)
        self.last_panel = panel
        if self.static_figures:
            panel.display()  # keeps the handle: publish_static adds the figure when finished
        else:
            display(panel)

    def _publish_static(self, panel: Any) -> None:
        """Add the finished ``panel``'s static fallback (a PNG) to its output, so that a saved
        notebook shows the figure where widgets do not render (nbconvert, GitHub)."""
        if panel is not None and self.static_figures:
            panel.publish_static()

    def track_panel(self, panel: Any) -> None:
        """Attach ``panel`` (anything with ``close()``) to the running cell: re-running the cell or
        ``%unload_ext`` closes it."""
        key = self._cell_key if self._cell_key is not None else ("direct", id(panel))
        self._panels.setdefault(key, []).append(panel)

    def close_all(self) -> None:
        """Close every panel the magics made (``%unload_ext`` calls this)."""
        for key in list(self._panels):
            self._close_panels(key)

    @property
    def use_widgets(self) -> bool:
        if self.widgets == "auto":  # a kernel with ipywidgets installed
            kernel = bool(self.shell is not None and self.shell.has_trait("kernel"))
            return kernel and _has_ipywidgets()
        return self.widgets == "on"

    # ------------------------------------------------------------------ helpers
    @property
    def ns(self) -> dict[str, Any]:
        return self.shell.user_ns if self.shell is not None else {}

    def _run_task(self, name: str, title: str, task: Any, line: str, **kwargs: Any) -> Any:
        """``task(**kwargs)`` in a worker with a progress panel (or tqdm bars without widgets).

        The panel appears at once; Cancel or a kernel interrupt stops the task before its
        next product and the partial result is returned. One computation at a time: a magic
        started while another runs is refused with a UsageError. Returns ``(result, panel)``,
        ``(None, panel)`` when cancelled before the first product.
        """
        from ..core.progress import Cancelled, Worker, tqdm_callback

        if self._running is not None and self._running[1].running:
            raise UsageError(
                f"%{name}: %{self._running[0]} is still running; press its Cancel button "
                "(or interrupt the kernel) and run this again when it has stopped"
            )
        panel = None
        if self.use_widgets:
            from ..widgets.progress import ProgressPanel

            panel = ProgressPanel(title, interval=self.interval)
            on_event = panel.update
        else:
            on_event = tqdm_callback()
        worker = Worker(lambda **ctl: task(**ctl, **kwargs), on_event=on_event)
        if panel is not None:
            panel.attach(worker)
            self._show(panel, f"{name} {line}")
        self._running = (name, worker)
        try:
            result = worker.run()
        except Cancelled as exc:
            if panel is not None:
                panel.finish(message=str(exc))
                self._publish_static(panel)
            else:
                print(f"%{name}: {exc}")
            return None, panel
        except BaseException:
            if panel is not None:
                panel.close()
            raise
        finally:
            self._running = None
        return result, panel

    def _store(self, name: str | None, value: Any) -> None:
        if name:
            self.ns[name] = value

    # ------------------------------------------------------------------ %curv_help
    @line_magic
    def curv_help(self, line: str = "") -> None:
        """Show every jupyter_curvature magic with examples."""
        from .. import models

        print(
            HELP.format(
                models=", ".join(models.available()[:12]) + ", ...",
                datasets=", ".join(sorted(tasks.DATASETS)),
            )
        )
        for func in (self.curv_train, self.curv_spectrum, self.curv_stats):
            print(func.__func__.parser.format_help())

    # ------------------------------------------------------------------ the other magics
    # functions of their own modules (their first argument is this instance); a function
    # that is a class attribute is a method, and line_magic records it under its name
    curv_train = line_cell_magic(train.curv_train)
    curv_spectrum = line_magic(spectrum.curv_spectrum)
    curv_stats = line_magic(stats.curv_stats)
    curv_landscape = line_magic(landscape.curv_landscape)
