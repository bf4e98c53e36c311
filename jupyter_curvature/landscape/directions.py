"""Directions in weight space along which a loss landscape is drawn.

(About 790 lines, over the package's 700: the ``Directions`` record and the three ways to
make one, random with filter normalisation, eigen-directions, and user vectors, share its
checks and its file format.)

Every direction is a flat vector in the parameter order of
:func:`jupyter_curvature.core.params.select_parameters` (``model.named_parameters()``
order, trainable parameters by default), the order in which the spectra module returns
eigenvectors. A :class:`Direction` says how it was made and how it is normalised:

- ``eigenvector``: a Ritz/eigenvector of a curvature matrix, scaled to unit L2 norm and
  labelled with its eigenvalue (:func:`eigen_directions`). By default the indices are chosen
  by the rule of the original package (MLRG Deep Curvature, ``build_loss_landscape``):
  positions {0, 1, 2, 5} of the eigenvalues sorted ascending, descending and by absolute
  value, made unique (:func:`original_selection`).
- ``random``: a Gaussian direction, filter-normalised as in Li et al., "Visualizing the Loss
  Landscape of Neural Nets", NeurIPS 2018, Sec. 4 (:func:`random_directions`,
  :func:`filter_normalize`): each filter ``d_{i,j}`` (slice ``j`` along the first dimension
  of the weight tensor ``i``) is rescaled to ``d_{i,j} / ||d_{i,j}|| * ||theta_{i,j}||``;
  one-dimensional tensors (biases, BatchNorm weights and biases) are set to zero with
  ``ignore="biasbn"`` (the paper's setting), or to the weights themselves otherwise (as in
  the authors' ``net_plotter.normalize_directions_for_weights``).
- ``user``: vectors you give (:func:`user_directions`).
- ``checkpoint``: the difference between two sets of weights (:func:`checkpoint_directions`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.files import atomic_savez
from ..core.inputs import check_finite_parameters
from ..core.params import ParamSpec, flatten, select_parameters, unflatten

#: positions in each sorted order that the original package took
ORIGINAL_POSITIONS: tuple[int, ...] = (0, 1, 2, 5)

NORMALIZATIONS = ("unit", "filter", "layer", "none")


# --------------------------------------------------------------------------------------
# records


@dataclass(frozen=True, repr=False, eq=False)
class Direction:
    """One direction in weight space, with how it was made.

    Attributes:
        vector: flat ``(n,)`` tensor in parameter order.
        label: short human label (``"λ=3.21 [#0]"``, ``"random 1"``, ...).
        kind: ``"eigenvector"``, ``"random"``, ``"user"`` or ``"checkpoint"``.
        normalization: ``"unit"`` (L2 norm 1), ``"filter"`` (Li et al. 2018), ``"layer"``
            (each tensor scaled to its weights' norm) or ``"none"`` (as given).
        eigenvalue: the eigenvalue of an eigen-direction, else ``None``.
        index: position of an eigen-direction in the eigenpairs result, else ``None``.
        extra: anything else worth recording (JSON-able).
    """

    vector: torch.Tensor
    label: str
    kind: str = "user"
    normalization: str = "none"
    eigenvalue: float | None = None
    index: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def norm(self) -> float:
        return float(torch.linalg.vector_norm(self.vector.double()))

    def info(self) -> dict[str, Any]:
        """Everything but the vector, JSON-able."""
        return {
            "label": self.label,
            "kind": self.kind,
            "normalization": self.normalization,
            "eigenvalue": self.eigenvalue,
            "index": self.index,
            "norm": self.norm,
            **({"extra": self.extra} if self.extra else {}),
        }

    def __repr__(self) -> str:
        ev = "" if self.eigenvalue is None else f", eigenvalue={self.eigenvalue:.6g}"
        return (
            f"Direction({self.label!r}, kind={self.kind!r}, normalization={self.normalization!r}"
            f"{ev}, n={self.vector.numel()}, norm={self.norm:.4g})"
        )


class Directions(Sequence[Direction]):
    """An ordered set of :class:`Direction` s over the same parameters.

    Indexing gives a :class:`Direction`, slicing a :class:`Directions`;
    ``a + b`` concatenates. :meth:`matrix` stacks the vectors into ``(k, n)``.
    """

    def __init__(
        self,
        directions: Sequence[Direction],
        *,
        param_names: Sequence[str] | None = None,
        param_shapes: Sequence[Sequence[int]] | None = None,
    ) -> None:
        directions = list(directions)
        if not directions:
            raise ValueError("Directions needs at least one direction")
        n = directions[0].vector.numel()
        for d in directions:
            if not isinstance(d, Direction):
                raise TypeError(f"Directions holds Direction records, got {type(d).__name__}")
            if d.vector.ndim != 1 or d.vector.numel() != n:
                raise ValueError(
                    f"all directions must be flat vectors of the same length; {d.label!r} has "
                    f"shape {tuple(d.vector.shape)}, the first has ({n},)"
                )
        self._dirs = directions
        self.param_names = list(param_names) if param_names is not None else None
        self.param_shapes = (
            [tuple(int(s) for s in sh) for sh in param_shapes] if param_shapes is not None else None
        )

    # sequence protocol
    def __len__(self) -> int:
        return len(self._dirs)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return Directions(
                self._dirs[i], param_names=self.param_names, param_shapes=self.param_shapes
            )
        return self._dirs[i]

    def __iter__(self) -> Iterator[Direction]:
        return iter(self._dirs)

    def __add__(self, other: Directions) -> Directions:
        if not isinstance(other, Directions):
            return NotImplemented
        if self.num_params != other.num_params:
            raise ValueError(
                f"cannot join directions over {self.num_params} and {other.num_params} parameters"
            )
        return Directions(
            [*self._dirs, *other._dirs],
            param_names=self.param_names,
            param_shapes=self.param_shapes,
        )

    @property
    def num_params(self) -> int:
        return self._dirs[0].vector.numel()

    @property
    def labels(self) -> list[str]:
        return [d.label for d in self._dirs]

    @property
    def eigenvalues(self) -> list[float | None]:
        return [d.eigenvalue for d in self._dirs]

    @property
    def normalizations(self) -> list[str]:
        return [d.normalization for d in self._dirs]

    @property
    def kinds(self) -> list[str]:
        return [d.kind for d in self._dirs]

    def matrix(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The vectors stacked as rows, ``(k, n)``."""
        return torch.stack([d.vector.to(device=device, dtype=dtype) for d in self._dirs])

    def per_tensor(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The ``(k, n)`` directions split into ``(k, *shape)`` blocks, one per tensor of
        ``tensors`` (in parameter order), on its device, in the promoted dtype of the two."""
        matrix = self.matrix()
        parts = unflatten(matrix.T, tensors)  # (*shape, k)
        return [
            part.movedim(-1, 0)
            .to(t.device, torch.promote_types(t.dtype, matrix.dtype))
            .contiguous()
            for part, t in zip(parts, tensors, strict=True)
        ]

    def info(self) -> list[dict[str, Any]]:
        return [d.info() for d in self._dirs]

    def save(self, path: str | Path) -> Path:
        """Write the vectors and their records to ``path`` (``.npz``), losslessly."""
        meta = {
            "directions": [{k: v for k, v in d.info().items() if k != "norm"} for d in self._dirs],
            "param_names": self.param_names,
            "param_shapes": self.param_shapes,
            "dtype": str(self._dirs[0].vector.dtype).removeprefix("torch."),
        }
        vectors = self.matrix(device="cpu")
        if vectors.dtype == torch.bfloat16:
            vectors = vectors.float()
        return atomic_savez(path, vectors=vectors.numpy(), meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | Path) -> Directions:
        with np.load(Path(path), allow_pickle=False) as f:
            vectors = torch.from_numpy(f["vectors"].copy())
            meta = json.loads(str(f["meta"]))
        vectors = vectors.to(getattr(torch, meta["dtype"]))
        dirs = []
        for vec, info in zip(vectors, meta["directions"], strict=True):
            info = dict(info)
            extra = info.pop("extra", {})
            dirs.append(Direction(vector=vec.clone(), extra=extra, **info))
        return cls(dirs, param_names=meta["param_names"], param_shapes=meta["param_shapes"])

    def __repr__(self) -> str:
        lines = [f"Directions({len(self)} over {self.num_params} parameters)"]
        for i, d in enumerate(self._dirs):
            lines.append(f"  [{i}] {d.label}  ({d.kind}, {d.normalization}, norm {d.norm:.4g})")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# checks shared by every function that takes directions


def _check_vector(vec: torch.Tensor, n: int, what: str) -> None:
    if vec.ndim != 1 or vec.numel() != n:
        raise ValueError(
            f"{what} has {vec.numel()} entries (shape {tuple(vec.shape)}) but the chosen "
            f"parameters have {n}; directions must be flat vectors in "
            "select_parameters(model, params) order"
        )
    if not vec.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {vec.dtype}")
    if not bool(torch.isfinite(vec).all()):
        raise ValueError(f"{what} contains NaN or infinite entries")
    if not bool((vec != 0).any()):
        raise ValueError(f"{what} is the zero vector; a direction must be nonzero")


def _as_tensor(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise TypeError(f"{what} must be a tensor or numpy array, got {type(x).__name__}")


def as_directions(
    directions: Any,
    n: int,
    *,
    param_names: Sequence[str] | None = None,
    what: str = "directions",
) -> Directions:
    """Normalise anything that names directions into a checked :class:`Directions`.

    Accepts a :class:`Directions`, a :class:`Direction`, a flat ``(n,)`` vector, a block
    ``(n, k)`` (columns, the eigenvector layout) or ``(k, n)`` (rows), or a sequence of
    vectors / :class:`Direction` s. A square ``(n, n)`` block is read as columns.

    Raises:
        ValueError: a vector of the wrong length, with NaN/inf, or zero; no direction.
        TypeError: something that is not a direction.
    """
    if isinstance(directions, Directions):
        dirs = list(directions)
        if directions.param_names is not None and param_names is not None:
            if list(directions.param_names) != list(param_names):
                raise ValueError(
                    f"{what} were made for parameters {directions.param_names[:4]}... but the "
                    f"chosen parameters are {list(param_names)[:4]}...; recompute the "
                    "directions for this model / params selection"
                )
    elif isinstance(directions, Direction):
        dirs = [directions]
    elif isinstance(directions, (torch.Tensor, np.ndarray)):
        t = _as_tensor(directions, what)
        if t.ndim == 1:
            vecs = [t]
        elif t.ndim == 2:
            if t.shape[0] == n:
                vecs = list(t.T)
            elif t.shape[1] == n:
                vecs = list(t)
            else:
                raise ValueError(
                    f"{what} has shape {tuple(t.shape)}, but the chosen parameters have {n} "
                    f"entries; give (n,), (n, k) or (k, n) with n = {n}"
                )
        else:
            raise ValueError(f"{what} must be 1-D or 2-D, got shape {tuple(t.shape)}")
        dirs = [Direction(v, f"direction {i}") for i, v in enumerate(vecs)]
    elif isinstance(directions, Sequence) and not isinstance(directions, str):
        dirs = []
        for i, d in enumerate(directions):
            if isinstance(d, Direction):
                dirs.append(d)
            else:
                t = _as_tensor(d, f"{what}[{i}]")
                dirs.append(Direction(t.reshape(-1) if t.ndim == 0 else t, f"direction {i}"))
    else:
        raise TypeError(
            f"{what} must be Directions, a Direction, a tensor or a sequence of vectors, got "
            f"{type(directions).__name__}"
        )
    if not dirs:
        raise ValueError(f"{what} is empty; give at least one direction")
    for i, d in enumerate(dirs):
        _check_vector(d.vector, n, f"{what}[{i}] ({d.label!r})")
    return Directions(dirs, param_names=param_names)


def _param_info(model: nn.Module, params: ParamSpec) -> tuple[list[str], list[nn.Parameter], int]:
    named = select_parameters(model, params)
    check_finite_parameters(named)  # else the weight-scaled directions come out NaN
    names = [n for n, _ in named]
    tensors = [p for _, p in named]
    return names, tensors, sum(p.numel() for p in tensors)


def _finish(dirs: list[Direction], names: list[str], tensors: list[nn.Parameter]) -> Directions:
    return Directions(dirs, param_names=names, param_shapes=[tuple(p.shape) for p in tensors])


# --------------------------------------------------------------------------------------
# eigen-directions


def original_selection(
    eigenvalues: Any, positions: Sequence[int] = ORIGINAL_POSITIONS
) -> list[int]:
    """The indices the original package drew landscapes along.

    The union of ``positions`` in ``argsort(λ)`` (smallest), ``argsort(-λ)`` (largest) and
    ``argsort(|λ|)`` (nearest zero); positions beyond the number of eigenvalues are dropped;
    the result is unique and sorted (``np.unique``), at most ``3 * len(positions)`` indices.

    >>> original_selection([5.0, -1.0, 0.1, 2.0])
    [0, 1, 2, 3]
    >>> original_selection([9.0, 7.0, 5.0, 3.0, 1.0, 0.5, 0.2, 0.1], positions=(0,))
    [0, 7]
    """
    lam = np.asarray(_to_numpy(eigenvalues), dtype=np.float64).reshape(-1)
    if lam.size == 0:
        raise ValueError("no eigenvalues to choose from")
    if not np.isfinite(lam).all():
        raise ValueError("eigenvalues contain NaN or infinite values")
    chosen: list[int] = []
    for order in (
        np.argsort(lam, kind="stable"),
        np.argsort(-lam, kind="stable"),
        np.argsort(np.abs(lam), kind="stable"),
    ):
        chosen += [int(order[p]) for p in positions if 0 <= p < lam.size]
    return sorted(set(chosen))


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x)


def _eigen_parts(result: Any) -> tuple[np.ndarray, torch.Tensor]:
    if isinstance(result, tuple) and len(result) == 2:
        values, vectors = result
    else:
        try:
            values, vectors = result.eigenvalues, result.eigenvectors
        except AttributeError:
            raise TypeError(
                "eigen_directions needs an eigenpairs result with .eigenvalues (k,) and "
                f".eigenvectors (n, k), or a tuple (eigenvalues, eigenvectors); got "
                f"{type(result).__name__}"
            ) from None
    if vectors is None:
        raise ValueError(
            "the eigenpairs result holds no eigenvectors; compute them (e.g. "
            "eigenpairs(..., return_eigenvectors=True))"
        )
    values = np.asarray(_to_numpy(values), dtype=np.float64).reshape(-1)
    vectors = _as_tensor(vectors, "eigenvectors")
    if vectors.ndim == 1:
        vectors = vectors[:, None]
    if vectors.ndim != 2 or vectors.shape[1] != values.size:
        raise ValueError(
            f"eigenvectors must be (n, k) with k = {values.size} eigenvalues, got shape "
            f"{tuple(vectors.shape)}"
        )
    return values, vectors


def eigen_directions(
    result: Any,
    which: str | int | Sequence[int] = "original",
    *,
    k: int | None = None,
    positions: Sequence[int] = ORIGINAL_POSITIONS,
    model: nn.Module | None = None,
    params: ParamSpec = None,
) -> Directions:
    """Eigenvectors of a curvature matrix as unit directions labelled with their eigenvalues.

    Args:
        result: an eigenpairs result (anything with ``.eigenvalues`` ``(k,)`` and
            ``.eigenvectors`` ``(n, k)``) or a tuple ``(eigenvalues, eigenvectors)``.
        which: ``"original"`` (the original package's rule, see :func:`original_selection`),
            ``"largest"``, ``"smallest"`` or ``"nearest_zero"`` (the ``k`` first in that
            order; all if ``k`` is None), an index, or a sequence of indices into ``result``.
        k: how many for ``"largest"``/``"smallest"``/``"nearest_zero"``.
        positions: positions used by ``"original"``.
        model, params: when given, the eigenvectors' length is checked against the
            chosen parameters and their names are recorded.

    Raises:
        ValueError: an index out of range, eigenvectors of the wrong length, NaN, zero.
    """
    values, vectors = _eigen_parts(result)
    count = values.size
    if isinstance(which, str):
        key = which.lower().replace("-", "_").replace(" ", "_")
        if key == "original":
            idx = original_selection(values, positions)
        elif key in ("largest", "smallest", "nearest_zero"):
            order = {
                "largest": np.argsort(-values, kind="stable"),
                "smallest": np.argsort(values, kind="stable"),
                "nearest_zero": np.argsort(np.abs(values), kind="stable"),
            }[key]
            if k is not None and k < 1:
                raise ValueError(f"k must be at least 1, got {k}")
            idx = [int(i) for i in order[: (count if k is None else k)]]
            if k is not None and k > count:
                raise ValueError(f"k={k} asks for more eigenvectors than the {count} computed")
        else:
            raise ValueError(
                f"which must be 'original', 'largest', 'smallest', 'nearest_zero', an index "
                f"or a list of indices, got {which!r}"
            )
    else:
        idx = [int(which)] if isinstance(which, (int, np.integer)) else [int(i) for i in which]
        if not idx:
            raise ValueError("which is an empty list of indices")
        for i in idx:
            if not -count <= i < count:
                raise ValueError(f"eigenvector index {i} is out of range: the result holds {count}")
        idx = [i % count for i in idx]
    names = None
    shapes = None
    n = vectors.shape[0]
    if model is not None:
        names, tensors, n_model = _param_info(model, params)
        shapes = [tuple(p.shape) for p in tensors]
        if n_model != n:
            raise ValueError(
                f"the eigenvectors have {n} entries but the chosen parameters of the model have "
                f"{n_model}; were they computed for another model or params selection?"
            )
    dirs = []
    for i in idx:
        v = vectors[:, i]
        _check_vector(v, n, f"eigenvector {i}")
        v = v / torch.linalg.vector_norm(v)
        lam = float(values[i])
        dirs.append(
            Direction(
                v,
                label=f"λ={lam:.4g} [#{i}]",
                kind="eigenvector",
                normalization="unit",
                eigenvalue=lam,
                index=i,
            )
        )
    return Directions(dirs, param_names=names, param_shapes=shapes)


# --------------------------------------------------------------------------------------
# random, filter-normalised directions (Li et al. 2018)


def _normalize_parts(
    parts: list[torch.Tensor],
    weights: list[torch.Tensor],
    normalization: str,
    ignore: str | None,
) -> list[torch.Tensor]:
    out = []
    for d, w in zip(parts, weights, strict=True):
        w = w.detach().to(d.dtype)
        if normalization in ("filter", "layer") and d.ndim <= 1:
            # biases and BatchNorm parameters (Li et al.'s net_plotter)
            out.append(torch.zeros_like(d) if ignore == "biasbn" else w.clone())
        elif normalization == "filter":
            dn = torch.linalg.vector_norm(d.reshape(d.shape[0], -1), dim=1)
            wn = torch.linalg.vector_norm(w.reshape(w.shape[0], -1), dim=1)
            scale = torch.where(dn > 0, wn / torch.where(dn > 0, dn, 1), 0)
            out.append(d * scale.reshape(-1, *([1] * (d.ndim - 1))))
        elif normalization == "layer":
            dn = torch.linalg.vector_norm(d)
            out.append(d * (torch.linalg.vector_norm(w) / dn) if dn > 0 else torch.zeros_like(d))
        else:
            out.append(d.clone())
    return out


def _check_normalization(normalization: str, ignore: str | None) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if ignore not in ("biasbn", None):
        raise ValueError(f"ignore must be 'biasbn' or None, got {ignore!r}")


def _normalize_flat(
    vec: torch.Tensor,
    tensors: list[torch.Tensor],
    normalization: str,
    ignore: str | None,
) -> torch.Tensor:
    if normalization == "unit":
        return vec / torch.linalg.vector_norm(vec)
    if normalization == "none":
        return vec
    parts, start = [], 0
    for p in tensors:
        parts.append(vec[start : start + p.numel()].reshape(p.shape))
        start += p.numel()
    return flatten(_normalize_parts(parts, tensors, normalization, ignore))


def filter_normalize(
    direction: torch.Tensor,
    model: nn.Module,
    *,
    params: ParamSpec = None,
    ignore: str | None = "biasbn",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Filter-normalise a flat direction against the model's weights (Li et al. 2018).

    For every parameter tensor with two or more dimensions, each filter ``d[j]`` (a slice
    along the first dimension: a conv output channel, a linear layer's row) becomes
    ``d[j] / ||d[j]|| * ||w[j]||``. Tensors with one dimension or fewer are set to zero
    (``ignore="biasbn"``) or to the weights (``ignore=None``).

    Args:
        direction: flat ``(n,)`` vector in parameter order.
        model, params: the network and the parameters the direction lives on.
        ignore: ``"biasbn"`` or ``None``, as above.
        weights: flat weights to normalise against (default: the model's current ones).
    """
    _check_normalization("filter", ignore)
    names, tensors, n = _param_info(model, params)
    direction = _as_tensor(direction, "direction")
    _check_vector(direction, n, "direction")
    if weights is not None:
        weights = _as_tensor(weights, "weights")
        if weights.numel() != n:
            raise ValueError(f"weights has {weights.numel()} entries, expected {n}")
        tensors = unflatten(weights, tensors)
    return _normalize_flat(direction, list(tensors), "filter", ignore)


def random_directions(
    model: nn.Module,
    num: int = 2,
    *,
    normalization: str = "filter",
    ignore: str | None = "biasbn",
    seed: int | None = 0,
    params: ParamSpec = None,
    dtype: torch.dtype = torch.float64,
) -> Directions:
    """Gaussian random directions, filter-normalised by default (Li et al. 2018).

    The vectors are drawn on the CPU from a generator seeded with ``seed`` (the same
    directions on every device), in ``dtype``, and then normalised:
    ``"filter"`` (default), ``"layer"``, ``"unit"`` or ``"none"``.

    Args:
        model, params: the network and the parameters to perturb.
        num: how many directions.
        normalization: see above.
        ignore: ``"biasbn"`` zeroes biases and BatchNorm parameters (filter/layer modes);
            ``None`` sets them to the weights (Li et al.'s code).
        seed: generator seed; ``None`` draws from torch's global generator.
        dtype: floating dtype of the vectors (float64 keeps ``w0 + t d`` exact to the
            model's precision).
    """
    if num < 1:
        raise ValueError(f"num must be at least 1, got {num}")
    _check_normalization(normalization, ignore)
    names, tensors, n = _param_info(model, params)
    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    dirs = []
    for j in range(num):
        parts = [torch.randn(p.shape, generator=gen, dtype=dtype) for p in tensors]
        weights = [p.detach().to("cpu", dtype) for p in tensors]
        if normalization in ("filter", "layer"):
            parts = _normalize_parts(parts, weights, normalization, ignore)
            vec = flatten(parts)
        else:
            vec = flatten(parts)
            if normalization == "unit":
                vec = vec / torch.linalg.vector_norm(vec)
        _check_vector(vec, n, f"random direction {j}")
        vec = vec.to(tensors[0].device)
        dirs.append(
            Direction(
                vec,
                label=f"random {j + 1}",
                kind="random",
                normalization=normalization,
                extra={"seed": seed, "ignore": ignore, "draw": j},
            )
        )
    return _finish(dirs, names, tensors)


# --------------------------------------------------------------------------------------
# user and checkpoint directions


def _flat_from(obj: Any, names: list[str], tensors: list[torch.Tensor], what: str) -> torch.Tensor:
    """A flat vector from a flat tensor, a per-parameter list, a state dict or a module."""
    n = sum(p.numel() for p in tensors)
    if isinstance(obj, nn.Module):
        obj = dict(obj.named_parameters())
    if isinstance(obj, Mapping):
        missing = [name for name in names if name not in obj]
        if missing:
            raise ValueError(
                f"{what} lacks the parameters {missing[:5]}{'...' if len(missing) > 5 else ''}"
            )
        parts = []
        for name, p in zip(names, tensors, strict=True):
            t = _as_tensor(obj[name], f"{what}[{name!r}]")
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(
                    f"{what}[{name!r}] has shape {tuple(t.shape)}, the model's has {tuple(p.shape)}"
                )
            parts.append(t.to(p.device))
        return flatten(parts)
    if isinstance(obj, (list, tuple)) and len(obj) == len(tensors) and len(tensors) > 1:
        parts = []
        for i, (t, p) in enumerate(zip(obj, tensors, strict=True)):
            t = _as_tensor(t, f"{what}[{i}]")
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(
                    f"{what}[{i}] has shape {tuple(t.shape)}, parameter {names[i]!r} has "
                    f"{tuple(p.shape)}"
                )
            parts.append(t.to(p.device))
        return flatten(parts)
    t = _as_tensor(obj, what)
    if t.ndim != 1 or t.numel() != n:
        raise ValueError(
            f"{what} has shape {tuple(t.shape)}; give a flat ({n},) vector, one tensor per "
            "parameter, a state dict or a module"
        )
    return t


def user_directions(
    model: nn.Module,
    vectors: Any,
    *,
    labels: Sequence[str] | None = None,
    normalization: str = "none",
    ignore: str | None = "biasbn",
    params: ParamSpec = None,
) -> Directions:
    """Directions you give, checked and optionally normalised.

    Args:
        model, params: the network and the parameters the vectors live on.
        vectors: one direction or a list of them; each a flat ``(n,)`` vector, a list of
            per-parameter tensors, a state dict (name -> tensor) or a module of the same
            architecture. A ``(k, n)`` / ``(n, k)`` block is split into its vectors.
        labels: one label per direction.
        normalization: ``"none"`` (as given, default), ``"unit"``, ``"filter"`` or ``"layer"``.
        ignore: see :func:`random_directions`.
    """
    _check_normalization(normalization, ignore)
    names, tensors, n = _param_info(model, params)
    if isinstance(vectors, (torch.Tensor, np.ndarray)) and _as_tensor(vectors, "vectors").ndim == 2:
        items = list(as_directions(vectors, n, what="vectors").matrix())
    elif isinstance(vectors, (torch.Tensor, np.ndarray, Mapping, nn.Module)):
        items = [vectors]
    elif isinstance(vectors, (list, tuple)):
        if not vectors:
            raise ValueError("vectors is empty; give at least one direction")
        # one per-parameter list, or a list of directions?
        items = [vectors] if _looks_per_param(vectors, tensors) else list(vectors)
    else:
        raise TypeError(f"vectors must be tensors, state dicts or modules, got {type(vectors)}")
    if labels is not None and len(labels) != len(items):
        raise ValueError(f"got {len(labels)} labels for {len(items)} directions")
    dirs = []
    for i, item in enumerate(items):
        vec = _flat_from(item, names, tensors, f"vectors[{i}]")
        _check_vector(vec, n, f"vectors[{i}]")
        vec = _normalize_flat(vec, list(tensors), normalization, ignore)
        _check_vector(vec, n, f"vectors[{i}] after {normalization} normalisation")
        label = labels[i] if labels is not None else f"user {i + 1}"
        dirs.append(Direction(vec, label=label, kind="user", normalization=normalization))
    return _finish(dirs, names, tensors)


def checkpoint_directions(
    model: nn.Module,
    start: Any,
    end: Any,
    *,
    labels: Sequence[str] | None = None,
    normalization: str = "none",
    params: ParamSpec = None,
) -> Directions:
    """Directions from one set of weights to others: ``end - start``.

    With ``normalization="none"`` (default), coordinate 0 is ``start`` and coordinate 1 is
    ``end`` when the landscape's origin is ``start`` (pass ``origin=start`` to the grid
    functions, or load ``start`` into the model).

    Args:
        model, params: the network and the parameters to use.
        start: a state dict, a module or a flat vector.
        end: one of those, or a list of them (one direction each).
        labels: one label per direction.
        normalization: ``"none"``, ``"unit"``, ``"filter"`` or ``"layer"``.
    """
    _check_normalization(normalization, "biasbn")
    names, tensors, n = _param_info(model, params)
    w_start = _flat_from(start, names, tensors, "start")
    ends = (
        list(end)
        if isinstance(end, (list, tuple)) and not _looks_per_param(end, tensors)
        else [end]
    )
    if labels is not None and len(labels) != len(ends):
        raise ValueError(f"got {len(labels)} labels for {len(ends)} directions")
    dirs = []
    for i, e in enumerate(ends):
        w_end = _flat_from(e, names, tensors, f"end[{i}]")
        dtype = torch.promote_types(w_start.dtype, w_end.dtype)
        vec = w_end.to(dtype) - w_start.to(w_end.device, dtype)
        _check_vector(vec, n, f"checkpoint direction {i} (end - start)")
        distance = float(torch.linalg.vector_norm(vec.double()))
        vec = _normalize_flat(vec, list(tensors), normalization, "biasbn")
        label = (
            labels[i]
            if labels is not None
            else ("start→end" if len(ends) == 1 else f"start→end {i + 1}")
        )
        dirs.append(
            Direction(
                vec,
                label=label,
                kind="checkpoint",
                normalization=normalization,
                extra={"distance": distance},
            )
        )
    return _finish(dirs, names, tensors)


def _looks_per_param(obj: Sequence[Any], tensors: list[torch.Tensor]) -> bool:
    return (
        len(obj) == len(tensors)
        and len(tensors) > 1
        and all(
            isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(p.shape)
            for v, p in zip(obj, tensors)
        )
    )
