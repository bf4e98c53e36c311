"""Property-based fuzzing of the public API's arguments (hypothesis).

Each argument is drawn either from values the API must accept or from values it must refuse.
The property: a call whose arguments are all acceptable succeeds (and its numbers agree with
a dense float64 reference); a call with any refused argument raises ``ValueError`` or
``TypeError`` whose message names one of the refused arguments; and in both cases the
model's parameters and buffers are bitwise as before.

The search is derandomised (a fixed sequence of examples, no example database), so the suite
runs the same cases on every machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from reference import dense_hessian  # noqa: E402

import jupyter_curvature as jc  # noqa: E402

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
N_SAMPLES, N_IN, N_OUT = 12, 3, 3


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N_IN, 4), nn.Tanh(), nn.Linear(4, N_OUT)).double().eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_SAMPLES, N_IN, generator=g, dtype=torch.float64)
    return x, torch.randint(N_OUT, (N_SAMPLES,), generator=g)


def _num_params() -> int:
    return sum(p.numel() for p in _model().parameters())


def _state(model: nn.Module) -> dict[str, bytes]:
    """Bitwise state (NaN-safe: compares bytes, not values)."""
    return {k: v.detach().cpu().numpy().tobytes() for k, v in model.state_dict().items()}


# ---- argument strategies: (value, acceptable) ------------------------------------------


@dataclass
class Call:
    """The drawn arguments and the names of those that must be refused."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)


def _arg(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(good.map(lambda v: (v, True)), bad.map(lambda v: (v, False)))


NOT_A_NUMBER = st.sampled_from(["3", None, [1], float("nan")])
BAD_COUNT = st.one_of(st.integers(-5, 0), st.sampled_from([2.5, "4", None]))
BAD_TOL = st.sampled_from([-1e-3, 0.0, float("nan"), float("inf"), "1e-3", None])
BAD_SEED = st.sampled_from([-1, 1.5, "0", None])


def _draw(draw, spec: dict[str, st.SearchStrategy]) -> Call:
    call = Call()
    for name, strategy in spec.items():
        value, ok = draw(strategy)
        call.kwargs[name] = value
        if not ok:
            call.refused.add(name)
    return call


def _names_a_refused_argument(message: str, refused: set[str], aliases: dict) -> bool:
    words = set().union(*(aliases.get(name, {name}) for name in refused))
    return any(re.search(rf"(?<![A-Za-z_]){re.escape(w)}(?![A-Za-z_])", message) for w in words)


def _check(fn, call: Call, model: nn.Module, aliases: dict | None = None):
    """Run ``fn(**call.kwargs)`` and check the property; return the result when accepted."""
    before = _state(model)
    try:
        result = fn(**call.kwargs)
    except (ValueError, TypeError) as exc:
        assert call.refused, f"acceptable arguments {call.kwargs} were refused: {exc}"
        assert _names_a_refused_argument(str(exc), call.refused, aliases or {}), (
            f"the error does not name any of {sorted(call.refused)}: {exc}"
        )
        result = None
    else:
        assert not call.refused, f"{sorted(call.refused)} of {call.kwargs} were accepted"
    assert _state(model) == before, "the call changed the model"
    return result


@pytest.fixture(scope="module")
def reference():
    model = _model()
    x, y = _batch()
    H = dense_hessian(model, nn.CrossEntropyLoss(), x, y)
    return torch.linalg.eigvalsh(H)


# ---- the spectral entry points -------------------------------------------------------


@st.composite
def eigenpairs_calls(draw):
    n = _num_params()
    return _draw(
        draw,
        {
            "k": _arg(st.integers(1, 4), st.one_of(BAD_COUNT, st.just(n + 1))),
            "which": _arg(st.sampled_from(["LA", "SA", "LM"]), st.sampled_from(["la", "X", 3])),
            "tol": _arg(st.sampled_from([1e-6, 1e-4, 1e-2]), BAD_TOL),
            "seed": _arg(st.integers(0, 2**31 - 1), BAD_SEED),
            "max_basis": _arg(st.sampled_from([None, 12, n]), st.sampled_from([0, -3, "20"])),
        },
    )


@FUZZ
@given(call=eigenpairs_calls())
def test_eigenpairs_accepts_or_names_the_argument(call, reference):
    model = _model()
    H = jc.HessianOperator(model, nn.CrossEntropyLoss(), _batch())
    result = _check(lambda **kw: jc.eigenpairs(H, warn=False, **kw), call, model)
    if result is None or not bool(torch.as_tensor(result.converged).all()):
        return
    ev = reference
    order = {"LA": ev.flip(0), "SA": ev, "LM": ev[ev.abs().argsort(descending=True)]}
    want = order[call.kwargs["which"]][: call.kwargs["k"]]
    got = torch.as_tensor(result.eigenvalues, dtype=torch.float64)
    # a converged Ritz value is within its residual bound of an eigenvalue (Weyl)
    bound = torch.as_tensor(result.residuals, dtype=torch.float64).max() + 1e-10
    assert (got - want).abs().max() <= bound * 1.01, (got, want, bound)


@st.composite
def density_calls(draw):
    return _draw(
        draw,
        {
            "num_iters": _arg(st.integers(1, 30), BAD_COUNT),
            "num_probes": _arg(st.integers(1, 4), BAD_COUNT),
            "seed": _arg(st.integers(0, 2**31 - 1), BAD_SEED),
        },
    )


@FUZZ
@given(call=density_calls())
def test_spectral_density_accepts_or_names_the_argument(call, reference):
    model = _model()
    H = jc.HessianOperator(model, nn.CrossEntropyLoss(), _batch())
    result = _check(lambda **kw: jc.spectral_density(H, **kw), call, model)
    if result is not None:  # Ritz values lie inside the spectrum (Cauchy interlacing)
        ritz = torch.as_tensor(result.ritz_values, dtype=torch.float64)
        scale = reference.abs().max()
        assert ritz.min() >= reference.min() - 1e-8 * scale
        assert ritz.max() <= reference.max() + 1e-8 * scale


@st.composite
def trace_calls(draw):
    return _draw(
        draw,
        {
            "method": _arg(
                st.sampled_from(["hutch++", "hutchinson"]), st.sampled_from(["exact!", 1])
            ),
            "num_matvecs": _arg(st.integers(4, 60), st.one_of(st.integers(-3, 0), NOT_A_NUMBER)),
            "seed": _arg(st.integers(0, 2**31 - 1), BAD_SEED),
        },
    )


@FUZZ
@given(call=trace_calls())
def test_trace_accepts_or_names_the_argument(call, reference):
    model = _model()
    H = jc.HessianOperator(model, nn.CrossEntropyLoss(), _batch())
    result = _check(lambda **kw: jc.trace(H, **kw), call, model)
    if result is not None:
        assert torch.isfinite(torch.as_tensor(float(result.estimate)))


# ---- the operators: data layouts, dtypes, losses, vectors --------------------------------


def _layouts(x, y):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    good = {
        "one batch": (x, y),
        "list of batches": [(x[:7], y[:7]), (x[7:], y[7:])],
        "loader": loader,
    }
    bad = {
        "no batches": [],
        "targets of another batch size": (x, y[:5]),
        "integer inputs": (x.long(), y),
        "inputs alone": x,
        "a string": "data",
    }
    return good, bad


LOSSES_GOOD = {
    "cross_entropy": lambda: nn.CrossEntropyLoss(),
    "summed cross_entropy": lambda: nn.CrossEntropyLoss(reduction="sum"),
}
LOSSES_BAD = {
    "a string": lambda: "cross_entropy",
    "per-sample": lambda: nn.CrossEntropyLoss(reduction="none"),
}
DATA_ALIASES = {"data": {"data", "inputs", "targets", "batch", "batches"}}


@st.composite
def operator_calls(draw):
    good, bad = _layouts(*_batch())
    data = draw(_arg(st.sampled_from(sorted(good)), st.sampled_from(sorted(bad))))
    loss = draw(_arg(st.sampled_from(sorted(LOSSES_GOOD)), st.sampled_from(sorted(LOSSES_BAD))))
    kind = draw(st.sampled_from(["HessianOperator", "GGNOperator"]))
    call = Call(refused={n for n, (_, ok) in (("data", data), ("loss_fn", loss)) if not ok})
    call.kwargs = {
        "data": (good if data[1] else bad)[data[0]],
        "loss_fn": (LOSSES_GOOD if loss[1] else LOSSES_BAD)[loss[0]](),
    }
    return kind, call


@FUZZ
@given(case=operator_calls(), v_kind=st.sampled_from(["random", "nan", "wrong length"]))
def test_operators_accept_or_name_the_argument(case, v_kind):
    kind, call = case
    model = _model()

    def build_and_apply(data, loss_fn):
        op = getattr(jc, kind)(model, loss_fn, data)
        n = op.shape[0]
        v = torch.randn(n + (v_kind == "wrong length"), dtype=torch.float64)
        if v_kind == "nan":
            v[0] = float("nan")
        return op, op @ v

    if v_kind != "random" and not call.refused:
        call.refused.add("v")
    out = _check(build_and_apply, call, model, {**DATA_ALIASES, "v": {"v", "vector"}})
    if out is not None:
        assert torch.isfinite(out[1]).all()
