"""Atomic training steps: a step either completes or leaves the training exactly as before.

A step has two parts. The *attempt* (reading the batch, the forward and the backward pass)
has side effects outside the parameters: BatchNorm running statistics, draws from the
global RNGs (dropout, augmentations), K-FAC's pending statistics, gradients. The *update*
(``optimizer.step()``, the scheduler, the step counter, the history row) changes the state
that a checkpoint records.

:class:`AtomicStep` is the context manager around one step: on entry it takes a snapshot
of what the attempt may change (buffers and RNG states: cheap, no parameter copies); an
exception that leaves the block before :meth:`AtomicStep.commit` (an error, or a
``KeyboardInterrupt`` from Ctrl-C) restores the snapshot, drops K-FAC's pending statistics
and the gradients, so the model, the optimiser (whose state only the update touches) and
the history are exactly as before the step. :meth:`AtomicStep.commit` wraps the update:
a SIGINT arriving there is held back by :class:`InterruptGuard` until the update is
complete, then raised between steps.

>>> import torch
>>> from torch import nn
>>> model = nn.BatchNorm1d(3)
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
>>> before = model.running_mean.clone()
>>> try:
...     with AtomicStep(model, [opt], InterruptGuard()):
...         _ = model(torch.randn(4, 3))  # changes the running statistics
...         raise RuntimeError("failed in the forward pass")
... except RuntimeError:
...     pass
>>> torch.equal(model.running_mean, before)
True
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .checkpoint import rng_state, set_rng_state

__all__ = ["AtomicStep", "InterruptGuard"]


class InterruptGuard:
    """The trainer's SIGINT policy while ``fit`` runs (in the main thread).

    Outside an update a SIGINT raises ``KeyboardInterrupt`` at once (the step in progress
    is then undone by :class:`AtomicStep`); inside one (:meth:`deferred`) it is recorded
    in :attr:`pending` and raised by :meth:`raise_pending` once the update is complete.
    Under DDP every SIGINT is recorded (the ranks agree on it after the step: a lone rank
    leaving would hang the others); a second one before that forces the interrupt.

    Args:
        distributed: training runs under DistributedDataParallel.
    """

    def __init__(self, distributed: bool = False) -> None:
        self.distributed = distributed
        #: a SIGINT arrived and is not yet acted on
        self.pending = False
        #: an update is in progress
        self.critical = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.distributed and self.pending:
            raise KeyboardInterrupt
        if self.critical or self.distributed:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Install the handler for the block (main thread only; the previous one after)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        try:
            previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main interpreter
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block that a SIGINT does not interrupt (it is recorded in :attr:`pending`)."""
        self.critical = True
        try:
            yield
        finally:
            self.critical = False

    def raise_pending(self) -> None:
        """Raise the ``KeyboardInterrupt`` held back during an update (alone; under DDP
        the ranks first agree, see ``Trainer._agree_to_stop``)."""
        if self.pending and not self.distributed:
            self.pending = False
            raise KeyboardInterrupt


class AtomicStep:
    """One training step: undone by any exception that leaves it before :meth:`commit`.

    Args:
        model: the trained module (its buffers are restored).
        optimizers: the optimiser, then the preconditioner (``None`` allowed): their
            pending statistics are dropped (``discard_pending()``, K-FAC's) and the first
            one's (the optimiser's) gradients set to ``None``.
        interrupts: the :class:`InterruptGuard` whose :meth:`~InterruptGuard.deferred`
            block :meth:`commit` enters.
    """

    def __init__(
        self, model: nn.Module, optimizers: Sequence[Any], interrupts: InterruptGuard
    ) -> None:
        self.model = model
        self.optimizers = [o for o in optimizers if o is not None]
        self.interrupts = interrupts
        self.committed = False
        self._snapshot: tuple[list[torch.Tensor], dict[str, Any]] | None = None

    def __enter__(self) -> AtomicStep:
        p = next(self.model.parameters(), None)
        devices = [p.device] if p is not None and p.device.type == "cuda" else []
        buffers = [b.detach().clone() for b in self.model.buffers()]
        self._snapshot = (buffers, rng_state(devices))
        return self

    def rollback(self) -> None:
        """Restore the snapshot: buffers, RNG states; drop pending statistics and gradients."""
        buffers, rng = self._snapshot
        with torch.no_grad():
            for b, saved in zip(self.model.buffers(), buffers):
                b.copy_(saved)
        set_rng_state(rng)
        for obj in self.optimizers:
            if callable(getattr(obj, "discard_pending", None)):
                obj.discard_pending()
        if self.optimizers:
            self.optimizers[0].zero_grad(set_to_none=True)

    @contextlib.contextmanager
    def commit(self) -> Iterator[None]:
        """The update: from here on the step is not undone, and a SIGINT waits for the
        block's end (:meth:`InterruptGuard.deferred`)."""
        self.committed = True
        with self.interrupts.deferred():
            yield

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is not None and not self.committed:
            self.rollback()
        return False
