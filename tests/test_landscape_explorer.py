"""The landscape explorer: the headless explorer's numbers and safety (no widgets), the panel's
widget state (no browser) and %curv_landscape.

Independent references: a dense float64 Hessian built with ``torch.func.hessian`` (its
eigenpairs), and brute-force evaluation (the weights ``w0 + sum c_i d_i`` written into a
fresh copy of the model with ``vector_to_parameters``, then a plain forward pass).
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

pytest.importorskip("ipywidgets")
pytest.importorskip("bqplot")
pytest.importorskip("anywidget")

import ipywidgets  # noqa: E402
from IPython.core.error import UsageError  # noqa: E402
from reference import digits_batch  # noqa: E402

from jupyter_curvature.landscape import (  # noqa: E402
    HeadlessExplorer,
    axis_levels,
    landscape_1d,
    landscape_2d,
    parse_direction_spec,
)
from jupyter_curvature.landscape.directions import Directions, random_directions  # noqa: E402
from jupyter_curvature.landscape.evaluator import LandscapeEvaluator  # noqa: E402
from jupyter_curvature.models.small import MLP  # noqa: E402
from jupyter_curvature.widgets.landscape import LandscapeExplorer  # noqa: E402

torch.set_num_threads(1)
POINTS = 7  # grid points per direction: small, to keep the file fast


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = MLP(hidden=(5,)).double()
    train = digits_batch("train", 80)
    test = digits_batch("test", 40)
    loss_fn = nn.CrossEntropyLoss()
    names = [n for n, _ in model.named_parameters()]
    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    shapes = [p.shape for p in model.parameters()]

    def loss_of(flat):
        parts, i = {}, 0
        for name, s in zip(names, shapes):
            parts[name] = flat[i : i + s.numel()].reshape(s)
            i += s.numel()
        return loss_fn(functional_call(model, parts, (train[0],)), train[1])

    H = hessian(loss_of)(w0)
    vals, vecs = torch.linalg.eigh(H)
    order = torch.argsort(vals, descending=True)
    eigen = (vals[order][:4].numpy(), vecs[:, order][:, :4].contiguous())
    return {
        "model": model,
        "train": train,
        "test": test,
        "loss_fn": loss_fn,
        "eigen": eigen,
        "dense_vals": vals.numpy(),
    }


def _state(model: nn.Module) -> dict:
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "grads": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
        "flags": [(m.training) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
    }


def _assert_same_state(model: nn.Module, before: dict) -> None:
    after = _state(model)
    for n, t in before["params"].items():
        assert torch.equal(after["params"][n], t), f"parameter {n} changed"
    for n, t in before["buffers"].items():
        assert torch.equal(after["buffers"][n], t), f"buffer {n} changed"
    for n, g in before["grads"].items():
        ga = after["grads"][n]
        assert (g is None and ga is None) or torch.equal(g, ga), f".grad of {n} changed"
    assert after["flags"] == before["flags"]
    assert after["requires_grad"] == before["requires_grad"]


def _brute(model, directions, coords, batch, loss_fn):
    """Loss and accuracy at w0 + sum c_i d_i: weights written into a fresh copy, plain forward."""
    m = copy.deepcopy(model).eval()
    w0 = torch.nn.utils.parameters_to_vector(m.parameters()).detach()
    w = w0.clone()
    for c, d in zip(coords, directions):
        w = w + float(c) * d.vector.to(w.dtype)
    torch.nn.utils.vector_to_parameters(w, m.parameters())
    with torch.no_grad():
        out = m(batch[0])
        return float(loss_fn(out, batch[1])), float((out.argmax(1) == batch[1]).double().mean())


def _explorer(setup, **kw):
    """The panel (widgets)."""
    kw.setdefault("eigen", setup["eigen"])
    kw.setdefault("num_points", POINTS)
    kw.setdefault("test_data", setup["test"])
    return LandscapeExplorer(setup["model"], setup["train"], loss_fn=setup["loss_fn"], **kw)


def _headless(setup, **kw):
    """The headless explorer (no widgets)."""
    kw.setdefault("eigen", setup["eigen"])
    kw.setdefault("num_points", POINTS)
    kw.setdefault("test_data", setup["test"])
    return HeadlessExplorer(setup["model"], setup["train"], loss_fn=setup["loss_fn"], **kw)


def _browser_sets(widget, **state):
    """Simulate a message from the front end (what a drag in the browser sends)."""
    widget._handle_msg(
        {
            "content": {"data": {"method": "update", "state": state, "buffer_paths": []}},
            "buffers": [],
        }
    )


# ---------------------------------------------------------------------------------------
# numbers


def test_sliders_are_labelled_with_the_dense_eigenvalues(setup):
    ex = _explorer(setup, directions="top:2")
    top = np.sort(setup["dense_vals"])[::-1][:2]
    for s, lam in zip(ex.sliders, top):
        assert f"λ={lam:.4g}" in s.description
    assert [d.eigenvalue for d in ex.directions] == pytest.approx(top, rel=1e-12)
    ex.close()


def test_computed_eigen_directions_match_the_dense_hessian(setup):
    ex = _headless(setup, directions="bottom:1", eigen=None, tol=1e-8)
    lam = np.sort(setup["dense_vals"])[0]
    assert ex.directions[0].eigenvalue == pytest.approx(
        lam, abs=1e-6 * np.abs(setup["dense_vals"]).max()
    )
    assert ex.short_label(0) == f"λ={ex.directions[0].eigenvalue:.4g}"
    # the panel over it labels its slider so
    view = LandscapeExplorer(explorer=ex, canvas=False)
    assert f"λ={ex.directions[0].eigenvalue:.4g}" in view.sliders[0].description
    view.close()
    assert ex.closed


def test_point_and_lines_equal_brute_force(setup):
    ex = _headless(setup, directions="top:2")
    ex.set_coord(0, 0.3)
    ex.drain()
    ex.set_coord(1, -0.2)
    ex.drain()
    c = ex.coords
    assert c.tolist() == [0.3, -0.2]
    for split, batch in (("train", setup["train"]), ("test", setup["test"])):
        loss, acc = _brute(setup["model"], ex.directions, c, batch, setup["loss_fn"])
        assert ex.point_values[f"{split}_loss"] == pytest.approx(loss, rel=1e-12)
        assert ex.point_values[f"{split}_accuracy"] == pytest.approx(acc, abs=1e-15)
    # each 1D line passes through the current point, varying one coordinate
    for j in range(2):
        for t_idx in (0, 3, POINTS - 1):
            pt = c.copy()
            pt[j] = ex.ts[t_idx]
            loss, _ = _brute(setup["model"], ex.directions, pt, setup["train"], setup["loss_fn"])
            assert ex.lines["train_loss"][j, t_idx] == pytest.approx(loss, rel=1e-12)
    # the readout shows the origin's numbers too, equal to brute force at c = 0
    loss0, _ = _brute(setup["model"], ex.directions, [0, 0], setup["train"], setup["loss_fn"])
    assert ex.origin_values["train_loss"] == pytest.approx(loss0, rel=1e-12)
    ex.close()
    # the panel: slider moves give the same numbers, and the readout shows them
    view = _explorer(setup, directions="top:2")
    view.sliders[0].value = 0.3
    view.sliders[1].value = -0.2
    assert view.coords.tolist() == [0.3, -0.2]
    assert view.point_values == ex.point_values
    np.testing.assert_array_equal(view.lines["train_loss"], ex.lines["train_loss"])
    assert f"{view.point_values['train_loss']:.6g}" in view._readout.value
    assert f"{view.origin_values['train_loss']:.6g}" in view._readout.value
    view.close()


def test_explorer_numbers_equal_the_landscape_engine(setup):
    ex = _headless(setup, directions="top:2")
    ex.move_to([0.4, 0.1])
    grid = ex.compute_grid()
    engine = LandscapeEvaluator(
        setup["model"],
        setup["loss_fn"],
        setup["train"],
        ex.directions,
        test_data=setup["test"],
        batch_points=1,
    )
    # the point
    assert ex.point_values == pytest.approx(engine([0.4, 0.1]), rel=1e-12)
    # the 2D map, at the same coordinates (the other coordinates: none here)
    xs, ys = np.meshgrid(ex.ts, ex.ts, indexing="ij")
    ref = engine.evaluate(np.stack([xs.ravel(), ys.ravel()], 1))
    for m in ex.metrics:
        np.testing.assert_allclose(getattr(grid, m).ravel(), ref[m], rtol=1e-12, atol=1e-15)
    # the engine's grid function, called on its own
    ref2 = landscape_2d(
        setup["model"],
        setup["loss_fn"],
        setup["train"],
        ex.directions,
        test_data=setup["test"],
        xs=ex.ts,
        ys=ex.ts,
    )
    for m in ex.metrics:
        np.testing.assert_allclose(getattr(grid, m), getattr(ref2, m), rtol=1e-12, atol=1e-15)
    # and its 1D lines (through the origin) equal the explorer's after a reset
    ex.reset()
    ref1 = landscape_1d(
        setup["model"],
        setup["loss_fn"],
        setup["train"],
        ex.directions,
        test_data=setup["test"],
        coords=ex.ts,
    )
    for m in ex.metrics:
        np.testing.assert_allclose(ex.lines[m], getattr(ref1, m), rtol=1e-12, atol=1e-15)
    ex.close()


# ---------------------------------------------------------------------------------------
# the model is never changed


def test_any_sequence_of_moves_leaves_the_model_bitwise_and_does_not_drift(setup):
    model = setup["model"]
    before = _state(model)
    ex = _explorer(setup, directions="top:3", pair=(0, 2))
    rng = np.random.default_rng(0)
    for _ in range(25):
        action = rng.integers(4)
        if action == 0:
            i = int(rng.integers(3))
            ex.sliders[i].value = float(rng.uniform(-1, 1))
        elif action == 1:
            _browser_sets(ex.sliders[int(rng.integers(3))], value=float(rng.uniform(-1, 1)))
        elif action == 2:
            _browser_sets(ex.canvas, point=[float(v) for v in rng.uniform(-1, 1, 2)])
        else:
            ex.reset()
        _assert_same_state(model, before)
    ex.move_to([0.25, -0.5, 0.75])
    ex.compute_grid()
    _assert_same_state(model, before)
    # no drift: the numbers at the last point equal a fresh explorer's at that point
    fresh = _explorer(setup, directions="top:3", canvas=False)
    assert ex.point_values == fresh.evaluate(ex.coords)
    assert ex.error_count == 0
    ex.close()
    fresh.close()
    _assert_same_state(model, before)


def test_apply_writes_the_point_and_undo_restores_bitwise(setup):
    model = setup["model"]
    before = _state(model)
    ex = _headless(setup, directions="top:2")
    events = []
    ex.on("status", lambda kind, detail: events.append(kind))
    ex.move_to([0.5, -0.25])
    ex.apply()
    assert ex.applied
    for p, w in zip(model.parameters(), ex.weights_at([0.5, -0.25])):
        assert torch.equal(p.detach(), w)
    loss, _ = _brute(setup["model"], ex.directions, [0, 0], setup["train"], setup["loss_fn"])
    with torch.no_grad():
        applied_loss = float(setup["loss_fn"](model.eval()(setup["train"][0]), setup["train"][1]))
    model.train()
    assert applied_loss == pytest.approx(ex.point_values["train_loss"], rel=1e-12)
    # apply again from another point, then undo twice
    ex.move_to([-1.0, 1.0])
    ex.apply()
    ex.undo()
    for p, w in zip(model.parameters(), ex.weights_at([0.5, -0.25])):
        assert torch.equal(p.detach(), w)
    ex.undo()
    _assert_same_state(model, before)
    assert not ex.applied and events == ["applied", "applied", "undone", "undone"]
    with pytest.raises(ValueError, match="nothing to undo"):
        ex.undo()
    ex.close()
    # the buttons do the same, errors shown in the panel
    ex = _explorer(setup, directions="top:2")
    assert ex.buttons["undo"].disabled
    ex.buttons["apply"].click()
    assert not ex.buttons["undo"].disabled
    assert ex.applied
    ex.buttons["undo"].click()
    assert ex.buttons["undo"].disabled
    ex.buttons["undo"].click()  # nothing to undo: shown, not raised
    assert ex.error_count == 1 and "nothing to undo" in str(ex.last_error)
    _assert_same_state(model, before)
    ex.close()


def test_closing_keeps_an_applied_point_and_leaves_an_unapplied_model(setup):
    model = setup["model"]
    before = _state(model)
    n0 = len(ipywidgets.widgets.widget._instances)
    ex = _explorer(setup, directions="top:2")
    ex.move_to([0.2, 0.2])
    ex.close()
    _assert_same_state(model, before)
    assert len(ipywidgets.widgets.widget._instances) == n0, "widgets leaked"
    ex2 = _explorer(setup, directions="top:2")
    ex2.move_to([0.2, 0.2])
    ex2.apply()
    applied = [p.detach().clone() for p in model.parameters()]
    ex2.close()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), applied))
    with torch.no_grad():
        for p, t in zip(model.parameters(), before["params"].values()):
            p.copy_(t)


def test_errors_and_interrupts_leave_the_model_and_keep_finished_points(setup, monkeypatch):
    model = setup["model"]
    before = _state(model)
    ex = _explorer(setup, directions="top:2", batch_points=1)
    # an error in the slider path shows in the panel
    real = ex._evaluator.__call__

    def boom(*a, **k):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(type(ex._evaluator), "__call__", lambda self, c: boom())
    ex.sliders[0].value = 0.5
    assert ex.error_count == 1 and "evaluation failed" in str(ex.last_error)
    monkeypatch.undo()
    assert real  # the evaluator is intact
    _assert_same_state(model, before)
    # a kernel interrupt midway through the 2D map keeps what was done
    chunks = ex._evaluator.iter_chunks

    count = [0]

    def interrupted(coords):
        for item in chunks(coords):
            if count[0] == 30:
                raise KeyboardInterrupt
            count[0] += len(item[0])
            yield item

    ex._evaluator.iter_chunks = interrupted
    with pytest.raises(KeyboardInterrupt):
        ex.compute_grid()
    res = ex.grid_result()
    assert res.interrupted and 30 <= res.num_done < POINTS**2
    assert np.isnan(res.train_loss[~res.done]).all() and np.isfinite(res.train_loss[res.done]).all()
    _assert_same_state(model, before)
    ex.close()


def test_a_slider_thread_during_training_corrupts_neither(setup):
    """Slider messages handled on another thread (ipykernel 7 subshells) while a cell trains."""
    train = setup["train"]

    def trained(explore: bool):
        torch.manual_seed(1)
        model = MLP(hidden=(5,)).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        ex = None
        if explore:
            ex = LandscapeExplorer(
                model, train, directions="random:2", num_points=POINTS, canvas=True
            )
            origin_ref = LandscapeEvaluator(
                copy.deepcopy(model), nn.CrossEntropyLoss(), train, ex.directions, batch_points=1
            )
            stop = threading.Event()
            seen: list[tuple[np.ndarray, dict]] = []
            moved = threading.Condition()  # notified after each drag

            def drag():
                rng = np.random.default_rng(0)
                while not stop.is_set():
                    i = int(rng.integers(2))
                    _browser_sets(ex.sliders[i], value=float(rng.uniform(-1, 1)))
                    with moved:
                        seen.append((ex.coords, dict(ex.point_values)))
                        moved.notify_all()

            thread = threading.Thread(target=drag)
            thread.start()
        for step in range(40):
            if explore:  # let the dragging thread make progress between training steps
                with moved:  # an event, not a clock: the drags interleave on any machine
                    assert moved.wait_for(lambda s=step: len(seen) > s // 8, timeout=600)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(train[0]), train[1])
            loss.backward()
            opt.step()
        if explore:
            stop.set()
            thread.join()
            assert ex.error_count == 0, ex.last_error
            assert len(seen) > 3
            # the explorer's numbers are those at the saved origin, untouched by the training
            c = ex.coords
            assert ex.evaluate(c) == origin_ref(c)
            ex.close()
        return [p.detach().clone() for p in model.parameters()]

    ref = trained(False)
    got = trained(True)
    assert all(torch.equal(a, b) for a, b in zip(ref, got)), "training changed by the explorer"


# ---------------------------------------------------------------------------------------
# widget state


def test_marks_hold_the_new_data_after_updates(setup):
    ex = _explorer(setup, directions="top:2")
    _browser_sets(ex.sliders[1], value=0.4)
    assert ex.coords.tolist() == [0.0, 0.4]
    np.testing.assert_array_equal(ex._line.y, ex.lines["train_loss"])
    np.testing.assert_array_equal(ex._marker1d.x, [0.0, 0.4])
    np.testing.assert_array_equal(ex._marker1d.y, [ex.point_values["train_loss"]] * 2)
    assert list(ex._marker2d.x) == [0.0] and list(ex._marker2d.y) == [0.4]
    assert ex.canvas.point == [0.0, 0.4]
    assert ex.canvas.readout_point == [0.0, 0.4]
    assert f"{ex.point_values['train_loss']:.5g}" in ex.canvas.readout
    # the JS canvas: a drag in the browser moves the sliders and gets the loss back
    _browser_sets(ex.canvas, point=[-0.6, 0.2])
    assert [s.value for s in ex.sliders] == [-0.6, 0.2]
    assert ex.canvas.readout_point == [-0.6, 0.2]
    loss, _ = _brute(setup["model"], ex.directions, [-0.6, 0.2], setup["train"], setup["loss_fn"])
    assert ex.point_values["train_loss"] == pytest.approx(loss, rel=1e-12)
    # the 2D map lands in the heat map (rows along y) and the canvas (row-major (ny, nx))
    ex.compute_grid()
    np.testing.assert_array_equal(ex._heat.color, ex.grid["train_loss"].T)
    np.testing.assert_array_equal(ex.canvas.grid(), ex.grid["train_loss"].T)
    assert ex.progress.value == POINTS**2
    # switching the metric redraws from stored data
    ex._metric.value = "test_accuracy"
    np.testing.assert_array_equal(ex._line.y, ex.lines["test_accuracy"])
    np.testing.assert_array_equal(ex._heat.color, ex.grid["test_accuracy"].T)
    # a slider move redraws only the lines it changed: line 1 is unchanged by moving d1
    before = ex.lines["train_loss"][1].copy()
    ex.sliders[1].value = 0.9
    np.testing.assert_array_equal(ex.lines["train_loss"][1], before)
    assert ex.error_count == 0
    ex.close()


def test_progressive_map_draws_coarse_first_and_equals_one_shot(setup):
    assert np.nonzero(axis_levels(21) == 0)[0].tolist() == [0, 5, 10, 15, 20]
    ex = _explorer(setup, directions="top:2", num_points=9)
    counts = []
    orig = ex._draw_grid

    def record(force=False):
        counts.append(int(ex.grid_done.sum()))
        orig(force)

    ex._draw_grid = record
    ex._throttle.interval = 1e9  # only the draws at the end of each level
    grid = ex.compute_grid(coarse=3)
    assert counts[:3] == [9, 25, 81]  # 3x3, then 5x5, then 9x9
    xs, ys = np.meshgrid(ex.ts, ex.ts, indexing="ij")
    ref = ex.evaluate(np.stack([xs.ravel(), ys.ravel()], 1))
    np.testing.assert_allclose(grid.train_loss.ravel(), ref["train_loss"], rtol=1e-12)
    ex.close()


def test_switching_to_random_directions_uses_filter_normalisation(setup):
    ex = _explorer(setup, directions="top:2")
    ex.set_kind("random")
    assert ex.kind == "random" and ex.coords.tolist() == [0.0, 0.0]
    assert "random 1" in ex.sliders[0].description
    # Li et al. 2018: each filter (row) scaled to the weights' row norm; biases zero
    for d in ex.directions:
        i = 0
        for p in setup["model"].parameters():
            part = d.vector[i : i + p.numel()].reshape(p.shape)
            i += p.numel()
            if p.ndim == 1:
                assert torch.count_nonzero(part) == 0
            else:
                torch.testing.assert_close(
                    part.norm(dim=1), p.detach().norm(dim=1), rtol=1e-12, atol=0
                )
    ex.set_kind("eigen")
    assert "λ=" in ex.sliders[0].description
    ex.close()


# ---------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("make", [_headless, _explorer], ids=["headless", "panel"])
def test_bad_input_is_a_value_error_naming_the_remedy(setup, make):
    model = setup["model"]
    before = _state(model)
    with pytest.raises(ValueError, match="names 5 eigen-directions but only 4 were computed"):
        make(setup, directions="top:5")
    with pytest.raises(ValueError, match="only 4 were computed"):
        make(setup, directions="index:0,4")
    with pytest.raises(ValueError, match="positive"):
        make(setup, span=0)
    with pytest.raises(ValueError, match="positive"):
        make(setup, span=-1.0)
    with pytest.raises(ValueError, match="at least 2"):
        make(setup, num_points=-3)
    with pytest.raises(ValueError, match="unknown direction spec"):
        make(setup, directions="left:2")
    with pytest.raises(ValueError, match="pair"):
        make(setup, directions="top:2", pair=(0, 0))
    with pytest.raises(ValueError, match="at least 1"):
        parse_direction_spec("random:0")
    # directions computed for another shape of the model
    other = MLP(hidden=(6,)).double()
    dirs = random_directions(other, 2)
    with pytest.raises(
        ValueError, match="changed shape since the directions were computed.*recompute"
    ):
        make(setup, directions=dirs)
    wrong_eigen = (np.array([1.0, 0.5]), torch.randn(123, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="changed shape.*recompute"):
        make(setup, directions="top:2", eigen=wrong_eigen)
    _assert_same_state(model, before)


def test_a_model_that_changed_shape_is_reported_and_recompute_fixes_it(setup):
    torch.manual_seed(3)
    model = MLP(hidden=(4,)).double()
    ex = HeadlessExplorer(model, setup["train"], directions="random:2", num_points=POINTS)
    model[1] = nn.Linear(64, 3).double()
    model[3] = nn.Linear(3, 10).double()
    with pytest.raises(
        ValueError, match="changed shape since the directions were computed.*recompute"
    ):
        ex.apply()
    ex.recompute()
    assert ex.directions.num_params == sum(p.numel() for p in model.parameters())
    ex.move_to([0.1, 0.1])
    ex.apply()
    ex.undo()
    ex.close()


# ---------------------------------------------------------------------------------------
# %curv_landscape


@pytest.fixture(scope="module")
def ip():
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    c = Config()
    c.HistoryAccessor.enabled = False
    shell = InteractiveShell.instance(config=c)
    shell.run_line_magic("load_ext", "jupyter_curvature")
    # the explorer is the widget view; a terminal shell gets text (test_magics.py)
    shell.run_line_magic("config", "CurvMagics.widgets = 'on'")
    yield shell
    shell.run_line_magic("unload_ext", "jupyter_curvature")


def _magic(ip, line, **ns):
    ip.user_ns.update(ns)
    return ip.run_line_magic("curv_landscape", line)


def test_magic_builds_an_explorer_and_replaces_it_when_rerun(setup, ip, capsys):
    ns = dict(model=setup["model"], train=setup["train"], test=setup["test"], eigen=setup["eigen"])
    line = "--model model --data train --test-data test --eigen eigen --directions index:0,2 --num-points 5 --span 0.5 --out ex --no-canvas"
    assert _magic(ip, line, **ns) is None
    ex = ip.user_ns["ex"]
    assert isinstance(ex, LandscapeExplorer)
    assert [d.index for d in ex.directions] == [0, 2]
    assert ex.span == 0.5 and ex.num_points == 5 and ex.grid_done.all()
    _magic(ip, line)
    assert ex.closed and ip.user_ns["ex"] is not ex
    ip.user_ns["ex"].close()
    for opt, want in (("--preview 32", 32), ("--preview none", None)):
        _magic(ip, f"--model model --data train --num-points 5 --no-grid --no-canvas --out p {opt}")
        assert ip.user_ns["p"].preview_samples == want
        ip.user_ns["p"].close()


def test_magic_old_flags_are_deprecated_aliases(setup, ip):
    ns = dict(model=setup["model"], train=setup["train"], eigen=setup["eigen"])
    base = "--model model --data train --eigen eigen --no-grid --no-canvas --out old"
    for old, attr, want in (
        ("--points 5", "num_points", 5),
        ("--range 0.5", "span", 0.5),
        ("--ggn --directions random:2", "curvature", "ggn"),
        ("--loss cross_entropy", "num_points", 21),
    ):
        flag = old.split()[0]
        with pytest.warns(FutureWarning, match=f"{flag} is deprecated; use --"):
            _magic(ip, f"{base} {old}", **ns)
        assert getattr(ip.user_ns["old"], attr) == want
        ip.user_ns["old"].close()
    _magic(ip, f"{base} --curvature ggn --directions random:2 --loss-fn cross_entropy")
    assert ip.user_ns["old"].curvature == "ggn"
    ip.user_ns["old"].close()
    with pytest.raises(UsageError, match="give --span or --range, not both"):
        with pytest.warns(FutureWarning):
            _magic(ip, f"{base} --span 1 --range 0.5")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--model nope --data train", "'nope' is neither a variable nor a registered model"),
        ("--model model --data nope", "'nope' is neither a variable nor a known dataset"),
        ("--model model --data train --eigen nope", "'nope' is not a variable"),
        ("--model model --data train --eigen model", "not an eigenpairs result"),
        ("--model train --data train", "'train' is a tuple, not a torch.nn.Module"),
        ("--model model --data train --num-points 1", "--num-points must be at least 2"),
        ("--model model --data train --num-points -4", "--num-points must be at least 2"),
        ("--model model --data train --span 0", "--span must be a positive number"),
        ("--model model --data train --eigen eigen --directions top:7", "only 4 were computed"),
        ("--model model --data train --eigen wrong --directions top:2", "changed shape"),
        ("--model model --data train --directions sideways:2", "unknown direction spec"),
        ("--model model --data train --colour red", "unrecognized arguments"),
        ("--model model --data train --curvature fisher", "invalid choice"),
        ("--data train", "the following arguments are required: --model"),
        ("--model model --data train --out 3x", "not a valid Python variable name"),
        ("--model model --data train --preview lots", "--preview must be auto, none or"),
        ("--model model --data train --preview 0", "preview must be 'auto', None or"),
    ],
)
def test_magic_user_errors_are_one_line_usage_errors(setup, ip, line, message):
    ns = dict(
        model=setup["model"],
        train=setup["train"],
        eigen=setup["eigen"],
        wrong=(np.array([1.0, 0.5]), torch.randn(9, 2, dtype=torch.float64)),
    )
    before = _state(setup["model"])
    with pytest.raises(UsageError) as info:
        _magic(ip, line, **ns)
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith("%curv_landscape")
    _assert_same_state(setup["model"], before)


def test_direction_specs_parse():
    assert parse_direction_spec("top:3").count == 3
    assert parse_direction_spec("bottom").kind == "bottom"
    s = parse_direction_spec("index:0, 3")
    assert s.indices == (0, 3) and s.needed == 4 and str(s) == "index:0,3"
    assert not parse_direction_spec("random:2").is_eigen
    for bad in ("index:", "index:1,1", "index:-1", "top:x", "random:-2"):
        with pytest.raises(ValueError):
            parse_direction_spec(bad)
    assert isinstance(Directions, type)


def test_old_keywords_are_deprecated_aliases(setup):
    with pytest.warns(DeprecationWarning, match="distance= is deprecated; use span="):
        ex = _headless(setup, directions="random:2", num_points=5, distance=0.5)
    assert ex.span == 0.5 and ex.distance == 0.5
    ex.close()
    with pytest.warns(DeprecationWarning, match="points= is deprecated; use num_points="):
        ex = HeadlessExplorer(setup["model"], setup["train"], directions="random:2", points=5)
    assert ex.num_points == 5 and ex.points == 5 and len(ex.ts) == 5
    ex.close()


def test_the_panel_draws_what_the_headless_explorer_announces(setup):
    ex = _headless(setup, directions="top:2")
    view = LandscapeExplorer(explorer=ex)
    assert view.explorer is ex and view._lock is ex.lock
    ex.move_to([0.2, -0.4])  # moved headless: the panel follows
    np.testing.assert_array_equal(view._marker1d.x, [0.2, -0.4])
    np.testing.assert_array_equal(view._line.y, ex.lines["train_loss"])
    assert view.canvas.point == [0.2, -0.4]
    ex.compute_grid()
    np.testing.assert_array_equal(view._heat.color, ex.grid["train_loss"].T)
    assert view.progress.value == POINTS**2 and "2D map of train_loss" in view._fig2d.title
    ex.set_kind("random")  # new directions: sliders back to 0, relabelled, toggle synced
    assert view._kind.value == "random" and [s.value for s in view.sliders] == [0.0, 0.0]
    assert "random 1" in view.sliders[0].description
    ex.set_pair((1, 0))
    assert view._ax2d_x.label.startswith("d1")
    with pytest.raises(ValueError, match="explorer= or the model"):
        LandscapeExplorer(setup["model"], explorer=ex)
    view.close()
    assert ex.closed and view.error_count == 0


def test_a_refused_pair_puts_the_dropdowns_back(setup):
    """Choosing the same direction for both map axes is refused; the dropdowns then show the
    pair the map is of, not the refused choice."""
    view = _explorer(setup, directions="top:3", canvas=False, preview=None)
    assert view.explorer.pair == (0, 1)
    view._pair_y.value = 0  # the same as map x: refused
    assert view.error_count == 1
    assert (view._pair_x.value, view._pair_y.value) == view.explorer.pair == (0, 1)
    view._pair_y.value = 2  # an allowed choice still works
    assert view.explorer.pair == (0, 2) and view.error_count == 1
    view.close()
