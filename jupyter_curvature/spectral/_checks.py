"""Input validation and the product wrapper shared by every spectral routine.

Everything here exists so that a bad operator or a bad argument fails early with a message
that names the argument and the remedy, and so that a NaN coming out of the model is named as
such instead of surfacing later as a garbage eigenvalue.
"""

from __future__ import annotations

import contextlib
import numbers
import warnings
from typing import Any

import torch

from ..core.distributed.basis import ShardedBasis, VectorSpace
from ..core.inputs import all_finite
from ..operators import CompositeOperator, CurvatureOperator, as_operator
from ..operators.base import check_unchanged
from ..operators.graphs import supports_kept_graphs

#: relative asymmetry |u^T A w - w^T A u| / (||A u|| ||w|| + ||A w|| ||u||) that counts as
#: "not symmetric". Hessian products are symmetric to ~1e-15 (f64) and ~3e-7 (f32);
#: a genuinely non-symmetric operator is off by O(1).
SYMMETRY_RTOL = {
    torch.float64: 1e-7,
    torch.float32: 1e-3,
    torch.float16: 5e-2,
    torch.bfloat16: 5e-2,
}

#: the smallest relative ``tol`` a half-precision operator can certify: a residual
#: ``||A v - theta v||`` is known only up to the product's own error, measured at 0.1-1.1 unit
#: roundoffs ``u`` of ``||A||`` (u = 2^-8 for bfloat16, 2^-11 for float16; MLP and SmallCNN on
#: the digits, benchmarks/bench_half_precision.py, docs/operators.md "Half precision"); 4 u
#: keeps that error below a third of the tolerance. Looser than SYMMETRY_RTOL's check needs.
#: float32 (u = 2^-24): 8 u. Its certified vectors are float32 too, and rounding a unit vector
#: moves its residual by up to ``||A - lambda I|| u <= 2 u ||A||`` (0.4-0.5 u measured), on top
#: of the product's own error, 0.3-1.8 u ``||A||`` measured (dense n = 203 and 1000, MLP and
#: CNN Hessians on the digits; the dense n = 1000 sum the largest). At 8 u every top-3 of those
#: four operators (3 seeds, verify "stored" and "product") was certified, with the true float64
#: residual of the returned vectors at most 6.0 u; at 4 u, 3 of the 24 runs left a pair
#: uncertified (docs/operators.md, "Half precision", float32 paragraph).
REACHABLE_TOL = {
    torch.float16: 4 * 2.0**-11,
    torch.bfloat16: 4 * 2.0**-8,
    torch.float32: 8 * 2.0**-24,
}


def reachable_tol(dtype: torch.dtype) -> float:
    """The smallest ``tol`` that products of an operator in ``dtype`` can certify (0: any)."""
    return REACHABLE_TOL.get(dtype, 0.0)


def warn_unreachable_tol(
    tol: float, dtype: torch.dtype, name: str = "tol", stacklevel: int = 4
) -> None:
    """Warn when ``tol`` is below :func:`reachable_tol` of a float32 or half-precision operator."""
    floor = reachable_tol(dtype)
    if tol < floor:
        finer = "float64" if dtype == torch.float32 else "float32"
        warnings.warn(
            f"{name}={tol:g} is below what {str(dtype)[6:]} products can certify (about "
            f"{floor:g} of the spectral scale: each product and the {str(dtype)[6:]} "
            f"eigenvectors carry that relative rounding error); pass {name}={floor:g}, or "
            f"convert the model to {finer} for a smaller {name}",
            UserWarning,
            stacklevel=stacklevel,
        )


NAN_MESSAGE = (
    "the operator product contains NaN or inf: the loss or the model produced NaN "
    "(check the loss on this data, the weights for NaN/inf, and the learning rate that led here)"
)


class Operator:
    """A spectral call's view of an operator: basis conversion, NaN check, per-call count.

    The operator is first made a :class:`~jupyter_curvature.operators.CurvatureOperator` by
    :func:`~jupyter_curvature.operators.as_operator` (a dense tensor, a duck type). Blocks are
    converted between the Lanczos basis dtype/device and the operator's, every product is
    checked for NaN, and :attr:`num_matvecs` is what the operator itself counted for the
    products made through this view (a block ``(n, k)`` counts ``k``; a composite counts its
    parts' products): nothing is counted twice. Used as a context manager it enters the operator's
    :meth:`~jupyter_curvature.operators.CurvatureOperator.kept_graphs` for the length of the
    ``with`` block (``keep_graphs``) and holds the operator's ``lock``: a spectral call is one
    unit, so its graphs and the model state belong to it alone while it runs (other threads
    wait), and every product is checked to see the parameters of the first (a change in
    between would mix two matrices in one Krylov space).

    :attr:`space` says where the rows of the Lanczos vectors live
    (:mod:`~jupyter_curvature.core.distributed.basis`): all here, or, for an ``op`` wrapped in
    :class:`~jupyter_curvature.core.distributed.basis.ShardedBasis`, this rank's slice; then
    :meth:`matmat` takes and returns slices (gathering the full input for the product) and
    every contraction over ``n`` in the spectral routines goes through ``space.reduce``.
    :attr:`n` is always the full dimension. Only callers that handle a sharded space say
    ``sharded=True``; elsewhere a ``ShardedBasis`` is refused.
    """

    def __init__(self, op: Any, keep_graphs: bool | None = False, *, sharded: bool = False) -> None:
        self.space: VectorSpace | None = None
        if isinstance(op, ShardedBasis):
            if not sharded:  # a routine whose vectors are full-length (trace, diagonal...)
                raise ValueError(
                    "a ShardedBasis (shard_basis=True) is for the Lanczos routines "
                    "(spectral_density, eigenpairs, lanczos); pass the operator itself here"
                )
            self.space, op = op.space, op.op
        if not isinstance(op, (torch.Tensor, CurvatureOperator)):
            shape = getattr(op, "shape", None)
            if (
                shape is None
                or not hasattr(op, "dtype")
                or not (hasattr(op, "matmat") or hasattr(op, "__matmul__"))
            ):
                raise TypeError(
                    "op must be a curvature operator (jupyter_curvature.HessianOperator, "
                    "GGNOperator, DenseOperator, ...) or a square torch.Tensor, got "
                    f"{type(op).__name__}"
                )
            if len(shape) != 2 or shape[0] != shape[1]:
                raise ValueError(f"op must be square, got shape {tuple(shape)}")
            if not op.dtype.is_floating_point:
                raise TypeError(f"op must work in a floating dtype, got {op.dtype}")
        elif isinstance(op, torch.Tensor) and (op.ndim != 2 or op.shape[0] != op.shape[1]):
            raise ValueError(f"op must be square, got shape {tuple(op.shape)}")
        elif isinstance(op, torch.Tensor) and not op.dtype.is_floating_point:
            raise TypeError(f"op must work in a floating dtype, got {op.dtype}")
        self.op: CurvatureOperator = as_operator(op)
        self.n = int(self.op.shape[0])
        self.space = self.space or VectorSpace(self.n)
        self.dtype: torch.dtype = self.op.dtype
        self.device = self.op.device
        self._count = 0
        self.keep_graphs = keep_graphs
        if keep_graphs is not None and not isinstance(keep_graphs, bool):
            raise TypeError(
                f"keep_graphs must be True, False or None (automatic), got {keep_graphs!r}"
            )
        if keep_graphs is True and not _can_keep_graphs(self.op):
            raise ValueError(
                "keep_graphs=True needs an operator that can keep gradient graphs "
                f"(HessianOperator); {type(self.op).__name__} cannot: pass keep_graphs=None or "
                "False"
            )
        #: the operator's graph keeper while the ``with`` block runs
        self.graphs: Any = None
        self._versions: tuple[int, ...] | None = None  # the parameters' at the call's start
        self._exit = contextlib.ExitStack()

    @property
    def num_matvecs(self) -> int:
        """Products made through this view, as the operator counted them."""
        return self._count

    def __enter__(self) -> Operator:
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.op.lock)
            self.graphs = stack.enter_context(self.op.kept_graphs(self.keep_graphs))
            self._versions = self.op.parameter_versions()
            self._exit = stack.pop_all()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._versions = None
        self._exit.close()

    def matmat(self, block: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``A @ block`` for a ``(n, k)`` block in any dtype/device; returned in the block's.

        With a sharded :attr:`space` the block is this rank's rows: they are gathered to the
        full input, and this rank's rows of the product are returned. ``out``: a block of
        the result's shape to write the product into (converted to its dtype and device),
        instead of a new one.
        """
        # a page-locked (CPU basis) block reaches a GPU asynchronously, in stream order
        pinned = block.device.type == "cpu" and self.device.type == "cuda" and block.is_pinned()
        x = self.space.gather(block.to(dtype=self.dtype, device=self.device, non_blocking=pinned))
        with self.op.lock:  # no other thread's products between the two readings
            before = self.op.num_matvecs
            y = self.op.matmat(x)
            self._count += self.op.num_matvecs - before
        if self._versions is not None:
            check_unchanged(self._versions, self.op.parameter_versions())
        if not all_finite(y):
            raise FloatingPointError(NAN_MESSAGE)
        y = self.space.local(y.detach())
        if out is not None:
            return out.copy_(y)
        return y.to(dtype=block.dtype, device=block.device)


def _can_keep_graphs(op: CurvatureOperator) -> bool:
    if isinstance(op, CompositeOperator):
        return any(supports_kept_graphs(leaf) for leaf in op.leaves())
    return supports_kept_graphs(op)


def check_int(name: str, value: Any, low: int, high: int | None = None, hint: str = "") -> int:
    """An integer in ``[low, high]`` or a ValueError/TypeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {bound}, got {value}{'; ' + hint if hint else ''}")
    return value


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed for ``torch.Generator.manual_seed``: an integer in ``[0, 2**63 - 1]``."""
    return check_int(name, value, 0, 2**63 - 1, hint="seeds are non-negative integers")


def check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}")
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return float(value)


def symmetry_defect(
    q: torch.Tensor, aq: torch.Tensor, op_dtype: torch.dtype, space: VectorSpace | None = None
) -> tuple[float, float]:
    """``(defect, tolerance)`` of ``q_0^T A q_1`` vs ``q_1^T A q_0`` from two Lanczos columns.

    ``q``, ``aq``: ``(n, 2)`` blocks of two vectors and their products, already computed by
    Lanczos, so the check costs no product (the cheap probe check of the issue). ``space``:
    the rows' layout (the dots are reduced over a sharded one).
    """
    reduce = space.reduce if space is not None else (lambda t: t)
    u, w = q[:, 0], q[:, 1]
    au, aw = aq[:, 0], aq[:, 1]

    def dot(a: torch.Tensor, b: torch.Tensor) -> float:
        # float64 sums: a float32 dot over n = 1e8 terms is off by ~1e-3 relative, as large
        # as the tolerance (measured: a false "not symmetric" on a 100M-parameter MLP)
        return float(reduce((a * b).sum(dtype=torch.float64)))

    defect = abs(dot(w, au) - dot(u, aw))
    size = dot(au, au) ** 0.5 * dot(w, w) ** 0.5 + dot(aw, aw) ** 0.5 * dot(u, u) ** 0.5
    tol = SYMMETRY_RTOL.get(op_dtype, 1e-3) * max(size, torch.finfo(q.dtype).tiny)
    return defect, tol


def raise_if_asymmetric(
    q: torch.Tensor, aq: torch.Tensor, op_dtype: torch.dtype, space: VectorSpace | None = None
) -> None:
    defect, tol = symmetry_defect(q, aq, op_dtype, space)
    if defect > tol:
        raise ValueError(
            f"op is not symmetric: u^T A w and w^T A u differ by {defect:.3g} (tolerance "
            f"{tol:.3g}). Lanczos needs a symmetric operator: pass a Hessian/GGN, or "
            "symmetrise a dense matrix with (M + M.T) / 2"
        )


def resolve_device(device: Any, default: torch.device) -> torch.device:
    return default if device is None else torch.device(device)
