"""The trainer: plans, schedules, history, atomic checkpoints, exact resume, interruption,
callbacks and live curvature."""

from __future__ import annotations

import os
import signal
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from jupyter_curvature.data import get_dataset
from jupyter_curvature.models import MLP, SmallCNN
from jupyter_curvature.optim import KFAC, SWATS, LinearSchedule
from jupyter_curvature.training import (
    Callback,
    CheckpointMismatchError,
    CheckpointOptions,
    CurvatureCallback,
    DataOptions,
    History,
    LambdaCallback,
    Trainer,
    load_checkpoint,
    load_model_weights,
    named_trainer,
    train,
)


class Net(nn.Module):
    """Small CNN with BatchNorm and dropout: both draw on or change state every step."""

    def __init__(self) -> None:
        super().__init__()
        self.body = SmallCNN(width=4)
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        return self.body.classifier(self.drop(self.body.features(x)))


def digits(n=240, augment=True):
    train_set = get_dataset("digits", num_samples=n, augment=augment)
    test_set = get_dataset("digits", split="test", num_samples=100)
    return train_set, test_set


OPTS = {
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4),
    "kfac": lambda m: KFAC(m, lr=0.05, factor_interval=2, inverse_interval=3),
    "swats": lambda m: SWATS(m.parameters(), lr=1e-2, switch_tol=1e-3),
}


def make(opt="sgd", seed=0, *, checkpoint_dir=None, checkpoint_every=None, **kw):
    torch.manual_seed(seed)
    model = Net()
    train_set, test_set = digits()
    kw.setdefault("epochs", 3)
    kw.setdefault("data_options", DataOptions(batch_size=64))
    kw["checkpoint"] = CheckpointOptions(dir=checkpoint_dir, every=checkpoint_every)
    trainer = Trainer(model, OPTS[opt](model), train_set, test_set, **kw)
    return trainer


def weights(model):
    return [t.detach().clone() for t in model.state_dict().values()]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, logs):
        if logs["step"] == self.step:
            trainer.stop()


# ---- plans, schedules, history ------------------------------------------------------------


def test_epochs_plan_history_and_linear_schedule():
    trainer = make(schedule="linear", epochs=4)
    history = trainer.fit()
    assert trainer.status == "completed" and not trainer.interrupted
    assert trainer.steps_per_epoch == 4 and trainer.step == 16 and len(history) == 16
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3, 4]
    assert all(0 <= e["test_accuracy"] <= 1 for e in history.epochs)
    sched = LinearSchedule(4)
    expected = [0.05 * sched(e) for e in range(4)]
    assert history.metric("lr")[::4] == pytest.approx(expected, rel=1e-12)
    # the running train loss of an epoch is the sample-weighted mean of its step losses
    first = history.metric("loss")[:4]
    sizes = [64, 64, 64, 48]
    assert history.epochs[0]["train_loss"] == pytest.approx(
        sum(l * b for l, b in zip(first, sizes)) / 240, rel=1e-12
    )
    assert "epoch" in repr(history)


def test_steps_plan_with_a_torch_scheduler_per_step():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    train_set, test_set = digits()
    trainer = Trainer(
        model,
        opt,
        train_set,
        test_set,
        steps=10,
        data_options=DataOptions(batch_size=64),
        schedule=sched,
    )
    used = []  # the rate each step really used, read as the optimiser starts its step
    opt.register_step_pre_hook(lambda o, args, kwargs: used.append(o.param_groups[0]["lr"]))
    assert trainer.schedule_interval == "step"
    history = trainer.fit()
    assert trainer.step == 10 and len(history.epochs) == 2  # 4 batches per epoch
    # step s (1-based) runs after s - 1 scheduler steps: 0.1 * 0.5 ** ((s - 1) // 3)
    assert used == pytest.approx([0.1 * 0.5 ** ((s - 1) // 3) for s in range(1, 11)])
    assert history.metric("lr") == used
    assert [e["lr"] for e in history.epochs] == [used[3], used[7]]  # each epoch's last step
    assert any(e["event"] == "evaluation" for e in history.events)  # the final partial epoch


def test_reduce_on_plateau_gets_the_test_loss():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    original = sched.step
    sched.step = lambda metric: (seen.append(metric), original(metric))
    train_set, test_set = digits()
    history = Trainer(
        model,
        opt,
        train_set,
        test_set,
        epochs=2,
        data_options=DataOptions(batch_size=64),
        schedule=sched,
    ).fit()
    assert seen == [e["test_loss"] for e in history.epochs]


def test_dataloader_input_is_used_with_its_settings():
    train_set, _ = digits(augment=False)
    loader = DataLoader(train_set, batch_size=40, shuffle=True)
    torch.manual_seed(0)
    model = Net()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, epochs=1)
    assert trainer.steps_per_epoch == 6
    trainer.fit()
    assert trainer.step == 6


def test_history_save_load_round_trip(tmp_path):
    trainer = make(epochs=1)
    history = trainer.fit()
    path = history.save(tmp_path / "h.json")
    again = History.load(path)
    assert again.to_dict() == history.to_dict()


# ---- checkpoints and exact resume ------------------------------------------------------------


@pytest.mark.parametrize("opt", list(OPTS))
@pytest.mark.parametrize("stop_at", [6, 8])  # inside an epoch, and at an epoch boundary
def test_stop_and_resume_is_bitwise_exact(tmp_path, opt, stop_at):
    full = make(opt, schedule="linear")
    full.fit()
    first = make(opt, schedule="linear", checkpoint_dir=tmp_path, callbacks=[StopAt(stop_at)])
    first.fit()
    assert first.interrupted and first.status == "stopped" and first.step == stop_at
    # a fresh process: new model, optimiser and trainer, different global RNG state
    resumed = make(opt, seed=123, schedule="linear", checkpoint_dir=tmp_path)
    torch.manual_seed(999)
    resumed.fit(resume=True)
    assert resumed.step == full.step == 12
    assert same(weights(resumed.model), weights(full.model))
    assert resumed.history.metric("loss") == full.history.metric("loss")
    assert resumed.history.epochs == [
        {**e, "seconds": r["seconds"]} for e, r in zip(full.history.epochs, resumed.history.epochs)
    ]
    if opt == "swats":
        assert resumed.optimizer.switch_info() == full.optimizer.switch_info()


def test_checkpoints_are_atomic_and_weights_only(tmp_path, monkeypatch):
    trainer = make(epochs=2, checkpoint_dir=tmp_path, checkpoint_every=1)
    trainer.fit()
    last = tmp_path / "checkpoint-last.pt"
    assert (tmp_path / "checkpoint-00001.pt").is_file() and (
        tmp_path / "checkpoint-00002.pt"
    ).is_file()
    state = torch.load(last, weights_only=True)  # no arbitrary unpickling needed
    assert state["trainer"]["step"] == 8
    before = last.read_bytes()

    def torn_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    assert last.read_bytes() == before  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-00001.pt",
        "checkpoint-00002.pt",
        "checkpoint-last.pt",
    ]  # and no temporary file is left behind


def test_checkpoint_of_another_architecture_names_the_keys(tmp_path):
    trainer = make(epochs=1, checkpoint_dir=tmp_path)
    trainer.fit()
    other = MLP()
    with pytest.raises(
        CheckpointMismatchError, match="missing keys: 1.weight.*unexpected keys: body"
    ):
        load_model_weights(other, tmp_path / "checkpoint-last.pt")
    wider = Net()
    wider.body = SmallCNN(width=6)
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches: body.features.0.weight \(checkpoint \[4, 1, 3, 3\], model \[6, 1, 3, 3\]\)"):  # fmt: skip
        load_model_weights(wider, tmp_path / "checkpoint-last.pt")
    t2 = Trainer(wider, torch.optim.SGD(wider.parameters(), lr=0.1), digits()[0], epochs=1)
    with pytest.raises(CheckpointMismatchError):
        t2.load_checkpoint(tmp_path / "checkpoint-last.pt")
    good = Net()
    load_model_weights(good, tmp_path / "checkpoint-last.pt")
    assert same(weights(good), weights(trainer.model))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.pt")


# ---- interruption ------------------------------------------------------------------------------


class InterruptForward(nn.Module):
    """Raises KeyboardInterrupt inside the forward pass of training call ``at``."""

    def __init__(self, net, at):
        super().__init__()
        self.net, self.at, self.calls = net, at, 0

    def forward(self, x):
        out = self.net.body.features(x)  # BatchNorm statistics change before the interrupt
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                raise KeyboardInterrupt
        return self.net.body.classifier(self.net.drop(out))


def test_interrupt_in_the_forward_pass_leaves_the_last_finished_step(tmp_path):
    reference = make()
    reference.callbacks = [StopAt(5)]
    reference.fit()
    torch.manual_seed(0)
    net = Net()
    wrapped = InterruptForward(net, at=6)
    train_set, test_set = digits()
    opt = OPTS["sgd"](wrapped)
    trainer = Trainer(
        wrapped,
        opt,
        train_set,
        test_set,
        epochs=3,
        data_options=DataOptions(batch_size=64),
        checkpoint=CheckpointOptions(dir=tmp_path),
    )
    trainer.fit()
    assert trainer.interrupted and trainer.status == "interrupted" and trainer.step == 5
    assert len(trainer.history) == 5 and trainer.history.events[-2]["event"] == "interrupted"
    assert same(weights(net), weights(reference.model))  # weights and BatchNorm buffers
    assert same(
        [v for s in opt.state.values() for v in s.values()],
        [v for s in reference.optimizer.state.values() for v in s.values()],
    )
    # continuing gives the uninterrupted run, bitwise
    trainer.fit()
    full = make()
    full.fit()
    assert trainer.step == 12 and same(weights(net), weights(full.model))


def test_sigint_during_the_update_waits_for_the_step(tmp_path):
    reference = make()
    reference.callbacks = [StopAt(3)]
    reference.fit()
    trainer = make()
    real_step = trainer.optimizer.step
    calls = {"n": 0}

    def step_with_signal(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the update
        return real_step(*a, **k)

    trainer.optimizer.step = step_with_signal
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when run as a background job
    trainer.fit()
    assert trainer.interrupted and trainer.step == 3 and len(trainer.history) == 3
    assert same(weights(trainer.model), weights(reference.model))
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler put back


def test_interrupt_in_a_callback_keeps_the_finished_step():
    def boom(trainer, logs):
        if logs["step"] == 4:
            raise KeyboardInterrupt

    trainer = make(callbacks=[LambdaCallback(on_step_end=boom)])
    trainer.fit()
    assert trainer.step == 4 and trainer.interrupted and len(trainer.history) == 4


def test_nonfinite_loss_stops_with_the_model_at_the_last_step():
    trainer = make()
    trainer.callbacks = [StopAt(2)]
    trainer.fit()
    good = weights(trainer.model)
    trainer.loss_fn = lambda out, y: out.sum() * float("nan")
    with pytest.raises(FloatingPointError, match="step 3.*left at step 2"):
        trainer.fit()
    assert trainer.status == "failed" and same(weights(trainer.model), good)


# ---- callbacks ------------------------------------------------------------------------------------


def test_hook_order_and_events():
    seen = []

    class Recorder(Callback):
        def on_train_begin(self, trainer):
            seen.append("begin")

        def on_epoch_begin(self, trainer, epoch):
            seen.append(f"epoch{epoch}")

        def on_step_end(self, trainer, logs):
            seen.append(logs["step"])

        def on_epoch_end(self, trainer, logs):
            seen.append(f"end{logs['epoch']}")

        def on_event(self, trainer, event):
            seen.append(event["event"])

        def on_train_end(self, trainer, logs):
            seen.append(logs["status"])

    trainer = make("swats", epochs=2, callbacks=[Recorder()])
    trainer.optimizer.param_groups[0]["switch_tol"] = 1e9  # switch as soon as allowed (k = 2)
    trainer.fit()
    # the switch is announced as soon as step 2's update is done, before its on_step_end
    assert seen[:5] == ["begin", "epoch1", 1, "swats_switch", 2]
    assert seen[-1] == "completed" and "end1" in seen and "end2" in seen
    event = next(e for e in trainer.history.events if e["event"] == "swats_switch")
    assert event["step"] == 2 and event["sgd_lr"] > 0


def test_bad_callbacks_and_input():
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = digits()[0]
    with pytest.raises(TypeError, match="not a callback"):
        Trainer(model, opt, data, callbacks=[object()])
    with pytest.raises(TypeError, match="unknown hooks"):
        LambdaCallback(on_step=print)
    with pytest.raises(ValueError, match="epochs or steps"):
        Trainer(model, opt, data, epochs=1, steps=3)
    with pytest.raises(ValueError, match="epochs"):
        Trainer(model, opt, data, epochs=0)
    with pytest.raises(ValueError, match="learning rate must be positive"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), data)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        Trainer(model, "sgd", data)
    with pytest.raises(ValueError, match="schedule"):
        Trainer(model, opt, data, schedule="cosine")
    with pytest.raises(FileNotFoundError):
        Trainer(model, opt, data).fit(resume="nowhere.pt")


# ---- live curvature ---------------------------------------------------------------------------------


def meddling_compute(model, loss_fn, batch, **settings):
    """A compute function that touches everything it could break."""
    torch.rand(5)  # global RNG
    model.train()
    model(batch[0])  # BatchNorm running statistics; K-FAC hooks
    loss_fn(model(batch[0]), batch[1]).backward()
    return {
        "ritz_values": torch.tensor([[3.0, 1.0, -0.5]]),
        "weights": torch.tensor([[0.2, 0.5, 0.3]]),
    }


@pytest.mark.parametrize("opt", ["sgd", "kfac"])
def test_curvature_callback_does_not_change_training(opt):
    plain = make(opt)
    plain.fit()
    batches = []

    def compute(model, loss_fn, batch, **settings):
        batches.append(batch)
        was_training = model.training
        out = meddling_compute(model, loss_fn, batch, **settings)
        model.train(was_training)
        return out

    cb = CurvatureCallback(
        every=5, max_overhead=None, spectrum_samples=50, compute=compute, at_start=True
    )
    seen = []
    watched = make(
        opt, callbacks=[cb, LambdaCallback(on_curvature=lambda t, r: seen.append(r["step"]))]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # K-FAC must not complain about its Fisher pass
        watched.fit()
    assert same(weights(watched.model), weights(plain.model))
    assert [r["step"] for r in watched.history.curvature] == [0, 5, 10] == seen
    assert all(torch.equal(b[0], batches[0][0]) for b in batches)  # a fixed subsample
    record = watched.history.curvature[1]
    assert record["lambda_max"] == 3.0 and record["lambda_min"] == -0.5
    assert record["top_eigenvalues"] == [3.0, 1.0, -0.5] and record["spectrum_samples"] == 50
    assert record["lr"] == watched.history.metric("lr")[4]


def test_curvature_budget_skips_when_over():
    cb = CurvatureCallback(every=1, max_overhead=0.1, compute=meddling_compute)

    class Fake:
        train_seconds = 10.0

    cb.gradient_cost = 0.01  # before any spectrum: 2.5 * 20 iterations * 1 probe * 0.01 s
    assert cb.estimated_cost() == pytest.approx(0.5)
    cb.computed, cb.spent, cb.last_cost = 1, 0.5, 0.4  # 0.9 <= 0.1 * 10: due and within budget
    ran = []
    cb.run = lambda trainer: ran.append(True)
    cb.on_step_end(Fake(), {"step": 3})
    assert ran == [True]
    cb.spent = 0.7  # 0.7 + 0.4 > 1.0: skipped
    cb.on_step_end(Fake(), {"step": 4})
    assert ran == [True] and cb.skipped == 1


def test_default_curvature_is_the_hessian_spectrum():
    # SLQ with as many steps as parameters reproduces the dense Hessian's extreme eigenvalues
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2), nn.Tanh(), nn.Linear(2, 3)).double()
    n = sum(p.numel() for p in model.parameters())
    x, y = get_dataset("digits", dtype=torch.float64, num_samples=30).tensors
    y = y % 3
    data = TensorDataset(x, y)
    cb = CurvatureCallback(
        every=100, num_iters=n, spectrum_samples=30, max_overhead=None, at_start=True
    )
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), data, steps=1, callbacks=[cb]
    )
    trainer.fit()
    record = trainer.history.curvature[0]
    assert record["step"] == 0
    # dense reference on the same fixed batch, with the weights before training
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Flatten(), nn.Linear(64, 2), nn.Tanh(), nn.Linear(2, 3)).double()
    names = [k for k, _ in ref.named_parameters()]
    shapes = [p.shape for p in ref.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
    bx, by = cb.batch

    def loss(theta):
        parts, i = {}, 0
        for name, shape in zip(names, shapes):
            k = shape.numel()
            parts[name] = theta[i : i + k].reshape(shape)
            i += k
        return nn.functional.cross_entropy(torch.func.functional_call(ref, parts, (bx,)), by)

    eig = torch.linalg.eigvalsh(torch.func.hessian(loss)(flat0))
    scale = float(eig.abs().max())
    assert record["lambda_max"] == pytest.approx(float(eig[-1]), abs=1e-8 * scale)
    assert record["lambda_min"] == pytest.approx(float(eig[0]), abs=1e-8 * scale)


def test_curvature_callback_bad_input():
    with pytest.raises(ValueError, match="every"):
        CurvatureCallback(every=0)
    with pytest.raises(ValueError, match="curvature"):
        CurvatureCallback(curvature="fisher")
    with pytest.raises(ValueError, match="max_overhead"):
        CurvatureCallback(max_overhead=0)


# ---- named_trainer(): a trainer from names (the train task runs it) ---------------------------


def test_named_trainer(tmp_path):
    def run(**kw):
        trainer = named_trainer("mlp", "digits", optimizer="kfac", epochs=2, num_samples=256,
                                checkpoint_dir=tmp_path, seed=1)  # fmt: skip
        trainer.fit(**kw)
        return trainer

    trainer = run()
    assert trainer.status == "completed" and trainer.step == 4
    state = load_checkpoint(tmp_path / "checkpoint-last.pt")
    assert state["model_name"] == "mlp" and state["optimizer_class"] == "KFAC"
    again = run(resume=True)
    assert again.step == 4 and same(weights(again.model), weights(trainer.model))
    with pytest.raises(ValueError, match="unknown model"):
        named_trainer("resnet7", "digits")
    with pytest.raises(ValueError, match="unknown dataset"):
        named_trainer("mlp", "svhn")


def test_deprecated_train_warns_and_trains_as_before(tmp_path):
    """``training.train`` (the old one-call form, old keywords) still fits and saves the history."""
    torch.manual_seed(0)  # the model's initial weights
    with pytest.warns(FutureWarning, match="jupyter_curvature.train"):
        trainer = train("mlp", "digits", optimizer="kfac", epochs=2, subset=256,
                        out_dir=tmp_path, seed=1)  # fmt: skip
    assert History.load(tmp_path / "history.json").to_dict() == trainer.history.to_dict()
    torch.manual_seed(0)
    fresh = named_trainer("mlp", "digits", optimizer="kfac", epochs=2, num_samples=256, seed=1)
    fresh.fit()
    assert same(weights(fresh.model), weights(trainer.model))


def test_train_function_on_mnist_files_for_the_cifar_zoo(tmp_path):
    from test_data import write_mnist

    write_mnist(tmp_path, n_train=8, n_test=4)
    trainer = named_trainer("resnet20", "mnist", data_root=tmp_path, data_kwargs={"rgb32": True},
                            steps=2, batch_size=4, optimizer="sgd")  # fmt: skip
    trainer.fit()
    assert trainer.step == 2 and trainer.model.conv1.in_channels == 3
    trainer = named_trainer("small_cnn", "mnist", data_root=tmp_path, steps=1, batch_size=4,
                            schedule=None)  # fmt: skip
    trainer.fit()
    assert trainer.model.classifier[1].in_features == 16 * 7 * 7


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_logged_lr_is_the_lr_each_step_used(interval):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    data = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    used = []
    opt.register_step_pre_hook(lambda o, args, kwargs: used.append(o.param_groups[0]["lr"]))
    records = []
    trainer = Trainer(
        model, opt, data, epochs=6, schedule="linear", schedule_interval=interval,
        data_options=DataOptions(batch_size=10),
        callbacks=[LambdaCallback(on_step_end=lambda t, logs: records.append(t.used_lr))],
    )  # fmt: skip
    history = trainer.fit()
    assert history.metric("lr") == used == records and len(used) == 24
    assert [e["lr"] for e in history.epochs] == used[3::4]
    # the schedule itself: constant to 50%, linear to 1% at 90% (per step or per epoch)
    total, at = (24, range(24)) if interval == "step" else (6, [k // 4 for k in range(24)])

    def f(t):
        return 1.0 if t <= 0.5 else (1 - 0.99 * (t - 0.5) / 0.4 if t <= 0.9 else 0.01)

    assert used == pytest.approx([0.1 * f(k / total) for k in at], rel=1e-12)


def _all_data_reference(model, x, y, **loss_kwargs):
    """The mean loss of all data as one batch and the accuracy over counted labels, float64."""
    with torch.no_grad():
        out = model(x).double()
    loss = float(nn.functional.cross_entropy(out, y, reduction="mean", **loss_kwargs))
    keep = y != loss_kwargs.get("ignore_index", -100)
    hits = [int(out[i].argmax()) == int(y[i]) for i in range(len(y)) if keep[i]]
    return loss, sum(hits) / len(hits)


@pytest.mark.parametrize(
    "loss_kwargs, ignored",
    [
        ({"reduction": "sum"}, 0),
        ({}, 15),  # the first batch of 20 has 5 counted labels
        ({"reduction": "sum"}, 15),
        ({"weight": torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)}, 7),
    ],
    ids=["sum", "ignore_index", "sum-ignore_index", "class-weights"],
)
def test_trainer_losses_are_the_mean_over_all_data(loss_kwargs, ignored):
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    x, y = torch.randn(50, 4, dtype=torch.float64), torch.randint(0, 3, (50,))
    y[:ignored] = -100
    data = TensorDataset(x, y)
    loss_fn = nn.CrossEntropyLoss(**loss_kwargs)
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), data, data, loss_fn=loss_fn,
        epochs=1, data_options=DataOptions(batch_size=20, shuffle=False),
    )  # fmt: skip
    ref_kwargs = {k: v for k, v in loss_kwargs.items() if k != "reduction"}
    loss, accuracy = _all_data_reference(model, x, y, **ref_kwargs)
    ev = trainer.evaluate()
    assert ev["loss"] == pytest.approx(loss, rel=1e-12, abs=0)
    assert ev["accuracy"] == pytest.approx(accuracy, rel=1e-12)

    # train_loss: the batches' losses (before each step) as one mean, weighted like the data
    before = []
    hook = model.register_forward_hook(
        lambda m, args, out: before.append((args[0].clone(), out.detach().clone()))
        if m.training else None
    )  # fmt: skip
    history = trainer.fit()
    hook.remove()
    num, den = 0.0, 0.0
    for i, (xb, out) in enumerate(before):
        yb = y[20 * i : 20 * i + len(xb)]
        w = ref_kwargs.get("weight", torch.ones(3, dtype=torch.float64))
        for j in range(len(yb)):
            if yb[j] != -100:
                lj = -float(torch.log_softmax(out[j], 0)[yb[j]])
                num, den = num + float(w[yb[j]]) * lj, den + float(w[yb[j]])
    record = history.epochs[0]
    assert record["train_loss"] == pytest.approx(num / den, rel=1e-12)
    loss, accuracy = _all_data_reference(model, x, y, **ref_kwargs)
    assert record["test_loss"] == pytest.approx(loss, rel=1e-12)
    assert record["test_accuracy"] == pytest.approx(accuracy, rel=1e-12)


class _StopAt(Callback):
    def __init__(self, step):
        self.at = step

    def on_step_end(self, trainer, logs):
        if logs["step"] == self.at:
            trainer.stop()


def _linear_trainer(folder, *, seed=0, epochs=4, schedule="linear", kfac=False, stop=None):
    from jupyter_curvature.optim import KFACPreconditioner

    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    data = TensorDataset(
        torch.randn(40, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64),
        torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(2)),
    )
    return Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), data, epochs=epochs, seed=seed,
        schedule=schedule, data_options=DataOptions(batch_size=10),
        checkpoint=CheckpointOptions(dir=folder),
        preconditioner=KFACPreconditioner(model) if kfac else None,
        callbacks=[_StopAt(stop)] if stop else [],
    )  # fmt: skip


def test_resume_refuses_another_seed_and_leaves_the_trainer_untouched(tmp_path):
    _linear_trainer(tmp_path, stop=6).fit()
    other = _linear_trainer(tmp_path, seed=5)
    before = [p.detach().clone() for p in other.model.parameters()]
    with pytest.raises(ValueError, match=r"seed=0, this trainer seed=5.*seed=0"):
        other.fit(resume=True)
    assert other.step == 0 and not other.history.steps["step"]
    assert all(torch.equal(a, b) for a, b in zip(before, other.model.parameters()))
    again = _linear_trainer(tmp_path, seed=0)
    again.fit(resume=True)  # the right seed resumes to the uninterrupted run
    full = _linear_trainer(None)
    full.fit()
    assert torch.equal(again.model.weight, full.model.weight)


def test_resume_into_another_plan(tmp_path):
    _linear_trainer(tmp_path, stop=6).fit()
    with pytest.raises(ValueError, match=r"planned 16 steps \(4 epochs\).*32 steps \(8 epochs\)"):
        _linear_trainer(tmp_path, epochs=8).fit(resume=True)
    # a schedule that does not depend on the plan: extending is legitimate, and said
    (tmp_path / "c").mkdir()
    _linear_trainer(tmp_path / "c", schedule="constant", stop=6).fit()
    longer = _linear_trainer(tmp_path / "c", schedule="constant", epochs=8)
    with pytest.warns(UserWarning, match="continues from step 6 to step 32"):
        longer.fit(resume=True)
    straight = _linear_trainer(None, schedule="constant", epochs=8)
    straight.fit()  # the data order is seeded per epoch: the extended run is this one
    assert longer.step == 32 and torch.equal(longer.model.weight, straight.model.weight)


def test_resume_refuses_to_drop_a_preconditioner_state(tmp_path):
    _linear_trainer(tmp_path, kfac=True, stop=6).fit()
    with pytest.raises(ValueError, match="no preconditioner"):
        _linear_trainer(tmp_path).fit(resume=True)
    (tmp_path / "plain").mkdir()
    _linear_trainer(tmp_path / "plain", stop=6).fit()
    with pytest.warns(UserWarning, match="no preconditioner state"):
        _linear_trainer(tmp_path / "plain", kfac=True).fit(resume=True)
