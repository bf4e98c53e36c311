"""The spectral-density figure: the broadened density, its band across probes, Ritz stems.

Stochastic Lanczos quadrature (Ubaru, Chen and Saad, SIAM J. Matrix Anal. Appl. 38, 2017;
Ghorbani, Krishnan and Xiao, ICML 2019) estimates the density
``phi(t) = (1/n) sum_i delta(t - lambda_i)`` by the Gauss quadrature of each probe: nodes
``theta_j`` (Ritz values) with weights ``w_j`` (``sum_j w_j = 1`` per probe). The figure
shows the Gaussian-broadened mean over probes, the band ``mean +- 2 s.e.`` across probes
(more than one probe), and the nodes as stems of height ``w_j / num_probes`` on a twin
axis (so that the stems, like the curve, integrate to one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._figures import figure

__all__ = ["plot_spectrum", "plot_spectral_density", "draw_density"]


def draw_density(
    ax: Any,
    density: Any,
    *,
    sigma: float | None = None,
    log: bool = False,
    stems: bool = True,
    title: str | None = None,
) -> Any:
    """Draw a spectral density into ``ax``; returns its ``DensityCurve``.

    Args:
        ax: matplotlib axes.
        density: a :class:`~jupyter_curvature.spectral.SpectralDensity` (or any object with
            ``density(grid, sigma)``, ``ritz_values``, ``weights`` and ``num_probes``).
        sigma: Gaussian broadening (default: the density's own bandwidth).
        log: logarithmic density axis (the bulk near zero dwarfs the outliers otherwise);
            the axis is cut at ``1e-6`` of the peak.
        stems: the Ritz values as stems on a twin axis (``"Ritz weight"``).
        title: axes title.
    """
    curve = density.density(None, sigma)
    values, lower, upper = curve.density, curve.lower, curve.upper
    floor = None
    if log:
        floor = max(float(np.max(values)) * 1e-6, 1e-300)
        values, lower, upper = (np.maximum(v, floor) for v in (values, lower, upper))
    ax.plot(curve.grid, values, color="#1f77b4", label="density (mean of probes)")
    probes = int(getattr(density, "num_probes", 1))
    if probes > 1:
        ax.fill_between(
            curve.grid, lower, upper, color="#9ecae1", alpha=0.6, label="± 2 s.e. over probes"
        )
    if log:
        ax.set_yscale("log")
        ax.set_ylim(floor, None)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    if title is not None:
        ax.set_title(title)
    if stems:
        twin = ax.twinx()
        theta = density.ritz_values.numpy(force=True).reshape(-1)
        weights = density.weights.numpy(force=True).reshape(-1) / max(probes, 1)
        twin.vlines(theta, 0, weights, color="#d62728", alpha=0.5, linewidth=0.8)
        twin.set_ylabel("Ritz weight")
        twin.set_ylim(0, None)
    # the x range is that of the Ritz values, bulk and outliers, with a small margin (the
    # default grid's 5 sigma tails would widen it); the legend goes where it hides least
    theta = density.ritz_values.numpy(force=True)
    lo, hi = float(theta.min()), float(theta.max())
    pad = max(0.03 * (hi - lo), curve.sigma, 1e-12 * max(abs(lo), abs(hi), 1.0))
    ax.set_xlim(lo - pad, hi + pad)
    ax.legend(loc="best", fontsize="small")
    return curve


def _as_density(result: Any) -> Any:
    """The ``SpectralDensity`` of a result that holds one (``result.density``), or itself."""
    inner = getattr(result, "density", None)
    return result if callable(inner) else inner


def plot_spectrum(
    density: Any,
    *,
    eigen: Any = None,
    ax: Any = None,
    sigma: float | None = None,
    log: bool = False,
    stems: bool = True,
    title: str | None = None,
    figsize: tuple[float, float] = (8, 4.5),
) -> Any:
    """A spectral density with its band and Ritz stems; certified eigenvalues as lines.

    Args:
        density: a :class:`~jupyter_curvature.spectral.SpectralDensity`, or a result holding
            one as ``.density`` (a spectrum task's result).
        eigen: optional eigenpairs (``.eigenvalues``): each drawn as a dotted vertical line.
        ax: axes to draw into (default: a new ``Figure``, no pyplot state).
        sigma: Gaussian broadening (default: the density's automatic bandwidth).
        log: logarithmic density axis.
        stems: draw the Ritz stems on a twin axis.
        title: default ``"Spectral density (n = ...)"``.
        figsize: size of a new figure.

    Returns:
        the figure.
    """
    density = _as_density(density)
    if ax is None:
        fig, axes = figure(1, 1, figsize)
        ax = axes[0, 0]
    draw_density(
        ax,
        density,
        sigma=sigma,
        log=log,
        stems=stems,
        title=title or f"Spectral density (n = {density.n})",
    )
    if eigen is not None:
        for value in eigen.eigenvalues.tolist():
            ax.axvline(value, color="#d62728", linestyle=":", linewidth=1)
    return ax.figure


def plot_spectral_density(
    density: Any,
    *,
    ax: Any = None,
    sigma: float | None = None,
    log: bool = True,
    title: str | None = None,
) -> Any:
    """:func:`plot_spectrum` as the CLI draws it: a log density axis; returns the axes.

    The name the CLI tasks use. Without ``ax`` the figure is made with pyplot (as it always
    was), so a notebook's inline backend shows it.
    """
    if ax is None:
        from ._figures import pyplot_figure

        ax = pyplot_figure((6.4, 3.6)).add_subplot()
    plot_spectrum(
        density,
        ax=ax,
        sigma=sigma,
        log=log,
        title=title or "Spectral density (stochastic Lanczos quadrature)",
    )
    return ax
