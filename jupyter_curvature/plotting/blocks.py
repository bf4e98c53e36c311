"""Per-block figures: block spectra side by side, and the mini-batch top-eigenvalue histogram.

:func:`plot_block_spectra` draws a :class:`~jupyter_curvature.spectral.BlockSpectra`: on the
left the top eigenvalue of every block (bars; a hollow bar when its residual did not meet the
tolerance) and its trace (dots, with ``+- 2`` standard errors), on the right every block's
spectral density as a ridge line (each scaled to its own peak, on a shared eigenvalue axis,
``symlog`` so that the bulk near zero and the outliers both show).

:func:`plot_minibatch_top_eigenvalues` draws the histogram of the top Hessian eigenvalue of
each mini-batch (the "Hessian max eigenvalue spectrum" of the ViT studies).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._figures import figure

__all__ = ["plot_block_spectra", "plot_minibatch_top_eigenvalues"]


def plot_block_spectra(
    result: Any, *, figsize: tuple[float, float] | None = None, linthresh: float | None = None
) -> Any:
    """The per-block figure of a ``BlockSpectra`` result; returns the figure.

    Args:
        result: a :class:`~jupyter_curvature.spectral.BlockSpectra` (anything with
            ``blocks``, each with ``name``, ``top_eigenvalue``, ``converged``, ``trace`` and
            ``density``).
        figsize: default ``(12, 0.35 * blocks + 1.5)``.
        linthresh: the linear range of the ``symlog`` eigenvalue axis (default: 1e-3 of the
            largest ``|Ritz value|``).
    """
    blocks = list(result.blocks)
    b = len(blocks)
    fig, axes = figure(1, 2, figsize or (12, 0.35 * b + 1.5))
    ax, ridge = axes[0]
    names = [blk.name for blk in blocks]
    pos = np.arange(b)[::-1]
    tops = np.array([blk.top_eigenvalue for blk in blocks], dtype=float)
    done = np.array([bool(blk.converged) for blk in blocks])
    ax.barh(pos[done], tops[done], color="#1f77b4", label="top eigenvalue (certified)")
    if (~done).any():
        ax.barh(
            pos[~done],
            tops[~done],
            color="none",
            edgecolor="#1f77b4",
            label="top eigenvalue (not converged)",
        )
    traces = np.array([blk.trace.estimate for blk in blocks], dtype=float)
    errs = np.array(
        [0.0 if not np.isfinite(blk.trace.stderr) else blk.trace.stderr for blk in blocks]
    )
    ax.errorbar(
        traces, pos, xerr=2 * errs, fmt="o", color="#d62728", ms=4, label="trace (± 2 s.e.)"
    )
    ax.set_yticks(pos)
    ax.set_yticklabels(names, fontsize=8)
    positive = np.concatenate([tops, traces])
    if (positive > 0).all() and positive.max() / max(positive.min(), 1e-300) > 100:
        ax.set_xscale("log")
    ax.set_xlabel("top eigenvalue / trace")
    ax.legend(fontsize=8, loc="lower right")
    scale = max(float(np.max([blk.density.scale for blk in blocks])), 1e-300)
    thresh = linthresh or 1e-3 * scale
    lo = min(float(blk.density.ritz_values.min()) for blk in blocks)
    hi = max(float(blk.density.ritz_values.max()) for blk in blocks)
    pad = 0.05 * (hi - lo) + thresh
    grid = np.linspace(lo - pad, hi + pad, 2000)
    for y0, blk in zip(pos, blocks):
        curve = blk.density.density(grid)
        peak = float(curve.density.max()) or 1.0
        ridge.fill_between(
            grid,
            y0,
            y0 + 0.9 * curve.density / peak,
            alpha=0.6,
            lw=0.5,
            color="#1f77b4",
            edgecolor="#08306b",
        )
    ridge.set_xscale("symlog", linthresh=thresh)
    ridge.set_yticks(pos)
    ridge.set_yticklabels([])
    ridge.set_xlabel("eigenvalue (symlog)")
    ridge.set_title("density of each block (scaled to its peak)", fontsize=9)
    curvature = getattr(result, "curvature", "curvature")
    fig.suptitle(f"Per-block {curvature} spectra: {b} blocks", fontsize=10)
    return fig


def plot_minibatch_top_eigenvalues(
    result: Any, *, bins: Any = "auto", figsize: tuple[float, float] = (6, 4)
) -> Any:
    """Histogram of the top eigenvalue of each mini-batch; returns the figure.

    Args:
        result: a :class:`~jupyter_curvature.spectral.MinibatchEigenvalues` (``values``,
            and the full-data top eigenvalue ``full`` when computed).
        bins: as ``numpy.histogram``.
    """
    values = np.asarray(result.values, dtype=float)
    fig, axes = figure(1, 1, figsize)
    ax = axes[0][0]
    ax.hist(values, bins=bins, color="#1f77b4", alpha=0.8, label=f"{values.size} mini-batches")
    ax.axvline(float(np.mean(values)), color="#08306b", ls="--", label="mean")
    full = getattr(result, "full", None)
    if full is not None:
        ax.axvline(float(full), color="#d62728", label="whole data")
    ax.set_xlabel("top Hessian eigenvalue of the mini-batch")
    ax.set_ylabel("mini-batches")
    ax.legend(fontsize=8)
    return fig
