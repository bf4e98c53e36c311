"""Direction specs of the landscape explorer: ``top:K``, ``bottom:K``, ``index:i,j``, ``random:K``.

:func:`parse_direction_spec` reads a spec; :func:`resolve_directions` turns a spec (or given
directions) into :class:`~jupyter_curvature.landscape.Directions` on a model snapshot:
eigenvectors of an eigenpairs result, computed on demand, or Gaussian directions
filter-normalised as in Li et al., "Visualizing the Loss Landscape of Neural Nets", NeurIPS
2018, Sec. 4.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.params import ParamSpec
from .directions import Directions, as_directions, eigen_directions, random_directions

__all__ = [
    "DirectionSpec",
    "changed_shape_error",
    "check_pair",
    "eigen_count",
    "eigen_length",
    "parse_direction_spec",
    "resolve_directions",
]


@dataclass(frozen=True)
class DirectionSpec:
    """A parsed ``--directions`` value.

    Attributes:
        kind: ``"top"``, ``"bottom"``, ``"index"`` or ``"random"``.
        count: how many directions.
        indices: the positions for ``"index"``, else ``None``.
    """

    kind: str
    count: int
    indices: tuple[int, ...] | None = None

    @property
    def is_eigen(self) -> bool:
        return self.kind != "random"

    @property
    def needed(self) -> int:
        """How many eigenpairs must be computed to serve this spec."""
        return max(self.indices) + 1 if self.indices is not None else self.count

    def __str__(self) -> str:
        if self.indices is not None:
            return "index:" + ",".join(str(i) for i in self.indices)
        return f"{self.kind}:{self.count}"


_SPEC_HELP = "use top:K, bottom:K, index:i,j,... or random:K (for example top:2)"


def parse_direction_spec(spec: str) -> DirectionSpec:
    """Parse ``top:K | bottom:K | index:i,j,... | random:K`` (``top`` alone means ``top:2``).

    Raises:
        ValueError: an unknown kind, a count below 1, a negative or repeated index.
    """
    if not isinstance(spec, str):
        raise TypeError(
            f"directions must be a spec string or Directions, got {type(spec).__name__}"
        )
    text = spec.strip().lower()
    kind, _, arg = text.partition(":")
    if kind not in ("top", "bottom", "index", "random"):
        raise ValueError(f"unknown direction spec {spec!r}: {_SPEC_HELP}")
    if kind == "index":
        try:
            idx = tuple(int(s) for s in arg.split(",") if s.strip())
        except ValueError:
            raise ValueError(
                f"direction spec {spec!r}: indices must be integers; {_SPEC_HELP}"
            ) from None
        if not idx:
            raise ValueError(f"direction spec {spec!r} names no index; {_SPEC_HELP}")
        if min(idx) < 0:
            raise ValueError(f"direction spec {spec!r}: indices start at 0")
        if len(set(idx)) != len(idx):
            raise ValueError(f"direction spec {spec!r} repeats an index")
        return DirectionSpec("index", len(idx), idx)
    try:
        count = int(arg) if arg.strip() else 2
    except ValueError:
        raise ValueError(
            f"direction spec {spec!r}: the count must be an integer; {_SPEC_HELP}"
        ) from None
    if count < 1:
        raise ValueError(f"direction spec {spec!r} asks for {count} directions; ask for at least 1")
    return DirectionSpec(kind, count)


def eigen_count(eigen: Any) -> int:
    """How many eigenpairs ``eigen`` holds (an eigenpairs result or ``(values, vectors)``)."""
    values = getattr(eigen, "eigenvalues", None)
    if values is None and isinstance(eigen, tuple) and len(eigen) == 2:
        values = eigen[0]
    return int(np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values).size)


def eigen_length(eigen: Any) -> int | None:
    """The length of ``eigen``'s eigenvectors (``None`` when it has none)."""
    vectors = getattr(eigen, "eigenvectors", None)
    if vectors is None and isinstance(eigen, tuple) and len(eigen) == 2:
        vectors = eigen[1]
    return None if vectors is None else int(vectors.shape[0])


def changed_shape_error(what: str, n_dirs: int, n_model: int) -> ValueError:
    """The error for directions (or eigenvectors) made for another shape of the model."""
    return ValueError(
        f"the model's parameters changed shape since the directions were computed: {what} have "
        f"{n_dirs} entries, the model's chosen parameters {n_model}; recompute the directions "
        "(omit eigen= / --eigen to compute them afresh, or call explorer.recompute())"
    )


def check_pair(pair: Sequence[int], k: int) -> tuple[int, int]:
    """``pair`` as two different direction indices in ``0..k-1`` (``(0, 0)`` when ``k == 1``)."""
    try:
        a, b = (int(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"pair must be two direction indices, got {pair!r}") from None
    if k == 1:
        return (0, 0)
    if not (0 <= a < k and 0 <= b < k) or a == b:
        raise ValueError(
            f"pair must be two different direction indices in 0..{k - 1}, got {pair!r}"
        )
    return (a, b)


def resolve_directions(
    kind: str,
    *,
    snapshot: nn.Module,
    param_names: list[str],
    param_shapes: list[tuple[int, ...]],
    params: ParamSpec = None,
    spec: DirectionSpec | None = None,
    given: Any = None,
    eigen: Any = None,
    compute_eigen: Callable[[DirectionSpec], Any] | None = None,
    seed: int = 0,
) -> tuple[Directions, Any]:
    """The explorer's directions of ``kind`` (``"eigen"`` or ``"random"``) on ``snapshot``.

    Args:
        kind: ``"eigen"`` (the spec's eigen-directions, or the ``given`` ones) or
            ``"random"`` (as many filter-normalised Gaussian directions, seeded).
        snapshot: the model copy the directions live on.
        param_names, param_shapes: the chosen parameters' names and shapes on ``snapshot``.
        params: the parameter selection.
        spec: the parsed spec (when the directions were asked by a string).
        given: directions given as an object (``Directions``, a matrix, ...), else ``None``.
        eigen: an eigenpairs result to take eigen-directions from, or ``None``.
        compute_eigen: called with the spec to compute the eigenpairs when ``eigen`` is
            ``None``.
        seed: the seed of random directions.

    Returns:
        The directions and the eigenpairs used (``eigen``, or the computed ones).

    Raises:
        ValueError: directions or eigenvectors for another shape of the model, or a spec
            that names more eigen-directions than were computed.
    """
    n = sum(math.prod(s) for s in param_shapes)
    if given is not None:
        try:
            dirs = as_directions(given, n, param_names=param_names)
        except ValueError as exc:
            if "entries" in str(exc) or "shape" in str(exc):
                length = getattr(given, "num_params", None)
                if length is None and hasattr(given, "shape"):
                    length = max(given.shape)
                raise changed_shape_error("the directions", int(length or 0), n) from exc
            raise
        shapes = getattr(given, "param_shapes", None)
        if shapes is not None and [tuple(s) for s in shapes] != param_shapes:
            raise changed_shape_error("the directions", dirs.num_params, n)
        if kind == "random":
            return random_directions(snapshot, len(dirs), seed=seed, params=params), eigen
        return dirs, eigen
    if spec is None:
        raise ValueError("give a direction spec or directions")
    if kind == "random":
        return random_directions(snapshot, spec.count, seed=seed, params=params), eigen
    eigen_spec = spec if spec.is_eigen else DirectionSpec("top", spec.count)
    if eigen is None:
        if compute_eigen is None:
            raise ValueError("no eigenpairs given and none can be computed")
        eigen = compute_eigen(eigen_spec)
    computed = eigen_count(eigen)
    length = eigen_length(eigen)
    if length is not None and length != n:
        raise changed_shape_error("the eigenvectors", length, n)
    if eigen_spec.needed > computed:
        raise ValueError(
            f"direction spec {eigen_spec} names {eigen_spec.needed} eigen-directions but only "
            f"{computed} were computed; ask for fewer, or recompute with k >= "
            f"{eigen_spec.needed}"
        )
    if eigen_spec.kind == "index":
        which: Any = list(eigen_spec.indices or ())
    else:
        which = "largest" if eigen_spec.kind == "top" else "smallest"
    dirs = eigen_directions(
        eigen,
        which,
        k=None if eigen_spec.kind == "index" else eigen_spec.count,
        model=snapshot,
        params=params,
    )
    return dirs, eigen
