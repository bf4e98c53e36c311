"""Bad input and data that changes between passes: a clear error, raised early, model untouched.

Every error test names the argument it expects in the message (``match=``) and checks that the
model's parameters, buffers and flags are bitwise what they were (:func:`reference.snapshot`).
Every case that must still work is compared with a dense float64 ``torch.func`` reference.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import assert_close, assert_same_state, dense_ggn, dense_hessian, digits_batch
from reference import snapshot as model_snapshot
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import jupyter_curvature as jc
from jupyter_curvature.core.inputs import all_finite
from jupyter_curvature.models import MLP
from jupyter_curvature.operators import (
    DenseOperator,
    EmpiricalFisherOperator,
    GGNOperator,
    HessianOperator,
)

DT = torch.float64
X, Y = digits_batch("train", 40)
OPERATORS = [HessianOperator, GGNOperator, EmpiricalFisherOperator]


def mlp():
    torch.manual_seed(1)
    return MLP(in_features=64, hidden=(4,), num_classes=10).to(DT)


def loader(dataset=None, *, shuffle=False, batch_size=8):
    return DataLoader(
        dataset or TensorDataset(X, Y),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(0),
    )


def raises_untouched(model, exc, match, call):
    """``call()`` raises ``exc`` matching ``match`` and leaves ``model`` bitwise as it was."""
    before = model_snapshot(model)
    with pytest.raises(exc, match=match):
        call()
    assert_same_state(model, before)


def probe(n, k=2):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(5), dtype=DT)


# ------------------------------------------------------------------ data that changes
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("op_class", OPERATORS, ids=lambda c: c.__name__)
def test_a_reshuffling_loader_is_the_same_matrix_and_passes(op_class, dtype):
    """The risk is a sum over samples: reshuffled batches change its rounding, not its value."""
    model = mlp().to(dtype)
    data = loader(TensorDataset(X.to(dtype), Y), shuffle=True)
    op = op_class(model, nn.CrossEntropyLoss(), data)
    reference = op_class(mlp(), nn.CrossEntropyLoss(), (X, Y))  # one batch, float64
    V = probe(op.shape[0])
    rtol = 1e-10 if dtype == torch.float64 else 1e-4
    for _ in range(2):  # each pass another order
        got = (op @ V.to(dtype)).double()
        assert_close(got, reference @ V, rtol=rtol, atol=rtol * 1e-2, what="product")


def test_a_reshuffling_loader_that_drops_its_last_batch_is_refused():
    """drop_last=True with shuffling leaves out other samples on every pass."""
    model = mlp()
    data = DataLoader(
        TensorDataset(X, Y), batch_size=16, shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    raises_untouched(
        model,
        ValueError,
        "shuffle=False",
        lambda: HessianOperator(model, nn.CrossEntropyLoss(), data),
    )


def test_a_random_subset_of_the_same_size_is_refused():
    model = mlp()
    sampler = torch.utils.data.RandomSampler(
        TensorDataset(X, Y), num_samples=24, generator=torch.Generator().manual_seed(0)
    )
    data = DataLoader(TensorDataset(X, Y), batch_size=8, sampler=sampler)
    raises_untouched(
        model, ValueError, "data", lambda: GGNOperator(model, nn.CrossEntropyLoss(), data)
    )


def test_batch_statistics_of_reshuffled_batches_are_refused():
    """With batchnorm="train" each batch is normalised by its own statistics: another
    composition of the batches is another function."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 10)
    )
    model = model.to(DT)
    raises_untouched(
        model,
        ValueError,
        "shuffle=False",
        lambda: HessianOperator(
            model, nn.CrossEntropyLoss(), loader(shuffle=True), batchnorm="train"
        ),
    )


class RandomFlips(Dataset):
    """Digits flipped left-right at random: a random augmentation."""

    def __len__(self):
        return len(X)

    def __getitem__(self, i):
        image = X[i].view(8, 8)
        flip = bool(torch.rand(()) < 0.5)
        return (image.flip(1) if flip else image).reshape(X[i].shape), Y[i]


def test_random_transform_is_refused():
    model = mlp()
    raises_untouched(
        model,
        ValueError,
        "no random transforms",
        lambda: HessianOperator(model, nn.CrossEntropyLoss(), loader(RandomFlips())),
    )


class AlwaysDropout(nn.Module):
    """Dropout that ignores eval mode (MC dropout): ``F.dropout(..., training=True)``."""

    def forward(self, x):
        return F.dropout(x, 0.5, training=True)


def test_dropout_left_on_is_refused():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 4), nn.Tanh(), AlwaysDropout(), nn.Linear(4, 10)
    ).to(DT)
    raises_untouched(
        model,
        ValueError,
        "dropout",
        lambda: GGNOperator(model, nn.CrossEntropyLoss(), loader()),
    )


def test_dropout_module_of_a_training_model_is_off_and_passes():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 10)
    ).to(DT)
    model.train()
    before = model_snapshot(model)
    H = HessianOperator(model, nn.CrossEntropyLoss(), loader())
    V = probe(H.shape[0])
    expected = dense_hessian(model.eval(), nn.CrossEntropyLoss(), X, Y) @ V
    model.train()
    assert_close(H @ V, expected, what="H V with dropout off")
    assert_same_state(model, before)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_one_full_batch_reshuffled_is_the_same_matrix_and_passes(dtype):
    """A permutation inside the batch changes the rounding of the sums, not the matrix."""
    model = mlp().to(dtype)
    data = DataLoader(
        TensorDataset(X.to(dtype), Y), batch_size=len(X), shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    G = GGNOperator(model, nn.CrossEntropyLoss(), data)
    V = probe(G.shape[0])
    expected = dense_ggn(mlp(), nn.CrossEntropyLoss(), X, Y) @ V
    rtol = 1e-10 if dtype == torch.float64 else 1e-4
    assert_close((G @ V.to(dtype)).double(), expected, rtol=rtol, atol=rtol * 1e-2, what="G V")


def test_opt_out_accepts_random_augmentation():
    model = mlp()
    HessianOperator(model, nn.CrossEntropyLoss(), loader(RandomFlips()), check_deterministic=False)


def test_check_costs_one_forward_of_the_first_batch_and_two_passes():
    model = mlp()
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    data = loader(batch_size=8)  # 5 batches
    for options, forwards in (
        ({}, 1 + 2 * 5),
        ({"check_deterministic": False}, 1),
        ({"check": False}, 0),
    ):
        seen.clear()
        HessianOperator(model, nn.CrossEntropyLoss(), data, **options)
        assert seen == [8] * forwards, options


class ShrinkingData:
    """Re-iterable batches: 5 batches of 8, then one batch fewer on passes from ``shrink_from`` on."""

    def __init__(self, shrink_from):
        self.passes, self.shrink_from = 0, shrink_from

    def __iter__(self):
        self.passes += 1
        count = 4 if self.passes >= self.shrink_from else 5
        return iter([(X[i : i + 8], Y[i : i + 8]) for i in range(0, 8 * count, 8)])


def test_a_pass_with_another_sample_count_is_refused():
    model = mlp()
    # construction reads the first batch (pass 1), then the data twice (passes 2 and 3)
    raises_untouched(
        model,
        ValueError,
        "two passes over the data gave different results",
        lambda: HessianOperator(model, nn.CrossEntropyLoss(), ShrinkingData(shrink_from=3)),
    )
    H = HessianOperator(model, nn.CrossEntropyLoss(), ShrinkingData(shrink_from=5))
    v = probe(H.shape[0], 1)[:, 0]
    H @ v  # pass 4: 40 samples
    raises_untouched(model, ValueError, "data: this pass had weight 32 in the mean", lambda: H @ v)
    H = HessianOperator(
        model, nn.CrossEntropyLoss(), ShrinkingData(shrink_from=2), check_deterministic=False
    )
    H @ v
    H @ v  # not checked: the user opted out


# --------------------------------------------------------------------------- bad input
def nan_model(value):
    model = mlp()
    with torch.no_grad():
        model[1].weight[2, 3] = value
    return model


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("op_class", OPERATORS, ids=lambda c: c.__name__)
def test_non_finite_weights_are_named(op_class, value):
    model = nan_model(value)
    raises_untouched(
        model, ValueError, "'1.weight'", lambda: op_class(model, nn.CrossEntropyLoss(), loader())
    )


def test_weights_gone_non_finite_after_construction_are_named():
    model = mlp()
    H = HessianOperator(model, nn.CrossEntropyLoss(), loader())
    with torch.no_grad():
        model[3].bias[0] = float("inf")  # e.g. a diverged training step in between
    v = probe(H.shape[0], 1)[:, 0]
    for call in (lambda: H @ v, lambda: jc.eigenpairs(H, k=2), lambda: jc.trace(H)):
        raises_untouched(model, ValueError, "'3.bias'", call)


def test_landscape_of_non_finite_weights_is_named():
    directions = jc.landscape.random_directions(mlp(), 1)
    model = nan_model(float("nan"))
    raises_untouched(
        model, ValueError, "'1.weight'", lambda: jc.landscape.random_directions(model, 1)
    )
    raises_untouched(
        model,
        ValueError,
        "'1.weight'",
        lambda: jc.landscape_1d(model, nn.CrossEntropyLoss(), loader(), directions),
    )


def test_non_finite_vector_is_named():
    model = mlp()
    H = HessianOperator(model, nn.CrossEntropyLoss(), loader())
    v = probe(H.shape[0], 1)[:, 0]
    v[7] = float("nan")
    raises_untouched(model, ValueError, "v holds 1 NaN", lambda: H @ v)


def test_all_finite_is_exact_when_the_sum_overflows():
    """The fast test sums in the vector's own dtype; an overflowing sum of finite entries
    falls back to the entrywise test, and NaN or inf anywhere is found."""
    big = torch.full((5,), 3e38)  # finite float32 entries whose sum is inf
    assert not torch.isfinite(big.sum()) and all_finite(big)
    for bad in (float("nan"), float("inf"), -float("inf")):
        v = big.clone()
        v[3] = bad
        assert not all_finite(v) and not all_finite(v.double())
    assert all_finite(torch.zeros(0))


def test_loss_not_computed_from_the_outputs_is_named():
    model = mlp()

    def detached_loss(outputs, targets):
        return torch.tensor(F.cross_entropy(outputs, targets).item(), requires_grad=True)

    raises_untouched(
        model,
        ValueError,
        "loss_fn returned a tensor that is not computed from the model outputs",
        lambda: HessianOperator(model, detached_loss, loader()),
    )


def test_integer_inputs_to_a_floating_model_are_named():
    model = mlp()
    data = [(X.long(), Y)]
    for call in (
        lambda: HessianOperator(model, nn.CrossEntropyLoss(), data),
        lambda: jc.landscape_1d(
            model, nn.CrossEntropyLoss(), data, jc.landscape.random_directions(model, 1)
        ),
    ):
        raises_untouched(
            model, TypeError, "data: the inputs of batch 0 have dtype torch.int64", call
        )


def test_integer_inputs_to_an_embedding_still_work():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Embedding(17, 3), nn.Flatten(), nn.Linear(12, 10)).to(DT)
    tokens = torch.randint(0, 17, (40, 4), generator=torch.Generator().manual_seed(2))
    H = HessianOperator(model, nn.CrossEntropyLoss(), (tokens, Y))
    V = probe(H.shape[0])
    expected = dense_hessian(model, nn.CrossEntropyLoss(), tokens, Y) @ V
    assert_close(H @ V, expected, what="H V of an embedding model")


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        return self.net(x), x.sum()


class DictOut(TupleOut):
    def forward(self, x):
        return {"logits": self.net(x), "features": x}


@pytest.mark.parametrize("op_class", OPERATORS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("wrapper, pick", [(TupleOut, 0), (DictOut, "logits")])
def test_tuple_and_dict_outputs_name_the_outputs_hook(op_class, wrapper, pick):
    model = wrapper()
    raises_untouched(
        model,
        TypeError,
        f"outputs=lambda out: out\\[{pick!r}\\]",
        lambda: op_class(model, nn.CrossEntropyLoss(), loader()),
    )
    hooked = op_class(model, nn.CrossEntropyLoss(), loader(), outputs=lambda out: out[pick])
    plain = op_class(model.net, nn.CrossEntropyLoss(), loader())
    V = probe(hooked.shape[0])
    assert_close(hooked @ V, plain @ V, rtol=0, atol=0, what="products through outputs=")


def test_landscape_outputs_hook():
    model = DictOut()
    directions = jc.landscape.random_directions(model, 1)
    raises_untouched(
        model,
        TypeError,
        "outputs=lambda out: out\\['logits'\\]",
        lambda: jc.landscape_1d(model, nn.CrossEntropyLoss(), loader(), directions),
    )
    hooked = jc.landscape_1d(
        model, nn.CrossEntropyLoss(), loader(), directions, num_points=5,
        outputs=lambda out: out["logits"],
    )  # fmt: skip
    vectors = directions.matrix()  # the same vectors, on the bare network's names
    plain = jc.landscape_1d(model.net, nn.CrossEntropyLoss(), loader(), vectors, num_points=5)
    assert_close(
        torch.as_tensor(hooked.train_loss), torch.as_tensor(plain.train_loss), what="losses"
    )


def test_targets_with_another_batch_size_are_named():
    model = mlp()
    data = [(X, Y[:5])]
    for call in (
        lambda: HessianOperator(model, nn.CrossEntropyLoss(), data),
        lambda: jc.landscape_1d(
            model, nn.CrossEntropyLoss(), data, jc.landscape.random_directions(model, 1)
        ),
    ):
        raises_untouched(model, ValueError, "data: batch 0 gives 40 outputs but 5 targets", call)


# ------------------------------------------------------------------------------ trace
@pytest.mark.parametrize("method", ["hutch++", "hutchinson"])
@pytest.mark.parametrize("budget", [80, 10**7])
def test_trace_budget_of_the_dimension_or_more_is_exact(method, budget):
    M = torch.randn(80, 80, generator=torch.Generator().manual_seed(3), dtype=DT)
    A = DenseOperator(M + M.T)
    t = jc.trace(A, method=method, num_matvecs=budget, block_size=7)
    assert (t.method, t.num_matvecs, t.stderr, t.samples) == ("exact", 80, 0.0, [])
    assert t.estimate == pytest.approx(float(torch.trace(M + M.T)), rel=1e-13, abs=1e-12)


def test_trace_of_a_small_hessian_is_exact_from_its_dimension_on():
    model = mlp()
    H = HessianOperator(model, nn.CrossEntropyLoss(), loader())
    t = jc.trace(H, num_matvecs=10**7)
    exact = float(torch.trace(dense_hessian(model, nn.CrossEntropyLoss(), X, Y)))
    assert t.num_matvecs == H.shape[0]
    assert t.estimate == pytest.approx(exact, rel=1e-10)
