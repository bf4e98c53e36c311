"""Checkpoints written by ``api.train`` (and so by ``%%curv_train --checkpoint-dir``)."""

from __future__ import annotations

import torch
from torch import nn

from jupyter_curvature import api
from jupyter_curvature.models import MLP


def _data(n=60, batch=20):
    torch.manual_seed(0)
    x, y = torch.randn(n, 64), torch.randint(0, 10, (n,))
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def test_checkpoints_are_written_announced_and_load_back(tmp_path):
    model = MLP(hidden=(4,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    result = api.train(model, _data(), optimizer=optimizer, epochs=2, checkpoint_dir=tmp_path)
    names = sorted(p.name for p in tmp_path.glob("checkpoint-*.pt"))
    assert names == ["checkpoint-000003.pt", "checkpoint-000006.pt", "checkpoint-last.pt"]
    assert [text for _, text in result.history.events] == [
        "checkpoint checkpoint-000003.pt",
        "checkpoint checkpoint-000006.pt",
    ]
    saved = torch.load(tmp_path / "checkpoint-last.pt", weights_only=True)
    assert saved["step"] == 6
    for key, value in model.state_dict().items():
        assert torch.equal(saved["model"][key], value), key
    fresh = MLP(hidden=(4,))
    fresh.load_state_dict(saved["model"])
    restored = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    restored.load_state_dict(saved["optimizer"])  # the optimiser state round-trips too
    assert not list(tmp_path.glob("*.tmp*")), "a temporary file was left behind"


def test_an_interrupted_run_keeps_its_finished_steps(tmp_path):
    model = MLP(hidden=(4,))
    calls = {"n": 0}

    def step(model, x, y, ctx):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        out = model(x)
        return nn.functional.cross_entropy(out, y), out

    result = api.train(model, _data(), epochs=3, step_fn=step, checkpoint_dir=tmp_path)
    assert result.history.status == "interrupted"
    saved = torch.load(tmp_path / "checkpoint-last.pt", weights_only=True)
    assert saved["step"] == 4 == result.history.steps_done
    for key, value in model.state_dict().items():
        assert torch.equal(saved["model"][key], value), key
