"""The plotting package: every static figure renders headless (Agg) to a PNG, with its labels
and its data checked against independent numbers; results draw through it."""

from __future__ import annotations

import importlib
import io
import sys
import warnings
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from jupyter_curvature import plotting  # noqa: E402
from jupyter_curvature.landscape import eigen_directions, landscape_1d, landscape_2d  # noqa: E402
from jupyter_curvature.operators import HessianOperator  # noqa: E402
from jupyter_curvature.spectral import eigenpairs, spectral_density  # noqa: E402
from jupyter_curvature.stats import layer_curvature, weight_norms  # noqa: E402
from jupyter_curvature.training import History  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=40)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=g)
    data = [(x[:16], y[:16]), (x[16:], y[16:])]
    loss = nn.CrossEntropyLoss()
    op = HessianOperator(model, loss, data)
    density = spectral_density(op, num_iters=20, num_probes=3, seed=0)
    top = eigenpairs(op, k=2, tol=1e-8, seed=0)
    n = op.shape[0]
    q, _ = torch.linalg.qr(torch.randn(n, 2, generator=g, dtype=torch.float64))
    dirs = eigen_directions((torch.tensor([2.0, 0.5], dtype=torch.float64), q), [0, 1])
    line = landscape_1d(model, loss, data[:1], dirs, test_data=data[1:], num_points=5)
    plane = landscape_2d(model, loss, data[:1], dirs, num_points=(4, 3))
    layers = layer_curvature(model, loss, data)
    norms = weight_norms(model)
    history = SimpleNamespace(  # the per-step history of a run with curvature checks
        steps=[1, 2, 3, 4],
        loss=[1.2, 1.0, 0.9, 0.8],
        accuracy=[0.3, 0.4, 0.5, 0.55],
        lr=[0.1, 0.1, 0.05, 0.05],
        eval_steps=[2, 4],
        test_loss=[1.1, 0.95],
        test_accuracy=[0.35, 0.5],
        spectrum_steps=[2, 4],
        spectra=[density, density],
        top_eigenvalues=[[3.0, 1.0], [4.0, 2.0]],
        thresholds=[2 / 0.1, 2 / 0.05],  # 2 / lr at the checks
        status="finished",
        steps_done=4,
        curvature="hessian",
    )
    return SimpleNamespace(
        model=model,
        density=density,
        top=top,
        line=line,
        plane=plane,
        layers=layers,
        norms=norms,
        history=history,
    )


def test_spectrum_figure(small):
    before = plt.get_fignums()
    fig = plotting.plot_spectrum(small.density, eigen=small.top)
    assert plt.get_fignums() == before  # a bare Figure: no pyplot state left behind
    assert _png(fig).startswith(PNG)
    ax, twin = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel(), twin.get_ylabel()) == (
        "eigenvalue",
        "density",
        "Ritz weight",
    )
    grid, values = ax.lines[0].get_data()
    # the broadened density integrates to one (each probe's quadrature weights sum to one)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
    assert trapezoid(values, grid) == pytest.approx(1.0, abs=1e-3)
    stems = twin.collections[0].get_segments()
    assert sum(s[1, 1] - s[0, 1] for s in stems) == pytest.approx(1.0, rel=1e-10)
    # the certified eigenvalues as vertical lines, at the eigenvalues
    marks = sorted(line.get_xdata()[0] for line in ax.lines[1:])
    np.testing.assert_allclose(marks, sorted(small.top.eigenvalues.tolist()))
    # a result that holds the density as .density draws the same curve
    again = plotting.plot_spectrum(SimpleNamespace(density=small.density))
    np.testing.assert_array_equal(again.axes[0].lines[0].get_ydata(), values)


def test_spectral_density_is_the_spectrum_on_a_log_axis(small):
    fig = plt.figure()
    try:
        ax = plotting.plot_spectral_density(small.density, ax=fig.add_subplot())
        assert ax.get_yscale() == "log" and ax.get_xlabel() == "eigenvalue"
        assert _png(fig).startswith(PNG)
        curve = small.density.density(None, None)
        drawn = ax.lines[0].get_ydata()
        shown = curve.density >= drawn.min()  # the axis is cut at 1e-6 of the peak
        np.testing.assert_array_equal(drawn[shown], curve.density[shown])
    finally:
        plt.close(fig)


def test_training_figure_per_step(small):
    h = small.history
    before = plt.get_fignums()
    fig = plotting.plot_training(h)
    assert plt.get_fignums() == before
    assert _png(fig).startswith(PNG)
    loss, acc, dens, top = fig.axes
    assert (loss.get_xlabel(), loss.get_ylabel()) == ("step", "loss")
    assert (acc.get_xlabel(), acc.get_ylabel()) == ("step", "top-1 accuracy")
    assert (dens.get_xlabel(), dens.get_ylabel()) == ("eigenvalue", "density")
    assert (top.get_xlabel(), top.get_ylabel()) == ("step", "eigenvalue")
    np.testing.assert_array_equal(loss.lines[0].get_ydata(), h.loss)
    np.testing.assert_array_equal(loss.lines[1].get_ydata(), h.test_loss)
    np.testing.assert_array_equal(top.lines[0].get_ydata(), [3.0, 4.0])
    np.testing.assert_array_equal(top.lines[1].get_ydata(), [1.0, 2.0])
    # the stability threshold 2 / lr at each check's step
    np.testing.assert_allclose(top.lines[2].get_ydata(), [2 / 0.1, 2 / 0.05])
    assert "finished" in fig._suptitle.get_text()


def test_training_figure_per_epoch():
    records = [
        {"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "test_loss": 1.1},
        {"epoch": 2, "train_loss": 0.7, "train_accuracy": 0.7, "test_loss": 0.9},
    ]
    fig = plotting.plot_training(records)
    assert _png(fig).startswith(PNG)
    loss, acc = fig.axes
    assert (loss.get_xlabel(), loss.get_ylabel(), acc.get_ylabel()) == (
        "epoch",
        "loss",
        "top-1 accuracy",
    )
    assert [line.get_label() for line in loss.lines] == ["train", "test"]
    np.testing.assert_array_equal(loss.lines[1].get_ydata(), [1.1, 0.9])
    np.testing.assert_array_equal(acc.lines[0].get_xdata(), [1, 2])
    # a trainer's History draws its per-epoch records; a mapping of columns the same
    history = History(epochs=records)
    for source in (history, {k: [r.get(k) for r in records] for k in ("epoch", "train_loss")}):
        again = plotting.plot_training(source)
        np.testing.assert_array_equal(again.axes[0].lines[0].get_ydata(), [1.0, 0.7])
    # the CLI's call: into given axes, which it returns
    fig = plt.figure()
    try:
        axes = fig.subplots(1, 2)
        assert plotting.plot_training_history(records, axes=axes) is axes
        assert len(axes[0].lines) == 2
    finally:
        plt.close(fig)


def test_stats_figure(small):
    before = plt.get_fignums()
    fig = plotting.plot_stats(SimpleNamespace(layers=small.layers, norms=small.norms))
    assert plt.get_fignums() == before
    assert _png(fig).startswith(PNG)
    labels = [(a.get_xlabel(), a.get_ylabel()) for a in fig.axes]
    assert labels == [
        ("layer", "λ max"),
        ("layer", "trace"),
        ("layer", "parameters"),
        ("layer", "weight L2"),
    ]
    heights = [p.get_height() for p in fig.axes[3].patches]
    expected = [float(torch.linalg.norm(small.model[i].weight.detach())) for i in (0, 2)]
    np.testing.assert_allclose(heights, expected, rtol=1e-12)
    assert [p.get_height() for p in fig.axes[2].patches] == [25, 18]  # 4*5+5, 5*3+3
    # each record alone draws its own quantities
    assert len(plotting.plot_stats(small.norms).axes) == 1
    assert len(plotting.plot_stats(small.layers).axes) == 3


def test_landscape_figures(small):
    fig = plotting.plot_landscape_1d(small.line)
    try:
        assert _png(fig).startswith(PNG)
        assert len(fig.axes) == 4  # train / test x loss / accuracy
        assert fig.axes[0].get_xlabel().startswith("t ")
        assert fig.axes[0].get_ylabel() == "loss" and fig.axes[1].get_ylabel() == "accuracy (%)"
        np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), small.line.train_loss[0])
    finally:
        plt.close(fig)
    ax = plotting.plot_landscape_2d(small.plane)
    try:
        assert _png(ax.figure).startswith(PNG)
        assert ax.get_xlabel().startswith("λ = 2") and ax.get_ylabel().startswith("λ = 0.5")
    finally:
        plt.close(ax.figure)
    ax = plotting.plot_landscape_surface(small.plane, "train_accuracy")
    try:
        assert _png(ax.figure).startswith(PNG)
        assert ax.get_zlabel() == "train accuracy"
    finally:
        plt.close(ax.figure)


def test_results_draw_through_plotting(small, monkeypatch):
    calls = []

    def recorder(name):
        def draw(result, *args, **kwargs):
            calls.append((name, result, kwargs))
            return name

        return draw

    for name in ("plot_landscape_1d", "plot_landscape_2d", "plot_stats"):
        monkeypatch.setattr(plotting, name, recorder(name))
    assert small.line.plot(logy=True) == "plot_landscape_1d"
    assert small.plane.plot(kind="contour") == "plot_landscape_2d"
    assert small.layers.plot() == "plot_stats" and small.norms.plot() == "plot_stats"
    assert [(c[0], c[1]) for c in calls] == [
        ("plot_landscape_1d", small.line),
        ("plot_landscape_2d", small.plane),
        ("plot_stats", small.layers),
        ("plot_stats", small.norms),
    ]
    assert calls[0][2] == {"logy": True} and calls[1][2] == {"kind": "contour"}


def test_widgets_static_figures_are_the_plotting_functions():
    pytest.importorskip("bqplot")
    from jupyter_curvature import widgets

    assert widgets.plot_training is plotting.plot_training
    assert widgets.plot_spectrum is plotting.plot_spectrum
    assert widgets.plot_stats is plotting.plot_stats


def test_plots_is_a_deprecated_alias():
    sys.modules.pop("jupyter_curvature.plots", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots = importlib.import_module("jupyter_curvature.plots")
    assert any(
        issubclass(w.category, DeprecationWarning) and "plotting" in str(w.message) for w in caught
    )
    assert plots.plot_spectral_density is plotting.plot_spectral_density
    assert plots.plot_training_history is plotting.plot_training_history
