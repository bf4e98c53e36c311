"""Panels tested by widget state (no browser): marks hold the data, controls redraw, close() frees.

Every number a panel shows is compared with an independent computation: losses with a
hand-written training loop, densities with a direct Gaussian sum over the Ritz values, top
eigenvalues with ``torch.linalg.eigvalsh`` of the dense Hessian (``torch.func``), residuals
with explicit ``||H v - lambda v||``, norms with ``torch.linalg.norm``.
"""

from __future__ import annotations

import copy
import math
import threading

import bqplot as bq
import ipywidgets as W
import numpy as np
import pytest
import torch
from ipywidgets.widgets.widget import _instances
from reference import assert_close, dense_hessian
from torch import nn
from torch.utils.data import TensorDataset

from jupyter_curvature import tasks
from jupyter_curvature.training import CurvatureCallback, DataOptions, Trainer, training_view
from jupyter_curvature.widgets import (
    SpectrumPanel,
    StatsPanel,
    Throttle,
    TrainingDashboard,
    plot_spectrum,
    plot_stats,
    plot_training,
)
from jupyter_curvature.widgets._base import Panel, close_tree
from jupyter_curvature.widgets.dashboard import downsample


# ----------------------------------------------------------------------------- fixtures
def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def tiny_data(
    n: int = 48, batch: int = 16, seed: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def gaussian_density(
    theta: np.ndarray, tau: np.ndarray, grid: np.ndarray, sigma: float
) -> np.ndarray:
    """Mean over probes of sum_k tau_k N(t; theta_k, sigma^2), by explicit loops."""
    out = np.zeros_like(grid)
    for p in range(theta.shape[0]):
        for k in range(theta.shape[1]):
            out += tau[p, k] * np.exp(-0.5 * ((grid - theta[p, k]) / sigma) ** 2)
    return out / (theta.shape[0] * sigma * math.sqrt(2 * math.pi))


@pytest.fixture
def leak_check():
    before = len(_instances)
    yield
    assert len(_instances) == before, f"{len(_instances) - before} widgets left open"


# ----------------------------------------------------------------------------- helpers
def test_throttle_limits_by_time():
    now = [0.0]
    t = Throttle(0.25, clock=lambda: now[0])
    fired = []
    for i in range(100):  # 100 calls over 1 s: 4 pushes a second at most
        now[0] = i * 0.01
        fired.append(t.ready())
    assert sum(fired) == 4 and fired[0] and fired[25] and fired[50] and fired[75]
    assert t.ready(force=True)
    with pytest.raises(ValueError, match="interval"):
        Throttle(-1)


def test_downsample_keeps_ends_and_bounds_size():
    x = np.arange(10_000.0)
    sx, sy = downsample(x, x**2, 300)
    assert len(sx) <= 300 and sx[0] == 0 and sx[-1] == 9999
    np.testing.assert_array_equal(sy, sx**2)
    sx, sy = downsample(x[:10], x[:10], 300)
    assert len(sx) == 10


def test_panel_close_closes_every_descendant(leak_check):
    p = Panel()
    xs, ys = bq.LinearScale(), bq.LinearScale()
    fig = bq.Figure(
        marks=[bq.Lines(x=[0, 1], y=[0, 1], scales={"x": xs, "y": ys})], axes=[bq.Axis(scale=xs)]
    )
    p._set_root([fig])
    assert len(p.widgets()) > 6  # figure, marks, scales, axes, layouts...
    p.close()
    p.close()  # idempotent
    assert all(w.comm is None for w in p.widgets())


def test_every_panel_root_starts_with_the_bqplot_axis_guard(tiny_spectrum, leak_check):
    from jupyter_curvature.widgets._bqplot_guard import BqplotAxisGuard

    panels = [Panel(), SpectrumPanel(tiny_spectrum[0])]
    panels[0]._set_root([W.HTML("x")])
    for panel in panels:
        guard = panel.root.children[0]
        assert isinstance(guard, BqplotAxisGuard)
        assert guard.layout.display == "none"
        # the view it patches is the one bqplot's Axis widgets render with
        axis = bq.Axis(scale=bq.LinearScale())
        assert (guard.bqplot_module, guard.bqplot_version) == (
            axis._view_module,
            axis._view_module_version,
        )
        assert guard.view_names == [axis._view_name, "ColorAxis"]
        axis.scale.close()
        axis.close()
        assert "export async function guardAxisViews" in guard._esm  # the module it sends
        panel.close()
        assert guard.comm is None  # closed with its panel


def test_callback_errors_are_shown_in_the_panel(leak_check):
    p = Panel()
    p._set_root([])

    @p.callback
    def broken(change):
        raise RuntimeError("boom in a callback")

    assert broken({"new": 1}) is None
    assert p.error_count == 1 and isinstance(p.last_error, RuntimeError)
    text = "".join(o.get("text", "") for o in p.errors.outputs)
    assert "boom in a callback" in text and "Traceback" in text
    p.close()


# ----------------------------------------------------------------------------- dashboard
def manual_sgd_losses(model, data, lr, steps):
    """The same training by hand: SGD without momentum, batch mean cross-entropy."""
    losses = []
    params = list(model.parameters())
    for step, (x, y) in enumerate(data):
        if step == steps:
            break
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
        losses.append(float(loss.detach()))
    return losses


def as_dataset(batches):
    """The list of tensor batches as one dataset read in order (batch size of the first)."""
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return TensorDataset(x, y), DataOptions(batch_size=len(batches[0][1]), shuffle=False)


def test_dashboard_marks_hold_the_training_data(leak_check):
    data = tiny_data()
    model = tiny_model()
    reference = copy.deepcopy(model)
    dash = TrainingDashboard(interval=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    curvature = CurvatureCallback(
        every=3, num_iters=43, num_probes=2, spectrum_samples=48, top_k=3, at_start=True,
        max_overhead=None,
    )  # fmt: skip
    train_set, options = as_dataset(data)
    trainer = Trainer(
        model, opt, train_set, data, steps=3, data_options=options,
        callbacks=[curvature, dash],
    )  # fmt: skip
    trainer.fit()
    assert trainer.status == "completed" and trainer.step == 3

    # losses: the dashboard's train line against a hand-written SGD loop
    expected = manual_sgd_losses(reference, data, 0.5, 3)
    assert_close(
        torch.tensor(dash.loss_lines.y),
        torch.tensor(expected, dtype=torch.float64),
        rtol=1e-12,
        what="train loss line",
    )
    np.testing.assert_array_equal(dash.loss_lines.x, [1, 2, 3])
    np.testing.assert_array_equal(dash.loss_test_line.y, dash.loss_test.y)
    # test loss: mean cross-entropy of the trained model over all the data, by hand
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    with torch.no_grad():
        out = model(x)
        test_loss = float(nn.functional.cross_entropy(out, y))
        test_acc = float((out.argmax(1) == y).double().mean())
    assert math.isclose(dash.loss_test.y[-1], test_loss, rel_tol=1e-12)
    assert math.isclose(dash.acc_test.y[-1], test_acc, rel_tol=1e-12)
    assert dash.progress.value == 3 and dash.progress.max == 3
    assert "finished" in dash.status.value

    # spectrum at step 3: 43 Lanczos steps on n = 43 parameters -> exact eigenvalues
    H = dense_hessian(model, nn.functional.cross_entropy, x, y)
    eig = torch.linalg.eigvalsh(H).flip(0)
    assert_close(
        torch.tensor(dash.top_lines.y[:, -1]),
        eig[:3],
        rtol=1e-7,
        atol=1e-9,
        what="largest eigenvalues at the last check",
    )
    np.testing.assert_array_equal(dash.top_lines.x, [0, 3])
    np.testing.assert_allclose(dash.threshold_line.y, [2 / 0.5, 2 / 0.5])
    dens = curvature.results[-1][1]
    theta, tau = dens.ritz_values.numpy(), dens.weights.numpy()
    grid = np.asarray(dash.density_line.x)
    expected_density = gaussian_density(theta, tau, grid, dens.default_sigma())
    np.testing.assert_allclose(dash.density_line.y, expected_density, rtol=1e-10, atol=1e-14)
    lo, hi = dash.density_band.y
    assert (lo <= dash.density_line.y + 1e-15).all() and (hi >= dash.density_line.y - 1e-15).all()
    # the statistics table shows lambda max (exact here), the test loss and 2 / lr
    assert math.isclose(dens.stats.largest, eig[0].item(), rel_tol=1e-7)
    for value in (dens.stats.largest, test_loss, 2 / 0.5):
        assert f"{value:.6g}" in dash.stats_html.value
    state = dash.loss_lines.get_state()  # serialisable (binary buffers)
    assert "y" in state
    # the static version draws the same curves
    fig = dash.to_matplotlib()
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), trainer.history.loss)
    dash.close()


def test_dashboard_throttles_pushes(leak_check):
    data = tiny_data(n=160, batch=8)
    dash = TrainingDashboard(interval=3600.0)  # nothing due by time during the run
    model = tiny_model()
    train_set, options = as_dataset(data)
    Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), train_set, steps=20,
        data_options=options, callbacks=[dash],
    ).fit()  # fmt: skip
    # first step pushes (nothing pushed before), then only the final flush
    assert dash.pushes == 2 and dash.throttle.skipped == 19
    # the final flush still shows every step
    assert len(dash.loss_lines.y) == 20
    dash.close()


def test_dashboard_shows_interrupt_and_failure(leak_check):
    data = tiny_data()
    train_set, options = as_dataset(data)
    calls = {"n": 0}

    def step(model, x, y):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return nn.functional.cross_entropy(model(x), y), None

    model = tiny_model()
    dash = TrainingDashboard(interval=0.0)
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), train_set, steps=3,
        data_options=options, step_fn=step, callbacks=[dash],
    )  # fmt: skip
    trainer.fit()
    assert trainer.status == "interrupted" and trainer.step == 2
    assert "interrupted at step 2" in dash.status.value
    assert trainer.history.events[-1] == {"step": 2, "event": "interrupted"}
    assert "interrupted at step 2" in dash.events_html.value
    dash.close()

    def bad_step(model, x, y):
        raise ZeroDivisionError("bad step")

    dash = TrainingDashboard(interval=0.0)
    with pytest.raises(ZeroDivisionError):
        Trainer(
            model, torch.optim.SGD(model.parameters(), lr=0.1), train_set, steps=3,
            data_options=options, step_fn=bad_step, callbacks=[dash],
        ).fit()  # fmt: skip
    assert "failed at step 1" in dash.status.value
    dash.close()


def test_dashboard_drawing_error_is_shown_not_raised(leak_check):
    dash = TrainingDashboard(interval=0.0)

    class Broken:
        history = None  # training_view reads history.steps: AttributeError

    dash._trainer = Broken()
    dash.flush()
    assert dash.error_count == 1
    assert "dashboard update" in "".join(o.get("text", "") for o in dash.errors.outputs)
    dash.close()


# ----------------------------------------------------------------------------- spectrum
@pytest.fixture(scope="module")
def tiny_spectrum():
    model = tiny_model()
    data = tiny_data()
    res = tasks.spectrum(model, data, num_iters=43, num_probes=3, top_k=3, tol=1e-8)
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    H = dense_hessian(model, nn.functional.cross_entropy, x, y)
    return res, H


def test_spectrum_panel_shows_density_and_top_eigenvalues(tiny_spectrum, leak_check):
    res, H = tiny_spectrum
    panel = SpectrumPanel(res)
    dens = res.density
    theta, tau = dens.ritz_values.numpy(), dens.weights.numpy()
    np.testing.assert_allclose(
        panel.density_line.y,
        gaussian_density(theta, tau, panel.grid, panel.sigma),
        rtol=1e-10,
        atol=1e-14,
    )
    # stems: one per Ritz value of every probe, height = weight
    assert panel.stems.x.shape == (theta.size, 2)
    np.testing.assert_array_equal(panel.stems.y[:, 1], tau.reshape(-1))
    # the table: certified eigenpairs against the dense spectrum, residuals recomputed
    eig = torch.linalg.eigvalsh(H).flip(0)[:3]
    rows = panel.top_rows()
    assert_close(
        torch.tensor([r[1] for r in rows], dtype=torch.float64),
        eig,
        rtol=1e-7,
        what="top eigenvalues",
    )
    V = res.eigen.eigenvectors
    resid = torch.linalg.norm(H @ V - V * res.eigen.eigenvalues.to(V), dim=0)
    assert_close(
        torch.tensor([r[2] for r in rows], dtype=torch.float64),
        resid,
        rtol=1e-3,
        atol=1e-10,
        what="residuals",
    )
    for r in rows:
        assert f"{r[1]:.6g}" in panel.table_html.value
    # statistics: the trace against the dense trace (exact Krylov space: Gauss quadrature exact)
    trace_row = dict((r[0], r[1]) for r in panel.stats_rows())["trace"]
    assert math.isclose(trace_row, float(torch.trace(H)), rel_tol=0.5)  # SLQ with 3 probes
    panel.close()


def test_spectrum_panel_controls_redraw_without_recompute(tiny_spectrum, leak_check):
    res, _ = tiny_spectrum
    panel = SpectrumPanel(res)
    dens = res.density
    theta, tau = dens.ritz_values.numpy(), dens.weights.numpy()
    matvecs = dens.num_matvecs
    new_sigma = panel.sigma * 3
    # simulate the browser moving the slider (a comm 'update' message)
    panel.sigma_slider._handle_msg(
        {
            "content": {
                "data": {"method": "update", "state": {"value": new_sigma}, "buffer_paths": []}
            },
            "buffers": [],
        }
    )
    assert math.isclose(panel.sigma, new_sigma, rel_tol=1e-12)
    np.testing.assert_allclose(
        panel.density_line.y,
        gaussian_density(theta, tau, panel.grid, new_sigma),
        rtol=1e-10,
        atol=1e-14,
    )
    panel.scale_toggle.value = "log"
    assert (
        isinstance(panel.density_line.scales["y"], bq.LogScale)
        and panel.y_axis.scale is panel.ys_log
    )
    assert (np.asarray(panel.density_line.y) > 0).all()  # floored for the log axis
    panel.scale_toggle.value = "linear"
    assert panel.density_line.scales["y"] is panel.ys_lin
    assert dens.num_matvecs == matvecs and panel.error_count == 0
    panel.close()


def test_spectrum_panel_callback_error_is_visible(tiny_spectrum, leak_check, monkeypatch):
    res, _ = tiny_spectrum
    panel = SpectrumPanel(res)

    def broken(*a, **k):
        raise RuntimeError("density failed")

    monkeypatch.setattr(panel.density, "density", broken)
    panel.sigma_slider.value = panel.sigma * 2
    assert panel.error_count == 1
    assert "density failed" in "".join(o.get("text", "") for o in panel.errors.outputs)
    monkeypatch.undo()
    panel.close()


def test_spectrum_panel_concurrent_slider_during_training(tiny_spectrum, leak_check):
    """A slider callback on another thread (comm subshell) while the main thread trains."""
    res, _ = tiny_spectrum
    panel = SpectrumPanel(res)
    dash = TrainingDashboard(interval=0.0)
    stop = threading.Event()

    def drag():
        k = 0
        while not stop.is_set():
            panel.sigma_slider.value = panel.sigma_slider.min * (1.5 + (k % 5))
            k += 1

    t = threading.Thread(target=drag)
    t.start()
    model = tiny_model()
    train_set, options = as_dataset(tiny_data())
    try:
        Trainer(
            model, torch.optim.SGD(model.parameters(), lr=0.1), train_set, steps=6,
            data_options=options, callbacks=[dash],
        ).fit()  # fmt: skip
    finally:
        stop.set()
        t.join()
    assert panel.error_count == 0 and dash.error_count == 0
    theta, tau = res.density.ritz_values.numpy(), res.density.weights.numpy()
    np.testing.assert_allclose(
        panel.density_line.y,
        gaussian_density(theta, tau, panel.grid, panel.sigma),
        rtol=1e-10,
        atol=1e-14,
    )
    panel.close()
    dash.close()


# ----------------------------------------------------------------------------- stats
def test_stats_panel_tables_and_per_layer_bars(leak_check):
    model = tiny_model()
    data = tiny_data()
    result = tasks.statistics(model, data, include=["evaluation", "norms", "layers"])
    panel = StatsPanel(result)
    assert panel.tabs.titles == ("Evaluation", "Weight norms", "Per layer")
    assert str(result.evaluation).splitlines()[0] in panel.tabs.children[0].value
    # weight L2 per layer against torch.linalg.norm
    panel.quantity.value = "weight L2"
    expected = [float(torch.linalg.norm(model[i].weight.detach())) for i in (0, 2)]
    np.testing.assert_allclose(panel.bars.y, expected, rtol=1e-12)
    # lambda max per layer against the dense block of the Hessian
    panel.quantity.value = "λ max"
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    H = dense_hessian(model, nn.functional.cross_entropy, x, y)
    blocks = [(0, 25), (25, 43)]  # layer 0: 20 weights + 5 biases; layer 2: 15 + 3
    expected = [float(torch.linalg.eigvalsh(H[a:b, a:b])[-1]) for a, b in blocks]
    np.testing.assert_allclose(panel.bars.y, expected, rtol=1e-5)
    assert list(panel.bars.x) == ["0", "2"]
    assert panel.error_count == 0
    panel.close()


# ----------------------------------------------------------------------------- static plots
def test_static_plots_draw_the_same_data(tiny_spectrum):
    res, _ = tiny_spectrum
    model = tiny_model()
    out = tasks.train(
        model,
        tiny_data(),
        steps=3,
        spectrum_every=3,
        num_iters=10,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        test_data=tiny_data(),
    )
    view = training_view(out.trainer)
    fig = plot_training(view)
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), out.history.loss)
    top_ax = fig.axes[3]
    np.testing.assert_array_equal(top_ax.lines[0].get_ydata(), [t[0] for t in view.top_eigenvalues])
    fig = plot_spectrum(res.density, eigen=res.eigen, sigma=0.1)
    curve = res.density.density(None, 0.1)
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), curve.density)
    assert len(fig.axes) == 2  # density and the Ritz-weight twin axis
    stats = tasks.statistics(model, tiny_data(), include=["norms"])
    fig = plot_stats(stats)
    np.testing.assert_allclose(
        [p.get_height() for p in fig.axes[0].patches],
        [float(torch.linalg.norm(model[i].weight)) for i in (0, 2)],
        rtol=1e-12,
    )


def test_close_tree_counts_open_widgets(leak_check):
    xs = bq.LinearScale()
    line = bq.Lines(x=[0, 1], y=[1, 2], scales={"x": xs, "y": bq.LinearScale()})
    assert close_tree([line]) >= 3
    assert close_tree([line]) == 0


def test_spectrum_panel_slider_range_holds_a_given_sigma(tiny_spectrum, leak_check):
    """``--sigma 50``: the slider shows 50, not its old maximum (default sigma x 10^1.5)."""
    res, _ = tiny_spectrum
    for sigma in (50.0, res.density.default_sigma() * 1e-4):
        panel = SpectrumPanel(res, sigma=sigma)
        assert panel.sigma == pytest.approx(sigma)
        assert panel.sigma_slider.min < math.log10(sigma) < panel.sigma_slider.max
        panel.close()
