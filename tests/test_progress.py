"""Progress events and cancellation (issue 16, item 1 and its bad input), without a browser.

Cancellation is driven from inside the progress callback at a known step, so "cancelled after
k products" is exact and needs no timing; threads are coordinated by events, never sleeps.
A cancelled Lanczos run is compared with an independent run asked for exactly that many
steps: the recurrence does not depend on the number of steps asked for, so the Ritz values
and weights must agree.
"""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from torch import nn

from jupyter_curvature import tasks
from jupyter_curvature.core.progress import (
    Cancelled,
    CancelToken,
    Progress,
    ProgressEvent,
    Worker,
)
from jupyter_curvature.spectral import eigenpairs, spectral_density, trace


def symmetric(n: int = 80, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(n, n, generator=g, dtype=torch.float64)
    return M + M.T


def cancel_at(step: int, phase: str, token: CancelToken, log: list[ProgressEvent]):
    def callback(event: ProgressEvent) -> None:
        log.append(event)
        if event.phase == phase and event.step == step and not event.done:
            token.cancel()

    return callback


# ----------------------------------------------------------------------------- engine
def test_density_events_in_order_and_cancel_after_k_steps_equals_a_k_step_run():
    A, p, k = symmetric(), 3, 9
    token, log = CancelToken(), []
    d = spectral_density(
        A, num_iters=40, num_probes=p, progress=cancel_at(k, "density", token, log), cancel=token
    )
    steps = [e.step for e in log if not e.done]
    assert steps == list(range(k + 1))  # one event before each block product
    assert all(e.products == p * e.step and e.total == 40 for e in log)
    assert log[-1].done and log[-1].cancelled and log[-1].partial is d
    assert d.cancelled and d.num_steps == k and d.num_matvecs == p * k
    ref = spectral_density(A, num_iters=k, num_probes=p)
    assert not ref.cancelled
    torch.testing.assert_close(d.ritz_values, ref.ritz_values, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d.weights, ref.weights, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d.residuals, ref.residuals, rtol=1e-9, atol=1e-9 * ref.scale)
    # the partial of an event is the density of the steps done so far
    mid = log[5].partial
    torch.testing.assert_close(
        mid.ritz_values, spectral_density(A, num_iters=5, num_probes=p).ritz_values
    )


def test_eigenpairs_cancel_after_k_products_equals_a_budget_of_k_and_is_not_certified():
    A, k = symmetric(200), 37
    token, log = CancelToken(), []
    r = eigenpairs(
        A,
        k=2,
        tol=1e-12,
        max_basis=30,
        progress=cancel_at(k, "eigenpairs", token, log),
        cancel=token,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = eigenpairs(A, k=2, tol=1e-12, max_basis=30, max_iters=k)
    assert r.cancelled and not r.converged and not bool(r.pair_converged.any())
    assert r.num_matvecs == k == ref.num_matvecs and r.iterations == ref.iterations
    torch.testing.assert_close(r.eigenvalues, ref.eigenvalues, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(r.residuals, ref.residuals, rtol=1e-8, atol=1e-12)
    assert [e.step for e in log if not e.done] == list(range(k + 1))  # a restart happened (30)
    # partial estimates: the current wanted Ritz pairs with their residuals
    part = log[-2].partial
    assert len(part["eigenvalues"]) == 2 and part["eigenvalues"][0] >= part["eigenvalues"][1]


def test_eigenpairs_partial_values_approach_the_exact_ones():
    A = symmetric(120)
    exact = torch.linalg.eigvalsh(A)[-1].item()
    log = []
    r = eigenpairs(A, k=1, tol=1e-10, progress=log.append)
    assert r.converged and not r.cancelled
    last = log[-2].partial  # the estimate before the last product
    assert abs(last["eigenvalues"][0] - exact) <= last["residuals"][0] + 1e-9 * abs(exact)


def test_trace_cancel_keeps_the_finished_probes():
    A = symmetric(150)
    token, log = CancelToken(), []
    r = trace(
        A,
        "hutchinson",
        num_matvecs=60,
        block_size=10,
        progress=cancel_at(20, "trace", token, log),
        cancel=token,
    )
    full = trace(A, "hutchinson", num_matvecs=60, block_size=10)
    assert (
        r.cancelled
        and r.num_matvecs == 20
        and r.samples == pytest.approx(full.samples[:20], rel=1e-12)
    )
    assert r.estimate == pytest.approx(sum(full.samples[:20]) / 20, rel=1e-12)


def test_cancelled_before_the_first_product_raises_cancelled():
    token = CancelToken()
    token.cancel()
    for call in (
        lambda: spectral_density(symmetric(), 10, cancel=token),
        lambda: eigenpairs(symmetric(), k=1, cancel=token),
        lambda: trace(symmetric(), cancel=token),
    ):
        with pytest.raises(Cancelled, match="before the first product"):
            call()


def test_a_threading_event_is_a_token_and_bad_arguments_say_what_to_pass():
    event = threading.Event()
    event.set()
    with pytest.raises(Cancelled):
        spectral_density(symmetric(), 5, cancel=event)
    with pytest.raises(TypeError, match="cancel must be"):
        spectral_density(symmetric(), 5, cancel=1)
    with pytest.raises(TypeError, match="progress must be"):
        spectral_density(symmetric(), 5, progress="yes")


def test_progress_true_draws_a_tqdm_bar(capsys):
    spectral_density(symmetric(), 6, progress=True)
    assert "density" in capsys.readouterr().err


def test_eta_from_an_injected_clock():
    times = iter([0.0, 0.0, 2.0])
    log = []
    tracker = Progress(log.append, phase="x", total=10, clock=lambda: next(times))
    tracker.step(2)
    assert log[0].elapsed == 2.0 and log[0].eta == pytest.approx(8.0)


# ----------------------------------------------------------------------------- tasks and CLI
def test_statistics_cancel_keeps_the_finished_sections():
    token, log = CancelToken(), []
    st = tasks.statistics(
        "mlp",
        "digits",
        num_samples=128,
        batch_size=32,
        progress=cancel_at(1, "curvature (hessian)", token, log),
        cancel=token,
    )
    assert st.cancelled and st.not_computed == ["curvature", "norms", "layers"]
    assert st.evaluation is not None and st.gradients is not None and st.curvature is None
    assert "CANCELLED" in str(st)
    ref = tasks.statistics("mlp", "digits", num_samples=128, batch_size=32, include=["evaluation"])
    assert st.evaluation.loss == ref.evaluation.loss


def test_spectrum_task_cancelled_in_eigenpairs_keeps_the_whole_density():
    token, log = CancelToken(), []
    kw = dict(num_iters=8, num_probes=2, top_k=2, num_samples=60)
    r = tasks.spectrum(
        "mlp", "digits", progress=cancel_at(4, "eigenpairs", token, log), cancel=token, **kw
    )
    assert r.cancelled and r.eigen.cancelled and r.eigen.num_matvecs == 4
    assert not r.density.cancelled and r.density.num_steps == 8
    assert r.to_dict()["cancelled"] is True
    assert [e.phase for e in log if e.done] == ["setup", "density", "eigenpairs"]


def test_cli_shows_a_bar(capsys, tmp_path):
    """``--progress`` forces the bars (by default they show only when stderr is a terminal)."""
    from jupyter_curvature.cli import main

    assert (
        main(
            [
                "spectrum",
                "--model",
                "mlp",
                "--num-samples",
                "40",
                "--num-iters",
                "5",
                "--num-probes",
                "1",
                "--out",
                str(tmp_path),
                "--progress",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "density" in err and "5/5" in err


# ----------------------------------------------------------------------------- worker
def test_worker_turns_a_keyboard_interrupt_into_cancel_and_keeps_the_partial_result():
    A = symmetric()
    reached, go = threading.Event(), threading.Event()

    def on_event(event):
        if event.step == 4 and not event.done:
            reached.set()
            go.wait()

    worker = Worker(lambda **ctl: spectral_density(A, 30, 2, **ctl), on_event=on_event).start()
    reached.wait()

    class Interrupting:  # the first wait is interrupted, as by SIGINT in the main thread
        def __init__(self, event):
            self.event, self.fired = event, False

        def wait(self, timeout=None):
            if not self.fired:
                self.fired = True
                go.set()
                raise KeyboardInterrupt
            return self.event.wait(timeout)

        def is_set(self):
            return self.event.is_set()

        def set(self):
            self.event.set()

    worker.done = Interrupting(worker.done)
    d = worker.wait()
    assert worker.interrupted and d.cancelled and d.num_steps == 4


def test_cancel_twice_after_the_end_and_before_the_start_is_harmless():
    worker = Worker(lambda **ctl: spectral_density(symmetric(), 5, **ctl))
    worker.cancel()  # before the start: the run stops before its first product
    worker.token = CancelToken()
    d = worker.run()
    assert not d.cancelled
    worker.cancel()
    worker.cancel()
    assert worker.wait() is d


# ----------------------------------------------------------------------------- notebook panel
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def tiny_data():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(20, 6, generator=g), torch.randint(0, 3, (20,), generator=g))]


def snapshot(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
        model.training,
    )


def assert_same_model(model: nn.Module, before) -> None:
    state, flags, grads, training = before
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [p.grad for p in model.parameters()] == grads and model.training == training


def test_panel_cancel_button_stops_at_the_next_product_and_shows_the_partial_result():
    pytest.importorskip("ipywidgets")
    from jupyter_curvature.widgets.progress import ProgressPanel

    model = tiny_model()
    before = snapshot(model)
    panel = ProgressPanel("spectrum", interval=0.0)

    def on_event(event):
        panel.update(event)
        if event.phase == "density" and event.step == 3 and not event.done:
            panel.cancel_button.click()  # what a click in the browser does
            panel.cancel_button.click()  # twice: harmless

    def fn(**ctl):
        return tasks.spectrum(model, tiny_data(), num_iters=20, num_probes=2, top_k=2, **ctl)

    worker = panel.attach(Worker(fn, on_event=on_event))
    result = worker.run()
    assert result.cancelled and result.density.num_steps == 3 and result.eigen is None
    assert panel.cancel_button.disabled and "cancelled" in panel.status.value
    assert "Spectral density so far" in panel.partial_html.value
    panel.finish()
    assert "not certified" in panel.status.value
    panel.cancel()  # after the end: nothing happens
    assert_same_model(model, before)
    panel.close()


def test_closing_the_panel_while_its_worker_runs_stops_the_thread_and_keeps_the_model():
    pytest.importorskip("ipywidgets")
    from jupyter_curvature.widgets.progress import ProgressPanel

    model = tiny_model()
    before = snapshot(model)
    panel = ProgressPanel("spectrum", interval=0.0)
    reached, go = threading.Event(), threading.Event()

    def on_event(event):
        panel.update(event)
        if event.phase == "eigenpairs" and event.step == 2 and not event.done:
            reached.set()
            go.wait()

    fn = lambda **ctl: tasks.spectrum(model, tiny_data(), num_iters=4, num_probes=1, top_k=1, **ctl)  # noqa: E731

    def guarded(**ctl):
        try:
            return fn(**ctl)
        finally:
            reached.set()  # a failing run must not leave the test waiting

    worker = panel.attach(Worker(guarded, on_event=on_event)).start()
    reached.wait()
    closer = threading.Thread(target=panel.close)
    closer.start()
    go.set()  # the worker leaves its product; close() has already cancelled it
    closer.join()
    assert panel.closed and worker.done.is_set() and not worker._thread.is_alive()
    assert worker.error is None and worker.result.cancelled
    panel.finish()  # the magic's last step on a closed panel: no exception
    assert_same_model(model, before)


def test_a_second_magic_while_one_runs_is_refused_clearly():
    pytest.importorskip("IPython")
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    from jupyter_curvature.magics import CurvMagics

    c = Config()
    c.HistoryAccessor.enabled = False
    ip = InteractiveShell.instance(config=c)
    ip.run_line_magic("load_ext", "jupyter_curvature")
    magics = next(x for x in ip.configurables if isinstance(x, CurvMagics))
    gate = threading.Event()
    busy = Worker(lambda **ctl: gate.wait()).start()
    magics._running = ("curv_spectrum", busy)
    try:
        with pytest.raises(UsageError, match="%curv_spectrum is still running; press its Cancel"):
            ip.run_line_magic("curv_stats", "--model mlp --data digits --include norms")
    finally:
        gate.set()
        busy.wait()
        magics._running = None
    ip.run_line_magic("unload_ext", "jupyter_curvature")
