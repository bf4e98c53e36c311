"""One operator shared between threads: the single-thread results, exactly, and the model untouched.

Threads are made to overlap by events, not by timing: the first thread to reach the loss holds
there, inside a product, until a second thread reaches the model too, either in a product of
its own (what happened without the lock) or by waiting for the model's lock (what must happen).
Every single-thread result is also checked against a dense float64 ``torch.func`` Hessian.
"""

from __future__ import annotations

import copy
import gc
import re
import threading
import weakref

import pytest
import torch
from reference import assert_close, dense_ggn, dense_hessian, digits_batch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from jupyter_curvature.core import model_state as _model_state
from jupyter_curvature.operators import (
    GGNOperator,
    HessianOperator,
    ModelChangedError,
    functional,
    output_hessian_for,
)
from jupyter_curvature.spectral import eigenpairs, spectral_density
from jupyter_curvature.spectral._checks import Operator

WAIT = 60  # seconds; only a broken test waits this long (a thread that never arrives)


class WatchedLock:
    """A re-entrant lock that sets ``waited`` when a thread has to wait for it."""

    def __init__(self, waited: threading.Event) -> None:
        self._lock = threading.RLock()
        self.waited = waited

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        self.waited.set()
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class Meeting:
    """Once armed, holds the first thread that calls :meth:`meet` until ``arrived`` is set.

    Any other thread that calls :meth:`meet` sets ``arrived`` (both are inside at once);
    ``entered`` is set when the first thread is held.
    """

    def __init__(self, arrived: threading.Event) -> None:
        self.arrived = arrived
        self.entered = threading.Event()
        self.armed = False
        self.first: int | None = None
        self._guard = threading.Lock()

    def meet(self) -> None:
        if not self.armed:
            return
        with self._guard:
            me = threading.get_ident()
            self.first = me if self.first is None else self.first
            if me != self.first:
                self.arrived.set()
        if me == self.first:
            self.entered.set()
            assert self.arrived.wait(WAIT), "no second thread reached the model"


class HoldingLoss(Meeting):
    """``loss_fn`` that meets the other threads first (inside a product)."""

    def __init__(self, loss_fn: nn.Module, arrived: threading.Event) -> None:
        super().__init__(arrived)
        self.loss_fn = loss_fn

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.meet()
        return self.loss_fn(outputs, targets)


class Gate(nn.Module):
    """The identity, meeting the other threads first (inside the model's forward)."""

    def __init__(self, meeting: Meeting) -> None:
        super().__init__()
        self.meeting = meeting

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.meeting.meet()
        return x


def bn_model() -> nn.Module:
    """Dropout and BatchNorm in train mode with non-trivial running statistics, one frozen bias."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 6),
        nn.BatchNorm1d(6),
        nn.Tanh(),
        nn.Dropout(0.5),
        nn.Linear(6, 10),
    ).double()
    x, _ = digits_batch("test", 40)
    with torch.no_grad():
        for _ in range(3):
            model(x)  # moves the running statistics away from 0 and 1
    model[1].bias.requires_grad_(False)
    return model.train()


def model_state(model: nn.Module) -> dict:
    """Everything a curvature product changes for its duration, copied."""
    return {
        "tensors": {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "tracking": [m.track_running_stats for m in model.modules() if isinstance(m, _BatchNorm)],
    }


def assert_state_unchanged(model: nn.Module, before: dict) -> None:
    after = model_state(model)
    for key, value in before["tensors"].items():
        assert torch.equal(after["tensors"][key], value), f"{key} changed"
    for key in ("training", "requires_grad", "tracking"):
        assert after[key] == before[key], f"{key} flags changed: {before[key]} -> {after[key]}"


def setup(kind: str, waited: threading.Event):
    """An operator over 4 batches whose model lock reports waiting threads, and its dense matrix."""
    model = bn_model()
    x, y = digits_batch("train", 64)
    loader = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    _model_state._LOCKS[model] = WatchedLock(waited)
    loss = HoldingLoss(nn.CrossEntropyLoss(), waited)
    reference = copy.deepcopy(model).eval()  # the "eval" policy: running statistics, no dropout
    if kind == "hessian":
        op = HessianOperator(model, loss, loader)
        dense = dense_hessian(reference, nn.CrossEntropyLoss(), x, y)
    else:
        op = GGNOperator(
            model, loss, loader, output_hessian=output_hessian_for(nn.CrossEntropyLoss())
        )
        dense = dense_ggn(reference, nn.CrossEntropyLoss(), x, y)
    return model, op, loss, dense


def routines(op, V: torch.Tensor) -> dict:
    return {
        "eigenpairs": lambda: eigenpairs(op, k=3, tol=1e-9, seed=0),
        "density": lambda: spectral_density(op, 12, 2, seed=0),
        "product": lambda: op @ V,
    }


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    fields = ("eigenvalues", "eigenvectors", "residuals") if hasattr(a, "eigenvectors") else ()
    fields = fields or ("ritz_values", "weights")
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in fields)


def products(result, V: torch.Tensor) -> int:
    return V.shape[1] if isinstance(result, torch.Tensor) else result.num_matvecs


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_threads_sharing_an_operator_get_the_single_thread_results(kind):
    waited = threading.Event()
    model, op, loss, dense = setup(kind, waited)
    V = torch.randn(op.shape[0], 3, dtype=torch.float64)
    calls = routines(op, V)
    expected = {name: call() for name, call in calls.items()}

    # the single-thread results are right: against the dense float64 matrix
    exact = torch.linalg.eigvalsh(dense)
    norm = float(exact.abs().max())
    assert_close(expected["eigenpairs"].eigenvalues, exact.flip(0)[:3], rtol=0, atol=1e-8 * norm)
    assert_close(expected["product"], dense @ V, rtol=0, atol=1e-10 * norm, what="product")
    assert expected["density"].ritz_values.max() <= exact[-1] + 1e-10 * norm

    before = model_state(model)
    count = op.num_matvecs
    names = list(calls)
    results: dict[int, dict] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def worker(w: int) -> None:
        start.wait()
        try:  # each thread runs the routines in its own order
            order = names[w:] + names[:w]
            results[w] = {name: calls[name]() for name in order}
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    loss.armed = True
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"a thread failed: {errors[0]!r}"
    assert len(results) == 3 and waited.is_set()  # the threads did meet at the model
    for w, got in results.items():
        for name, value in got.items():
            assert same(value, expected[name]), f"thread {w}: {name} differs from one thread's"
    assert op.num_matvecs == count + sum(
        products(v, V) for r in results.values() for v in r.values()
    )
    assert_state_unchanged(model, before)
    assert getattr(op, "keep_graphs", False) is False and getattr(op, "_graphs", None) is None


def stepping_loss(step_inside: threading.Event, stepped: threading.Event):
    """A loss that lets another thread change the parameters while the first product runs."""
    calls = []

    def loss(outputs, targets):
        calls.append(1)
        if len(calls) == 1:
            step_inside.set()
            assert stepped.wait(WAIT), "the training thread never stepped"
        return nn.functional.cross_entropy(outputs, targets)

    return loss


@pytest.mark.parametrize("routine", ["eigenpairs", "product"])
def test_a_parameter_change_from_another_thread_during_a_call_is_an_error(routine):
    model = bn_model()
    x, y = digits_batch("train", 32)
    inside, stepped = threading.Event(), threading.Event()
    op = HessianOperator(model, stepping_loss(inside, stepped), (x, y), check=False)
    before = model_state(model)

    def training_step() -> None:  # what an optimiser in another thread does, without the lock
        assert inside.wait(WAIT)
        with torch.no_grad():
            model[-1].weight.add_(0.01)
        stepped.set()

    trainer = threading.Thread(target=training_step)
    trainer.start()
    call = routines(op, torch.ones(op.shape[0], 2, dtype=torch.float64))[routine]
    with pytest.raises(ModelChangedError, match=re.escape("with op.lock: optimizer.step()")):
        call()
    trainer.join()
    # only the other thread's step changed the model; the operator restored all it had changed
    before["tensors"]["5.weight"] += 0.01
    assert_state_unchanged(model, before)


def test_a_step_that_holds_the_operators_lock_waits_for_the_call():
    waited = threading.Event()
    model, op, loss, dense = setup("hessian", waited)
    expected = eigenpairs(op, k=3, tol=1e-9, seed=0)
    weight = model[-1].weight

    def training_step() -> None:
        with op.lock, torch.no_grad():  # waits for the whole spectral call (sets `waited`)
            weight.add_(0.01)

    loss.armed = True  # the call holds in its first product until the step waits for the lock
    trainer = threading.Thread(target=training_step)
    result: list = []
    caller = threading.Thread(target=lambda: result.append(eigenpairs(op, k=3, tol=1e-9, seed=0)))
    caller.start()
    assert loss.entered.wait(WAIT)  # the call holds the lock: the step can only wait for it
    trainer.start()
    caller.join()
    trainer.join()
    assert same(result[0], expected)  # the whole call saw the weights before the step
    assert waited.is_set() and loss.first == caller.ident


def test_the_model_lock_is_shared_by_a_models_operators_and_goes_with_it():
    model = bn_model()
    x, y = digits_batch("train", 16)
    H = HessianOperator(model, nn.CrossEntropyLoss(), (x, y))
    G = GGNOperator(model, nn.CrossEntropyLoss(), (x, y))
    other = HessianOperator(bn_model(), nn.CrossEntropyLoss(), (x, y))
    assert H.lock is G.lock is _model_state.model_lock(model)
    assert other.lock is not H.lock
    copy.deepcopy(model)  # a model with operators still copies (the lock is not on it)
    H_copy = copy.deepcopy(H)  # an operator copies with its model, and locks that copy
    assert H_copy.lock is _model_state.model_lock(H_copy.model) and H_copy.lock is not H.lock
    v = torch.ones(H.shape[0], dtype=torch.float64)
    assert torch.equal(H_copy @ v, H @ v)
    del H_copy
    ref = weakref.ref(model)
    del model, H, G
    gc.collect()
    assert ref() is None  # the registry of locks does not keep a model alive


def test_a_change_between_the_products_of_one_call_is_an_error():
    """Within a spectral call a change between two products would mix two matrices."""
    model = bn_model()
    x, y = digits_batch("train", 16)
    op = HessianOperator(model, nn.CrossEntropyLoss(), (x, y))
    v = torch.ones(op.shape[0], 1, dtype=torch.float64)
    with Operator(op, keep_graphs=True) as A:
        A.matmat(v)
        with torch.no_grad():
            model[-1].weight.mul_(1.5)
        with pytest.raises(ModelChangedError):
            A.matmat(v)
    # the next call is the changed model's (the kept graph was rebuilt)
    dense = dense_hessian(copy.deepcopy(model).eval(), nn.CrossEntropyLoss(), x, y)
    assert_close(op @ v, dense @ v, rtol=0, atol=1e-10 * float(dense.abs().max()))


def test_forward_mode_products_of_two_models_in_two_threads(monkeypatch):
    """Forward AD's nesting level is process-wide: GGN products of different models must take turns."""
    waited = threading.Event()
    monkeypatch.setattr(functional, "_FORWARD_AD", WatchedLock(waited))
    meeting = Meeting(waited)
    x, y = digits_batch("train", 32)
    ops, expected, dense = [], [], []
    for seed in range(2):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 5), Gate(meeting), nn.Tanh(), nn.Linear(5, 10)
        )
        model.double()
        ops.append(GGNOperator(model, nn.CrossEntropyLoss(), (x, y)))
        v = torch.randn(ops[-1].shape[0], dtype=torch.float64)
        expected.append((v, ops[-1] @ v))  # one vector: the dual-number forward
        dense.append(dense_ggn(model, nn.CrossEntropyLoss(), x, y))
    got: dict[int, torch.Tensor] = {}
    meeting.armed = True
    threads = [
        threading.Thread(target=lambda i=i: got.setdefault(i, ops[i] @ expected[i][0]))
        for i in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert waited.is_set()
    for i, (v, product) in enumerate(expected):
        assert torch.equal(got[i], product), f"operator {i}: the threaded product differs"
        norm = float(dense[i].abs().max())
        assert_close(product, dense[i] @ v, rtol=0, atol=1e-10 * norm, what=f"operator {i}")
