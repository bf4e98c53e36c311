"""``SpectrumPanel``: a spectral density with its band, Ritz stems, top eigenvalues and statistics.

The panel draws what :func:`jupyter_curvature.spectral.spectral_density` computed: the
Gaussian-broadened SLQ density (mean over probes, with a band of ``+- 2`` standard errors
across probes), every probe's Ritz values as stems whose heights are their quadrature
weights (right axis), a table of the largest eigenvalues with residuals (certified
eigenpairs from :func:`~jupyter_curvature.spectral.eigenpairs` when given, else the largest
Ritz values with their Lanczos residual estimates), and the summary statistics.

The broadening ``sigma`` and the linear/log density axis are controls: changing them only
re-evaluates ``density(grid, sigma)`` on the stored Ritz values; nothing is recomputed on the
model.
"""

from __future__ import annotations

import html
from typing import Any

import bqplot as bq
import ipywidgets as W
import numpy as np

from ..plotting import format_count
from ._base import Panel, html_table

__all__ = ["SpectrumPanel"]

#: the log axis shows densities down to this fraction of the peak
LOG_FLOOR = 1e-6


def _unpack(result: Any, eigen: Any) -> tuple[Any, Any, str]:
    density = getattr(result, "density", None)
    if density is not None and not callable(density):  # a SpectrumResult
        return density, eigen if eigen is not None else result.eigen, result.curvature
    return result, eigen, "hessian"


class SpectrumPanel(Panel):
    """Interactive view of a spectral density.

    Args:
        result: a ``SpectralDensity`` or an :class:`~jupyter_curvature.tasks.SpectrumResult`.
        eigen: optional ``EigenpairsResult`` of the same operator (certified top eigenvalues).
        title: figure title (default names the curvature).
        sigma: initial broadening (default: the density's ``default_sigma()``).
        log: start with a logarithmic density axis.
        num_points: grid points of the density curve.

    Attributes: ``figure``, ``density_line``, ``band``, ``stems`` (bqplot marks);
    ``sigma_slider`` (``FloatLogSlider``), ``scale_toggle`` (``ToggleButtons``,
    ``"linear"``/``"log"``), ``table_html``, ``stats_html``; ``curve`` (the ``DensityCurve``
    drawn now).
    """

    static_on_display = True  # finished when built: carries its PNG from the first display

    def __init__(
        self,
        result: Any,
        eigen: Any = None,
        *,
        title: str | None = None,
        sigma: float | None = None,
        log: bool = False,
        num_points: int = 600,
        top: int = 10,
    ) -> None:
        super().__init__()
        self.density, self.eigen, curvature = _unpack(result, eigen)
        self.num_points = int(num_points)
        self.top = int(top)
        d0 = self.density.default_sigma()
        sigma = d0 if sigma is None else float(sigma)
        name = "GGN" if curvature == "ggn" else "Hessian"
        self.title = (
            title
            or f"{name} spectral density (n = {self.density.n}, {self.density.num_probes} probes)"
        )

        # a fixed grid wide enough for the largest sigma the slider allows
        theta = self.density.ritz_values.numpy(force=True)
        lo, hi = float(theta.min()), float(theta.max())
        pad = max(5 * sigma, 0.05 * (hi - lo), 1e-12)
        self.grid = np.linspace(lo - pad, hi + pad, self.num_points)

        self.xs = bq.LinearScale()
        self.ys_lin = bq.LinearScale(min=0.0)
        self.ys_log = bq.LogScale()
        # only one of the two y scales is in the tree at a time: own both so close() gets both
        self._own(self.ys_lin)
        self._own(self.ys_log)
        self.ws = bq.LinearScale(min=0.0)
        # the band is one closed outline (lower bound left to right, then the upper bound back)
        # filled inside: one line, so one legend entry; two lines filled "between" would add
        # a second entry that bqplot names "C2"
        self.band = bq.Lines(
            x=np.concatenate([self.grid, self.grid[::-1]]),
            y=np.zeros(2 * self.grid.size),
            scales={"x": self.xs, "y": self.ys_lin},
            fill="inside",
            colors=["#9ecae1"],
            fill_colors=["#9ecae1"],
            fill_opacities=[0.45],
            stroke_width=0,
            labels=["± 2 s.e. over probes"],
            display_legend=True,
        )
        self.density_line = bq.Lines(
            x=self.grid,
            y=np.zeros(self.grid.size),
            scales={"x": self.xs, "y": self.ys_lin},
            colors=["#1f77b4"],
            labels=["density"],
            display_legend=True,
        )
        th = theta.reshape(-1)
        w = self.density.weights.numpy(force=True).reshape(-1)
        self.stems = bq.Lines(
            x=np.stack([th, th], 1),
            y=np.stack([np.zeros_like(w), w], 1),
            scales={"x": self.xs, "y": self.ws},
            colors=["#888888"],
            stroke_width=1,
            opacities=[0.6],
        )
        self.ritz_points = bq.Scatter(
            x=th,
            y=w,
            scales={"x": self.xs, "y": self.ws},
            colors=["#555555"],
            default_size=12,
            labels=["Ritz values (weight, right axis)"],
            display_legend=True,
        )
        self.x_axis = bq.Axis(scale=self.xs, label="eigenvalue", tick_format=".3g")
        self.y_axis = bq.Axis(scale=self.ys_lin, side="left", label="density", tick_format=".2g")
        self.w_axis = bq.Axis(scale=self.ws, side="right", label="Ritz weight", tick_format=".2f")
        self.figure = bq.Figure(
            marks=[self.stems, self.ritz_points, self.band, self.density_line],
            axes=[self.x_axis, self.y_axis, self.w_axis],
            title=self.title,
            fig_margin={"top": 40, "bottom": 45, "left": 60, "right": 60},
            layout=W.Layout(width="100%", height="340px"),
            legend_location="top-right",
        )
        self.sigma_slider = W.FloatLogSlider(
            value=sigma,
            base=10,
            # wide enough for a given sigma far from the default (not clamped to the range)
            min=min(np.log10(d0), np.log10(sigma)) - 1.5,
            max=max(np.log10(d0), np.log10(sigma)) + 1.5,
            step=0.05,
            description="σ (broadening)",
            readout_format=".3g",
            continuous_update=False,
            style={"description_width": "initial"},
        )
        self.scale_toggle = W.ToggleButtons(
            options=["linear", "log"],
            value="log" if log else "linear",
            description="density axis",
            style={"description_width": "initial"},
        )
        self.table_html = W.HTML(self._top_table())
        self.stats_html = W.HTML(self._stats_table())
        self.sigma_slider.observe(self.callback(self._on_sigma), names=["value"])
        self.scale_toggle.observe(self.callback(self._on_scale), names=["value"])
        self._set_root(
            [
                self.figure,
                W.HBox([self.sigma_slider, self.scale_toggle]),
                W.HBox([self.table_html, self.stats_html], layout=W.Layout(grid_gap="32px")),
            ],
            width="100%",
        )
        self.redraw()
        if log:
            self._on_scale({"new": "log"})

    # ------------------------------------------------------------------ controls
    @property
    def sigma(self) -> float:
        return float(self.sigma_slider.value)

    @property
    def log(self) -> bool:
        return self.scale_toggle.value == "log"

    def redraw(self) -> None:
        """Re-evaluate the density at the current ``sigma`` and push it (one message per mark)."""
        self.curve = self.density.density(self.grid, self.sigma)
        mean, lower, upper = self.curve.density, self.curve.lower, self.curve.upper
        if self.log:
            floor = LOG_FLOOR * float(mean.max()) if mean.max() > 0 else LOG_FLOOR
            mean, lower, upper = (np.maximum(a, floor) for a in (mean, lower, upper))
        with self.band.hold_sync():
            self.band.y = np.concatenate([lower, upper[::-1]])
        with self.density_line.hold_sync():
            self.density_line.y = mean

    def _on_sigma(self, change: dict) -> None:
        self.redraw()

    def _on_scale(self, change: dict) -> None:
        scale = self.ys_log if change["new"] == "log" else self.ys_lin
        for mark in (self.band, self.density_line):
            mark.scales = {"x": self.xs, "y": scale}
        self.y_axis.scale = scale
        self.y_axis.label = "density (log)" if change["new"] == "log" else "density"
        self.redraw()

    # ------------------------------------------------------------------ tables
    def top_rows(self) -> list[list[Any]]:
        """``[#, eigenvalue, residual, relative residual, converged]`` rows of the table."""
        if self.eigen is not None:
            e = self.eigen
            rel = e.relative_residuals
            return [
                [
                    i + 1,
                    float(e.eigenvalues[i]),
                    float(e.residuals[i]),
                    float(rel[i]),
                    bool(e.pair_converged[i]),
                ]
                for i in range(e.k)
            ]
        theta = self.density.ritz_values
        res = self.density.residuals
        probe = int(theta.max(dim=1).values.argmax())
        order = theta[probe].argsort(descending=True)[: self.top]
        scale = self.density.scale or 1.0
        tol = self.density.outlier_tol
        return [
            [
                i + 1,
                float(theta[probe, j]),
                float(res[probe, j]),
                float(res[probe, j]) / scale,
                float(res[probe, j]) / scale <= tol,
            ]
            for i, j in enumerate(order.tolist())
        ]

    def _top_table(self) -> str:
        source = (
            "certified eigenpairs (eigenpairs, which='LA')"
            if self.eigen is not None
            else f"largest Ritz values of probe with the widest spectrum (converged: rel. residual ≤ {self.density.outlier_tol:g})"
        )
        return (
            html_table(
                ["#", "eigenvalue", "residual", "rel. residual", "converged"],
                self.top_rows(),
                title="Top eigenvalues",
            )
            + f"<small>{html.escape(source)}{html.escape(self._exact_note())}</small>"
        )

    def _exact_note(self) -> str:
        """Why a residual is exactly 0: the Krylov space became invariant (Lanczos breakdown)."""
        invariant = self.eigen is None and self.density.breakdown
        if invariant or any(row[2] == 0 for row in self.top_rows()):
            return (
                "; residual 0 = exact: the Krylov space is invariant (Lanczos broke down "
                "there), so its Ritz pairs are eigenpairs of the matrix"
            )
        return ""

    def stats_rows(self) -> list[list[Any]]:
        st = self.density.stats
        rows: list[list[Any]] = [
            ["largest eigenvalue", st.largest],
            ["smallest eigenvalue", st.smallest],
            ["trace", st.trace],
            ["trace s.e.", st.trace_stderr],
            ["negative mass", st.negative_mass],
            ["negative count", format_count(st.negative_count, st.negative_count_stderr)],
            ["bulk range", f"[{st.bulk_range[0]:.4g}, {st.bulk_range[1]:.4g}]"],
            ["outliers", len(st.outliers)],
            ["parameters n", self.density.n],
            ["Lanczos steps", self.density.num_steps],
            ["products", self.density.num_matvecs],
        ]
        if getattr(self.density, "basis", None):  # how the Lanczos vectors were held
            rows.append(["Lanczos vectors", self.density.basis["mode"]])
        return rows

    def _stats_table(self) -> str:
        return html_table(["statistic", "value"], self.stats_rows(), title="Summary")

    def to_matplotlib(self, **kw: Any) -> Any:
        """The same view as a matplotlib figure (current ``sigma`` and scale unless given)."""
        from ..plotting import plot_spectrum

        kw.setdefault("sigma", self.sigma)
        kw.setdefault("log", self.log)
        return plot_spectrum(self.density, eigen=self.eigen, **kw)
