"""Which model inputs are per sample: the gradient covariance and per-sample statistics.

A layout's input is split along dim 0 when it is a tensor whose dim 0 is the batch size and
it is not marked ``jc.shared`` (core/batches.py: ``Batch.per_sample_dims``). Every number is
checked against a plain loop over samples in float64, each sample's gradient taken with the
shared inputs whole.
"""

from __future__ import annotations

import pytest
import torch
from reference import assert_close
from torch import nn

import jupyter_curvature as jc
from jupyter_curvature.operators import EmpiricalFisherOperator, HessianOperator
from jupyter_curvature.stats import gradient_statistics

DT = torch.float64
CE = nn.CrossEntropyLoss()


class Scaled(nn.Module):
    """``scale`` belongs to the batch (its sum scales every logit), ``mask`` to each sample."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 5), nn.Linear(5, 4)

    def forward(self, x, scale=None, mask=None):
        if mask is not None:
            x = x * mask
        out = self.fc2(torch.tanh(self.fc1(x)))
        return out if scale is None else out * scale.sum()


def problem(batch_size: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    model = Scaled().to(DT)
    x = torch.randn(batch_size, 3, dtype=DT)
    y = torch.randint(0, 4, (batch_size,))
    return model, x, y


def per_sample_gradients(model, x, y, **inputs) -> torch.Tensor:
    """``(N, n)``: one plain backward per sample; ``inputs`` are (name, value, per_sample)."""
    params = list(model.parameters())
    rows = []
    for i in range(len(x)):
        kwargs = {k: v[i : i + 1] if split else v for k, (v, split) in inputs.items()}
        loss = CE(model(x[i : i + 1], **kwargs), y[i : i + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


@pytest.mark.parametrize("path", ["vmap", "loop"])
def test_fisher_with_a_shared_batch_sized_kwarg_matches_a_loop_over_samples(path):
    model, x, y = problem()
    scale = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=DT)  # dim 0 == batch size, not per sample
    layout = lambda b: ((b[0],), {"scale": jc.shared(scale)}, b[1])  # noqa: E731
    op = EmpiricalFisherOperator(model, CE, (x, y), batch_layout=layout)
    if path == "loop":
        op._vmap_works = False  # as after torch.func refused the model
    G = per_sample_gradients(model, x, y, scale=(scale, False))
    assert_close(op.to_dense(), G.T @ G / len(x), what=f"empirical Fisher ({path})")
    # the Hessian gets the value itself, marked or not
    H = HessianOperator(model, CE, (x, y), batch_layout=layout).to_dense()
    plain = HessianOperator(
        model, CE, (x, y), batch_layout=lambda b: ((b[0],), {"scale": scale}, b[1])
    )
    assert_close(H, plain.to_dense(), what="Hessian with a marked input")


def test_an_unmarked_batch_sized_shared_kwarg_is_named_with_the_remedy():
    model, x, y = problem()
    scale = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=DT)
    layout = lambda b: ((b[0],), {"scale": scale}, b[1])  # noqa: E731
    for build in (
        lambda: EmpiricalFisherOperator(model, CE, (x, y), batch_layout=layout),
        lambda: gradient_statistics(model, CE, (x, y), per_sample=True, batch_layout=layout),
    ):
        with pytest.raises(ValueError) as info:
            build()
        for part in ("'scale'", "jc.shared", "batch_layout"):
            assert part in str(info.value)


def test_a_kwarg_that_is_not_batch_sized_is_passed_whole():
    model, x, y = problem()
    scale = torch.tensor([0.5, 1.0, 2.0], dtype=DT)  # 3 != 4 samples: shared without a mark
    layout = lambda b: ((b[0],), {"scale": scale}, b[1])  # noqa: E731
    op = EmpiricalFisherOperator(model, CE, (x, y), batch_layout=layout)
    G = per_sample_gradients(model, x, y, scale=(scale, False))
    assert_close(op.to_dense(), G.T @ G / len(x), what="empirical Fisher, short shared input")


def test_dict_batches_keep_their_inputs_per_sample():
    """A Hugging Face style dict (``labels`` and keyword inputs): every key is per sample."""

    class KeywordModel(Scaled):
        def forward(self, input_ids, attention_mask):
            return super().forward(input_ids, mask=attention_mask)

    torch.manual_seed(1)
    model = KeywordModel().to(DT)
    x = torch.randn(4, 3, dtype=DT)
    mask = (torch.rand(4, 3) > 0.3).to(DT)
    y = torch.randint(0, 4, (4,))
    batch = {"input_ids": x, "attention_mask": mask, "labels": y}
    op = EmpiricalFisherOperator(model, CE, batch)
    params = list(model.parameters())
    rows = []
    for i in range(4):
        loss = CE(model(x[i : i + 1], mask[i : i + 1]), y[i : i + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    G = torch.stack(rows)
    assert_close(op.to_dense(), G.T @ G / 4, what="empirical Fisher of a dict batch")


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_per_sample_statistics_with_a_shared_kwarg_match_a_loop(chunk_size):
    """Two loader batches of 4 share one ``scale`` of length 4; chunks of 3 regroup the
    samples across batches without joining or slicing the shared input."""
    model, x, y = problem(batch_size=8)
    scale = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=DT)
    mask = (torch.rand(8, 3) > 0.3).to(DT)  # per sample, and batch-sized: split
    data = [(x[:4], mask[:4], y[:4]), (x[4:], mask[4:], y[4:])]
    layout = lambda b: ((b[0],), {"scale": jc.shared(scale), "mask": b[1]}, b[2])  # noqa: E731
    stats = gradient_statistics(
        model, CE, data, per_sample=True, chunk_size=chunk_size, batch_layout=layout
    )
    G = per_sample_gradients(model, x, y, scale=(scale, False), mask=(mask, True))
    losses = torch.stack(
        [CE(model(x[i : i + 1], scale=scale, mask=mask[i : i + 1]), y[i : i + 1]) for i in range(8)]
    ).detach()
    gbar = G.mean(0)
    assert_close(stats.loss_mean, losses.mean(), what="loss_mean")
    assert_close(stats.grad_mean_norm_sq, gbar @ gbar, what="grad_mean_norm_sq")
    assert_close(stats.grad_var, ((G - gbar) ** 2).sum(1).mean(), what="grad_var")


def test_joining_batches_with_different_shared_values_is_refused():
    model, x, y = problem(batch_size=8)
    scales = [torch.full((4,), 1.0, dtype=DT), torch.full((4,), 2.0, dtype=DT)]
    data = [(x[:4], scales[0], y[:4]), (x[4:], scales[1], y[4:])]
    layout = lambda b: ((b[0],), {"scale": jc.shared(b[1])}, b[2])  # noqa: E731
    with pytest.raises(ValueError, match="jc.shared"):
        gradient_statistics(model, CE, data, per_sample=True, chunk_size=3, batch_layout=layout)


def test_a_shared_positional_input_is_passed_whole():
    class Positional(Scaled):
        def forward(self, x, scale):
            return super().forward(x, scale=scale)

    torch.manual_seed(2)
    model = Positional().to(DT)
    x = torch.randn(4, 3, dtype=DT)
    y = torch.randint(0, 4, (4,))
    scale = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=DT)
    layout = lambda b: ((b[0], jc.shared(scale)), b[1])  # noqa: E731
    op = EmpiricalFisherOperator(model, CE, (x, y), batch_layout=layout)
    params = list(model.parameters())
    rows = []
    for i in range(4):
        loss = CE(model(x[i : i + 1], scale), y[i : i + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    G = torch.stack(rows)
    assert_close(op.to_dense(), G.T @ G / 4, what="empirical Fisher, shared positional input")
    with pytest.raises(ValueError, match="argument 1"):
        EmpiricalFisherOperator(model, CE, (x, y), batch_layout=lambda b: ((b[0], scale), b[1]))
