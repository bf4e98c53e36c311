"""The distribution of mini-batch top Hessian eigenvalues over a dataset.

For each mini-batch ``b`` of ``data``, the top eigenvalue of the Hessian of that batch's loss
alone, ``lambda_max(H_b)``, certified by its residual (:func:`~.eigenpairs.eigenpairs`,
``k = 1``). Their histogram is the "Hessian max eigenvalue spectrum" of the studies of
vision transformers (Park & Kim, "How do vision transformers work?", ICLR 2022), which
compare the sharpness the optimiser sees batch by batch. The mean of the ``lambda_max(H_b)``
is at least ``lambda_max`` of the whole-data Hessian when the batches are equal in size (the
largest eigenvalue is convex in the matrix), one reason the batch values spread above it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.batches import is_single_batch
from ..core.records import jsonable, write_json
from ._checks import check_int, check_positive, check_seed
from .blocks import curvature_operator
from .eigenpairs import eigenpairs

__all__ = ["MinibatchEigenvalues", "minibatch_top_eigenvalues"]


@dataclass
class MinibatchEigenvalues:
    """Top eigenvalue of each mini-batch's curvature, with residuals; a histogram figure.

    Attributes:
        values: ``(B,)`` top eigenvalue per batch, in the data's order.
        residuals: ``(B,)`` ``||H_b v - lambda v||`` from true products.
        converged: ``(B,)`` bool, residual at most ``tol * scale``.
        batch_sizes: ``(B,)`` samples per batch.
        curvature, tol, seed: the settings; ``num_matvecs``: products over all batches.
        full: the whole-data top eigenvalue when asked for (``with_full=True``), else ``None``.
    """

    values: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    batch_sizes: np.ndarray
    curvature: str
    tol: float
    seed: int
    num_matvecs: int
    seconds: float
    full: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def histogram(self, bins: Any = "auto") -> tuple[np.ndarray, np.ndarray]:
        """``(counts, edges)`` as ``numpy.histogram``."""
        return np.histogram(self.values, bins=bins)

    def to_dict(self) -> dict[str, Any]:
        counts, edges = self.histogram()
        return jsonable(
            {
                "values": self.values,
                "residuals": self.residuals,
                "converged": self.converged,
                "batch_sizes": self.batch_sizes,
                "curvature": self.curvature,
                "tol": self.tol,
                "seed": self.seed,
                "num_matvecs": self.num_matvecs,
                "seconds": self.seconds,
                "full": self.full,
                "mean": float(self.values.mean()),
                "std": float(self.values.std(ddof=1)) if self.values.size > 1 else None,
                "histogram": {"counts": counts, "edges": edges},
                **self.extra,
            }
        )

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    def plot(self, **kwargs: Any) -> Any:
        from ..plotting.blocks import plot_minibatch_top_eigenvalues

        return plot_minibatch_top_eigenvalues(self, **kwargs)

    def __repr__(self) -> str:
        v = self.values
        return (
            f"MinibatchEigenvalues({v.size} batches: mean {v.mean():.6g}, "
            f"min {v.min():.6g}, max {v.max():.6g}, converged {int(self.converged.sum())}/{v.size}"
            + (f", whole data {self.full:.6g}" if self.full is not None else "")
            + ")"
        )


def minibatch_top_eigenvalues(
    model: Any,
    loss_fn: Any,
    data: Any,
    *,
    curvature: str = "hessian",
    tol: float = 1e-3,
    seed: int = 0,
    num_batches: int | None = None,
    with_full: bool = False,
    params: Any = None,
    **operator_options: Any,
) -> MinibatchEigenvalues:
    """The top eigenvalue of the curvature of each mini-batch of ``data``.

    Args:
        model, loss_fn: as for :class:`~jupyter_curvature.operators.HessianOperator`.
        data: a DataLoader or any iterable of batches (each batch is one operator's data).
        curvature: ``"hessian"`` (default) or ``"ggn"``.
        tol: residual tolerance of :func:`~.eigenpairs.eigenpairs`.
        seed: seeds each batch's start vector.
        num_batches: only the first ``num_batches`` batches (default all).
        with_full: also compute the whole-data top eigenvalue (``full``).
        params: which parameters.
        **operator_options: ``batchnorm``, ``outputs``, ``batch_layout``, ...

    Raises:
        ValueError: empty data, bad settings.
    """
    tol = check_positive("tol", tol)
    seed = check_seed(seed)
    if num_batches is not None:
        num_batches = check_int("num_batches", num_batches, 1)
    start = time.perf_counter()
    batches = [data] if is_single_batch(data) else data
    values, residuals, converged, sizes = [], [], [], []
    matvecs = 0
    for index, raw in enumerate(batches):
        if num_batches is not None and index >= num_batches:
            break
        op = curvature_operator(model, loss_fn, [raw], curvature, params=params, **operator_options)
        res = eigenpairs(op, 1, tol=tol, seed=seed, warn=False)
        values.append(float(res.eigenvalues[0]))
        residuals.append(float(res.residuals[0]))
        converged.append(bool(res.pair_converged[0]))
        sizes.append(int(op.num_samples or op.source.first().size))
        matvecs += res.num_matvecs
    if not values:
        raise ValueError("data is empty: it yielded no batch; check the dataset and the loader")
    full = None
    if with_full:
        op = curvature_operator(model, loss_fn, data, curvature, params=params, **operator_options)
        res = eigenpairs(op, 1, tol=tol, seed=seed, warn=False)
        full = float(res.eigenvalues[0])
        matvecs += res.num_matvecs
    return MinibatchEigenvalues(
        values=np.array(values),
        residuals=np.array(residuals),
        converged=np.array(converged),
        batch_sizes=np.array(sizes),
        curvature=curvature,
        tol=tol,
        seed=seed,
        num_matvecs=matvecs,
        seconds=time.perf_counter() - start,
        full=full,
    )
