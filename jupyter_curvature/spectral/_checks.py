"""Input validation and the product wrapper shared by every spectral routine.

Everything here exists so that a bad operator or a bad argument fails early with a message
that names the argument and the remedy, and so that a NaN coming out of the model is named as
such instead of surfacing later as a garbage eigenvalue.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Any

import torch

from ..operators.base import check_unchanged
from ._graphs import GraphKeeper

#: relative asymmetry |u^T A w - w^T A u| / (||A u|| ||w|| + ||A w|| ||u||) that counts as
#: "not symmetric". Hessian products are symmetric to ~1e-15 (f64) and ~3e-7 (f32)
#: (algorithms.md section 7); a genuinely non-symmetric operator is off by O(1).
SYMMETRY_RTOL = {
    torch.float64: 1e-7,
    torch.float32: 1e-3,
    torch.float16: 5e-2,
    torch.bfloat16: 5e-2,
}

NAN_MESSAGE = (
    "the operator product contains NaN or inf: the loss or the model produced NaN "
    "(check the loss on this data, the weights for NaN/inf, and the learning rate that led here)"
)


class Operator:
    """A uniform view of a curvature operator: ``CurvatureOperator``, a dense tensor, or duck type.

    Counts the products it does (a block ``(n, k)`` counts ``k``), converts blocks between the
    Lanczos basis dtype/device and the operator's, and checks every product for NaN. Used as a
    context manager it keeps a Hessian's gradient graphs for the length of the ``with`` block
    (``keep_graphs``, see :mod:`._graphs`) and leaves the operator as it found it.

    The ``with`` block also holds the operator's ``lock``: a spectral call is one unit, so its
    graphs, its ``keep_graphs`` switch and the model state belong to it alone while it runs
    (other threads wait), and every product is checked to see the parameters of the first
    (a change in between would mix two matrices in one Krylov space).
    """

    def __init__(self, op: Any, keep_graphs: bool | None = False) -> None:
        if isinstance(op, torch.Tensor):
            from ..operators.base import DenseOperator

            op = DenseOperator(op)
        shape = getattr(op, "shape", None)
        if (
            shape is None
            or not hasattr(op, "dtype")
            or not (hasattr(op, "matmat") or hasattr(op, "__matmul__"))
        ):
            raise TypeError(
                "op must be a curvature operator (jupyter_curvature.HessianOperator, GGNOperator, "
                f"DenseOperator, ...) or a square torch.Tensor, got {type(op).__name__}"
            )
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"op must be square, got shape {tuple(shape)}")
        if not op.dtype.is_floating_point:
            raise TypeError(f"op must work in a floating dtype, got {op.dtype}")
        self.op = op
        self.n = int(shape[0])
        self.dtype: torch.dtype = op.dtype
        self.device = torch.device(getattr(op, "device", "cpu"))
        self.num_matvecs = 0
        self.graphs = GraphKeeper(op, keep_graphs)
        self._versions: tuple[int, ...] | None = None  # the parameters' at the call's start
        self._exit = contextlib.ExitStack()

    def _parameter_versions(self) -> tuple[int, ...]:
        versions = getattr(self.op, "parameter_versions", None)
        return versions() if callable(versions) else ()

    def __enter__(self) -> Operator:
        with contextlib.ExitStack() as stack:
            lock = getattr(self.op, "lock", None)
            if lock is not None:
                stack.enter_context(lock)
            self.graphs.open()
            stack.callback(self.graphs.close)
            self._versions = self._parameter_versions()
            self._exit = stack.pop_all()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._versions = None
        self._exit.close()

    def matmat(self, block: torch.Tensor) -> torch.Tensor:
        """``A @ block`` for a ``(n, k)`` block in any dtype/device; returned in the block's."""
        x = block.to(dtype=self.dtype, device=self.device)
        y = self.graphs.product(x)
        if self._versions is not None:
            check_unchanged(self._versions, self._parameter_versions())
        self.num_matvecs += block.shape[1]
        if not all_finite(y):
            raise FloatingPointError(NAN_MESSAGE)
        return y.detach().to(dtype=block.dtype, device=block.device)


def all_finite(y: torch.Tensor) -> bool:
    """No NaN or inf in ``y``: one reduction (a NaN or inf makes the float64 sum non-finite),
    and the elementwise test only when the sum is not finite (it may just have overflowed)."""
    if bool(torch.isfinite(y.sum(dtype=torch.float64))):
        return True
    return bool(torch.isfinite(y).all())


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
    q: torch.Tensor, aq: torch.Tensor, op_dtype: torch.dtype
) -> tuple[float, float]:
    """``(defect, tolerance)`` of ``q_0^T A q_1`` vs ``q_1^T A q_0`` from two Lanczos columns.

    ``q``, ``aq``: ``(n, 2)`` blocks of two vectors and their products, already computed by
    Lanczos, so the check costs no product (the cheap probe check of the issue).
    """
    u, w = q[:, 0], q[:, 1]
    au, aw = aq[:, 0], aq[:, 1]
    defect = float((w @ au - u @ aw).abs())
    size = float(au.norm() * w.norm() + aw.norm() * u.norm())
    tol = SYMMETRY_RTOL.get(op_dtype, 1e-3) * max(size, torch.finfo(q.dtype).tiny)
    return defect, tol


def raise_if_asymmetric(q: torch.Tensor, aq: torch.Tensor, op_dtype: torch.dtype) -> None:
    defect, tol = symmetry_defect(q, aq, op_dtype)
    if defect > tol:
        raise ValueError(
            f"op is not symmetric: u^T A w and w^T A u differ by {defect:.3g} (tolerance "
            f"{tol:.3g}). Lanczos needs a symmetric operator: pass a Hessian/GGN, or "
            "symmetrise a dense matrix with (M + M.T) / 2"
        )


def resolve_device(device: Any, default: torch.device) -> torch.device:
    return default if device is None else torch.device(device)
