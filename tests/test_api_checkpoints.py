"""Checkpoints written by ``tasks.train`` (and so by ``%%curv_train --checkpoint-dir``): the
engine's Trainer checkpoints, each with a numbered copy, and bitwise-exact resume."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from jupyter_curvature import tasks
from jupyter_curvature.models import MLP
from jupyter_curvature.training import Trainer


def _data(n=60, batch=20):
    torch.manual_seed(0)
    x, y = torch.randn(n, 64), torch.randint(0, 10, (n,))
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def test_checkpoints_are_written_announced_and_load_back(tmp_path):
    model = MLP(hidden=(4,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    result = tasks.train(model, _data(), optimizer=optimizer, epochs=2, checkpoint_dir=tmp_path)
    names = sorted(p.name for p in tmp_path.glob("checkpoint-*.pt"))
    assert names == ["checkpoint-000003.pt", "checkpoint-000006.pt", "checkpoint-last.pt"]
    assert [text for _, text in result.history.event_lines()] == [
        "checkpoint checkpoint-000003.pt",
        "checkpoint checkpoint-000006.pt",
    ]
    saved = torch.load(tmp_path / "checkpoint-last.pt", weights_only=True)
    assert saved["trainer"]["step"] == 6
    for key, value in model.state_dict().items():
        assert torch.equal(saved["model"][key], value), key
    first = torch.load(tmp_path / "checkpoint-000003.pt", weights_only=True)
    assert first["trainer"]["step"] == 3
    fresh = MLP(hidden=(4,))
    fresh.load_state_dict(saved["model"])
    restored = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    restored.load_state_dict(saved["optimizer"])  # the optimiser state round-trips too
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob(".*")), "a temporary file"


def test_an_interrupted_run_keeps_its_finished_steps(tmp_path):
    model = MLP(hidden=(4,))
    calls = {"n": 0}

    def step(model, x, y, ctx):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        out = model(x)
        return nn.functional.cross_entropy(out, y), out

    result = tasks.train(model, _data(), epochs=3, step_fn=step, checkpoint_dir=tmp_path)
    assert result.status == "interrupted"
    saved = torch.load(tmp_path / "checkpoint-last.pt", weights_only=True)
    assert saved["trainer"]["step"] == 4 == result.trainer.step
    assert (tmp_path / "checkpoint-000004.pt").is_file()
    assert [t for _, t in result.history.event_lines()][-2:] == [
        "interrupted at step 4",
        "checkpoint checkpoint-000004.pt",
    ]
    for key, value in model.state_dict().items():
        assert torch.equal(saved["model"][key], value), key


def _loader(seed=0):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(90, 64, generator=g), torch.randint(0, 10, (90,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 10))


def test_resume_from_a_mid_epoch_checkpoint_is_bitwise_the_uninterrupted_run(tmp_path):
    """Dropout (the global RNG), shuffling and momentum: all restored from the checkpoint."""
    full = _net()
    start = copy.deepcopy(full.state_dict())
    tasks.train(
        full,
        _loader(),
        optimizer=torch.optim.SGD(full.parameters(), lr=0.1, momentum=0.9),
        steps=14,
        checkpoint_dir=tmp_path / "a",
        checkpoint_every=4,
        seed=5,
    )
    assert (tmp_path / "a" / "checkpoint-000008.pt").is_file()  # step 8: mid epoch 2 (6 per epoch)
    # the task, resumed from step 8
    again = _net()
    again.load_state_dict(start)
    out = tasks.train(
        again,
        _loader(),
        optimizer=torch.optim.SGD(again.parameters(), lr=0.1, momentum=0.9),
        steps=14,
        seed=5,
        resume=tmp_path / "a" / "checkpoint-000008.pt",
    )
    assert out.trainer.step == 14 and len(out.history.loss) == 14
    # a plain Trainer on the same data, resumed from the same file
    plain = _net()
    trainer = Trainer(
        plain,
        torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9),
        _loader(),
        steps=14,
        seed=5,
    )
    trainer.fit(resume=tmp_path / "a" / "checkpoint-000008.pt")
    for key, value in full.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), f"tasks resume: {key}"
        assert torch.equal(plain.state_dict()[key], value), f"Trainer resume: {key}"
