"""Live checks that cost little: warm-started certified top-k in the trainer's callback and in
jc.track, checked against dense float64 Hessians, and the time budget fed fake costs."""

from __future__ import annotations

import copy

import pytest
import reference
import torch
from torch import nn
from torch.utils.data import TensorDataset

from jupyter_curvature.data import get_dataset
from jupyter_curvature.integrations import track
from jupyter_curvature.training import CurvatureCallback, LambdaCallback, Trainer
from jupyter_curvature.training.budget import MIN_ITERS, CheckBudget


def tiny_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = get_dataset("digits", dtype=torch.float64, subset=60).tensors
    return model, TensorDataset(x, y % 3)


def check_against_dense(model, batch, record, k, tol):
    H = reference.dense_hessian(model, nn.functional.cross_entropy, *batch)
    dense = torch.linalg.eigvalsh(H).flip(0)[:k]
    got = torch.tensor(record["top_eigenvalues"], dtype=torch.float64)
    residuals = torch.tensor(record["residuals"], dtype=torch.float64)
    scale = float(dense.abs().max())
    assert record["converged"]
    # |lambda - theta| <= ||H v - theta v|| <= tol * scale (Parlett, Thm 4.5.1)
    assert ((got - dense).abs() <= residuals + 1e-12 * scale).all()
    assert float(residuals.max()) <= tol * max(scale, float(got.abs().max())) * (1 + 1e-9)


@pytest.mark.parametrize("warm_start", [True, False])
def test_callback_certified_top_k_equals_dense_at_every_check(warm_start):
    model, data = tiny_problem()
    snaps = {}
    cb = CurvatureCallback(every=2, num_iters=10, spectrum_samples=40, max_overhead=None, at_start=True,
                           tol=1e-6, warm_start=warm_start)  # fmt: skip
    keep = LambdaCallback(
        on_curvature=lambda t, r: snaps.update({r["step"]: copy.deepcopy(t.model)})
    )
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.2), data, steps=6,
                      callbacks=[cb, keep], data_options=None)  # fmt: skip
    trainer.fit()
    records = trainer.history.curvature
    assert [r["step"] for r in records] == [0, 2, 4, 6]
    assert [r["warm_start"] for r in records] == [False] + [warm_start] * 3
    for r in records:
        check_against_dense(snaps[r["step"]], cb.batch, r, 3, 1e-6)
        assert r["matvecs"] == r["eigen_matvecs"] + 10  # one probe of 10 SLQ steps


def test_tracker_warm_start_equals_dense():
    model, data = tiny_problem()
    x, y = data.tensors
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    snaps = {}

    class Keep:
        def log(self, record, result):
            snaps[record["step"]] = copy.deepcopy(model)

    tracker = track(model, nn.functional.cross_entropy, (x[:40], y[:40]), every=2, optimizer=opt,
                    max_overhead=None, num_iters=8, num_probes=1, top_k=2, tol=1e-6,
                    loggers=[Keep()])  # fmt: skip
    for _ in range(6):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        tracker.step()
    assert [r["warm_start"] for r in tracker.history] == [False, True, True]
    for r in tracker.history:
        check_against_dense(snaps[r["step"]], (x[:40], y[:40]), r, 2, 1e-6)
    assert tracker.to_dict()["settings"]["warm_start"] is True


# --- the budget, fed fake costs ------------------------------------------------------------


def test_budget_plans_from_measured_costs():
    budget = CheckBudget(max_overhead=0.2, num_iters=20, num_probes=1, top_k=3)
    budget.calibrate(0.004)  # a product: 2.5 gradients = 0.01 s
    assert budget.product_seconds == pytest.approx(0.01)
    # before any check the top-k is expected to take max(2k + 1, 20) = 20 products
    assert budget.expected_seconds(20) == pytest.approx(0.4)
    plan = budget.plan(train_seconds=2.0, spent=0.0)  # allowed 0.4: the full check fits
    assert plan.num_iters == 20 and plan.allowed_seconds == pytest.approx(0.4)
    plan = budget.plan(train_seconds=1.5, spent=0.0)  # allowed 0.3: 20 + 10 products
    assert plan.num_iters == 10 and plan.expected_seconds == pytest.approx(0.3)
    plan = budget.plan(train_seconds=1.0, spent=0.0)  # allowed 0.2: the top-k alone
    assert plan.skip and plan.num_iters is None
    budget.measured(seconds=0.25, products=25, eigen_products=9)  # 0.01 s a product again
    assert budget.product_seconds == pytest.approx(0.01) and budget.eigen_products == 9
    plan = budget.plan(train_seconds=1.0, spent=0.0)  # 0.2 s: 9 + 11 products
    assert plan.num_iters == 11
    plan = budget.plan(train_seconds=1.0, spent=0.02)  # 0.18 s: 9 + 9 products
    assert plan.num_iters == 9
    assert budget.plan(train_seconds=1.0, spent=0.03).num_iters == MIN_ITERS  # 0.17 s: 9 + 8
    assert budget.plan(train_seconds=1.0, spent=0.03 + 1e-6).skip  # fewer than MIN_ITERS fit
    # the same numbers, the same decisions
    again = CheckBudget(0.2, 20, 1, 3, product_seconds=0.01, eigen_products=9)
    assert again.plan(1.0, 0.02) == budget.plan(1.0, 0.02)


class FakeClock:
    """Advances by given amounts: the callback's every reading of time is scripted."""

    def __init__(self):
        self.now = 0.0
        self.readings = []

    def __call__(self):
        self.readings.append(self.now)
        return self.now


def test_callback_budget_decides_from_fake_costs(monkeypatch):
    """With an injected clock, each due check is planned from the measured costs alone."""
    model, data = tiny_problem()
    clock = FakeClock()
    cb = CurvatureCallback(every=1, num_iters=20, spectrum_samples=40, max_overhead=0.25, tol=1e-6,
                           clock=clock)  # fmt: skip
    calls = []

    def fake_check(model, loss_fn, batch, *, num_iters, top_k, **kw):
        calls.append(num_iters)
        clock.now += 0.01 * (10 + num_iters)  # 10 products of top-k + the SLQ steps, 10 ms each
        density = type("D", (), {"ritz_values": torch.tensor([[1.0, 2.0]])})()
        eigen = type("E", (), {"eigenvalues": torch.tensor([2.0, 1.5, 1.0]),
                               "residuals": torch.zeros(3), "converged": True,
                               "num_matvecs": 10,
                               "eigenvectors": torch.zeros(1, 3)})()  # fmt: skip
        return density, eigen, 10 + num_iters

    monkeypatch.setattr("jupyter_curvature.training.callbacks.tracked_check", fake_check)

    class FakeTrainer:
        step, epoch, lr, distributed, device = 0, 0, 0.1, False, "cpu"
        train_seconds = 0.0
        history = type("H", (), {"curvature": []})()

        def quiet(self):
            import contextlib

            return contextlib.nullcontext()

        def record_curvature(self, record):
            self.history.curvature.append(record)

    trainer = FakeTrainer()
    trainer.model, trainer.loss_fn, trainer.train_dataset = model, nn.functional.cross_entropy, data

    def gradient(_trainer):
        clock.now += 0.004  # a gradient: 4 ms, so a product is expected to take 10 ms
        return 0.004

    monkeypatch.setattr(cb, "_time_gradient", gradient)
    cb.on_train_begin(trainer)
    decisions = []
    for step, train_seconds in enumerate([1.0, 2.0, 2.5, 3.0, 5.0], start=1):
        trainer.step, trainer.train_seconds = step, train_seconds
        before = len(calls)
        cb.on_step_end(trainer, {"step": step})
        decisions.append(calls[-1] if len(calls) > before else None)
    # 1.0 s: 0.25 allowed, 20 + 20 expected products (0.40 s) > 0.25 -> 20 + 5: < MIN_ITERS, skip
    # 2.0 s: 0.50 allowed -> in full (0.30 s spent); then 10 top-k products are known
    # 2.5 s: 0.625 - 0.30 = 0.325 -> in full (0.30 s; 0.60 spent)
    # 3.0 s: 0.75 - 0.60 = 0.15 -> 10 + 5 products: skip
    # 5.0 s: 1.25 - 0.60 = 0.65 -> in full
    assert decisions == [None, 20, 20, None, 20]
    assert cb.skipped == 2 and cb.computed == 3
    assert cb.spent == pytest.approx(0.9)


def test_callback_budget_shrinks_the_density_to_fit(monkeypatch):
    clock = FakeClock()
    cb = CurvatureCallback(every=1, num_iters=20, max_overhead=0.1, clock=clock)
    cb.budget.product_seconds, cb.budget.eigen_products = 0.01, 10
    ran = []
    cb.run = lambda trainer: ran.append(cb.planned_iters)

    class Fake:
        train_seconds, distributed = 2.0, False  # 0.2 s allowed: 10 + 10 products

    cb.on_step_end(Fake(), {"step": 1})
    assert ran == [10]


def test_callback_bad_tol():
    with pytest.raises(ValueError, match="tol must be a positive number"):
        CurvatureCallback(tol=0)
