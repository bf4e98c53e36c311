"""One conformance suite for the optimisers: SGD and Adam (torch, as references), SWATS, K-FAC.

Every optimiser must converge on a quadratic (linear least squares) and on Rosenbrock, and
train the small CNN on the built-in digits to a stated accuracy. SWATS must equal Adam step
for step before its switch; K-FAC with a zero learning rate must change nothing, and on
linear least squares its step must equal the dense natural-gradient step.
"""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from torch import nn

from jupyter_curvature.data import get_dataset
from jupyter_curvature.models import SmallCNN
from jupyter_curvature.optim import (
    KFAC,
    SWATS,
    KFACPreconditioner,
    LinearSchedule,
    create_optimizer,
    linear_schedule,
)

F64 = torch.float64


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def run_steps(model, opt, loss_of, steps, *, fisher=True):
    """``steps`` optimisation steps of ``loss_of(model) -> (loss, outputs)``."""
    for _ in range(steps):
        opt.zero_grad()
        loss, out = loss_of(model)
        if fisher and hasattr(opt, "wants_fisher") and opt.wants_fisher():
            opt.fisher_backward(out)
        loss.backward()
        opt.step()
    return model


# ---- problems ------------------------------------------------------------------------


def least_squares(seed=0, n=40, d=5, c=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    t = torch.randn(n, c, generator=g, dtype=F64)
    model = nn.Linear(d, c).to(F64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(c, d, generator=g, dtype=F64))
        model.bias.zero_()

    def loss_of(m):
        out = m(x)
        return nn.functional.mse_loss(out, t), out

    loss_of.x, loss_of.t = x, t
    design = torch.cat([x, torch.ones(n, 1, dtype=F64)], dim=1)
    solution = torch.linalg.lstsq(design, t).solution  # (d + 1, c)
    return model, loss_of, solution


class Residuals(nn.Module):
    """Rosenbrock as least squares: ``(x, y) = W @ [1]``, residuals ``(1 - x, 10 (y - x^2))``.

    The mean squared residual is half the Rosenbrock function, minimised at (1, 1).
    """

    def __init__(self, start=(-1.2, 1.0)) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 2, bias=False).to(F64)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor(start, dtype=F64).reshape(2, 1))

    def forward(self, one):
        h = self.lin(one)
        x, y = h[:, 0], h[:, 1]
        return torch.stack([1 - x, 10 * (y - x**2)], dim=1)


def rosenbrock():
    model = Residuals()
    one, zero = torch.ones(1, 1, dtype=F64), torch.zeros(1, 2, dtype=F64)

    def loss_of(m):
        out = m(one)
        return nn.functional.mse_loss(out, zero), out

    return model, loss_of


def kfac_exact(m):
    """K-FAC with the exact (type-2) factors of this very step: Gauss-Newton with damping."""
    return KFAC(
        m, lr=1.0, momentum=0.0, damping=1e-8, kl_clip=None, fisher="type2", loss="mse",
        factor_interval=1, inverse_interval=1, factor_decay=0.0,
    )  # fmt: skip


# name -> (factory(model), steps) for the quadratic (linear least squares) and Rosenbrock
QUADRATIC = {
    "sgd": (lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), 300),
    "adam": (lambda m: torch.optim.Adam(m.parameters(), lr=0.05), 300),
    "swats": (lambda m: SWATS(m.parameters(), lr=0.05), 300),
    "kfac": (kfac_exact, 3),
}
ROSENBROCK = {
    "sgd": (lambda m: torch.optim.SGD(m.parameters(), lr=4e-3, momentum=0.95), 500),
    "adam": (lambda m: torch.optim.Adam(m.parameters(), lr=0.05, betas=(0.9, 0.99)), 1000),
    "swats": (lambda m: SWATS(m.parameters(), lr=0.05, betas=(0.9, 0.99)), 1000),
    "kfac": (kfac_exact, 10),
}


@pytest.mark.parametrize("name", list(QUADRATIC))
def test_quadratic_converges(name):
    factory, steps = QUADRATIC[name]
    model, loss_of, solution = least_squares()
    run_steps(model, factory(model), loss_of, steps)
    got = torch.cat([model.weight.detach().T, model.bias.detach()[None]], dim=0)
    assert torch.allclose(got, solution, atol=1e-4), (name, (got - solution).abs().max())


@pytest.mark.parametrize("name", list(ROSENBROCK))
def test_rosenbrock_converges(name):
    factory, steps = ROSENBROCK[name]
    model, loss_of = rosenbrock()
    run_steps(model, factory(model), loss_of, steps)
    w = model.lin.weight.detach().reshape(-1)
    assert torch.allclose(w, torch.ones(2, dtype=F64), atol=5e-3), (name, w)


# ---- SWATS ---------------------------------------------------------------------------


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(F64)


def mlp_loss(seed=1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 6, generator=g, dtype=F64), torch.randint(0, 3, (32,), generator=g)

    def loss_of(m):
        out = m(x)
        return nn.functional.cross_entropy(out, y), out

    return loss_of


@pytest.mark.parametrize(
    ("swats_kw", "adam_cls", "adam_kw"),
    [
        ({}, torch.optim.Adam, {}),
        ({"weight_decay": 0.1}, torch.optim.Adam, {"weight_decay": 0.1}),
        ({"weight_decay": 0.1, "decoupled_weight_decay": True}, torch.optim.AdamW, {"weight_decay": 0.1}),
        ({"amsgrad": True}, torch.optim.Adam, {"amsgrad": True}),
    ],
)  # fmt: skip
def test_swats_equals_adam_before_the_switch(swats_kw, adam_cls, adam_kw):
    a, b = small_mlp(), small_mlp()
    opt_a = SWATS(a.parameters(), lr=0.01, switch=False, **swats_kw)
    opt_b = adam_cls(b.parameters(), lr=0.01, foreach=False, **adam_kw)
    loss_of = mlp_loss()
    for step in range(50):
        run_steps(a, opt_a, loss_of, 1)
        run_steps(b, opt_b, loss_of, 1)
        assert torch.equal(flat(a), flat(b)), f"differs at step {step + 1}"
    assert opt_a.switch_info()[0]["phase"] == "adam"


def linear_objective(c):
    w = nn.Parameter(torch.zeros(len(c), dtype=F64))
    return w, lambda: (c * w).sum()


def test_swats_switches_per_paper_on_a_linear_objective():
    # f(w) = c.w: m_hat = c, v_hat = c^2, so p = -a c / (|c| + eps) at every step and
    # gamma = p.p / (-p.c) is constant: the bias-corrected average equals it from k = 2 on
    c = torch.tensor([1.0, -2.0, 0.5, 4.0], dtype=F64)
    w, f = linear_objective(c)
    lr, eps = 0.01, 1e-8
    opt = SWATS([w], lr=lr, eps=eps)
    for _ in range(2):
        opt.zero_grad()
        f().backward()
        opt.step()
    p = -lr * c / (c.abs() + eps)
    gamma = float(p @ p / -(p @ c))
    info = opt.switch_info()[0]
    assert info["phase"] == "sgd" and info["switch_step"] == 2
    assert info["sgd_lr"] == pytest.approx(gamma, rel=1e-12)
    assert opt.pop_events() == [
        {"event": "swats_switch", "group": 0, "step": 2, "sgd_lr": info["sgd_lr"]}
    ]
    assert opt.pop_events() == []
    # after the switch: v <- beta1 v + g (v starts at 0); w <- w - (1 - beta1) Lambda v
    before = w.detach().clone()
    v = torch.zeros_like(c)
    for _ in range(3):
        opt.zero_grad()
        f().backward()
        opt.step()
        v = 0.9 * v + c
        before = before - (1 - 0.9) * gamma * v
    assert torch.allclose(w.detach(), before, rtol=1e-12, atol=1e-15)


def test_swats_switches_each_group_on_its_own():
    c = torch.tensor([1.0, -3.0], dtype=F64)
    w, f = linear_objective(c)
    q = nn.Parameter(torch.tensor([1.0, -1.0, 2.0], dtype=F64))
    opt = SWATS([{"params": [w]}, {"params": [q]}], lr=0.01)
    for _ in range(10):
        opt.zero_grad()
        (f() + (q**4).sum()).backward()
        opt.step()
    phases = [g["phase"] for g in opt.switch_info()]
    assert phases == ["sgd", "adam"]
    assert not opt.switched


def test_swats_state_dict_round_trip_across_the_switch():
    c = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    q0 = torch.tensor([1.0, 0.5], dtype=F64)

    def make():
        w = nn.Parameter(torch.zeros(3, dtype=F64))
        q = nn.Parameter(q0.clone())
        opt = SWATS([{"params": [w]}, {"params": [q]}], lr=0.05)
        return w, q, opt

    def steps(w, q, opt, n):
        for _ in range(n):
            opt.zero_grad()
            ((c * w).sum() + (q**2).sum()).backward()
            opt.step()

    w1, q1, o1 = make()
    steps(w1, q1, o1, 5)  # group 0 switched at step 2
    assert o1.switch_info()[0]["phase"] == "sgd"
    buffer = io.BytesIO()
    torch.save({"opt": o1.state_dict(), "w": w1.detach(), "q": q1.detach()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    w2, q2, o2 = make()
    with torch.no_grad():
        w2.copy_(saved["w"])
        q2.copy_(saved["q"])
    o2.load_state_dict(saved["opt"])
    assert o2.switch_info() == o1.switch_info()
    steps(w1, q1, o1, 7)
    steps(w2, q2, o2, 7)
    assert torch.equal(w1, w2) and torch.equal(q1, q2)


def test_swats_schedule_scales_lambda_after_the_switch():
    c = torch.tensor([1.0, 2.0], dtype=F64)
    w, f = linear_objective(c)
    opt = SWATS([w], lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        f().backward()
        opt.step()
    lam = opt.param_groups[0]["sgd_lr"]
    opt.param_groups[0]["lr"] = 0.005  # a schedule halves the rate
    before = w.detach().clone()
    opt.zero_grad()
    f().backward()
    opt.step()
    assert torch.allclose(w.detach(), before - 0.1 * (lam / 2) * c, rtol=1e-12)


# ---- K-FAC -----------------------------------------------------------------------------


def dense_ggn_mse(x, t, lam, wd=0.0, w0=None):
    """The damped natural-gradient direction of mean-squared error for a linear layer."""
    n, d = x.shape
    c = t.shape[1]
    design = torch.cat([x, torch.ones(n, 1, dtype=F64)], dim=1)  # rows [x, 1]
    # theta = vec of [W | b] row-major (c rows of d + 1): J_i = I_c kron design_i
    jac = torch.kron(torch.eye(c, dtype=F64), design)  # (c n) x (c (d + 1)), output-major
    ggn = jac.T @ jac * (2.0 / (n * c))
    return ggn + lam * torch.eye(ggn.shape[0], dtype=F64)


def test_kfac_step_equals_dense_natural_gradient_on_least_squares():
    # for a linear layer under squared error the GGN (= Fisher) is exactly A kron G, so
    # K-FAC's eigenbasis-damped step is (F + lam I)^-1 (g + wd w), computed here densely
    model, loss_of, _ = least_squares(n=30, d=4, c=3)
    lam, lr, wd = 0.05, 0.7, 0.01
    theta0 = torch.cat([model.weight.detach(), model.bias.detach()[:, None]], dim=1).reshape(-1)
    opt = KFAC(model, lr=lr, momentum=0.0, damping=lam, kl_clip=None, fisher="type2",
               loss="mse", weight_decay=wd)  # fmt: skip
    loss, out = loss_of(model)
    opt.fisher_backward(out)
    loss.backward()
    grad = torch.cat([model.weight.grad, model.bias.grad[:, None]], dim=1).reshape(-1)
    opt.step()
    theta1 = torch.cat([model.weight.detach(), model.bias.detach()[:, None]], dim=1).reshape(-1)
    matrix = dense_ggn_mse(loss_of.x, loss_of.t, lam)
    expected = theta0 - lr * torch.linalg.solve(matrix, grad + wd * theta0)
    assert torch.allclose(theta1, expected, rtol=1e-10, atol=1e-12)


def test_kfac_pi_damping_matches_its_formula():
    model, loss_of, _ = least_squares(n=25, d=3, c=2)
    lam, lr = 0.1, 0.5
    opt = KFAC(model, lr=lr, momentum=0.0, damping=lam, kl_clip=None, fisher="type2",
               loss="mse", damping_mode="pi")  # fmt: skip
    theta0 = torch.cat([model.weight.detach(), model.bias.detach()[:, None]], dim=1)
    loss, out = loss_of(model)
    opt.fisher_backward(out)
    loss.backward()
    grad = torch.cat([model.weight.grad, model.bias.grad[:, None]], dim=1)
    opt.step()
    layer = opt.preconditioner.layers[0]
    A, G = layer.A, layer.G
    pi = math.sqrt((A.trace() / A.shape[0]) / (G.trace() / G.shape[0]))
    eye_a, eye_g = torch.eye(A.shape[0], dtype=F64), torch.eye(G.shape[0], dtype=F64)
    step = torch.linalg.solve(G + math.sqrt(lam) / pi * eye_g, grad) @ torch.linalg.inv(
        A + math.sqrt(lam) * pi * eye_a
    )
    theta1 = torch.cat([model.weight.detach(), model.bias.detach()[:, None]], dim=1)
    assert torch.allclose(theta1, theta0 - lr * step, rtol=1e-10, atol=1e-12)


def test_kfc_factors_of_a_convolution_by_brute_force():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1).to(F64)
    head = nn.Linear(3 * 3 * 3, 4).to(F64)
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten(), head)
    x = torch.randn(5, 2, 6, 6, dtype=F64)
    pre = KFACPreconditioner(model, fisher="type2", loss="cross_entropy")
    out = model(x)
    pre.fisher_backward(out)
    pre._update_factors()
    layer = pre.layers[0]
    # A: sum over locations of [patch, 1][patch, 1]^T, averaged over the batch
    padded = nn.functional.pad(x, (1, 1, 1, 1))
    A = torch.zeros(2 * 9 + 1, 2 * 9 + 1, dtype=F64)
    for i in range(5):
        for r in range(3):
            for s in range(3):
                patch = padded[i, :, 2 * r : 2 * r + 3, 2 * s : 2 * s + 3].reshape(-1)
                row = torch.cat([patch, torch.ones(1, dtype=F64)])
                A += torch.outer(row, row)
    assert torch.allclose(layer.A, A / 5, rtol=1e-12)
    # G: per-sample output Hessian square roots pushed back to the conv outputs,
    # averaged over locations and samples
    z = conv(x)
    logits = head(torch.tanh(z).flatten(1))
    p = torch.softmax(logits, 1)
    G = torch.zeros(3, 3, dtype=F64)
    for i in range(5):
        for c in range(4):
            vec = torch.zeros_like(logits)
            vec[i] = p[i, c].sqrt() * (torch.eye(4, dtype=F64)[c] - p[i])
            (gz,) = torch.autograd.grad(logits, z, vec, retain_graph=True)
            rows = gz[i].permute(1, 2, 0).reshape(-1, 3)
            G += rows.T @ rows / 9
    assert torch.allclose(layer.G, G / 5, rtol=1e-10)


def test_sampled_fisher_estimates_the_exact_expectation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4)).to(F64)
    x = torch.randn(4000, 5, dtype=F64)
    exact = KFACPreconditioner(model, fisher="type2")
    out = model(x)
    exact.fisher_backward(out)
    exact._update_factors()
    exact.remove_hooks()
    sampled = KFACPreconditioner(model, fisher="sampled", seed=3)
    out = model(x)
    sampled.fisher_backward(out)
    sampled._update_factors()
    for a, b in zip(exact.layers, sampled.layers):
        assert torch.equal(a.A, b.A)
        rel = (a.G - b.G).norm() / a.G.norm()
        assert rel < 0.08, (a.name, float(rel))


def cnn_problem(seed=0):
    torch.manual_seed(seed)
    model = SmallCNN(width=4).to(F64)
    g = torch.Generator().manual_seed(seed + 1)
    x, y = (
        torch.randn(16, 1, 8, 8, generator=g, dtype=F64),
        torch.randint(0, 10, (16,), generator=g),
    )

    def loss_of(m):
        out = m(x)
        return nn.functional.cross_entropy(out, y), out

    return model, loss_of


def test_kfac_with_zero_learning_rate_changes_nothing():
    model, loss_of = cnn_problem()
    before = flat(model).clone()
    opt = KFAC(model, lr=0.1, weight_decay=0.1, factor_interval=1, inverse_interval=2)
    opt.param_groups[0]["lr"] = 0.0  # as a schedule would set it
    run_steps(model, opt, loss_of, 5)
    assert torch.equal(flat(model), before)
    decoupled = KFAC(model, lr=0.1, weight_decay=0.1, decoupled_weight_decay=True)
    decoupled.param_groups[0]["lr"] = 0.0
    run_steps(model, decoupled, loss_of, 3)
    assert torch.equal(flat(model), before)


def test_batchnorm_parameters_get_the_plain_update():
    model, loss_of = cnn_problem()
    opt = KFAC(model, lr=0.1, momentum=0.0)
    bn = model.features[1]
    assert isinstance(bn, nn.BatchNorm2d)
    assert "features.1" not in opt.layers and opt.layers == [
        "features.0",
        "features.4",
        "classifier.1",
    ]
    w0 = bn.weight.detach().clone()
    loss, out = loss_of(model)
    opt.fisher_backward(out)
    loss.backward()
    g = bn.weight.grad.clone()
    opt.step()
    assert torch.equal(bn.weight.detach(), w0 - 0.1 * g)


def test_kl_clipping_scales_the_step():
    results = {}
    for clip in (None, 1e-6):
        model, loss_of = cnn_problem()
        theta0 = flat(model).clone()
        opt = KFAC(model, lr=0.5, momentum=0.0, kl_clip=clip, layers=["classifier.1"])
        loss, out = loss_of(model)
        opt.fisher_backward(out)
        loss.backward()
        grads = model.classifier[1].weight.grad.clone(), model.classifier[1].bias.grad.clone()
        opt.step()
        results[clip] = (model.classifier[1].weight.detach().clone(), opt.preconditioner, grads)
        assert flat(model).shape == theta0.shape
    w_free, pre, (gw, gb) = results[None]
    w_clip, pre_clip, _ = results[1e-6]
    nu = pre_clip.last_kl_scale
    assert 0 < nu < 1
    # nu = sqrt(kappa / (lr^2 v.g)) from the unclipped direction v
    model, _ = cnn_problem()
    w_init = model.classifier[1].weight.detach()
    v_w = (w_init - w_free) / 0.5
    assert torch.allclose(w_clip, w_init - 0.5 * nu * v_w, rtol=1e-10, atol=1e-14)


def test_preconditioner_in_front_of_sgd_equals_kfac():
    m1, loss_of = cnn_problem()
    m2, _ = cnn_problem()
    kfac = KFAC(m1, lr=0.05, momentum=0.9, kl_clip=1e-2, factor_interval=2, inverse_interval=3)
    sgd = torch.optim.SGD(m2.parameters(), lr=0.05, momentum=0.9, foreach=False)
    pre = KFACPreconditioner(m2, kl_clip=1e-2, lr=lambda: sgd.param_groups[0]["lr"],
                             factor_interval=2, inverse_interval=3)  # fmt: skip
    for _ in range(7):
        run_steps(m1, kfac, loss_of, 1)
        sgd.zero_grad()
        loss, out = loss_of(m2)
        if pre.wants_fisher():
            pre.fisher_backward(out)
        loss.backward()
        pre.step()
        sgd.step()
    assert torch.allclose(flat(m1), flat(m2), rtol=1e-12, atol=1e-14)


def test_preconditioner_in_front_of_adam_trains():
    model, loss_of = cnn_problem()
    adam = torch.optim.Adam(model.parameters(), lr=1e-2)
    pre = KFACPreconditioner(model, factor_interval=1, inverse_interval=5)
    start = float(loss_of(model)[0].detach())
    for _ in range(30):
        adam.zero_grad()
        loss, out = loss_of(model)
        pre.fisher_backward(out)
        loss.backward()
        pre.step()
        adam.step()
    assert float(loss_of(model)[0].detach()) < 0.5 * start


def test_kfac_state_dict_round_trip_resumes_exactly():
    m1, loss_of = cnn_problem()
    o1 = KFAC(m1, lr=0.05, factor_interval=2, inverse_interval=3, weight_decay=1e-3)
    run_steps(m1, o1, loss_of, 5)
    buffer = io.BytesIO()
    torch.save({"model": m1.state_dict(), "opt": o1.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    m2, _ = cnn_problem(seed=5)
    m2.load_state_dict(saved["model"])
    o2 = KFAC(m2, lr=0.05, factor_interval=2, inverse_interval=3, weight_decay=1e-3)
    o2.load_state_dict(saved["opt"])
    run_steps(m1, o1, loss_of, 6)
    run_steps(m2, o2, loss_of, 6)
    assert torch.equal(flat(m1), flat(m2))


def test_kfac_state_from_another_model_names_the_layers():
    m1, _ = cnn_problem()
    state = KFAC(m1, lr=0.1).state_dict()
    other = KFAC(nn.Sequential(nn.Linear(3, 2)).to(F64), lr=0.1)
    with pytest.raises(ValueError, match="missing \\['0'\\].*unexpected \\['classifier.1'"):
        other.load_state_dict(state)


def test_missing_fisher_pass_falls_back_with_a_warning():
    model, loss_of = cnn_problem()
    opt = KFAC(model, lr=0.05)
    with pytest.warns(RuntimeWarning, match="empirical Fisher"):
        run_steps(model, opt, loss_of, 1, fisher=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_steps(model, KFAC(model, lr=0.05, fisher="empirical"), loss_of, 2, fisher=False)


def test_kfac_bad_input():
    model, _ = cnn_problem()
    with pytest.raises(TypeError, match="not model.parameters"):
        KFAC(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="no supported layer.*BatchNorm.*torch.nn.Linear"):
        KFAC(nn.Sequential(nn.BatchNorm1d(3), nn.ReLU()), lr=0.1)
    for kwargs, word in [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"damping": 0.0}, "damping"),
        ({"factor_interval": 0}, "factor_interval"),
        ({"inverse_interval": -2}, "inverse_interval"),
        ({"kl_clip": -1.0}, "kl_clip"),
        ({"fisher": "true"}, "fisher"),
    ]:
        with pytest.raises(ValueError, match=word):
            KFAC(model, **{"lr": 0.1, **kwargs})
    with pytest.raises(ValueError, match="not a supported layer"):
        KFAC(model, lr=0.1, layers=["features.1"])
    with pytest.raises(ValueError, match="not a submodule"):
        KFAC(model, lr=0.1, layers=["nope"])


def test_swats_bad_input():
    w = [nn.Parameter(torch.zeros(2))]
    for kwargs, word in [({"lr": 0}, "lr"), ({"betas": (1.0, 0.9)}, "betas"),
                         ({"weight_decay": -1}, "weight_decay"), ({"switch_tol": 0}, "switch_tol")]:  # fmt: skip
        with pytest.raises(ValueError, match=word):
            SWATS(w, **kwargs)


# ---- schedules and the factory --------------------------------------------------------------


def test_linear_schedule_is_the_originals():
    def original(epoch, epochs=100, lr_init=0.05, lr_ratio=0.01):
        t = epoch / epochs
        if t <= 0.5:
            factor = 1.0
        elif t <= 0.9:
            factor = 1.0 - (1.0 - lr_ratio) * (t - 0.5) / 0.4
        else:
            factor = lr_ratio
        return lr_init * factor

    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = linear_schedule(opt, total=100)
    for epoch in range(100):
        assert opt.param_groups[0]["lr"] == pytest.approx(original(epoch), rel=1e-12)
        opt.step()
        sched.step()
    state = sched.state_dict()
    assert state["lr_lambdas"][0]["total"] == 100
    with pytest.raises(ValueError, match="total"):
        LinearSchedule(0)


def test_create_optimizer():
    model = nn.Sequential(nn.Linear(3, 2))
    assert isinstance(create_optimizer("SGD", model, lr=0.1), torch.optim.SGD)
    assert isinstance(create_optimizer("kfac", model, lr=0.1), KFAC)
    assert isinstance(create_optimizer("swats", model, lr=0.1), SWATS)
    with pytest.raises(ValueError, match="known optimisers: sgd, adam"):
        create_optimizer("lbfgs", model, lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        create_optimizer("adam", model, lr=0)


# ---- the small network on the built-in digits ----------------------------------------------

# optimiser -> (factory, epochs): each must reach DIGITS_ACCURACY test accuracy.
# The threshold sits far below the spread of the run itself, which changes with the seed and
# with the CPU kernels' rounding (one test sample is 0.34%, and a different rounding sends
# training down another path). Measured by benchmarks/digits_accuracy_spread.py over seeds
# 0-5 under ATEN_CPU_CAPABILITY=default and avx2: K-FAC 0.943-0.980 (mean 0.963, sd 0.011),
# SGD 0.970-0.980, Adam and SWATS 0.976-0.990; an AVX-512 machine gave K-FAC 0.943 at seed 0
# (so did the default kernels here, at seed 0). A threshold of 0.95 failed
# there; 0.90 is more than five standard deviations below K-FAC's mean, while an optimiser
# that does not train (or diverges) stays near 0.1.
DIGITS_ACCURACY = 0.90
DIGITS = {
    "sgd": (lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), 8),
    "adam": (lambda m: torch.optim.Adam(m.parameters(), lr=1e-2), 8),
    "swats": (lambda m: SWATS(m.parameters(), lr=1e-2), 8),
    "kfac": (lambda m: KFAC(m, lr=0.05), 8),
}


def digits_accuracy(factory, epochs: int, seed: int = 0) -> float:
    """Test accuracy of the small CNN after ``epochs`` of batches of 128 in a seeded order
    (also run by benchmarks/digits_accuracy_spread.py, over seeds and kernels)."""
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = factory(model)
    x, y = get_dataset("digits").tensors
    xt, yt = get_dataset("digits", split="test").tensors
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x), 128):
            idx = perm[i : i + 128]
            opt.zero_grad()
            out = model(x[idx])
            if hasattr(opt, "wants_fisher") and opt.wants_fisher():
                opt.fisher_backward(out)
            nn.functional.cross_entropy(out, y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return (model(xt).argmax(1) == yt).double().mean().item()


@pytest.mark.parametrize("name", list(DIGITS))
def test_trains_the_small_cnn_on_digits(name):
    accuracy = digits_accuracy(*DIGITS[name])
    assert accuracy >= DIGITS_ACCURACY, (name, accuracy)


def test_factor_eigh_falls_back_to_a_shift_when_lapack_fails(monkeypatch):
    """A factor LAPACK rejects (as densenet161's rank-71, 1728 x 1728 one): eigh(F + sI) - s."""
    from jupyter_curvature.optim import kfac

    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 40, generator=gen, dtype=torch.float64)
    rows[:, 20:] = 0.0  # low rank, a large exactly repeated zero eigenvalue
    factor = rows.T @ rows
    real_eigh = torch.linalg.eigh
    calls = []

    def failing_unshifted(mat):
        calls.append(float(mat.diagonal()[-1]))
        if calls[-1] == 0.0:  # the unshifted factor: its last diagonal entry is exactly 0
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return real_eigh(mat)

    monkeypatch.setattr(torch.linalg, "eigh", failing_unshifted)
    values, vectors = kfac.factor_eigh(factor, "A of layer 'x'")
    assert len(calls) == 2 and calls[1] > 0  # the second try was shifted
    reference = torch.from_numpy(__import__("numpy").linalg.eigvalsh(factor.numpy()))
    torch.testing.assert_close(values, reference, rtol=0, atol=1e-10 * float(reference.max()))
    torch.testing.assert_close(vectors @ torch.diag(values) @ vectors.T, factor, rtol=0, atol=1e-10)


def test_factor_eigh_names_the_factor_when_nothing_helps():
    from jupyter_curvature.optim import kfac

    factor = torch.eye(4, dtype=torch.float64)
    factor[0, 0] = float("nan")
    with pytest.raises(torch.linalg.LinAlgError, match="A of layer 'conv'.*not finite"):
        kfac.factor_eigh(factor, "A of layer 'conv'")


@pytest.mark.parametrize(
    "kernel, dilation",
    [(3, 1), (4, 1), ((2, 3), 1), (3, 2), (2, 3)],
    ids=["odd", "even", "mixed", "odd-dilated", "even-dilated"],
)
def test_kfac_same_padding_equals_the_explicitly_padded_network(kernel, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel, padding="same", dilation=dilation).to(F64)
    kh, kw = conv.kernel_size
    # the zeros torch adds for "same", found by trying every split (not by its formula)
    x = torch.randn(4, 2, 6, 5, dtype=F64)
    plain = nn.Conv2d(2, 3, kernel, dilation=dilation).to(F64)
    plain.load_state_dict(conv.state_dict())
    th, tw = dilation * (kh - 1), dilation * (kw - 1)
    splits = [
        (left, tw - left, top, th - top)
        for left in range(tw + 1)
        for top in range(th + 1)
        if torch.allclose(plain(nn.functional.pad(x, (left, tw - left, top, th - top))), conv(x))
    ]
    assert len(splits) == 1 or kh == kw == 1
    pad = splits[0]

    def net(first):
        torch.manual_seed(1)
        head = nn.Linear(3 * 6 * 5, 4).to(F64)
        return nn.Sequential(*first, nn.Tanh(), nn.Flatten(), head)

    same = net([conv])
    padded = net([nn.ZeroPad2d(pad), plain])
    opts = [
        KFAC(m, lr=0.1, fisher="type2", factor_interval=1, inverse_interval=1)
        for m in (same, padded)
    ]
    assert [layer.name for layer in opts[0].preconditioner.layers] == ["0", "3"]
    y = torch.randint(0, 4, (4,))
    for model, opt in zip((same, padded), opts):
        for _ in range(2):
            opt.zero_grad()
            out = model(x)
            opt.fisher_backward(out)
            nn.functional.cross_entropy(out, y).backward()
            opt.step()
    for a, b in zip(same.parameters(), padded.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    # A by brute force: [patch, 1][patch, 1]^T over the locations of the padded input
    model = net([nn.Conv2d(2, 3, kernel, padding="same", dilation=dilation).to(F64)])
    pre = KFACPreconditioner(model, fisher="type2", factor_interval=1)
    pre.fisher_backward(model(x))
    pre._update_factors()
    big = nn.functional.pad(x, pad)
    A = torch.zeros(2 * kh * kw + 1, 2 * kh * kw + 1, dtype=F64)
    for i in range(4):
        for r in range(6):
            for s in range(5):
                window = big[i, :, r : r + th + 1 : dilation, s : s + tw + 1 : dilation]
                row = torch.cat([window.reshape(-1), torch.ones(1, dtype=F64)])
                A += torch.outer(row, row)
    assert torch.allclose(pre.layers[0].A, A / 4, rtol=1e-12)


def test_kfac_leaves_out_a_multihead_attentions_out_proj():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = nn.MultiheadAttention(4, 1, batch_first=True)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.att(x, x, x)[0].mean(1))

    torch.manual_seed(0)
    model = Net()
    opt = KFAC(model, lr=0.1, factor_interval=1, inverse_interval=1)
    assert [layer.name for layer in opt.preconditioner.layers] == ["head"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no curvature factors" for a layer never called
        for _ in range(2):
            x, y = torch.randn(5, 3, 4), torch.randint(0, 3, (5,))
            opt.zero_grad()
            out = model(x)
            opt.fisher_backward(out)
            nn.functional.cross_entropy(out, y).backward()
            opt.step()
    with pytest.raises(ValueError, match=r"att.out_proj.*without calling its forward.*leave it"):
        KFAC(model, lr=0.1, layers=["att.out_proj"])


@pytest.mark.parametrize("name", ["sgd", "kfac"])
def test_create_optimizer_refuses_momentum_outside_the_unit_interval(name):
    model = nn.Sequential(nn.Linear(3, 2))
    for bad in (1.5, 1.0, -0.1):
        with pytest.raises(ValueError, match=r"momentum must (lie in \[0, 1\)|be a non-neg)"):
            create_optimizer(name, model, lr=0.1, momentum=bad)
    for good in (0.0, 0.5):
        assert (
            create_optimizer(name, model, lr=0.1, momentum=good).param_groups[0]["momentum"] == good
        )
