"""1D/2D landscapes: closed forms, batched == one at a time, progressive == one shot,
BatchNorm modes, interruption, bad input."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import jupyter_curvature as jc
from jupyter_curvature.landscape import (
    LandscapeEvaluator,
    axis_levels,
    eigen_directions,
    iter_landscape_2d,
    landscape_1d,
    landscape_2d,
    original_selection,
    perturbed,
    random_directions,
)


def _state_bits(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model, bits):
    return all(torch.equal(v, bits[k]) for k, v in model.state_dict().items())


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 4),
        nn.BatchNorm1d(4),
    ).double()


def _images(n=30, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)  # an uneven last batch of 6


# ---- closed forms ------------------------------------------------------------------------


class Quadratic(nn.Module):
    """``f(w) = 0.5 (w - w*)^T A (w - w*)`` for every sample: the Hessian is ``A``."""

    def __init__(self, a: torch.Tensor, w_star: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w_star.clone())
        self.register_buffer("a", a)
        self.register_buffer("w_star", w_star)

    def forward(self, x):
        d = self.w - self.w_star
        return 0.5 * (d @ self.a @ d) * torch.ones(x.shape[0], dtype=x.dtype)


def _mean(out, y):
    return out.mean()


def test_quadratic_along_eigenvectors_is_half_lambda_t_squared():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    lam = torch.tensor([9, 4, 2.5, 1, 0.3, 0.01, 0, -0.02, -0.5, -1, -3, -7], dtype=torch.float64)
    a = q @ torch.diag(lam) @ q.T
    model = Quadratic(a, torch.randn(12, generator=g, dtype=torch.float64))
    values, vectors = torch.linalg.eigh(a)
    res = SimpleNamespace(eigenvalues=values, eigenvectors=vectors)
    dirs = eigen_directions(res, model=model)  # the original's choice
    assert [d.index for d in dirs] == original_selection(values)
    data = (torch.zeros(5, 1, dtype=torch.float64), torch.zeros(5))
    t = np.linspace(-2, 2, 9)
    line = landscape_1d(model, _mean, data, dirs, coords=t)
    expected = 0.5 * np.array(dirs.eigenvalues)[:, None] * t[None, :] ** 2
    np.testing.assert_allclose(line.train_loss, expected, rtol=1e-12, atol=1e-13)
    assert np.isnan(line.train_accuracy).all()  # not a classification task
    assert line.eigenvalues == dirs.eigenvalues

    pair = eigen_directions(res, [0, 11])  # the largest and the smallest
    plane = landscape_2d(model, _mean, data, pair, num_points=(5, 7), span=1.5)
    la, lb = pair.eigenvalues
    x, y = np.meshgrid(plane.xs, plane.ys, indexing="ij")
    np.testing.assert_allclose(
        plane.train_loss, 0.5 * (la * x**2 + lb * y**2), rtol=1e-12, atol=1e-13
    )


def test_least_squares_landscape_with_the_hessian_operator_and_eigenpairs():
    """End to end: HessianOperator -> eigenpairs -> eigen_directions -> landscape_1d."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 8, generator=g, dtype=torch.float64)
    model = nn.Linear(8, 1, bias=False).double()
    y = model(x).detach()  # consistent: the loss is 0 at w0
    data = [(x[:16], y[:16]), (x[16:], y[16:])]
    loss_fn = nn.MSELoss()
    H = jc.HessianOperator(model, loss_fn, data)
    res = jc.eigenpairs(H, k=3, which="LA", tol=1e-10)
    dirs = eigen_directions(res, "largest", k=3, model=model)
    t = np.linspace(-1, 1, 7)
    line = landscape_1d(model, loss_fn, data, dirs, coords=t)
    expected = 0.5 * np.array(dirs.eigenvalues)[:, None] * t**2
    np.testing.assert_allclose(line.train_loss, expected, rtol=1e-9, atol=1e-12)


# ---- batched, progressive, one shot ------------------------------------------------------


@pytest.mark.parametrize("bn", ["eval", "recalibrate"])
def test_batched_points_equal_one_at_a_time(bn):
    model, data = _cnn(), _images()
    dirs = random_directions(model, 2, seed=0)
    kw = dict(test_data=_images(12, seed=2), bn=bn, num_points=5, span=0.8)
    one = landscape_2d(model, nn.CrossEntropyLoss(), data, dirs, batch_points=1, **kw)
    many = landscape_2d(model, nn.CrossEntropyLoss(), data, dirs, batch_points=8, **kw)
    assert one.meta["strategy"] == "one at a time"
    assert many.meta["strategy"] == "batched x8"
    for m in one.metrics:
        np.testing.assert_allclose(getattr(many, m), getattr(one, m), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("batch_points", [1, 4])
def test_progressive_grid_equals_one_shot(batch_points):
    model, data = _cnn(), _images()
    dirs = random_directions(model, 2, seed=1)
    kw = dict(num_points=9, batch_points=batch_points)
    reports = []
    prog = landscape_2d(
        model, nn.CrossEntropyLoss(), data, dirs, progressive=True, callback=reports.append, **kw
    )
    shot = landscape_2d(model, nn.CrossEntropyLoss(), data, dirs, progressive=False, **kw)
    assert prog.complete and shot.complete
    for m in prog.metrics:
        if batch_points == 1:  # same points, same kernels: the same bits
            np.testing.assert_array_equal(getattr(prog, m), getattr(shot, m))
        else:
            np.testing.assert_allclose(getattr(prog, m), getattr(shot, m), rtol=1e-12)
    # the coarse 5 x 5 picture comes first
    first = next(r for r in reports if r.level_complete)
    assert first.level == 0 and first.num_done == 25
    levels = np.maximum.outer(axis_levels(9), axis_levels(9))
    assert sorted(r.level for r in reports if r.level_complete) == list(range(levels.max() + 1))


def test_axis_levels_start_coarse_and_cover_every_point():
    lv = axis_levels(21)
    assert np.nonzero(lv == 0)[0].tolist() == [0, 5, 10, 15, 20]
    assert set(lv) == set(range(lv.max() + 1))
    assert (axis_levels(4, coarse=5) == 0).all()


def test_generator_reports_and_the_model_is_untouched():
    model, data = _cnn(), _images()
    model.train()
    bits = _state_bits(model)
    dirs = random_directions(model, 2, seed=2)
    gen = iter_landscape_2d(
        model, nn.CrossEntropyLoss(), data, dirs, num_points=7, bn="recalibrate"
    )
    reports = list(gen)
    assert reports[-1].num_done == 49 and reports[-1].result.complete
    assert reports[-1].fraction == 1.0
    assert model.training and all(m.training for m in model.modules())
    assert _same_state(model, bits)


def test_one_dimensional_lines_share_the_origin():
    model, data = _cnn(), _images()
    dirs = random_directions(model, 3, seed=3)
    line = landscape_1d(model, nn.CrossEntropyLoss(), data, dirs, num_points=11)
    assert line.train_loss.shape == (3, 11)
    assert line.meta["distinct_points"] == 3 * 10 + 1
    assert np.all(line.train_loss[:, 5] == line.train_loss[0, 5])
    # the origin is the model's own loss and accuracy (eval mode)
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    with torch.no_grad():
        out = copy.deepcopy(model).eval()(x)
    assert line.train_loss[0, 5] == pytest.approx(nn.CrossEntropyLoss()(out, y).item(), rel=1e-12)
    assert line.train_accuracy[0, 5] == pytest.approx((out.argmax(1) == y).double().mean().item())


def test_sum_reduction_and_test_data():
    model, data, test = _cnn(), _images(), _images(12, seed=5)
    dirs = random_directions(model, 1, seed=0)
    mean = landscape_1d(model, nn.CrossEntropyLoss(), data, dirs, test_data=test, num_points=3)
    total = landscape_1d(
        model, nn.CrossEntropyLoss(reduction="sum"), data, dirs, test_data=test, num_points=3
    )
    assert total.reduction == "sum"
    np.testing.assert_allclose(total.train_loss, 30 * mean.train_loss, rtol=1e-12)
    np.testing.assert_allclose(total.test_loss, 12 * mean.test_loss, rtol=1e-12)
    assert mean.test_accuracy is not None and np.isfinite(mean.test_accuracy).all()


# ---- BatchNorm ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch_points", [1, 8])
def test_recalibrate_recomputes_the_statistics_at_each_point(batch_points):
    from jupyter_curvature.stats import bn_update

    model, data = _cnn(), _images()
    with torch.no_grad():  # running statistics far from the data's
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.fill_(3.0)
                m.running_var.fill_(9.0)
    bits = _state_bits(model)
    dirs = random_directions(model, 2, seed=4)
    loss_fn = nn.CrossEntropyLoss()
    coords = [[0.0, 0.0], [0.4, -0.3], [-0.7, 0.2]]
    ev_r = LandscapeEvaluator(
        model, loss_fn, data, dirs, bn="recalibrate", batch_points=batch_points
    )
    ev_e = LandscapeEvaluator(model, loss_fn, data, dirs, bn="eval", batch_points=batch_points)
    recal, evald = ev_r.evaluate(coords), ev_e.evaluate(coords)
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    for i, c in enumerate(coords):
        ref = copy.deepcopy(model)
        with perturbed(ref, dirs, c), torch.no_grad():
            bn_update(ref, data)  # the stats module's recalibration
            out = ref.eval()(x)
            expected = loss_fn(out, y).item()
        assert recal["train_loss"][i] == pytest.approx(expected, rel=1e-11)
        assert abs(recal["train_loss"][i] - evald["train_loss"][i]) > 1e-3
    assert _same_state(model, bits)  # the model's buffers were never touched


def test_bn_data_is_used_for_recalibration():
    model, data = _cnn(), _images()
    dirs = random_directions(model, 1, seed=0)
    other = _images(40, seed=9)
    a = landscape_1d(model, nn.CrossEntropyLoss(), data, dirs, bn="recalibrate", num_points=3)
    b = landscape_1d(
        model, nn.CrossEntropyLoss(), data, dirs, bn="recalibrate", bn_data=other, num_points=3
    )
    assert not np.allclose(a.train_loss, b.train_loss)
    assert a.bn == b.bn == "recalibrate"


# ---- interruption ------------------------------------------------------------------------


def test_interrupt_keeps_finished_points_and_resume_completes():
    model, data = _cnn(), _images()
    dirs = random_directions(model, 2, seed=6)
    full = landscape_2d(model, nn.CrossEntropyLoss(), data, dirs, num_points=9, batch_points=1)

    def stop_after_coarse(progress):
        if progress.level_complete:
            raise KeyboardInterrupt

    with pytest.warns(RuntimeWarning, match="interrupted"):
        part = landscape_2d(
            model,
            nn.CrossEntropyLoss(),
            data,
            dirs,
            num_points=9,
            batch_points=1,
            callback=stop_after_coarse,
        )
    assert part.interrupted and not part.complete
    coarse = np.zeros((9, 9), dtype=bool)
    coarse[np.ix_([0, 2, 4, 6, 8], [0, 2, 4, 6, 8])] = True
    np.testing.assert_array_equal(part.done, coarse)
    np.testing.assert_array_equal(part.train_loss[coarse], full.train_loss[coarse])
    assert np.isnan(part.train_loss[~coarse]).all()

    rest = landscape_2d(
        model, nn.CrossEntropyLoss(), data, dirs, num_points=9, batch_points=1, resume=part
    )
    assert rest.complete and not rest.interrupted
    np.testing.assert_array_equal(rest.train_loss, full.train_loss)
    assert rest.meta["distinct_points"] == 81

    with pytest.raises(KeyboardInterrupt):
        landscape_2d(
            model,
            nn.CrossEntropyLoss(),
            data,
            dirs,
            num_points=9,
            callback=stop_after_coarse,
            on_interrupt="raise",
        )


def test_callback_returning_false_stops():
    model, data = _cnn(), _images()
    dirs = random_directions(model, 2, seed=6)
    part = landscape_2d(
        model,
        nn.CrossEntropyLoss(),
        data,
        dirs,
        num_points=9,
        callback=lambda p: not p.level_complete,
    )
    assert part.interrupted and part.num_done == 25


# ---- bad input ---------------------------------------------------------------------------


def test_bad_input_gives_clear_errors():
    model, data = _cnn(), _images()
    loss_fn = nn.CrossEntropyLoss()
    dirs = random_directions(model, 2, seed=0)
    with pytest.raises(ValueError, match="empty"):
        landscape_1d(model, loss_fn, data, dirs, num_points=0)
    with pytest.raises(ValueError, match="empty"):
        landscape_1d(model, loss_fn, data, dirs, coords=[])
    with pytest.raises(ValueError, match="empty"):
        landscape_2d(model, loss_fn, data, dirs, xs=[0.0], ys=[])
    with pytest.raises(ValueError, match="no batches"):
        landscape_1d(model, loss_fn, [], dirs)
    empty = DataLoader(TensorDataset(torch.zeros(0, 1, 4, 4), torch.zeros(0)), batch_size=4)
    with pytest.raises(ValueError, match="no batches"):
        landscape_1d(model, loss_fn, data, dirs, test_data=empty)
    with pytest.raises(ValueError, match="bn must be"):
        landscape_1d(model, loss_fn, data, dirs, bn="train")
    with pytest.raises(ValueError, match="span"):
        landscape_1d(model, loss_fn, data, dirs, span=-1.0)
    with pytest.raises(ValueError, match="exactly two"):
        landscape_2d(model, loss_fn, data, random_directions(model, 3))
    n = sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="entries"):
        landscape_1d(model, loss_fn, data, torch.ones(n - 1))
    with pytest.raises(ValueError, match="NaN"):
        landscape_1d(model, loss_fn, data, torch.full((n,), float("nan")))
    with pytest.raises(ValueError, match="zero"):
        landscape_1d(model, loss_fn, data, torch.zeros(n))
    with pytest.raises(ValueError, match="reduction"):
        landscape_1d(model, nn.CrossEntropyLoss(reduction="none"), data, dirs)
    ev = LandscapeEvaluator(model, loss_fn, data, dirs)
    with pytest.raises(ValueError, match="one coordinate per"):
        ev.evaluate([[0.0, 1.0, 2.0]])
    with pytest.raises(ValueError, match="empty"):
        ev.evaluate(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="leave out"):
        landscape_1d(ev, loss_fn)


def test_an_evaluator_serves_grids_and_points():
    model, data = _cnn(), _images()
    dirs = random_directions(model, 3, seed=0)
    ev = LandscapeEvaluator(model, nn.CrossEntropyLoss(), data, dirs)
    plane = landscape_2d(ev, axes=(0, 2), base=[0.0, 0.5, 0.0], num_points=3)
    assert plane.labels == [dirs[0].label, dirs[2].label]
    assert plane.meta["base"] == [0.0, 0.5, 0.0]
    point = ev([plane.xs[0], 0.5, plane.ys[2]])
    assert point["train_loss"] == pytest.approx(plane.train_loss[0, 2], rel=1e-12)


def test_auto_strategy_tries_batches_on_real_points_and_keeps_the_fastest():
    """The tuning state machine, driven with made-up timings (no timed assertion)."""
    model, data = _cnn(), _images()
    ev = LandscapeEvaluator(
        model, nn.CrossEntropyLoss(), data, random_directions(model, 2), memory_budget=1 << 34
    )
    assert ev.strategy == "tuning"
    assert ev._plan(25) == ("loop", 1)
    ev._record("loop", 1, 2.0)  # the first point pays for warm-up
    assert ev._plan(24) == ("loop", 1)
    ev._record("loop", 1, 1.0)
    assert ev._plan(23) == ("loop", 1)  # a trial of 8 waits for a call of 32 points
    assert ev._plan(56) == ("vmap", 8)
    ev._record("vmap", 8, 0.95)
    assert ev._plan(48) == ("vmap", 8)  # 32 needs a call of 128: the best so far meanwhile
    assert ev._plan(208) == ("vmap", 32)
    ev._record("vmap", 32, 0.5)
    assert ev._plan(300) == ("vmap", 32)  # 128 waits for a call of 512 points
    assert ev._plan(600) == ("vmap", 128)
    ev._record("vmap", 128, 0.7)  # slower than 32: 32 is kept
    assert ev._plan(600) == ("vmap", 32) and ev.strategy == "batched x32"
    assert ev._plan(1)[0] == "loop"  # one point is never batched

    slow = LandscapeEvaluator(model, nn.CrossEntropyLoss(), data, random_directions(model, 2))
    for t in (1.0, 1.0):
        slow._plan(441)
        slow._record("loop", 1, t)
    assert slow._plan(441) == ("vmap", 8)
    slow._record("vmap", 8, 3.0)  # far slower: 32 is not tried
    assert slow._plan(441)[0] == "loop" and slow.strategy == "one at a time"


def test_resume_refuses_another_grid_or_other_directions():
    model, data = _cnn(), _images()
    dirs = random_directions(model, 2, seed=6)
    part = landscape_2d(
        model, nn.CrossEntropyLoss(), data, dirs, num_points=5, callback=lambda p: False
    )
    with pytest.raises(ValueError, match="other xs"):
        landscape_2d(model, nn.CrossEntropyLoss(), data, dirs, num_points=7, resume=part)
    with pytest.raises(ValueError, match="other directions"):
        landscape_2d(model, nn.CrossEntropyLoss(), data, dirs[::-1], num_points=5, resume=part)
    with pytest.raises(ValueError, match="BatchNorm"):
        landscape_2d(
            model, nn.CrossEntropyLoss(), data, dirs, num_points=5, resume=part, bn="recalibrate"
        )
