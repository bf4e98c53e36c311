"""Progress events and cancellation for every long computation (spectra, statistics).

The engine reports through one small typed event, :class:`ProgressEvent` (phase, step ``k`` of
``n``, operator products so far, elapsed time, an ETA, and a lazily computed partial result),
sent to a ``progress=`` callback; it stops when a :class:`CancelToken` (or any
``threading.Event``) is set, checked **before each operator product**, and returns what it
has computed so far, marked ``cancelled`` (never certified). With nothing computed yet it
raises :class:`Cancelled`.

* :class:`Progress` is what the engine holds: :meth:`Progress.of` turns the user's
  ``progress=`` (``None``, ``True`` for a tqdm bar, a callable, or a parent :class:`Progress`
  from a task that runs several phases) and ``cancel=`` into one tracker.
* :func:`tqdm_callback` draws one ``tqdm.auto`` bar per phase (imported only when asked for).
* :class:`Worker` runs a computation in a thread while the calling thread waits on an event:
  a ``KeyboardInterrupt`` during the wait cancels it (the partial result is kept), and a
  front end (a notebook panel's Cancel button, a closed panel) cancels it from another
  thread. It is what the magics use; it has nothing Jupyter-specific.

ETA: ``elapsed_in_phase / k * (n - k)``, the products so far extrapolated at their mean
cost (Lanczos steps cost the same, up to the growing reorthogonalisation).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CancelToken",
    "Cancelled",
    "Progress",
    "ProgressEvent",
    "Worker",
    "tqdm_callback",
]


class Cancelled(Exception):
    """A computation was cancelled before it had anything to return.

    Attributes:
        phase: the phase that was running.
    """

    def __init__(self, phase: str = "", message: str | None = None) -> None:
        self.phase = phase
        super().__init__(
            message
            or f"cancelled before the first product{f' of {phase}' if phase else ''}: "
            "nothing was computed"
        )


class CancelToken:
    """A cancellation flag shared between the computation and whoever may stop it.

    Thread-safe (a ``threading.Event``); cancelling twice, or after the end, does nothing more.
    Any object with ``is_set()`` (a ``threading.Event``) is accepted wherever a token is.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the computation to stop before its next product (idempotent)."""
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __repr__(self) -> str:
        return f"CancelToken(cancelled={self.cancelled})"


@dataclass
class ProgressEvent:
    """One progress report.

    Attributes:
        phase: what runs (``"density"``, ``"eigenpairs"``, ``"trace"``, ``"gradients"``...).
        step: steps done in this phase (``k``; a Lanczos step is one block product).
        total: steps the phase may take (``n``; a budget for runs that stop when converged),
            or None when unknown.
        products: operator products made in this phase so far (a block of ``p`` counts ``p``).
        elapsed: seconds since the outermost computation started.
        eta: estimated seconds left in this phase (None before the first step).
        done: the phase has ended (finished, converged or cancelled).
        cancelled: cancellation was requested.
    """

    phase: str
    step: int
    total: int | None
    products: int
    elapsed: float
    eta: float | None
    done: bool = False
    cancelled: bool = False
    _partial: Callable[[], Any] | None = field(default=None, repr=False, compare=False)
    _cache: list[Any] = field(default_factory=list, repr=False, compare=False)

    @property
    def partial(self) -> Any:
        """The partial result so far, computed on first access (None if the phase has none).

        ``density``: the :class:`~jupyter_curvature.spectral.SpectralDensity` of the steps
        done; ``eigenpairs``: ``{"eigenvalues": [...], "residuals": [...]}`` of the current
        wanted Ritz pairs; statistics: the finished section.
        """
        if not self._cache:
            self._cache.append(self._partial() if self._partial is not None else None)
        return self._cache[0]

    @property
    def fraction(self) -> float | None:
        return None if not self.total else min(self.step / self.total, 1.0)

    def describe(self) -> str:
        """One line: ``density: step 12/80, 48 products, 1.2 s, about 6.8 s left``."""
        of = f"/{self.total}" if self.total else ""
        text = f"{self.phase}: step {self.step}{of}, {self.products} products, {self.elapsed:.1f} s"
        if self.cancelled:
            return text + ", cancelled"
        if self.done:
            return text + ", done"
        if self.eta is not None:
            text += f", about {self.eta:.1f} s left"
        return text


def _is_set(cancel: Any) -> bool:
    return cancel is not None and bool(cancel.is_set())


class Progress:
    """The engine's tracker: emits :class:`ProgressEvent` and answers "cancelled?".

    Build it with :meth:`of`; a computation calls :meth:`step` before each product and
    :meth:`finish` at its end. ``step`` returns True when the computation must stop.
    """

    def __init__(
        self,
        callback: Callable[[ProgressEvent], Any] | None = None,
        cancel: Any = None,
        phase: str = "",
        total: int | None = None,
        *,
        start: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if cancel is not None and not callable(getattr(cancel, "is_set", None)):
            raise TypeError(
                "cancel must be a jupyter_curvature.CancelToken or a threading.Event, "
                f"got {type(cancel).__name__}"
            )
        self.callback = callback
        self.cancel = cancel
        self.phase = phase
        self.total = total
        self._clock = clock
        self.start = clock() if start is None else start
        self.phase_start = clock()
        self.step_count = 0
        self.products = 0

    @classmethod
    def of(
        cls, progress: Any = None, cancel: Any = None, phase: str = "", total: int | None = None
    ) -> Progress:
        """A tracker for one phase from a call's ``progress=`` and ``cancel=`` arguments.

        Args:
            progress: ``None``/``False`` (no events), ``True`` (a ``tqdm.auto`` bar), a
                callable taking a :class:`ProgressEvent`, or a :class:`Progress` (a task's
                tracker: this phase shares its callback, its clock and its cancel token).
            cancel: a :class:`CancelToken` or ``threading.Event`` (overrides the parent's).
            phase, total: the phase's name and its number of steps.
        """
        if isinstance(progress, Progress):
            return progress.child(phase, total, cancel)
        if progress is True:
            callback: Any = tqdm_callback()
        elif progress is None or progress is False:
            callback = None
        elif callable(progress):
            callback = progress
        else:
            raise TypeError(
                "progress must be None, True (a tqdm bar), a callable taking a ProgressEvent "
                f"or a jupyter_curvature.Progress, got {type(progress).__name__}"
            )
        return cls(callback, cancel, phase, total)

    def child(self, phase: str, total: int | None = None, cancel: Any = None) -> Progress:
        """A tracker for a sub-phase: same callback, clock start and token."""
        return Progress(
            self.callback, self.cancel if cancel is None else cancel, phase, total,
            start=self.start, clock=self._clock,
        )  # fmt: skip

    @property
    def cancelled(self) -> bool:
        return _is_set(self.cancel)

    def _event(self, done: bool, partial: Callable[[], Any] | None) -> ProgressEvent:
        now = self._clock()
        k, n = self.step_count, self.total
        eta = None
        if not done and k > 0 and n:
            eta = max(n - k, 0) * (now - self.phase_start) / k
        return ProgressEvent(
            self.phase, k, n, self.products, now - self.start, eta, done, self.cancelled, partial
        )

    def step(
        self, step: int, products: int | None = None, partial: Callable[[], Any] | None = None
    ) -> bool:
        """Report ``step`` steps done (before the next product); True: stop now (cancelled).

        ``partial``: a zero-argument function returning the partial result (called only if a
        callback reads :attr:`ProgressEvent.partial`).
        """
        self.step_count = int(step)
        if products is not None:
            self.products = int(products)
        if self.callback is not None:
            self.callback(self._event(False, partial))
        return self.cancelled

    def finish(self, products: int | None = None, partial: Callable[[], Any] | None = None,
               step: int | None = None) -> None:  # fmt: skip
        """Report the end of the phase (finished, converged or cancelled)."""
        if step is not None:
            self.step_count = int(step)
        if products is not None:
            self.products = int(products)
        if self.callback is not None:
            self.callback(self._event(True, partial))


def tqdm_callback(**tqdm_kwargs: Any) -> Callable[[ProgressEvent], None]:
    """A progress callback that draws one ``tqdm.auto`` bar per phase (closed at its end).

    ``tqdm.auto`` shows a notebook bar in Jupyter and a text bar elsewhere; ``tqdm_kwargs``
    go to each bar (``file=``, ``disable=``, ``leave=``...).
    """
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def callback(event: ProgressEvent) -> None:
        bar = bars.get(event.phase)
        if bar is None:
            bar = bars[event.phase] = tqdm(
                total=event.total, desc=event.phase, unit="step", **tqdm_kwargs
            )
        if event.total is not None and bar.total != event.total:
            bar.total = event.total
        bar.n = event.step
        bar.set_postfix(products=event.products, refresh=False)
        bar.refresh()
        if event.done:
            if event.cancelled:
                bar.set_description(f"{event.phase} (cancelled)")
            bar.close()
            del bars[event.phase]
        if event.cancelled and event.done:  # inner phases that ended without a report
            for other in bars.values():
                other.close()
            bars.clear()

    return callback


class Worker:
    """Run ``fn(progress=callback, cancel=token)`` in a thread; wait for it on an event.

    :meth:`run` starts the thread and waits. A ``KeyboardInterrupt`` during the wait does what
    :meth:`cancel` does: the computation stops before its next product and its partial result
    is returned (a second interrupt keeps waiting for that product to end). The worker's
    exception, if any, is raised again in the waiting thread. :meth:`cancel` is safe from any
    thread, any number of times, before, during or after the run.

    Args:
        fn: the computation; receives ``progress`` and ``cancel`` keywords.
        on_event: called with each :class:`ProgressEvent` (in the worker thread).
        name: the thread's name.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        on_event: Callable[[ProgressEvent], Any] | None = None,
        name: str = "jupyter-curvature-worker",
    ) -> None:
        self.fn = fn
        self.on_event = on_event
        self.token = CancelToken()
        self.done = threading.Event()
        self.started = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.interrupted = False
        self._thread = threading.Thread(target=self._target, name=name, daemon=True)

    @property
    def running(self) -> bool:
        return self.started.is_set() and not self.done.is_set()

    def _emit(self, event: ProgressEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _target(self) -> None:
        try:
            self.result = self.fn(progress=self._emit, cancel=self.token)
        except BaseException as exc:  # handed to the waiting thread
            self.error = exc
        finally:
            self.done.set()

    def start(self) -> Worker:
        self.started.set()
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Stop before the next product (idempotent; harmless after the end)."""
        self.token.cancel()

    def join(self) -> None:
        """Wait until the thread has ended (interrupts cancel and keep waiting)."""
        if not self.started.is_set():
            return
        while True:
            try:
                self.done.wait()
                self._thread.join()
                return
            except KeyboardInterrupt:
                self.interrupted = True
                self.cancel()

    def wait(self) -> Any:
        """:meth:`join`, then the result (or the worker's exception raised here)."""
        self.join()
        if self.error is not None:
            raise self.error
        return self.result

    def run(self) -> Any:
        """:meth:`start` then :meth:`wait`."""
        return self.start().wait()
