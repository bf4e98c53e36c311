"""The trainer's parts: the option objects (checks, the deprecated flat keywords), the
atomic step (an exception mid-step leaves everything exactly as before), the history's
save/load round trip and its views, and the evaluation callback."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from jupyter_curvature.training import (
    AtomicStep,
    CheckpointOptions,
    DataOptions,
    DistributedOptions,
    EvaluationCallback,
    History,
    InterruptGuard,
    LambdaCallback,
    Trainer,
)


def make_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return TensorDataset(x, y)


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 3)
    ).double()


def state_of(trainer):
    """Exact copies of everything a step may change."""
    return {
        "model": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "history": copy.deepcopy(trainer.history.to_dict()),
        "step": trainer.step,
        "rng": torch.get_rng_state().clone(),
        "grads": [p.grad for p in trainer.model.parameters()],
    }


def assert_same_tree(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, where


# ---- option objects ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, error, words",
    [
        (
            lambda: DataOptions(batch_size=0),
            ValueError,
            "DataOptions.batch_size must be a positive",
        ),
        (lambda: DataOptions(batch_size=True), ValueError, "DataOptions.batch_size"),
        (lambda: DataOptions(shuffle="yes"), TypeError, "DataOptions.shuffle must be True or"),
        (lambda: DataOptions(num_workers=-1), ValueError, "DataOptions.num_workers must be a non"),
        (lambda: CheckpointOptions(every=0), ValueError, "CheckpointOptions.every must be a pos"),
        (lambda: CheckpointOptions(steps=1.5), ValueError, "CheckpointOptions.steps must be a po"),
        (lambda: CheckpointOptions(dir=3), TypeError, "CheckpointOptions.dir must be a folder"),
        (lambda: DistributedOptions(enabled=1), TypeError, "DistributedOptions.enabled must be"),
        (lambda: DistributedOptions(ddp_kwargs=[]), TypeError, "DistributedOptions.ddp_kwargs"),
    ],
)
def test_option_objects_name_the_field_and_the_remedy(make, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(")):
        make()


def test_option_objects_are_frozen_and_normalised(tmp_path):
    opts = CheckpointOptions(dir=str(tmp_path), every=2)
    assert opts.dir == tmp_path and opts.steps is None
    with pytest.raises(AttributeError):
        opts.every = 3
    kw = {"find_unused_parameters": True}
    d = DistributedOptions(ddp_kwargs=kw)
    kw["broadcast_buffers"] = False  # a copy is kept
    assert d.ddp_kwargs == {"find_unused_parameters": True}
    assert DistributedOptions().ddp_kwargs == {} and DistributedOptions().enabled is None
    assert DataOptions() == DataOptions(batch_size=128, shuffle=True, num_workers=0,
                                        drop_last=False)  # fmt: skip


def run(flat: bool, folder):
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    common = dict(epochs=2, seed=4, schedule="linear")
    if flat:
        extra = dict(batch_size=20, shuffle=True, drop_last=True, num_workers=0,
                     checkpoint_dir=folder, checkpoint_every=1, checkpoint_steps=3,
                     distributed=False)  # fmt: skip
    else:
        extra = dict(
            data_options=DataOptions(batch_size=20, shuffle=True, drop_last=True),
            checkpoint=CheckpointOptions(dir=folder, every=1, steps=3),
            distributed=DistributedOptions(enabled=False),
        )
    trainer = Trainer(model, opt, make_data(), make_data(30, seed=1), **common, **extra)
    trainer.fit()
    return trainer


def test_deprecated_flat_keywords_warn_and_give_the_same_run_bit_for_bit(tmp_path):
    with pytest.warns(FutureWarning) as caught:
        old = run(True, tmp_path / "old")
    messages = [str(w.message) for w in caught]
    for flat, new in [("batch_size", "data_options=DataOptions(batch_size=...)"),
                      ("drop_last", "data_options=DataOptions(drop_last=...)"),
                      ("checkpoint_dir", "checkpoint=CheckpointOptions(dir=...)"),
                      ("checkpoint_steps", "checkpoint=CheckpointOptions(steps=...)"),
                      ("distributed", "distributed=DistributedOptions(enabled=...)")]:  # fmt: skip
        assert any(f"Trainer({flat}=...) is deprecated" in m and new in m for m in messages), flat
    assert all(w.filename == __file__ for w in caught)  # the warning points at the caller
    new = run(False, tmp_path / "new")
    assert old.step == new.step == 8  # 96 samples, batches of 20 without the last: 4 per epoch
    assert_same_tree(state_of(old)["model"], state_of(new)["model"])
    assert_same_tree(state_of(old)["optimizer"], state_of(new)["optimizer"])
    h_old, h_new = old.history.to_dict(), new.history.to_dict()
    for h in (h_old, h_new):
        for e in h["epochs"]:
            e.pop("seconds")
        h["events"] = [{k: v for k, v in e.items() if k != "path"} for e in h["events"]]
    assert_same_tree(h_old, h_new, "history")
    names = sorted(p.name for p in (tmp_path / "new").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "old").iterdir())
    assert names == ["checkpoint-00001.pt", "checkpoint-00002.pt", "checkpoint-last.pt"]


def test_a_group_given_both_ways_is_an_error(tmp_path):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"both data_options=DataOptions\(\.\.\.\) and the flat.*"
                                        r"batch_size"):  # fmt: skip
        with pytest.warns(FutureWarning):
            Trainer(model, opt, make_data(), data_options=DataOptions(), batch_size=4)
    with pytest.raises(TypeError, match="both checkpoint=CheckpointOptions"):
        with pytest.warns(FutureWarning):
            Trainer(model, opt, make_data(), checkpoint=CheckpointOptions(dir=tmp_path),
                    checkpoint_every=2)  # fmt: skip
    with pytest.raises(TypeError, match="unexpected keyword argument 'batchsize'"):
        Trainer(model, opt, make_data(), batchsize=4)
    with pytest.raises(TypeError, match=r"data_options=\.\.\.\) must be a DataOptions"):
        Trainer(model, opt, make_data(), data_options={"batch_size": 4})


# ---- the atomic step ----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["forward", "backward", "fetch"])
def test_an_exception_mid_step_leaves_model_optimizer_and_history_exactly_as_before(where):
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-3)
    data = make_data()
    calls = {"n": 0}
    saved = {}

    def step_fn(module, x, y):
        calls["n"] += 1
        out = module(x)  # BatchNorm statistics and dropout's RNG draws change first
        torch.rand(3)
        if where == "forward" and calls["n"] == 4:
            raise RuntimeError("boom in the forward pass")
        loss = nn.functional.cross_entropy(out, y)
        if where == "backward" and calls["n"] == 4:
            loss.register_hook(lambda g: (_ for _ in ()).throw(RuntimeError("boom in backward")))
        return loss, out

    class Failing(Dataset):  # not a TensorDataset: read through a DataLoader
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            if where == "fetch" and calls["n"] == 3:
                torch.rand(5)  # an augmentation's draw, then the failure
                raise RuntimeError("boom while reading")
            return data[i]

    def keep(trainer, logs):
        if logs["step"] == 3:
            saved.update(state_of(trainer))

    trainer = Trainer(
        model, opt, Failing(), steps=6, step_fn=step_fn, seed=1,
        data_options=DataOptions(batch_size=16, num_workers=0),
        callbacks=[LambdaCallback(on_step_end=keep)],
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit()
    after = state_of(trainer)
    assert trainer.step == 3 and trainer.status == "failed"
    for key in ("model", "optimizer", "history", "step", "rng"):
        assert_same_tree(saved[key], after[key], key)
    assert all(g is None for g in after["grads"])  # the failed step's gradients are dropped


def test_atomic_step_alone_restores_buffers_and_rng_and_keeps_a_committed_step():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 5, dtype=torch.float64)
    buffers = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    with pytest.raises(KeyboardInterrupt):
        with AtomicStep(model, [opt, None], InterruptGuard()):
            model(x).sum().backward()
            raise KeyboardInterrupt
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), buffers))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    # after commit() the step stands, even if something fails later
    guard = InterruptGuard()
    with pytest.raises(ValueError):
        with AtomicStep(model, [opt], guard) as step:
            model(x).sum().backward()
            with step.commit():
                assert guard.critical
                opt.step()
            raise ValueError("after the update")
    assert not guard.critical
    assert not all(torch.equal(a, b) for a, b in zip(model.buffers(), buffers))


def test_interrupt_guard_holds_a_sigint_back_during_the_update():
    guard = InterruptGuard()
    with guard.deferred():
        guard._handler(2, None)  # what SIGINT calls
    assert guard.pending
    with pytest.raises(KeyboardInterrupt):
        guard.raise_pending()
    assert not guard.pending
    with pytest.raises(KeyboardInterrupt):
        guard._handler(2, None)  # outside an update: at once


# ---- the history ----------------------------------------------------------------------------------


def trained_history(tmp_path=None):
    model = make_model()
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), make_data(), make_data(30, 1),
        epochs=2, data_options=DataOptions(batch_size=32),
        callbacks=[EvaluationCallback(every=2)],
    )  # fmt: skip
    trainer.fit()
    return trainer


def test_history_save_load_round_trip_through_the_json_policy(tmp_path):
    h = trained_history().history
    h.curvature.append({"step": 3, "seconds": 0.5, "top_eigenvalues": [2.0, 1.0],
                        "lambda_min": float("-inf")})  # fmt: skip
    h.steps["accuracy"][1] = float("nan")
    path = h.save(tmp_path / "history")
    assert path.name == "history.json"
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON: null instead
    raw = json.loads(text)
    assert raw["steps"]["accuracy"][1] is None and raw["curvature"][0]["lambda_min"] is None
    back = History.load(path)
    assert_same_tree(back.to_dict()["steps"], h.to_dict()["steps"])  # NaN comes back as NaN
    assert_same_tree(back.epochs, h.epochs)
    assert back.events == h.events and len(back) == len(h) == 6
    assert back.curvature[0]["lambda_min"] is None  # not a number column: stays "unknown"


def test_history_views_match_the_records():
    trainer = trained_history()
    h = trainer.history
    assert h.steps_done == 6 and h.loss == h.steps["loss"] and h.lr == h.steps["lr"]
    # evaluations: every 2 steps by the callback, and at each epoch end (steps 3 and 6)
    assert h.eval_steps == [2, 3, 4, 6]
    evals = {e["step"]: e for e in h.events if e["event"] == "evaluation"}
    epochs = {e["step"]: e for e in h.epochs}
    for s, loss, acc in zip(h.eval_steps, h.test_loss, h.test_accuracy):
        rec = evals.get(s) or epochs[s]
        assert loss == rec["test_loss"] and acc == rec["test_accuracy"]
    # the last evaluation is the model's own test loss, computed here independently
    model, test = trainer.model.eval(), make_data(30, 1)
    with torch.no_grad():
        out = model(test.tensors[0])
    assert math.isclose(h.test_loss[-1], float(nn.functional.cross_entropy(out, test.tensors[1])),
                        rel_tol=1e-12)  # fmt: skip
    lines = h.event_lines()
    assert (2, f"test loss {evals[2]['test_loss']:.4g}, "
               f"accuracy {evals[2]['test_accuracy']:.4f}") in lines  # fmt: skip


def test_evaluation_callback_does_not_change_the_training():
    first = make_model()
    plain = Trainer(
        first, torch.optim.SGD(first.parameters(), lr=0.1), make_data(), epochs=2,
        data_options=DataOptions(batch_size=32),
    )  # fmt: skip
    model = make_model()
    with_eval = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), make_data(), epochs=2,
        data_options=DataOptions(batch_size=32),
        callbacks=[EvaluationCallback(make_data(30, 1), every=1)],
    )  # fmt: skip
    torch.manual_seed(5)  # dropout draws on the global RNG
    plain.fit()
    torch.manual_seed(5)
    with_eval.fit()
    assert_same_tree(state_of(plain)["model"], state_of(with_eval)["model"])
    assert len([e for e in with_eval.history.events if e["event"] == "evaluation"]) == 6


def test_history_plot_draws_the_epoch_records():
    import matplotlib

    matplotlib.use("Agg")
    h = trained_history().history
    axes = h.plot()
    ys = [line.get_ydata() for line in axes[0].lines]
    assert [list(y) for y in ys] == [h.metric("train_loss"), h.metric("test_loss")]
    steps_only = History.from_dict({"steps": h.to_dict()["steps"]})
    axes = steps_only.plot()
    assert list(axes[0].lines[0].get_xdata()) == [1, 2, 3, 4, 5, 6]
    assert list(axes[0].lines[0].get_ydata()) == h.loss
