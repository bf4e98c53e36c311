"""The Trainer under DistributedDataParallel on 2 gloo processes equals single-process training.

Every distributed run is compared with a single-process run in the parent process on the
same global batches (float64). The data are chosen to make the split uneven: 70 samples in
global batches of 15 are 4 batches of 15 (8 + 7 samples on the two ranks) and one of 10
(5 + 5); the live curvature batch of 41 samples is split 21 + 20. The trainer weights each
rank's loss by its share of the global batch, so the averaged gradient is the global
batch's gradient even when the parts differ.

As in ``test_distributed.py``, the processes are started with :func:`launch` (``fork``: the
children inherit the warmed-up torch), with a collective timeout and a join timeout, and
one module fixture runs most distributed computations in one launch.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import jupyter_curvature.distributed as jd
from jupyter_curvature.training import (
    Callback,
    CheckpointOptions,
    CurvatureCallback,
    DataOptions,
    DistributedOptions,
    Trainer,
)
from jupyter_curvature.training import checkpoint as checkpoint_module

NUM_SAMPLES, NUM_TEST, BATCH, WORLD = 70, 33, 15, 2
STEPS = 10  # two epochs of 5 global batches
WEIGHT_TOL = 1e-10  # observed differences are rounding, about 1e-16
SPECTRUM_TOL = 1e-6  # the bar for spectra
START = "fork"  # see test_distributed.py: the children inherit the imported torch


# ------------------------------------------------------------------ the problem
def make_data(ignored: bool = False):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(NUM_SAMPLES + NUM_TEST, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (NUM_SAMPLES + NUM_TEST,), generator=gen)
    if ignored:  # labels that do not count, unevenly over the ranks' parts
        y[(torch.arange(len(y)) % 5 == 0) | (torch.arange(len(y)) % 7 == 1)] = -100
    return TensorDataset(x[:NUM_SAMPLES], y[:NUM_SAMPLES]), TensorDataset(
        x[NUM_SAMPLES:], y[NUM_SAMPLES:]
    )


def make_model(hidden: int = 5, batchnorm: bool = False, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(6, hidden)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.Tanh(), nn.Linear(hidden, 3)]
    return nn.Sequential(*layers).double()


def make_trainer(
    model=None, callbacks=(), *, batch_size=BATCH, checkpoint_dir=None, ignored=False, **kw
):
    model = make_model() if model is None else model
    inner = model.module if isinstance(model, DDP) else model
    train_set, test_set = make_data(ignored)
    kw.setdefault("steps", STEPS)
    kw["data_options"] = DataOptions(batch_size=batch_size)
    kw["checkpoint"] = CheckpointOptions(dir=checkpoint_dir)
    opt = torch.optim.SGD(inner.parameters(), lr=0.2, momentum=0.9)
    return Trainer(model, opt, train_set, test_set, seed=3, callbacks=list(callbacks), **kw)


def curvature_callback(**kw):
    kw.setdefault("max_overhead", None)
    return CurvatureCallback(
        every=5, num_iters=8, num_probes=2, spectrum_samples=41, at_end=True, **kw
    )


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def summary(trainer: Trainer) -> dict:
    return {
        "weights": weights(trainer.model),
        "steps": trainer.history.to_dict()["steps"],
        "epochs": [
            {k: e[k] for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")}
            for e in trainer.history.epochs
        ],
        "events": [e for e in trainer.history.events if e["event"] != "checkpoint"],
        "curvature": [
            {k: c[k] for k in ("step", "ritz_values", "weights", "spectrum_samples")}
            for c in trainer.history.curvature
        ],
        "step": trainer.step,
        "status": trainer.status,
    }


class StopAt(Callback):
    """Asks to stop at ``step``, on one rank only (the others must follow)."""

    def __init__(self, step: int, rank: int) -> None:
        self.step, self.rank = step, rank

    def on_step_end(self, trainer, logs):
        if logs["step"] == self.step and jd.get_rank() == self.rank:
            trainer.stop()


def sampler_loaders(dataset):
    """Per-rank loaders of DistributedSampler (35 samples per rank, batches 8,8,8,8,3)."""
    return [
        DataLoader(
            dataset,
            batch_size=8,
            sampler=DistributedSampler(dataset, num_replicas=WORLD, rank=r, shuffle=True, seed=5),
        )
        for r in range(WORLD)
    ]


def api_train_run() -> dict:
    """``tasks.train`` (what ``%%curv_train`` runs): test points and spectra along the way."""
    from jupyter_curvature import tasks

    train_set, test_set = make_data()
    model = make_model()
    result = tasks.train(
        model,
        DataLoader(train_set, batch_size=BATCH),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9),
        steps=6,
        test_data=DataLoader(test_set, batch_size=11),
        spectrum_every=3,
        num_iters=8,
        num_probes=2,
        spectrum_samples=41,
        top_k=2,
        seed=3,
    )
    h = result.history
    return {
        "weights": weights(model),
        "loss": list(h.loss),
        "test_loss": list(h.test_loss),
        "spectrum_steps": list(h.spectrum_steps),
        "top": [list(t) for t in h.top_eigenvalues],
        "status": result.status,
    }


# ------------------------------------------------------------------ the distributed job
def _main_job(folder: str):
    rank = jd.get_rank()
    out: dict = {"rank": rank}

    # 1. the trainer wraps the model itself; live curvature; evaluation every epoch
    trainer = make_trainer(callbacks=[curvature_callback()], epochs=2, steps=None)
    out["distributed"] = trainer.distributed and isinstance(trainer.ddp, DDP)
    trainer.fit()
    out["plain"] = summary(trainer)
    out["shard_sizes"] = [len(b[1]) for b in trainer.data_order.epoch(0)]

    # 2. a DDP module made by the user is accepted
    user = make_trainer(DDP(make_model()))
    out["user_ddp_module"] = user.model is user.ddp.module
    user.fit()
    out["user_ddp"] = weights(user.model)

    # 3. checkpoints by rank 0 only; stop asked on rank 1 at step 6; resume to the end
    writes: list[str] = []
    real_save = checkpoint_module.atomic_save

    def counting_save(obj, path):
        writes.append(str(path))
        return real_save(obj, path)

    checkpoint_module.atomic_save = counting_save
    try:
        first = make_trainer(callbacks=[StopAt(6, rank=1)], checkpoint_dir=folder)
        first.fit()
        out["stopped"] = (first.step, first.status)
        if rank == 0:  # kept for a single-process resume in the parent
            shutil.copy(Path(folder) / "checkpoint-last.pt", Path(folder) / "stopped.pt")
        jd.barrier()
        resumed = make_trainer(checkpoint_dir=folder)
        resumed.fit(resume=True)
        out["resumed"] = summary(resumed)
    finally:
        checkpoint_module.atomic_save = real_save
    out["writes"] = writes
    uninterrupted = make_trainer()
    uninterrupted.fit()
    out["uninterrupted"] = weights(uninterrupted.model)

    # 4. the budget decision is rank 0's: rank 1's own estimate says "skip", rank 0's "compute"
    budgeted = curvature_callback(max_overhead=1e9)
    tr = make_trainer(callbacks=[budgeted], steps=5)
    if rank == 1:
        budgeted.last_cost = float("inf")
    tr.fit()
    out["budget"] = (budgeted.computed, budgeted.skipped, len(tr.history.curvature))

    # 5. a loader with a DistributedSampler: used as it is, set_epoch every epoch
    train_set, test_set = make_data()
    model = make_model()
    sampler_trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9),
        sampler_loaders(train_set)[rank],
        epochs=2,
    )
    sampler_trainer.fit()
    out["sampler"] = weights(model)

    # 6. BatchNorm: rank 0's running statistics on every rank after training
    bn = make_trainer(make_model(batchnorm=True), steps=4)
    bn.fit()
    out["batchnorm"] = weights(bn.model)

    # 7. tasks.train, the path of %%curv_train and the CLI, under torchrun
    out["api_train"] = api_train_run()

    # 8. ignored labels (each rank's loss weighted by its counted labels), and a "sum" loss
    out["weighted"] = [summary(weighted_run(reduction)) for reduction in ("mean", "sum")]
    return out


def weighted_run(reduction: str) -> Trainer:
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    trainer = make_trainer(ignored=True, loss_fn=loss_fn, epochs=2, steps=None)
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def single():
    """The single-process references (computed first: they warm torch up)."""
    trainer = make_trainer(callbacks=[curvature_callback()], epochs=2, steps=None)
    trainer.fit()
    plain = summary(trainer)
    steps = make_trainer()
    steps.fit()
    train_set, _ = make_data()
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    loaders = sampler_loaders(train_set)
    for epoch in range(2):  # the union of the ranks' batches is one global batch
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        for (x0, y0), (x1, y1) in zip(*loaders):
            opt.zero_grad()
            nn.CrossEntropyLoss()(model(torch.cat([x0, x1])), torch.cat([y0, y1])).backward()
            opt.step()
    return {
        "plain": plain,
        "steps": weights(steps.model),
        "sampler": weights(model),
        "api_train": api_train_run(),
        "weighted": [summary(weighted_run(reduction)) for reduction in ("mean", "sum")],
    }


@pytest.fixture(scope="module")
def runs(single, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp-checkpoints")
    results = jd.launch(_main_job, WORLD, (str(folder),), timeout=60, join_timeout=300,
                        start_method=START)  # fmt: skip
    return results, folder


def close(actual, expected, tol, what):
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, what
    err = float((actual - expected).abs().max()) if actual.numel() else 0.0
    scale = max(float(expected.abs().max()) if expected.numel() else 0.0, 1.0)
    assert err <= tol * scale, f"{what}: max |difference| {err:.3e} (scale {scale:.3e})"


def close_weights(actual, expected, what, tol=WEIGHT_TOL):
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        close(a, e, tol, f"{what}, tensor {i}")


# ------------------------------------------------------------------ equality with one process
@pytest.mark.distributed
def test_global_batches_are_split_unevenly(runs):
    results, _ = runs
    assert all(r["distributed"] for r in results)
    # global batches 15, 15, 15, 15, 10: rank 0 gets 8, 8, 8, 8, 5 and rank 1 7, 7, 7, 7, 5
    assert results[0]["shard_sizes"] == [8, 8, 8, 8, 5]
    assert results[1]["shard_sizes"] == [7, 7, 7, 7, 5]


@pytest.mark.distributed
def test_ddp_weights_equal_single_process_training(runs, single):
    results, _ = runs
    for r in results:
        close_weights(r["plain"]["weights"], single["plain"]["weights"], f"rank {r['rank']}")
    assert all(torch.equal(a, b) for a, b in zip(results[0]["plain"]["weights"],
                                                 results[1]["plain"]["weights"]))  # fmt: skip


@pytest.mark.distributed
def test_history_holds_the_global_figures_on_every_rank(runs, single):
    results, _ = runs
    ref = single["plain"]
    for r in results:
        steps = r["plain"]["steps"]
        assert steps["step"] == ref["steps"]["step"] and steps["epoch"] == ref["steps"]["epoch"]
        close(steps["loss"], ref["steps"]["loss"], WEIGHT_TOL, f"step losses, rank {r['rank']}")
        assert steps["accuracy"] == ref["steps"]["accuracy"]  # counts: exact
        assert len(r["plain"]["epochs"]) == 2
        for mine, theirs in zip(r["plain"]["epochs"], ref["epochs"]):
            for key in ("train_loss", "test_loss"):
                close(mine[key], theirs[key], WEIGHT_TOL, f"{key}, rank {r['rank']}")
            for key in ("train_accuracy", "test_accuracy"):
                assert mine[key] == theirs[key], key
    assert results[0]["plain"]["steps"] == results[1]["plain"]["steps"]


@pytest.mark.distributed
def test_live_spectra_equal_single_process_and_agree_across_ranks(runs, single):
    results, _ = runs
    ref = single["plain"]["curvature"]
    assert [c["step"] for c in ref] == [5, 10]
    for r in results:
        got = r["plain"]["curvature"]
        assert [c["step"] for c in got] == [5, 10]
        for mine, theirs in zip(got, ref):
            assert mine["spectrum_samples"] == theirs["spectrum_samples"] == 41
            for key in ("ritz_values", "weights"):
                close(mine[key], theirs[key], SPECTRUM_TOL, f"{key} at step {mine['step']}")
    assert results[0]["plain"]["curvature"] == results[1]["plain"]["curvature"]  # bit for bit


@pytest.mark.distributed
def test_api_train_under_ddp_equals_one_process(runs, single):
    results, _ = runs
    ref = single["api_train"]
    assert ref["status"] == "completed" and ref["spectrum_steps"] == [0, 3, 6], ref
    assert len(ref["loss"]) == 6 and ref["test_loss"]
    for r in results:
        got = r["api_train"]
        what = f"tasks.train, rank {r['rank']}"
        assert (got["status"], got["spectrum_steps"]) == (ref["status"], ref["spectrum_steps"])
        close_weights(got["weights"], ref["weights"], what)
        close(got["loss"], ref["loss"], WEIGHT_TOL, f"{what}: training losses")
        close(got["test_loss"], ref["test_loss"], WEIGHT_TOL, f"{what}: test losses")
        close(got["top"], ref["top"], SPECTRUM_TOL, f"{what}: top Ritz values")


@pytest.mark.distributed
def test_a_user_ddp_model_is_accepted(runs, single):
    results, _ = runs
    for r in results:
        assert r["user_ddp_module"]
        close_weights(r["user_ddp"], single["steps"], f"user DDP, rank {r['rank']}")


@pytest.mark.distributed
def test_a_distributed_sampler_loader_gets_set_epoch(runs, single):
    results, _ = runs
    for r in results:
        close_weights(r["sampler"], single["sampler"], f"DistributedSampler, rank {r['rank']}")


@pytest.mark.distributed
def test_the_budget_decision_is_rank_zeros(runs):
    results, _ = runs
    # rank 1 alone would have skipped the spectrum at step 5; it follows rank 0 instead
    assert [r["budget"] for r in results] == [(1, 0, 1), (1, 0, 1)]


@pytest.mark.distributed
def test_batchnorm_buffers_are_the_same_on_every_rank(runs):
    results, _ = runs
    a, b = results[0]["batchnorm"], results[1]["batchnorm"]
    assert len(a) == 9  # Linear 2 + BatchNorm 5 (weight, bias, mean, var, count) + Linear 2
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------ checkpoints and resume
@pytest.mark.distributed
def test_only_rank_zero_writes_checkpoints(runs):
    results, folder = runs
    assert results[1]["writes"] == []
    assert results[0]["writes"] and all(
        w.endswith("checkpoint-last.pt") for w in results[0]["writes"]
    )
    assert (folder / "checkpoint-last.pt").is_file()
    assert not list(folder.glob(".*tmp*"))  # atomic: no temporary file left


@pytest.mark.distributed
def test_stop_on_one_rank_stops_all_and_resume_matches(runs, single):
    results, _ = runs
    for r in results:
        assert r["stopped"] == (6, "stopped")  # asked on rank 1 only, rank 0 followed
        resumed = r["resumed"]
        assert resumed["step"] == STEPS and resumed["status"] == "completed"
        # the same weights, bit for bit, as an uninterrupted distributed run
        assert all(torch.equal(a, b) for a, b in zip(resumed["weights"], r["uninterrupted"]))
        close_weights(resumed["weights"], single["steps"], f"resumed, rank {r['rank']}")
        assert [e["event"] for e in resumed["events"]] == ["stopped"]


@pytest.mark.distributed
def test_a_distributed_checkpoint_resumes_in_one_process(runs, single):
    _, folder = runs
    state = torch.load(folder / "stopped.pt", weights_only=True)
    assert state["trainer"]["step"] == 6
    assert state["world_size"] == WORLD and len(state["rng_ranks"]) == WORLD
    trainer = make_trainer()
    trainer.fit(resume=folder / "stopped.pt")
    assert trainer.step == STEPS
    close_weights(weights(trainer.model), single["steps"], "resumed in one process")


# ------------------------------------------------------------------ bad input: errors, no hang
def _error(fn) -> str:
    try:
        fn()
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return ""


def _bad_input_job():
    from jupyter_curvature.optim import KFAC

    rank = jd.get_rank()
    out = {}
    out["model"] = _error(lambda: make_trainer(make_model(hidden=5 if rank == 0 else 4)))
    out["settings"] = _error(lambda: make_trainer(steps=STEPS + rank))
    model = make_model()
    out["kfac"] = _error(
        lambda: Trainer(
            model, KFAC(model, lr=0.1), make_data()[0], data_options=DataOptions(batch_size=BATCH)
        )
    )
    out["batch"] = _error(lambda: make_trainer(batch_size=69))
    out["subsample"] = _error(
        lambda: make_trainer(callbacks=[CurvatureCallback(spectrum_samples=1)], steps=1).fit()
    )

    def step_fn(module, x, y):
        if jd.get_rank() == 1 and trainer.step == 2:
            raise ValueError("rank one cannot compute step 3")
        return nn.CrossEntropyLoss()(module(x), y)

    trainer = make_trainer(step_fn=step_fn)
    out["step"] = _error(trainer.fit)
    out["after_step"] = (trainer.step, trainer.status, len(trainer.history))

    # Ctrl-C reaching rank 0 alone, in the middle of step 4: both ranks end after step 4
    def interrupt(module, x, y):
        if jd.get_rank() == 0 and interrupted.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return nn.CrossEntropyLoss()(module(x), y)

    interrupted = make_trainer(step_fn=interrupt)
    interrupted.fit()
    out["interrupt"] = (interrupted.step, interrupted.status, interrupted.interrupted)

    # a non-finite loss on rank 1 alone: every rank raises at the same step
    def nan_on_one_rank(module, x, y):
        loss = nn.CrossEntropyLoss()(module(x), y)
        return loss * float("nan") if jd.get_rank() == 1 and nan.step == 1 else loss

    nan = make_trainer(step_fn=nan_on_one_rank)
    out["nan"] = _error(nan.fit)
    out["nan_step"] = nan.step

    # DistributedOptions(enabled=False) under a process group: each rank alone, its spectra its own
    alone = make_trainer(
        make_model(seed=1 + rank), callbacks=[curvature_callback()], steps=5,
        distributed=DistributedOptions(enabled=False),
    )  # fmt: skip
    alone.fit()
    out["alone"] = (alone.distributed, alone.history.curvature[-1]["ritz_values"])
    return out


@pytest.fixture(scope="module")
def bad_input(single):
    return jd.launch(_bad_input_job, WORLD, timeout=30, join_timeout=180, start_method=START)


@pytest.mark.distributed
def test_different_models_are_named_on_every_rank(bad_input):
    for r in bad_input:
        assert r["model"].startswith("DistributedMismatchError")
        assert "rank 1 has 43 parameters" in r["model"] and "rank 0: 53" in r["model"]


@pytest.mark.distributed
def test_different_settings_are_named_on_every_rank(bad_input):
    for r in bad_input:
        assert "total steps (rank 0: 10, rank 1: 11)" in r["settings"]


@pytest.mark.distributed
def test_kfac_and_too_small_batches_are_refused(bad_input):
    for r in bad_input:
        assert r["kfac"].startswith("ValueError: KFAC (K-FAC) is not supported")
        assert "leaves a batch of 1 samples for 2 ranks" in r["batch"]
        assert "curvature batch holds 1 samples for 2 ranks" in r["subsample"]


@pytest.mark.distributed
def test_a_rank_failing_in_a_step_stops_every_rank_at_the_same_step(bad_input):
    assert bad_input[1]["step"] == "ValueError: rank one cannot compute step 3"
    assert bad_input[0]["step"].startswith("RuntimeError: rank(s) [1] failed in step 3")
    for r in bad_input:
        assert r["after_step"] == (2, "failed", 2)


@pytest.mark.distributed
def test_ctrl_c_on_one_rank_interrupts_every_rank_after_the_same_step(bad_input):
    for r in bad_input:
        assert r["interrupt"] == (4, "interrupted", True)


@pytest.mark.distributed
def test_a_non_finite_loss_on_one_rank_stops_every_rank(bad_input):
    for r in bad_input:
        assert r["nan"].startswith("FloatingPointError: the loss became nan at step 2")
        assert r["nan_step"] == 1


@pytest.mark.distributed
def test_distributed_false_trains_each_rank_alone(bad_input):
    for rank, r in enumerate(bad_input):
        reference = make_trainer(
            make_model(seed=1 + rank), callbacks=[curvature_callback()], steps=5
        )
        reference.fit()
        assert r["alone"][0] is False
        close(r["alone"][1], reference.history.curvature[-1]["ritz_values"], SPECTRUM_TOL,
              f"spectrum of rank {rank} alone")  # fmt: skip


# ------------------------------------------------------------------ without a process group
def test_without_a_process_group_the_trainer_is_local():
    trainer = make_trainer()
    assert not trainer.distributed and trainer.ddp is None
    with pytest.raises(ValueError, match=r"DistributedOptions\(enabled=True\) needs a torch.distr"):
        make_trainer(distributed=DistributedOptions(enabled=True))
    with pytest.raises(TypeError, match="DistributedOptions.enabled must be None"):
        DistributedOptions(enabled="yes")
    with pytest.raises(TypeError, match=r"distributed=\.\.\.\) must be a DistributedOptions"):
        make_trainer(distributed="yes")
    with pytest.warns(FutureWarning, match=r"DistributedOptions\(enabled=\.\.\.\)"):
        with pytest.raises(ValueError, match=r"enabled=True\) needs a torch.distributed"):
            make_trainer(distributed=True)  # the deprecated flat form


def test_rank_parts_of_the_global_batches_make_the_single_process_batches():
    from jupyter_curvature.training.data_order import DataOrder

    train_set, _ = make_data()
    kw = dict(batch_size=BATCH, shuffle=True, drop_last=False, num_workers=0, seed=3)
    whole = DataOrder(train_set, **kw)
    parts = [DataOrder(train_set, rank=r, world_size=WORLD, **kw) for r in range(WORLD)]
    assert whole.count == parts[0].count == parts[1].count == 5
    for epoch in (0, 1):
        batches = list(zip(whole.epoch(epoch), parts[0].epoch(epoch), parts[1].epoch(epoch)))
        assert len(batches) == 5
        for full, mine, theirs in batches:
            assert torch.equal(torch.cat([mine[0], theirs[0]]), full[0])
            assert torch.equal(torch.cat([mine[1], theirs[1]]), full[1])
            assert len(mine[1]) - len(theirs[1]) in (0, 1)
    # resuming inside an epoch starts at the same global batch on every rank
    assert torch.equal(next(parts[1].epoch(1, start=3))[0], list(parts[1].epoch(1))[3][0])


def test_rank_parts_need_a_sample_per_rank_and_a_distributed_sampler():
    from jupyter_curvature.training.data_order import DataOrder

    train_set, _ = make_data()
    kw = dict(shuffle=False, num_workers=0, seed=0, rank=0, world_size=3)
    with pytest.raises(ValueError, match="leaves a batch of 1 samples for 3 ranks"):
        DataOrder(train_set, batch_size=23, drop_last=False, **kw)  # 70 = 3 x 23 + 1
    assert DataOrder(train_set, batch_size=23, drop_last=True, **kw).count == 3
    custom = DataLoader(train_set, batch_size=10, sampler=list(range(NUM_SAMPLES)))
    with pytest.raises(ValueError, match="custom sampler that is not a distributed sampler"):
        DataOrder(custom, batch_size=10, drop_last=False, **kw)


@pytest.mark.distributed
@pytest.mark.parametrize("which", [0, 1], ids=["ignore_index-mean", "ignore_index-sum"])
def test_ddp_weights_ranks_by_their_counted_labels(runs, single, which):
    results, _ = runs
    expected = single["weighted"][which]
    for r in results:
        got = r["weighted"][which]
        close_weights(got["weights"], expected["weights"], f"rank {r['rank']}")
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            close(
                [e[key] for e in got["epochs"]],
                [e[key] for e in expected["epochs"]],
                1e-12,
                f"rank {r['rank']}: {key}",
            )
        close(got["steps"]["loss"], expected["steps"]["loss"], 1e-12, "step losses")
