"""Exact, reversible perturbations: perturbed() and Perturber."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from jupyter_curvature.core.params import flatten, select_parameters
from jupyter_curvature.landscape import Perturber, perturbed, random_directions


def _cnn(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 4),
    ).to(dtype)


def _data(n=24, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 4, 4, generator=g, dtype=dtype)
    y = torch.randint(0, 4, (n,), generator=g)
    return [(x[i : i + 8], y[i : i + 8]) for i in range(0, n, 8)]


def _bits(model: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer as raw integers: equality is bitwise (-0.0 != 0.0)."""
    out = []
    for t in [*model.parameters(), *model.buffers()]:
        t = t.detach()
        out.append(t.view(torch.int64) if t.dtype == torch.float64 else t.clone())
    return [t.clone() for t in out]


def _same_bits(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.fixture
def model():
    m = _cnn()
    with torch.no_grad():  # a signed zero, which a careless restore would turn into +0.0
        m[0].bias[0] = -0.0
        m[1].running_mean.normal_()
    return m


def test_perturbed_moves_exactly_and_restores_bitwise(model):
    dirs = random_directions(model, 2, seed=3)
    before = _bits(model)
    w0 = flatten([p.detach() for _, p in select_parameters(model)]).clone()
    c = [0.3, -1.7]
    with perturbed(model, dirs, c) as m:
        assert m is model
        w = flatten([p.detach() for _, p in select_parameters(model)])
        expected = w0 + c[0] * dirs[0].vector + c[1] * dirs[1].vector
        assert torch.equal(w, expected)
        model.train()(torch.randn(5, 1, 4, 4, dtype=torch.float64))  # changes BN buffers
    model.eval()
    assert _same_bits(_bits(model), before)


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_perturbed_restores_on_exception_and_interrupt(model, exc):
    dirs = random_directions(model, 1, seed=0)
    before = _bits(model)
    with pytest.raises(type(exc)):
        with perturbed(model, dirs, 2.0):
            assert not _same_bits(_bits(model), before)
            raise exc
    assert _same_bits(_bits(model), before)


def test_perturbed_at_zero_is_the_origin_bit_for_bit(model):
    before = _bits(model)
    with perturbed(model, random_directions(model, 2), [0.0, 0.0]):
        assert _same_bits(_bits(model), before)


def test_perturbed_float32_model_with_float64_directions_rounds_once():
    m = _cnn(torch.float32)
    dirs = random_directions(m, 1, seed=0)  # float64
    w0 = flatten([p.detach() for p in m.parameters()]).clone()
    with perturbed(m, dirs, 0.1):
        w = flatten([p.detach() for p in m.parameters()])
        assert torch.equal(w, (w0.double() + 0.1 * dirs[0].vector).float())
    assert torch.equal(flatten([p.detach() for p in m.parameters()]), w0)


@pytest.mark.parametrize(
    "directions, coords, message",
    [
        (torch.ones(7, dtype=torch.float64), 1.0, "entries"),
        ("nan", 1.0, "NaN"),
        ("zero", 1.0, "zero"),
        ("ok", [1.0, 2.0], "one coordinate per direction"),
        ("ok", [float("nan")], "NaN"),
    ],
)
def test_bad_input_is_refused_before_anything_changes(model, directions, coords, message):
    n = sum(p.numel() for p in model.parameters())
    good = torch.randn(n, dtype=torch.float64)
    vec = {
        "nan": torch.full((n,), float("nan"), dtype=torch.float64),
        "zero": torch.zeros(n, dtype=torch.float64),
        "ok": good,
    }.get(directions, directions)
    before = _bits(model)
    with pytest.raises(ValueError, match=message):
        with perturbed(model, vec, coords):
            pass
    assert _same_bits(_bits(model), before)


def test_perturber_moves_from_the_origin_without_drift(model):
    dirs = random_directions(model, 3, seed=5)
    before = _bits(model)
    rng = np.random.default_rng(0)
    with Perturber(model, dirs) as p:
        for _ in range(50):
            p.apply(rng.normal(size=3))
        last = rng.normal(size=3)
        p.apply(last)
        after_many = _bits(model)
        p.restore()
        assert _same_bits(_bits(model), before)
        p.apply(last)  # one move straight there lands on the same bits
        assert _same_bits(_bits(model), after_many)
        np.testing.assert_array_equal(p.coords, last)
        assert p.moved
    assert _same_bits(_bits(model), before)  # the with block restored it
    p.apply([0, 0, 0])
    assert _same_bits(_bits(model), before)


def test_perturber_pure_paths_never_touch_the_model(model):
    dirs = random_directions(model, 2, seed=1)
    p = Perturber(model, dirs)
    data = _data()
    loss_fn = nn.CrossEntropyLoss()
    before = _bits(model)
    model.train()
    values = p.evaluate([0.5, -0.25], loss_fn, data)
    params = p.params_at([0.5, -0.25])
    assert model.training and _same_bits(_bits(model), before)
    # the same point through the context manager, in eval mode
    model.eval()
    with perturbed(model, dirs, [0.5, -0.25]), torch.no_grad():
        for name, t in model.named_parameters():
            assert torch.equal(t, params[name])
        x = torch.cat([b[0] for b in data])
        y = torch.cat([b[1] for b in data])
        ref = loss_fn(model(x), y).item()
        acc = (model(x).argmax(1) == y).double().mean().item()
    assert values["train_loss"] == pytest.approx(ref, rel=1e-12)
    assert values["train_accuracy"] == pytest.approx(acc, rel=1e-12)


def test_perturber_refuses_a_model_whose_parameters_were_replaced(model):
    p = Perturber(model, random_directions(model, 1))
    model[4] = nn.Linear(48, 4).double()
    with pytest.raises(ValueError, match="changed since this Perturber was made"):
        p.apply(1.0)


def test_evaluation_from_another_thread_while_the_model_trains(model):
    """A slider thread evaluates at the snapshot while the main thread trains the model."""
    data = _data()
    loss_fn = nn.CrossEntropyLoss()
    dirs = random_directions(model, 2, seed=2)
    p = Perturber(model, dirs)
    coords = [[0.1 * i, -0.05 * i] for i in range(6)]
    expected = p.evaluate(np.array(coords), loss_fn, data)["train_loss"]
    results, errors = [], []

    def slider():
        try:
            for c in coords * 3:
                results.append((tuple(c), p.evaluate(c, loss_fn, data)["train_loss"]))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    thread = threading.Thread(target=slider)
    model.train()
    w_start = flatten([q.detach() for q in model.parameters()]).clone()
    thread.start()
    while thread.is_alive():
        for x, y in data:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    thread.join()
    assert not errors, errors
    assert not torch.equal(flatten([q.detach() for q in model.parameters()]), w_start)
    lookup = {tuple(c): e for c, e in zip(coords, expected)}
    for c, value in results:  # training never leaked into the evaluation
        assert value == pytest.approx(lookup[c], rel=1e-12)
