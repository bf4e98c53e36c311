"""Landscape results: arrays of loss and accuracy over a grid, with how they were made.

Both kinds save to one ``.npz`` file (the arrays, plus their record as a JSON string) and
load back identical, NaN included; :meth:`LandscapeResult.to_dict` gives plain JSON-able
data (NaN -> ``None``, the package's one JSON policy, :mod:`jupyter_curvature.core.records`)
for front ends.

- :class:`Landscape1D`: lines through the origin, one per direction; metric arrays have
  shape ``(k, len(coords))``: row ``i`` is ``w0 + t d_i`` for ``t`` in ``coords``.
- :class:`Landscape2D`: a plane over two directions; metric arrays have shape
  ``(len(xs), len(ys))`` (``"ij"`` indexing): entry ``[i, j]`` is
  ``w0 + xs[i] d_0 + ys[j] d_1``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..core.files import atomic_savez
from ..core.records import jsonable, to_json

__all__ = ["LandscapeResult", "Landscape1D", "Landscape2D", "METRICS"]

METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


@dataclass(repr=False, eq=False, kw_only=True)
class LandscapeResult:
    """What every landscape holds.

    Attributes:
        directions: one record per direction (``label``, ``kind``, ``normalization``,
            ``eigenvalue``, ``index``, ``norm``).
        bn: the BatchNorm mode, ``"eval"`` or ``"recalibrate"``.
        reduction: how the loss was reduced over the data, ``"mean"`` or ``"sum"``.
        train_loss, train_accuracy: over the training data; NaN where not (yet) computed,
            and accuracy NaN throughout when the task is not classification.
        test_loss, test_accuracy: over the test data, or ``None`` without test data.
        done: which grid points are computed.
        interrupted: the computation was stopped before the end.
        meta: how it was computed (device, dtype, strategy, seconds, ...).
    """

    kind: ClassVar[str] = "landscape"
    _grid_fields: ClassVar[tuple[str, ...]] = ()

    directions: list[dict[str, Any]]
    bn: str
    reduction: str
    train_loss: np.ndarray
    train_accuracy: np.ndarray
    test_loss: np.ndarray | None = None
    test_accuracy: np.ndarray | None = None
    done: np.ndarray | None = None
    interrupted: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.done is None:
            self.done = ~np.isnan(np.asarray(self.train_loss))

    # ---- access -------------------------------------------------------------------------
    @property
    def metrics(self) -> list[str]:
        """The metrics present (``train_loss``, ..., ``test_accuracy`` with test data)."""
        return [m for m in METRICS if getattr(self, m) is not None]

    def metric(self, name: str) -> np.ndarray:
        """A metric by name: ``"train_loss"``, ``"test_accuracy"``, ... (or ``"loss"`` for
        ``"train_loss"``)."""
        key = {"loss": "train_loss", "accuracy": "train_accuracy"}.get(name, name)
        if key not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {name!r}")
        value = getattr(self, key)
        if value is None:
            raise ValueError(f"{key} was not computed (no test data was given)")
        return value

    @property
    def labels(self) -> list[str]:
        return [d.get("label", f"direction {i}") for i, d in enumerate(self.directions)]

    @property
    def eigenvalues(self) -> list[float | None]:
        return [d.get("eigenvalue") for d in self.directions]

    @property
    def normalizations(self) -> list[str]:
        return [d.get("normalization", "none") for d in self.directions]

    @property
    def complete(self) -> bool:
        return bool(np.all(self.done))

    @property
    def num_done(self) -> int:
        return int(np.count_nonzero(self.done))

    @property
    def num_points(self) -> int:
        return int(np.size(self.done))

    # ---- conversion ---------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        out = {name: np.asarray(getattr(self, name)) for name in self._grid_fields}
        out.update({m: np.asarray(getattr(self, m)) for m in self.metrics})
        out["done"] = np.asarray(self.done, dtype=bool)
        return out

    def _record(self) -> dict[str, Any]:
        return jsonable(
            {
                "kind": self.kind,
                "directions": self.directions,
                "bn": self.bn,
                "reduction": self.reduction,
                "interrupted": self.interrupted,
                "meta": self.meta,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: arrays as nested lists, NaN as ``None``."""
        return jsonable({**self._record(), **self._arrays()})

    def to_json(self, **kwargs: Any) -> str:
        """The JSON text of :meth:`to_dict` (``kwargs`` go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), **kwargs)

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (``.npz`` appended if missing); :meth:`load` reads it back
        exactly.

        The arrays keep their NaN (``.npz``); the record (directions, meta) is JSON under
        the package's one policy (:func:`jupyter_curvature.core.records.to_json`: NaN and
        infinities as ``null``). Files written with NaN literals load as before.
        """
        record = to_json(self._record(), indent=None)
        return atomic_savez(path, __record__=np.array(record), **self._arrays())

    @classmethod
    def load(cls, path: str | Path) -> LandscapeResult:
        """Read a result written by :meth:`save` (either kind)."""
        with np.load(Path(path), allow_pickle=False) as f:
            record = json.loads(str(f["__record__"]))
            arrays = {k: f[k].copy() for k in f.files if k != "__record__"}
        kind = record.pop("kind")
        klass = {c.kind: c for c in (Landscape1D, Landscape2D)}.get(kind)
        if klass is None:
            raise ValueError(f"{path} holds a {kind!r} result, not a landscape")
        if cls is not LandscapeResult and klass is not cls:
            raise ValueError(f"{path} holds a {klass.__name__}, not a {cls.__name__}")
        return klass(**record, **arrays)

    def copy(self) -> LandscapeResult:
        """An independent copy (a snapshot of a result still being filled in)."""
        return copy.deepcopy(self)

    def equals(self, other: LandscapeResult) -> bool:
        """Same kind, same record and identical arrays (NaN equal to NaN)."""
        if type(self) is not type(other) or self._record() != other._record():
            return False
        a, b = self._arrays(), other._arrays()
        return a.keys() == b.keys() and all(
            a[k].dtype == b[k].dtype
            and np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f")
            for k in a
        )

    # ---- text ---------------------------------------------------------------------------
    def _summary_lines(self) -> list[str]:
        return []

    def __repr__(self) -> str:
        status = (
            "complete"
            if self.complete
            else (
                f"{self.num_done}/{self.num_points} points"
                + (", interrupted" if self.interrupted else "")
            )
        )
        head = f"{type(self).__name__}({self._shape_text()}, bn={self.bn!r}, {status})"
        return "\n".join([head, *("  " + line for line in self._summary_lines())])

    def _shape_text(self) -> str:
        return ""

    def plot(self, **kwargs: Any):
        """Draw this result with matplotlib (see :mod:`jupyter_curvature.plotting`).

        A line result: :func:`~jupyter_curvature.plotting.plot_landscape_1d` (returns the
        figure); a plane: :func:`~jupyter_curvature.plotting.plot_landscape_2d` (returns
        the axes). ``kwargs`` go to that function.
        """
        from .. import plotting

        if isinstance(self, Landscape1D):
            return plotting.plot_landscape_1d(self, **kwargs)
        return plotting.plot_landscape_2d(self, **kwargs)


def _fmt(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.4g}"


@dataclass(repr=False, eq=False, kw_only=True)
class Landscape1D(LandscapeResult):
    """Loss and accuracy along lines ``w0 + t d_i``; metric arrays are ``(k, len(coords))``.

    Attributes:
        coords: the ``t`` values, shared by every direction.
    """

    kind: ClassVar[str] = "landscape_1d"
    _grid_fields: ClassVar[tuple[str, ...]] = ("coords",)

    coords: np.ndarray

    def _shape_text(self) -> str:
        c = np.asarray(self.coords)
        return (
            f"{len(self.directions)} directions x {c.size} points, t in "
            f"[{_fmt(c.min())}, {_fmt(c.max())}]"
        )

    def _summary_lines(self) -> list[str]:
        c = np.asarray(self.coords)
        zero = int(np.argmin(np.abs(c)))
        lines = []
        for i, label in enumerate(self.labels):
            row = self.train_loss[i]
            text = f"{label} ({self.normalizations[i]}): train loss {_fmt(row[zero])} at t={_fmt(c[zero])}"
            if np.isfinite(row).any():
                text += f", range [{_fmt(np.nanmin(row))}, {_fmt(np.nanmax(row))}]"
            if self.test_loss is not None and np.isfinite(self.test_loss[i]).any():
                text += f"; test loss [{_fmt(np.nanmin(self.test_loss[i]))}, {_fmt(np.nanmax(self.test_loss[i]))}]"
            lines.append(text)
        return lines


@dataclass(repr=False, eq=False, kw_only=True)
class Landscape2D(LandscapeResult):
    """Loss and accuracy over the plane ``w0 + x d_0 + y d_1``; arrays are
    ``(len(xs), len(ys))``, entry ``[i, j]`` at ``(xs[i], ys[j])``."""

    kind: ClassVar[str] = "landscape_2d"
    _grid_fields: ClassVar[tuple[str, ...]] = ("xs", "ys")

    xs: np.ndarray
    ys: np.ndarray

    def _shape_text(self) -> str:
        a, b = self.labels[:2]
        return f"{len(self.xs)}x{len(self.ys)} grid over {a!r} x {b!r}"

    def _summary_lines(self) -> list[str]:
        lines = []
        for m in self.metrics:
            z = getattr(self, m)
            if not np.isfinite(z).any():
                continue
            i, j = np.unravel_index(
                np.nanargmin(z) if m.endswith("loss") else np.nanargmax(z), z.shape
            )
            best = "min" if m.endswith("loss") else "max"
            lines.append(
                f"{m}: {best} {_fmt(z[i, j])} at ({_fmt(self.xs[i])}, {_fmt(self.ys[j])}), "
                f"range [{_fmt(np.nanmin(z))}, {_fmt(np.nanmax(z))}]"
            )
        return lines
