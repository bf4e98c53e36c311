"""The landscape task: the loss and accuracy along eigen-directions of the Hessian (or the
GGN) or along random filter-normalised directions (Li et al., NeurIPS 2018): 1D lines and a
2D plane (``jupyter-curvature landscape``). The interactive explorer is ``%curv_landscape``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.vocabulary import accepts_aliases
from .names import InputError, resolve_setup
from .outputs import is_writer, output_folder, save_figure, save_json

__all__ = ["LandscapeTaskResult", "landscape"]


@dataclass
class LandscapeTaskResult:
    """What :func:`landscape` returns: the 1D ``line`` and, if computed, the 2D ``plane``
    (:class:`~jupyter_curvature.landscape.results.LandscapeResult` objects)."""

    line: Any
    plane: Any = None
    directions: str = "top:2"

    def to_dict(self) -> dict[str, Any]:
        """The line and plane as their ``to_dict()`` (JSON-ready)."""
        return {
            "directions": self.directions,
            "line": self.line.to_dict(),
            "plane": None if self.plane is None else self.plane.to_dict(),
        }

    def plot(self) -> Any:
        """The line's plot (``self.plane.plot()`` draws the plane)."""
        return self.line.plot()

    def save(self, out: str | Path) -> Path:
        """``landscape_1d.{npz,png}`` (and ``landscape_2d.{npz,png}``) and ``landscape.json``."""
        out = output_folder(out)
        for name, result in (("landscape_1d", self.line), ("landscape_2d", self.plane)):
            if result is None:
                continue
            if is_writer():
                result.save(out / f"{name}.npz")
            save_figure(result.plot(), out / f"{name}.png")
        save_json(out / "landscape.json", self.to_dict())
        return out

    def describe(self) -> str:
        """The result as text: the loss at the origin, each direction's eigenvalue and the
        lowest and highest loss along its line, and the plane's range (``%curv_landscape``
        without widgets prints it)."""
        line = self.line
        coords = np.asarray(line.coords)
        loss = np.asarray(line.train_loss, dtype=float)
        origin = int(np.argmin(np.abs(coords)))
        rows = [f"Loss landscape ({self.directions}), t in [{coords[0]:g}, {coords[-1]:g}]",
                f"loss at the origin: {loss[0, origin]:.6g}",
                f"{'direction':<12} {'eigenvalue':>12} {'min loss':>10} {'at t':>7} "
                f"{'max loss':>10} {'at t':>7}"]  # fmt: skip
        for record, values in zip(line.directions, loss):
            eigenvalue = record.get("eigenvalue")
            ev = "-" if eigenvalue is None else f"{eigenvalue:.6g}"
            lo, hi = int(np.nanargmin(values)), int(np.nanargmax(values))
            rows.append(f"{str(record.get('label')):<12} {ev:>12} {values[lo]:>10.5g} "
                        f"{coords[lo]:>7.3g} {values[hi]:>10.5g} {coords[hi]:>7.3g}")  # fmt: skip
        if self.plane is not None:
            grid = np.asarray(self.plane.train_loss, dtype=float)
            i, j = np.unravel_index(np.nanargmin(grid), grid.shape)
            rows.append(f"plane of the first two ({grid.shape[0]}x{grid.shape[1]}): loss "
                        f"{np.nanmin(grid):.5g} (at {self.plane.xs[i]:.3g}, {self.plane.ys[j]:.3g})"
                        f" to {np.nanmax(grid):.5g}")  # fmt: skip
        if line.interrupted or (self.plane is not None and self.plane.interrupted):
            rows.append("interrupted: the values computed by then")
        return "\n".join(rows)

    def __iter__(self):  # ``for r in result`` gives the line and the plane
        return iter([r for r in (self.line, self.plane) if r is not None])


def _parse_directions(directions: str) -> Any:
    """The parsed ``--directions`` (:class:`~jupyter_curvature.landscape.DirectionSpec`)."""
    from ..landscape.direction_specs import parse_direction_spec

    try:
        return parse_direction_spec(directions)
    except ValueError as exc:
        raise InputError(f"--directions {directions!r}: {exc}") from None


def _check_count(spec: Any, num_params: int, directions: str) -> None:
    """Refuse more eigen-directions than the chosen parameters have, before computing any."""
    if spec.is_eigen and spec.needed > num_params - 1:  # Lanczos gives at most n - 1
        raise InputError(
            f"--directions {directions}: {spec.needed} eigen-directions asked of "
            f"{num_params} parameters; ask for at most {num_params - 1}"
        )


@accepts_aliases
def landscape(
    model: Any = "small_cnn",
    data: Any = "digits",
    *,
    test_data: Any = None,
    loss_fn: Any = None,
    directions: str = "top:2",
    span: float = 1.0,
    num_points: int = 21,
    plane: bool = True,
    eigen: Any = None,
    curvature: str = "hessian",
    params: Any = None,
    num_samples: int | None = None,
    batch_size: int = 128,
    data_root: str | None = None,
    device: Any = None,
    seed: int = 0,
    out: str | Path | None = None,
    namespace: dict[str, Any] | None = None,
) -> LandscapeTaskResult:
    """Loss and accuracy along ``directions`` over ``[-span, span]`` with ``num_points`` points.

    Args:
        model, data: objects or names (see :func:`.names.resolve_setup`); a named dataset
            also gives the test data of the line.
        directions: ``top:K`` / ``bottom:K`` (eigenvectors of the ``curvature`` matrix with
            the largest / smallest eigenvalues; ``eigen`` reuses computed eigenpairs),
            ``index:i,j`` (those of the largest) or ``random:K`` (filter-normalised random
            directions drawn by ``seed``).
        params: the parameters the directions move (a module prefix, a glob, ``re:``...;
            default all).
        plane: also the 2D plane of the first two directions.
        out: a folder: the result is also saved there.

    Old keywords (``distance``, ``points``, ``range`` ...) still work and warn.
    """
    from .. import landscape as ls
    from .spectrum import check_curvature, make_operator

    spec = _parse_directions(directions)
    check_curvature(curvature)
    if out is not None:
        out = output_folder(out)
    s = resolve_setup(model, data, namespace=namespace, test_data=test_data, loss_fn=loss_fn,
                      batch_size=batch_size, num_samples=num_samples, data_root=data_root,
                      device=device, seed=seed)  # fmt: skip
    if spec.kind == "random":
        dirs = ls.random_directions(s.model, spec.count, seed=seed, params=params)
    else:
        if eigen is None:
            from ..spectral import eigenpairs

            op = make_operator(s.model, s.loss_fn, s.data, curvature=curvature, params=params)
            _check_count(spec, op.shape[0], directions)
            which = "SA" if spec.kind == "bottom" else "LA"
            eigen = eigenpairs(op, k=max(spec.needed, 2), which=which, seed=seed)
        chosen = list(spec.indices) if spec.indices is not None else list(range(spec.count))
        dirs = ls.eigen_directions(eigen, chosen, model=s.model, params=params)
    line = ls.landscape_1d(s.model, s.loss_fn, s.data, dirs, test_data=s.test_data, span=span,
                           num_points=num_points)  # fmt: skip
    surface = None
    if plane and len(dirs) >= 2 and not line.interrupted:  # Ctrl-C: keep the line, stop
        surface = ls.landscape_2d(s.model, s.loss_fn, s.data, dirs, span=span,
                                  num_points=num_points,
                                  axes=(0, 1) if len(dirs) > 2 else None)  # fmt: skip
    result = LandscapeTaskResult(line, surface, directions)
    if out is not None:
        result.save(out)
    return result
