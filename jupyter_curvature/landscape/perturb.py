"""Moving a network's weights along directions, exactly and reversibly.

Two ways in:

- :func:`perturbed`, a context manager: inside it the chosen parameters hold
  ``w0 + sum_i c_i d_i``; on leaving (normally, by an exception, or by ``KeyboardInterrupt``)
  the parameters and the buffers are restored **bitwise** from a copy taken on entry.
- :class:`Perturber`, for sliders: it keeps the origin ``w0`` taken once, and every
  :meth:`Perturber.apply` writes ``w0 + sum_i c_i d_i`` from that origin (never by adding
  steps, so nothing drifts); :meth:`Perturber.restore` puts the origin back bitwise.
  :meth:`Perturber.evaluate` computes the loss at a point **without touching the model**
  (``torch.func.functional_call`` on a private copy), so it is safe to call from another
  thread while the model trains.

The point is formed per parameter tensor in the wider of the parameter's and the
directions' dtypes (float64 directions keep ``w0 + t d`` exact to the model's precision),
then rounded once to the parameter's dtype. Terms with ``c_i == 0`` are skipped, so the
origin is reproduced bit for bit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.params import ParamSpec, flatten, select_parameters, unflatten
from .directions import as_directions

__all__ = ["perturbed", "Perturber", "as_coords", "copy_all"]


def as_coords(coords: Any, k: int, *, what: str = "coords") -> torch.Tensor:
    """``coords`` as a float64 CPU vector of length ``k``, checked.

    Raises:
        ValueError: a length other than ``k``, NaN or infinite entries.
        TypeError: not a number or a sequence of numbers.
    """
    if isinstance(coords, torch.Tensor):
        c = coords.detach().to("cpu", torch.float64)
    else:
        try:
            c = torch.as_tensor(np.asarray(coords, dtype=np.float64))
        except (TypeError, ValueError):
            raise TypeError(
                f"{what} must be a number or a sequence of {k} numbers, got {coords!r}"
            ) from None
    c = c.reshape(-1) if c.ndim == 0 else c
    if c.ndim != 1 or c.numel() != k:
        raise ValueError(
            f"{what} has {c.numel()} entries (shape {tuple(c.shape)}) but there are {k} "
            f"directions; give one coordinate per direction"
        )
    if not bool(torch.isfinite(c).all()):
        raise ValueError(f"{what} contains NaN or infinite values: {c.tolist()}")
    return c


def _work_dtype(p: torch.Tensor, d: torch.Tensor) -> torch.dtype:
    return torch.promote_types(p.dtype, d.dtype)


def _point(
    origin: Sequence[torch.Tensor], parts: Sequence[torch.Tensor], coords: torch.Tensor
) -> list[torch.Tensor]:
    """``w0 + sum_i c_i d_i`` per tensor; ``parts[j]`` is ``(k, *shape)``; zero terms skipped."""
    terms = [(i, float(c)) for i, c in enumerate(coords.tolist()) if c != 0.0]
    out = []
    for w0, d in zip(origin, parts, strict=True):
        if not terms:
            out.append(w0.clone())
            continue
        acc = w0.to(_work_dtype(w0, d))
        for i, c in terms:
            acc = acc + c * d[i]
        out.append(acc.to(w0.dtype))
    return out


def copy_all(dst: Sequence[torch.Tensor], src: Sequence[torch.Tensor]) -> None:
    """Copy ``src`` into ``dst`` under no_grad, finishing even if interrupted midway."""
    pending: BaseException | None = None
    with torch.no_grad():
        for d, s in zip(dst, src, strict=True):
            while True:
                try:
                    d.copy_(s)
                    break
                except KeyboardInterrupt as exc:  # finish the restore, then re-raise
                    pending = exc
    if pending is not None:
        raise pending


def _buffer_snapshot(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    live = [b for b in model.buffers() if b is not None]
    return live, [b.detach().clone() for b in live]


@contextmanager
def perturbed(
    model: nn.Module,
    directions: Any,
    coords: Any,
    *,
    params: ParamSpec = None,
    restore_buffers: bool = True,
) -> Iterator[nn.Module]:
    """Move the weights to ``w0 + sum_i c_i d_i`` inside a ``with`` block; restore on exit.

    Args:
        model: the network; changed in place inside the block.
        directions: :class:`~jupyter_curvature.landscape.Directions`, a flat vector ``(n,)``,
            a block ``(n, k)`` or ``(k, n)``, or a sequence of vectors, in
            ``select_parameters(model, params)`` order.
        coords: one coordinate per direction (a number when there is one direction).
        params: which parameters the directions live on (default: all trainable ones).
        restore_buffers: also restore the model's buffers (BatchNorm running statistics) on
            exit, so forward passes in train mode inside the block leave no trace.

    The restore copies back tensors saved on entry, so it is bitwise, and it runs on any
    exit: normal, exception or ``KeyboardInterrupt``. ``.grad`` is left as the block left it.

    Yields:
        the model.

    Raises:
        ValueError: directions of the wrong length, with NaN/inf or zero; coordinates of
            another length than the directions, or NaN. Raised before anything changes.

    >>> import torch
    >>> lin = torch.nn.Linear(2, 1, bias=False)
    >>> before = lin.weight.detach().clone()
    >>> with perturbed(lin, torch.tensor([1.0, 0.0]), 0.5):
    ...     bool(torch.equal(lin.weight[0, 0], before[0, 0] + 0.5))
    True
    >>> torch.equal(lin.weight, before)
    True
    """
    named = select_parameters(model, params)
    tensors = [p for _, p in named]
    n = sum(p.numel() for p in tensors)
    dirs = as_directions(directions, n, param_names=[name for name, _ in named])
    c = as_coords(coords, len(dirs))
    saved = [p.detach().clone() for p in tensors]
    new = _point(saved, dirs.per_tensor(tensors), c)
    live_buffers, saved_buffers = _buffer_snapshot(model) if restore_buffers else ([], [])
    try:
        copy_all(tensors, new)
        del new
        yield model
    finally:
        copy_all([*tensors, *live_buffers], [*saved, *saved_buffers])


class Perturber:
    """Moves a model along directions from a fixed origin, for sliders and explorers.

    The origin ``w0`` (the chosen parameters) and the state of every other parameter and
    buffer are copied once, at construction: make it while the model is not mid-step
    (under the training lock, if a training loop runs in another thread).

    - :meth:`apply` writes ``w0 + sum_i c_i d_i`` into the model, always from ``w0``:
      any sequence of moves ends exactly where the last one says.
    - :meth:`restore` writes the origin (and the buffers as they were) back, bitwise.
    - :meth:`params_at` gives the parameters at a point as new tensors, and
      :meth:`evaluate` / :meth:`evaluator` compute loss and accuracy at points through
      ``torch.func.functional_call`` on a private copy of the model: neither reads nor
      writes the model after construction, so they are safe from another thread.

    Used as a context manager, it restores the origin on exit if :meth:`apply` was called
    since the last :meth:`restore`.

    Args:
        model: the network.
        directions: as for :func:`perturbed`.
        params: which parameters the directions live on.
        origin: flat ``(n,)`` weights to move from (default: the model's current ones).
    """

    def __init__(
        self,
        model: nn.Module,
        directions: Any,
        *,
        params: ParamSpec = None,
        origin: torch.Tensor | None = None,
    ) -> None:
        named = select_parameters(model, params)
        self.model = model
        self.params = params
        self._names = [name for name, _ in named]
        self._tensors = [p for _, p in named]
        self._shapes = [tuple(p.shape) for p in self._tensors]
        self.num_params = sum(p.numel() for p in self._tensors)
        self.directions = as_directions(directions, self.num_params, param_names=self._names)
        if origin is None:
            self._origin = [p.detach().clone() for p in self._tensors]
        else:
            origin = torch.as_tensor(origin).detach()
            if origin.ndim != 1 or origin.numel() != self.num_params:
                raise ValueError(
                    f"origin has shape {tuple(origin.shape)}, expected ({self.num_params},)"
                )
            if not bool(torch.isfinite(origin).all()):
                raise ValueError("origin contains NaN or infinite values")
            self._origin = [
                t.to(p.device, p.dtype).clone()
                for t, p in zip(unflatten(origin, self._tensors), self._tensors, strict=True)
            ]
        self._parts = self.directions.per_tensor(self._tensors)
        self._live_buffers, self._saved_buffers = _buffer_snapshot(model)
        selected = {id(p) for p in self._tensors}
        self._state = {
            name: p.detach().clone()
            for name, p in model.named_parameters()
            if id(p) not in selected
        }
        self._state.update({name: b.detach().clone() for name, b in model.named_buffers()})
        self._coords = torch.zeros(len(self.directions), dtype=torch.float64)
        self._moved = False
        self._applied = False  # any apply() since the last restore()
        self._lock = threading.Lock()
        self._evaluator: tuple[tuple, tuple, Any] | None = None

    # ---- state -------------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return len(self.directions)

    @property
    def coords(self) -> np.ndarray:
        """The coordinates last applied to the model (zeros at the origin)."""
        return self._coords.numpy().copy()

    @property
    def moved(self) -> bool:
        """Whether the model currently holds weights other than the origin."""
        return self._moved

    @property
    def origin(self) -> torch.Tensor:
        """The origin ``w0`` as a flat vector (a copy)."""
        return flatten(self._origin)

    # ---- pure ---------------------------------------------------------------------------
    def weights_at(self, coords: Any) -> list[torch.Tensor]:
        """The chosen parameters at ``coords``, as new tensors in parameter order."""
        return _point(self._origin, self._parts, as_coords(coords, self.num_directions))

    def params_at(self, coords: Any) -> dict[str, torch.Tensor]:
        """Every parameter of the model at ``coords`` (name -> new tensor), for
        ``torch.func.functional_call``; the others hold their values at construction."""
        out = dict(self._state)
        out.update(zip(self._names, self.weights_at(coords)))
        return {name: out[name] for name, _ in self.model.named_parameters() if name in out}

    def evaluator(self, loss_fn: Any, data: Any, **kwargs: Any):
        """A :class:`~jupyter_curvature.landscape.LandscapeEvaluator` at this origin.

        It holds the data on the model's device and is reused by :meth:`evaluate` for the
        same ``loss_fn``, data and keyword arguments. Keyword arguments are those of
        :class:`~jupyter_curvature.landscape.LandscapeEvaluator` (``test_data``, ``bn``,
        ``batch_points``, ...).
        """
        refs = (loss_fn, data, *kwargs.values())  # held, so that their ids stay theirs
        key = (id(loss_fn), id(data), *sorted((k, id(v)) for k, v in kwargs.items()))
        with self._lock:
            ev = self._evaluator[2] if self._evaluator and self._evaluator[0] == key else None
            if ev is None:
                ev = self.new_evaluator(loss_fn, data, **kwargs)
                self._evaluator = (key, refs, ev)  # keep one: it holds the data
            return ev

    def new_evaluator(self, loss_fn: Any, data: Any, **kwargs: Any):
        """A new :class:`~jupyter_curvature.landscape.LandscapeEvaluator` at this origin (not
        the one :meth:`evaluator` keeps: for a second dataset, such as a subsample)."""
        from .evaluator import LandscapeEvaluator

        return LandscapeEvaluator(
            self.model,
            loss_fn,
            data,
            self.directions,
            params=self.params,
            origin=self.origin,
            state=self._state,
            **kwargs,
        )

    def evaluate(self, coords: Any, loss_fn: Any, data: Any, **kwargs: Any) -> dict[str, Any]:
        """Loss and accuracy at ``coords`` (one point ``(k,)`` or several ``(P, k)``),
        without touching the model. See :meth:`evaluator` for the keyword arguments."""
        ev = self.evaluator(loss_fn, data, **kwargs)
        c = np.asarray(coords, dtype=np.float64)
        if c.ndim == 2:
            return ev.evaluate(c)
        return ev(c)

    # ---- writes to the model ------------------------------------------------------------
    def _check_model(self) -> None:
        current = select_parameters(self.model, self.params)
        if [n for n, _ in current] != self._names or any(
            p is not q for (_, p), q in zip(current, self._tensors)
        ):
            raise ValueError(
                "the model's parameters changed since this Perturber was made (new or "
                "replaced tensors); make a new Perturber (and recompute the directions if the "
                "architecture changed)"
            )
        for (name, p), shape in zip(current, self._shapes):
            if tuple(p.shape) != shape:
                raise ValueError(
                    f"parameter {name!r} changed shape from {shape} to {tuple(p.shape)} since "
                    "this Perturber was made; recompute the directions for the new model"
                )

    def apply(self, coords: Any) -> None:
        """Write ``w0 + sum_i c_i d_i`` into the model (from the origin, never cumulatively)."""
        c = as_coords(coords, self.num_directions)
        with self._lock:
            self._check_model()
            new = _point(self._origin, self._parts, c)
            self._moved = self._applied = True  # first: an interrupted copy is restorable
            copy_all(self._tensors, new)
            self._coords = c
            self._moved = bool((c != 0).any())

    move_to = apply

    def restore(self) -> None:
        """Put the origin weights and the buffers as they were at construction back, bitwise."""
        with self._lock:
            copy_all([*self._tensors, *self._live_buffers], [*self._origin, *self._saved_buffers])
            self._coords = torch.zeros_like(self._coords)
            self._moved = self._applied = False

    reset = restore

    def __enter__(self) -> Perturber:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._applied:
            self.restore()

    def __repr__(self) -> str:
        at = "origin" if not self._moved else np.array2string(self.coords, precision=4)
        return (
            f"Perturber({self.num_directions} directions over {self.num_params} parameters, "
            f"model at {at}; labels {self.directions.labels})"
        )
