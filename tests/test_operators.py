"""Curvature operators against dense float64 references built with torch.func."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F
from reference import (
    assert_close,
    assert_same_state,
    concat,
    dense_empirical_fisher,
    dense_ggn,
    dense_hessian,
    dense_hessian_by_differences,
    snapshot,
)
from torch import nn

import jupyter_curvature.operators as ops
from jupyter_curvature.data import digits_loader
from jupyter_curvature.models import MLP, SmallCNN
from jupyter_curvature.operators import (
    EmpiricalFisherOperator,
    GGNOperator,
    HessianOperator,
)

DT = torch.float64


def digits(limit=70, batch_size=32, flatten=False):
    """70 samples in batches of 32: the last batch (6) is short, so weighting is exercised."""
    return digits_loader(batch_size=batch_size, limit=limit, dtype=DT, flatten=flatten)


def mlp(hidden=(6,), num_classes=10, in_features=64):
    torch.manual_seed(1)
    return MLP(in_features=in_features, hidden=hidden, num_classes=num_classes).to(DT)


def bn_cnn():
    torch.manual_seed(2)
    model = SmallCNN(width=2, batch_norm=True).to(DT)
    # non-trivial running statistics, so eval and train BatchNorm modes really differ
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


CASES = {
    "mlp-ce-mean": (mlp, lambda: nn.CrossEntropyLoss()),
    "mlp-ce-sum": (mlp, lambda: nn.CrossEntropyLoss(reduction="sum")),
    "mlp-mse-mean": (lambda: mlp(num_classes=3), lambda: nn.MSELoss()),
    "cnn-bn-eval-ce": (bn_cnn, lambda: nn.CrossEntropyLoss()),
}


def targets_for(name, y, model_out_dim):
    if "mse" in name:
        torch.manual_seed(3)
        return torch.randn(len(y), model_out_dim, dtype=DT)
    return y


def case_data(name):
    """A list of (x, y) batches (re-iterable) with 70 samples, the last batch short."""
    batches = list(digits())
    if "mse" in name:
        return [(x, targets_for(name, y, 3)) for x, y in batches]
    return batches


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("kind", ["hessian", "ggn", "fisher"])
def test_operator_matches_dense_reference(name, kind):
    make_model, make_loss = CASES[name]
    model, loss_fn = make_model(), make_loss()
    data = case_data(name)
    x, y = concat(data)
    op_class = {"hessian": HessianOperator, "ggn": GGNOperator, "fisher": EmpiricalFisherOperator}[
        kind
    ]
    op = op_class(model, loss_fn, data)
    if kind == "hessian":
        dense = dense_hessian(model, loss_fn, x, y)
    elif kind == "ggn":
        dense = dense_ggn(model, loss_fn, x, y)
    else:
        dense = dense_empirical_fisher(model, loss_fn, x, y, reduction=loss_fn.reduction)
    n = op.shape[0]
    scale = dense.abs().max()
    v = torch.randn(n, dtype=DT)
    V = torch.randn(n, 4, dtype=DT)
    assert_close(op @ v, dense @ v, rtol=1e-9, atol=1e-12 * scale, what=f"{kind} @ v")
    assert_close(op @ V, dense @ V, rtol=1e-9, atol=1e-12 * scale, what=f"{kind} @ V")
    assert op.num_matvecs == 5
    assert op.num_samples == 70


def test_dense_matrix_is_symmetric_and_equals_reference():
    model, loss_fn, data = mlp(), nn.CrossEntropyLoss(), case_data("mlp-ce-mean")
    H = HessianOperator(model, loss_fn, data).to_dense()
    assert_close(H, H.T, rtol=0, atol=1e-14 * H.abs().max(), what="H - H^T")
    x, y = concat(data)
    assert_close(H, dense_hessian(model, loss_fn, x, y), rtol=1e-9, atol=1e-13, what="H")
    # the tanh network is far from linear: the Hessian is indefinite and differs from the GGN
    eig = torch.linalg.eigvalsh(H)
    assert eig.min() < -1e-3 * eig.max()


def test_loader_one_batch_and_list_agree():
    model, loss_fn = mlp(), nn.CrossEntropyLoss()
    loader = digits()
    x, y = concat(loader)
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=DT)
    from_loader = HessianOperator(model, loss_fn, loader) @ v
    from_batch = HessianOperator(model, loss_fn, (x, y)) @ v
    from_list = HessianOperator(model, loss_fn, list(loader)) @ v
    assert_close(from_loader, from_batch, rtol=1e-10, atol=1e-14)
    assert_close(from_list, from_batch, rtol=1e-10, atol=1e-14)


def test_sum_reduction_is_n_times_mean():
    model, data = mlp(), case_data("mlp-ce-mean")
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=DT)
    mean = HessianOperator(model, nn.CrossEntropyLoss(), data) @ v
    total = HessianOperator(model, nn.CrossEntropyLoss(reduction="sum"), data) @ v
    assert_close(total, 70 * mean, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("params", ["1.*", "3", ["1.weight", "3.bias"], "re:bias$"])
@pytest.mark.parametrize("op_class", [HessianOperator, GGNOperator])
def test_parameter_subset_is_the_dense_submatrix(params, op_class):
    model, loss_fn, data = mlp(), nn.CrossEntropyLoss(), case_data("mlp-ce-mean")
    x, y = concat(data)
    op = op_class(model, loss_fn, data, params=params)
    reference = dense_hessian if op_class is HessianOperator else dense_ggn
    dense = reference(model, loss_fn, x, y, params=params)
    assert op.shape == dense.shape
    V = torch.randn(op.shape[0], 2, dtype=DT)
    assert_close(op @ V, dense @ V, rtol=1e-9, atol=1e-13)


def test_submodule_as_params():
    model, loss_fn, data = mlp(), nn.CrossEntropyLoss(), case_data("mlp-ce-mean")
    by_module = HessianOperator(model, loss_fn, data, params=model[3])
    by_name = HessianOperator(model, loss_fn, data, params="3")
    assert by_module.param_names == by_name.param_names == ["3.weight", "3.bias"]


def test_ggn_equals_hessian_for_a_linear_model_with_mse():
    torch.manual_seed(4)
    model = nn.Linear(5, 3).to(DT)
    x, y = torch.randn(20, 5, dtype=DT), torch.randn(20, 3, dtype=DT)
    H = HessianOperator(model, nn.MSELoss(), (x, y)).to_dense()
    G = GGNOperator(model, nn.MSELoss(), (x, y)).to_dense()
    assert_close(G, H, rtol=1e-12, atol=1e-14)


def test_nll_ggn_equals_cross_entropy_ggn_on_logits():
    model, data = mlp(), case_data("mlp-ce-mean")
    with_log_softmax = nn.Sequential(model, nn.LogSoftmax(dim=1))
    G_ce = GGNOperator(model, nn.CrossEntropyLoss(), data).to_dense()
    G_nll = GGNOperator(with_log_softmax, nn.NLLLoss(), data).to_dense()
    assert_close(G_nll, G_ce, rtol=1e-9, atol=1e-13)


def test_ggn_bce_with_logits_weights_against_dense():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)
    x = torch.randn(11, 4, dtype=DT)
    y = (torch.rand(11, 3) > 0.5).to(DT)
    loss_fn = nn.BCEWithLogitsLoss(
        weight=torch.rand(3, dtype=DT) + 0.5, pos_weight=torch.tensor([1.0, 2.0, 3.0], dtype=DT)
    )
    G = GGNOperator(model, loss_fn, (x, y)).to_dense()
    assert_close(G, dense_ggn(model, loss_fn, x, y), rtol=1e-9, atol=1e-14)


def test_ggn_cross_entropy_with_ignore_index_and_label_smoothing():
    model, data = mlp(), case_data("mlp-ce-mean")
    x, y = concat(data)
    y = y.clone()
    y[::5] = -100
    for loss_fn in (nn.CrossEntropyLoss(), nn.CrossEntropyLoss(label_smoothing=0.1)):
        G = GGNOperator(model, loss_fn, (x, y)).to_dense()
        assert_close(G, dense_ggn(model, loss_fn, x, y), rtol=1e-9, atol=1e-13)


def _batch_statistics(model, on):
    """Switch BatchNorm to batch statistics without running-stat updates (or back to eval)."""
    model.train(on)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = not on


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_batchnorm_train_mode_uses_batch_statistics_per_batch(kind):
    model, loss_fn, data = bn_cnn(), nn.CrossEntropyLoss(), case_data("cnn")
    op_class = HessianOperator if kind == "hessian" else GGNOperator
    op = op_class(model, loss_fn, data, batchnorm="train")
    V = torch.randn(op.shape[0], 2, dtype=DT)
    # reference: batch-statistics BatchNorm is a per-batch function, weighted by B_b / N
    reference = torch.zeros_like(V)
    _batch_statistics(model, True)
    for x, y in data:
        if kind == "hessian":
            dense = dense_hessian_by_differences(model, loss_fn, x, y)
        else:
            dense = dense_ggn(model, loss_fn, x, y)
        reference += len(x) / 70 * dense @ V
    _batch_statistics(model, False)
    # central differences carry an O(eps^2) ~ 1e-9 truncation error
    rtol, atol = (1e-6, 1e-8) if kind == "hessian" else (1e-9, 1e-13)
    assert_close(op @ V, reference, rtol=rtol, atol=atol)
    eval_product = op_class(model, loss_fn, data) @ V
    assert (eval_product - reference).abs().max() > 1e-3  # the two policies really differ


@pytest.mark.parametrize("batchnorm", ["eval", "train"])
def test_ggn_single_vector_dual_numbers_match_dense_and_block_path(batchnorm):
    """One vector goes through forward-mode dual numbers, a block through torch.func vmaps."""
    model, loss_fn, data = bn_cnn(), nn.CrossEntropyLoss(), case_data("cnn")
    op = GGNOperator(model, loss_fn, data, batchnorm=batchnorm)
    v = torch.randn(op.shape[0], dtype=DT)
    reference = torch.zeros_like(v)
    _batch_statistics(model, batchnorm == "train")
    for x, y in data:
        reference += len(x) / 70 * dense_ggn(model, loss_fn, x, y) @ v
    _batch_statistics(model, False)
    single = op @ v
    assert op._forward_mode_works  # the dual path really ran
    assert_close(single, reference, rtol=1e-9, atol=1e-13)
    block = op @ torch.stack([v, -v], dim=1)  # the vmapped path
    assert_close(block[:, 0], single, rtol=1e-10, atol=1e-14)


class _NoForwardMode(torch.autograd.Function):
    """tanh as a custom Function with a (twice differentiable) backward but no jvp formula."""

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        return grad_output * (1 - y * y)


def test_ggn_falls_back_when_an_operation_has_no_forward_mode_formula():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(64, 5), nn.Linear(5, 10)

        def forward(self, x):
            return self.fc2(_NoForwardMode.apply(self.fc1(x)))

    torch.manual_seed(4)
    model, loss_fn = Net().to(DT), nn.CrossEntropyLoss()
    data = list(digits(flatten=True))
    op = GGNOperator(model, loss_fn, data)
    V = torch.randn(op.shape[0], 3, dtype=DT)
    # reference: the same network with plain tanh (torch.func's dense GGN needs forward mode)
    plain = Net().to(DT)
    plain.load_state_dict(model.state_dict())
    plain.forward = lambda x: plain.fc2(torch.tanh(plain.fc1(x)))
    dense = sum(len(x) / 70 * dense_ggn(plain, loss_fn, x, y) for x, y in data)
    assert_close(op @ V[:, 0], dense @ V[:, 0], rtol=1e-9, atol=1e-13)
    assert not op._forward_mode_works  # it fell back to reverse mode
    assert_close(op @ V, dense @ V, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("batchnorm", ["eval", "train"])
@pytest.mark.parametrize("op_class", [HessianOperator, GGNOperator])
def test_model_state_is_exactly_restored(batchnorm, op_class):
    model, loss_fn, data = bn_cnn(), nn.CrossEntropyLoss(), case_data("cnn")
    model.train()  # the user left it training
    model.features[0].weight.requires_grad_(False)  # and froze a layer
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = snapshot(model)
    op = op_class(model, loss_fn, data, batchnorm=batchnorm)
    op @ torch.randn(op.shape[0], 2, dtype=DT)
    assert "features.0.weight" not in op.param_names
    assert_same_state(model, before)


def test_frozen_parameter_chosen_explicitly():
    model, loss_fn, data = mlp(), nn.CrossEntropyLoss(), case_data("mlp-ce-mean")
    model[1].weight.requires_grad_(False)
    op = HessianOperator(model, loss_fn, data, params="1.weight")
    x, y = concat(data)
    dense = dense_hessian(model, loss_fn, x, y, params="1.weight")
    v = torch.randn(op.shape[0], dtype=DT)
    assert_close(op @ v, dense @ v, rtol=1e-9, atol=1e-13)
    assert model[1].weight.requires_grad is False


def test_frozen_parameter_chosen_explicitly_with_kept_graphs():
    # the products through kept graphs differentiate with respect to the chosen frozen
    # parameter too: it needs requires_grad during each product, not only while building
    model, loss_fn, data = mlp(), nn.CrossEntropyLoss(), case_data("mlp-ce-mean")
    model[1].bias.requires_grad_(False)
    op = HessianOperator(model, loss_fn, data, params="1", keep_graphs=True)
    x, y = concat(data)
    dense = dense_hessian(model, loss_fn, x, y, params="1")
    block = torch.randn(op.shape[0], 3, dtype=DT)
    for _ in range(2):  # the first product builds the graphs, the second reuses them
        assert_close(op @ block, dense @ block, rtol=1e-9, atol=1e-13)
    assert model[1].bias.requires_grad is False and model[1].weight.requires_grad is True


def test_dict_batches_and_custom_layout_with_two_inputs():
    model, loss_fn, data = mlp(), nn.CrossEntropyLoss(), case_data("mlp-ce-mean")
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=DT)
    expected = HessianOperator(model, loss_fn, data) @ v
    dict_batches = [{"inputs": x, "targets": y} for x, y in data]
    assert_close(
        HessianOperator(model, loss_fn, dict_batches) @ v, expected, rtol=1e-12, atol=1e-15
    )

    class TwoInputs(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, a, b):
            return self.inner(a + b)

    two = TwoInputs(model)
    split = [((x * 0.25, x * 0.75), {"label": y}) for x, y in data]
    op = HessianOperator(two, loss_fn, split, batch_layout=lambda b: (b[0], b[1]["label"]))
    assert_close(op @ v, expected, rtol=1e-9, atol=1e-13)


def test_to_scipy_and_float32():
    model = mlp().float()
    data = [(x.float(), y) for x, y in digits()]
    op = GGNOperator(model, nn.CrossEntropyLoss(), data)
    assert op.dtype == torch.float32
    v = torch.randn(op.shape[0])
    sp = op.to_scipy()
    assert sp.shape == op.shape
    assert_close(torch.from_numpy(sp.matvec(v.numpy())), op @ v, rtol=1e-6, atol=1e-8)


def test_flatten_unflatten_round_trip():
    model = mlp()
    op = HessianOperator(model, nn.CrossEntropyLoss(), case_data("mlp-ce-mean"))
    v = torch.randn(op.shape[0], dtype=DT)
    parts = op.unflatten(v)
    assert [p.shape for p in parts] == [p.shape for p in op.params]
    assert torch.equal(op.flatten(parts), v)


def test_doctests():
    from jupyter_curvature.operators import base, hessian

    for module in (base, hessian):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0


# ----------------------------------------------------------------------- bad input
def test_error_non_scalar_loss():
    with pytest.raises(ValueError, match="reduction"):
        HessianOperator(mlp(), nn.CrossEntropyLoss(reduction="none"), digits())
    with pytest.raises(ValueError, match="scalar"):
        HessianOperator(mlp(), lambda o, y: F.cross_entropy(o, y, reduction="none"), digits())


def test_error_loss_independent_of_params():
    with pytest.raises(ValueError, match="not computed from the model outputs"):
        HessianOperator(mlp(), lambda o, y: torch.zeros((), dtype=DT), digits())
    model = nn.Sequential(mlp(), nn.Linear(3, 3).double())  # the extra layer is never called
    model.forward = model[0].forward
    with pytest.raises(ValueError, match="does not depend"):
        HessianOperator(model, nn.CrossEntropyLoss(), digits(), params="1")


def test_error_nan_loss_names_the_batch():
    data = case_data("mlp-ce-mean")
    bad = [data[0], (torch.full_like(data[1][0], float("nan")), data[1][1]), data[2]]
    model = mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match="batch 1"):  # found by the passes of the check
        HessianOperator(model, nn.CrossEntropyLoss(), bad)
    op = HessianOperator(model, nn.CrossEntropyLoss(), bad, check_deterministic=False)
    with pytest.raises(ValueError, match="batch 1"):  # first batch is fine: found by a product
        op @ torch.randn(op.shape[0], dtype=DT)
    assert_same_state(model, before)


def test_error_empty_data():
    with pytest.raises(ValueError, match="empty"):
        HessianOperator(mlp(), nn.CrossEntropyLoss(), [])


def test_error_no_trainable_parameters():
    model = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        HessianOperator(model, nn.CrossEntropyLoss(), digits())
    with pytest.raises(ValueError, match="matches no parameter"):
        HessianOperator(mlp(), nn.CrossEntropyLoss(), digits(), params="features.*")


@pytest.mark.parametrize(
    "vector, match",
    [
        (torch.zeros(3, dtype=DT), "shape"),
        (torch.zeros(10, 10, 10, dtype=DT), "shape"),
        (None, "torch.Tensor"),
        ("float32", "dtype"),
        ("meta", "lives on"),
    ],
)
def test_error_bad_vector(vector, match):
    op = HessianOperator(mlp(), nn.CrossEntropyLoss(), digits())
    if vector == "float32":
        vector = torch.zeros(op.shape[0], dtype=torch.float32)
    elif vector == "meta":
        vector = torch.zeros(op.shape[0], dtype=DT, device="meta")
    with pytest.raises((ValueError, TypeError), match=match):
        op @ vector


def test_error_batch_layout_not_understood():
    with pytest.raises(TypeError, match="batch_layout"):
        HessianOperator(mlp(), nn.CrossEntropyLoss(), [(torch.zeros(2, 64, dtype=DT),)])
    with pytest.raises(TypeError, match="keys"):
        HessianOperator(mlp(), nn.CrossEntropyLoss(), [{"image": torch.zeros(2, 64)}])
    with pytest.raises(TypeError, match="one-shot iterator"):
        HessianOperator(mlp(), nn.CrossEntropyLoss(), iter(digits()))
    with pytest.raises(TypeError, match="DataLoader"):
        HessianOperator(mlp(), nn.CrossEntropyLoss(), 3)


def test_error_ggn_unsupported_loss():
    with pytest.raises(ValueError, match="HessianOperator"):
        GGNOperator(mlp(), nn.L1Loss(), digits())
    soft = [(x, F.one_hot(y, 10).to(DT)) for x, y in digits()]
    with pytest.raises(ValueError, match="class weights and class-probability"):
        weighted = nn.CrossEntropyLoss(weight=torch.ones(10, dtype=DT))
        GGNOperator(mlp(), weighted, soft) @ torch.zeros(
            sum(p.numel() for p in mlp().parameters()), dtype=DT
        )
    with pytest.raises(ValueError, match="log-probabilities"):
        GGNOperator(mlp(), nn.NLLLoss(), digits()) @ torch.zeros(
            sum(p.numel() for p in mlp().parameters()), dtype=DT
        )


def test_error_bad_batchnorm_policy_and_types():
    with pytest.raises(ValueError, match="batchnorm"):
        HessianOperator(mlp(), nn.CrossEntropyLoss(), digits(), batchnorm="frozen")
    with pytest.raises(TypeError, match="nn.Module"):
        HessianOperator(lambda x: x, nn.CrossEntropyLoss(), digits())
    with pytest.raises(TypeError, match="callable"):
        HessianOperator(mlp(), "cross_entropy", digits())


def test_error_model_state_kept_after_construction_error():
    model = bn_cnn()
    model.train()
    before = snapshot(model)
    with pytest.raises(ValueError):
        HessianOperator(model, lambda o, y: o, case_data("cnn"))
    assert_same_state(model, before)


def test_public_exports():
    import jupyter_curvature as jc

    assert jc.HessianOperator is ops.HessianOperator
    assert jc.GGNOperator is ops.GGNOperator


@pytest.mark.parametrize("name", ["mlp-ce-mean", "cnn-bn-eval-ce"])
def test_kept_graphs_equal_fresh_products_and_follow_weight_changes(name):
    make_model, make_loss = CASES[name]
    model, loss_fn, data = make_model(), make_loss(), case_data(name)
    fresh = HessianOperator(model, loss_fn, data)
    kept = HessianOperator(model, loss_fn, data, keep_graphs=True)
    V = torch.randn(fresh.shape[0], 3, dtype=DT)
    for _ in range(2):  # the second product reuses the graphs
        assert_close(kept @ V, fresh @ V, rtol=1e-12, atol=1e-14)
    before = snapshot(model)
    assert_same_state(model, before)
    with torch.no_grad():  # a training step in between: the graphs must be rebuilt
        for p in model.parameters():
            p.add_(0.01)
    x, y = concat(data)
    if name.startswith("mlp"):
        assert_close(kept @ V, dense_hessian(model, loss_fn, x, y) @ V, rtol=1e-9, atol=1e-13)
    assert_close(kept @ V, fresh @ V, rtol=1e-12, atol=1e-14)
    kept.release_graphs()
    assert_close(kept @ V[:, 0], fresh @ V[:, 0], rtol=1e-12, atol=1e-14)


def _sgd_through_data(model):  # a hand-written step: .data edits leave _version alone
    for p in model.parameters():
        p.data -= 0.5 * torch.randn_like(p)


def _replace_data(model):
    for p in model.parameters():
        p.data = p.data * 1.5


def _optimizer_step(model):  # torch.optim steps under no_grad, moving the versions
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    torch.optim.SGD(model.parameters(), lr=0.5).step()


def _running_statistics(model):  # BatchNorm buffers an eval-mode product reads
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.data += 0.3
            m.running_var.data *= 2.0


@pytest.mark.parametrize(
    "change", [_sgd_through_data, _replace_data, _optimizer_step, _running_statistics]
)
@pytest.mark.parametrize("name", ["mlp-ce-mean", "cnn-bn-eval-ce"])
def test_kept_graphs_are_rebuilt_after_any_change_of_values(name, change):
    make_model, make_loss = CASES[name]
    model, loss_fn, data = make_model(), make_loss(), case_data(name)
    kept = HessianOperator(model, loss_fn, data, keep_graphs=True)
    V = torch.randn(kept.shape[0], 2, dtype=DT)
    before = kept @ V  # builds and keeps the graphs
    torch.manual_seed(1)
    change(model)
    fresh = HessianOperator(model, loss_fn, data) @ V
    if name.startswith("mlp"):
        x, y = concat(data)
        assert_close(fresh, dense_hessian(model, loss_fn, x, y) @ V, rtol=1e-9, atol=1e-13)
    if change is not _running_statistics or name.startswith("cnn"):
        assert not torch.allclose(before, fresh)  # the change matters to the product
    assert_close(kept @ V, fresh, rtol=1e-12, atol=1e-14)
    assert_close(kept @ V, fresh, rtol=1e-12, atol=1e-14)  # the rebuilt graphs, reused


def test_block_falls_back_to_columns_when_batching_fails(monkeypatch):
    model, loss_fn, data = mlp(), nn.CrossEntropyLoss(), case_data("mlp-ce-mean")
    op = HessianOperator(model, loss_fn, data, vectorize=True)
    V = torch.randn(op.shape[0], 3, dtype=DT)
    expected = HessianOperator(model, loss_fn, data) @ V
    assert_close(op @ V, expected, rtol=1e-12, atol=1e-14)
    real_grad = torch.autograd.grad

    def no_batching(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("no batching rule")
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_batching)
    assert_close(op @ V, expected, rtol=1e-12, atol=1e-14)


class _Square(torch.autograd.Function):
    """``x^2`` whose double backward has no batching rule (an in-place product of an unbatched
    tensor by a batched one), as a user's custom Function may have."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _SquareGrad.apply(grad, x)


class _SquareGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad, x):
        ctx.save_for_backward(grad, x)
        return 2 * grad * x

    @staticmethod
    def backward(ctx, grad_out):
        grad, x = ctx.saved_tensors
        return (2 * x).mul_(grad_out), 2 * grad_out * grad  # mul_: fails when batched


class _SquareNet(nn.Module):
    def __init__(self, custom: bool = True):
        super().__init__()
        self.first, self.last = nn.Linear(5, 4), nn.Linear(4, 3)
        self.square = _Square.apply if custom else torch.square

    def forward(self, x):
        return self.last(self.square(torch.tanh(self.first(x))))


def test_a_batched_backward_failing_part_way_falls_back_with_the_graph_whole():
    """On a fresh graph the first batched backward keeps the graph, so one that fails after
    autograd freed part of it leaves it whole for the column loop; later products go straight
    to the loop (no failing try each time)."""
    torch.manual_seed(0)
    model = _SquareNet().double()
    x, y = torch.randn(6, 5, dtype=DT), torch.randint(0, 3, (6,))
    loss_fn = nn.CrossEntropyLoss()
    op = HessianOperator(model, loss_fn, (x, y), vectorize=True)
    V = torch.randn(op.shape[0], 3, dtype=DT)
    plain = _SquareNet(custom=False).double()
    plain.load_state_dict(model.state_dict())
    expected = dense_hessian(plain, loss_fn, x, y) @ V
    assert_close(op @ V, expected, rtol=1e-12, atol=1e-14)
    assert op._batches_backward is False
    assert_close(op @ V, expected, rtol=1e-12, atol=1e-14)


class _SequenceLogits(nn.Module):
    """``(B, C, T)`` logits: cross-entropy over the class dimension 1 at every position."""

    def __init__(self, classes=3, length=4):
        super().__init__()
        self.shape = (classes, length)
        self.layer = nn.Linear(3, classes * length)

    def forward(self, x):
        return torch.tanh(self.layer(x)).reshape(-1, *self.shape)


def _ignored_labels(sequence: bool):
    """Ten samples in batches of 3, 4, 3; labels ignored unevenly (the first batch most)."""
    torch.manual_seed(0)
    if sequence:
        model = _SequenceLogits().double()
        x, y = torch.randn(10, 3, dtype=DT), torch.randint(0, 3, (10, 4))
        y[:3, :3] = -100
    else:
        model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).double()
        x, y = torch.randn(10, 3, dtype=DT), torch.randint(0, 3, (10,))
        y[:2] = -100
    return model, x, y, [(x[:3], y[:3]), (x[3:7], y[3:7]), (x[7:], y[7:])]


_W = torch.tensor([0.2, 1.0, 5.0], dtype=DT)
_CLASS_INDEX_LOSSES = {
    "ignore_index": nn.CrossEntropyLoss(),
    "class-weights": nn.CrossEntropyLoss(weight=_W),
    "weights+smoothing": nn.CrossEntropyLoss(weight=_W, label_smoothing=0.1),
    "weights+smoothing, sum": nn.CrossEntropyLoss(weight=_W, label_smoothing=0.2, reduction="sum"),
    "F.cross_entropy": F.cross_entropy,
}


@pytest.mark.parametrize("sequence", [False, True], ids=["(B,C)", "(B,C,T)"])
@pytest.mark.parametrize("name", list(_CLASS_INDEX_LOSSES))
@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_cross_entropy_mean_over_batches_divides_by_all_counted_weights(kind, name, sequence):
    """torch's mean divides by the summed class weights of the counted labels, so a batch
    enters the mean over the data by that sum, not by its size: the operator over three
    uneven batches equals the dense curvature of the loss over all ten samples at once."""
    model, x, y, data = _ignored_labels(sequence)
    loss_fn = _CLASS_INDEX_LOSSES[name]
    op_class, reference = (
        (HessianOperator, dense_hessian) if kind == "hessian" else (GGNOperator, dense_ggn)
    )
    assert_close(
        op_class(model, loss_fn, data).to_dense(),
        reference(model, loss_fn, x, y),
        rtol=1e-9,
        atol=1e-13,
    )


def test_nll_with_class_weights_and_ignored_labels_over_batches():
    """NLL on log-probabilities: its Hessian directly; its GGN is the cross-entropy GGN of the
    logits before ``log_softmax`` (module docstring of ``loss_hessians``)."""
    logits, x, y, _ = _ignored_labels(False)
    model = nn.Sequential(logits, nn.LogSoftmax(dim=1))
    data = [(x[:3], y[:3]), (x[3:7], y[3:7]), (x[7:], y[7:])]
    nll = nn.NLLLoss(weight=_W)
    H = HessianOperator(model, nll, data).to_dense()
    assert_close(H, dense_hessian(model, nll, x, y), rtol=1e-9, atol=1e-13)
    G = GGNOperator(model, nll, data).to_dense()
    assert_close(G, dense_ggn(logits, nn.CrossEntropyLoss(weight=_W), x, y), rtol=1e-9, atol=1e-13)


def test_batch_whose_labels_are_all_ignored_adds_nothing():
    """Its own mean is 0/0 (torch gives NaN): it is skipped, and data with no counted label
    at all fails with a clear error."""
    model, x, y, _ = _ignored_labels(False)
    y = y.clone()
    y[:3] = -100
    data = [(x[:3], y[:3]), (x[3:], y[3:])]
    loss_fn = nn.CrossEntropyLoss()
    op = HessianOperator(model, loss_fn, data)
    assert_close(op.to_dense(), dense_hessian(model, loss_fn, x, y), rtol=1e-9, atol=1e-13)
    assert op.num_samples == 7
    with pytest.raises(ValueError, match="no label counts"):
        HessianOperator(model, loss_fn, [(x[:3], y[:3])])


def test_empirical_fisher_refuses_samples_of_unequal_weight():
    """A sample's own mean loss is its share of the data's only when all samples weigh the
    same; equal weights (every position of a sequence counted) still match the loop."""
    model, x, y, data = _ignored_labels(False)
    with pytest.raises(ValueError, match="TokenCrossEntropy"):
        EmpiricalFisherOperator(model, nn.CrossEntropyLoss(), data).to_dense()
    model, x, y, _ = _ignored_labels(True)
    y = torch.randint(0, 3, y.shape)
    data = [(x[:3], y[:3]), (x[3:], y[3:])]
    F_op = EmpiricalFisherOperator(model, nn.CrossEntropyLoss(), data).to_dense()
    assert_close(
        F_op, dense_empirical_fisher(model, nn.CrossEntropyLoss(), x, y), rtol=1e-9, atol=1e-13
    )


def test_reshuffling_loader_with_ignored_labels_is_accepted():
    """With batches weighted by their counted labels, a reshuffled pass is the same risk: the
    determinism check accepts it, and the products equal the dense matrix."""
    from torch.utils.data import DataLoader, TensorDataset

    model, x, y, _ = _ignored_labels(False)
    loader = DataLoader(TensorDataset(x, y), batch_size=3, shuffle=True)
    # summed class weights round by the batches' order: equal to 1e-12, not bitwise
    for loss_fn in (
        nn.CrossEntropyLoss(),
        nn.CrossEntropyLoss(weight=torch.tensor([0.1, 0.7, 0.3], dtype=DT)),
    ):
        H = HessianOperator(model, loss_fn, loader).to_dense()
        assert_close(H, dense_hessian(model, loss_fn, x, y), rtol=1e-9, atol=1e-13)
