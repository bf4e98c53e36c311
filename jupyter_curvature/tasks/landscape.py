"""The landscape task: the loss and accuracy along eigen-directions of the Hessian (or the
GGN) or along random filter-normalised directions (Li et al., NeurIPS 2018): 1D lines and a
2D plane (``jupyter-curvature landscape``). The interactive explorer is ``%curv_landscape``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    def __iter__(self):  # ``for r in result`` gives the line and the plane
        return iter([r for r in (self.line, self.plane) if r is not None])


def _parse_directions(directions: str) -> tuple[str, int]:
    kind, _, count = directions.partition(":")
    if kind not in ("top", "bottom", "random") or not (count or "2").isdigit():
        raise InputError(f"--directions {directions!r}: use top:K, bottom:K or random:K")
    count_n = int(count or 2)
    if count_n < 1:
        raise InputError(f"--directions {directions!r}: K must be at least 1")
    return kind, count_n


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
            the largest / smallest eigenvalues; ``eigen`` reuses computed eigenpairs) or
            ``random:K`` (filter-normalised random directions drawn by ``seed``).
        plane: also the 2D plane of the first two directions.
        out: a folder: the result is also saved there.

    Old keywords (``distance``, ``points``, ``range`` ...) still work and warn.
    """
    from .. import landscape as ls
    from .spectrum import check_curvature, make_operator

    kind, count = _parse_directions(directions)
    check_curvature(curvature)
    if out is not None:
        out = output_folder(out)
    s = resolve_setup(model, data, namespace=namespace, test_data=test_data, loss_fn=loss_fn,
                      batch_size=batch_size, num_samples=num_samples, data_root=data_root,
                      device=device, seed=seed)  # fmt: skip
    if kind == "random":
        dirs = ls.random_directions(s.model, count, seed=seed)
    else:
        if eigen is None:
            from ..spectral import eigenpairs

            op = make_operator(s.model, s.loss_fn, s.data, curvature=curvature)
            which = {"top": "LA", "bottom": "SA"}[kind]
            eigen = eigenpairs(op, k=max(count, 2), which=which, seed=seed)
        dirs = ls.eigen_directions(eigen, list(range(count)), model=s.model)
    line = ls.landscape_1d(s.model, s.loss_fn, s.data, dirs, test_data=s.test_data, span=span,
                           num_points=num_points)  # fmt: skip
    surface = None
    if plane and len(dirs) >= 2 and not line.interrupted:  # Ctrl-C: keep the line, stop
        surface = ls.landscape_2d(s.model, s.loss_fn, s.data, dirs, span=span,
                                  num_points=num_points)  # fmt: skip
    result = LandscapeTaskResult(line, surface, directions)
    if out is not None:
        result.save(out)
    return result
