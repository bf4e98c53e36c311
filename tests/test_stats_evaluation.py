"""Evaluation and BatchNorm recalibration against direct computation."""

from __future__ import annotations

import pytest
import torch
from reference import assert_close, batches, bn_cnn, digits, tanh_mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from jupyter_curvature.stats import EvaluationResult, bn_update, evaluate

CE = nn.CrossEntropyLoss()


def topk_accuracy(outputs: torch.Tensor, y: torch.Tensor, k: int) -> float:
    top = outputs.argsort(dim=1, descending=True)[:, :k]
    return float((top == y[:, None]).any(1).double().mean())


@pytest.mark.parametrize("model_name", ["tanh-mlp", "bn-cnn"])
def test_loss_and_topk_accuracy_with_uneven_batches(model_name):
    x, y = digits(50)
    model = {"tanh-mlp": tanh_mlp, "bn-cnn": bn_cnn}[model_name]()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)  # 16, 16, 16, 2
    result = evaluate(model, CE, loader, topk=(1, 3, 5))
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert_close(result.loss, CE(out, y), what="mean loss")
    for k in (1, 3, 5):
        assert_close(result.accuracy[f"top{k}"], topk_accuracy(out, y, k), what=f"top{k}")
    assert_close(result.error["top1"], 1 - topk_accuracy(out, y, 1), what="top-1 error")
    assert result.num_samples == 50


def test_sum_reduction_reports_the_mean_loss_and_topk_above_classes_is_left_out():
    x, y = digits(30)
    model = tanh_mlp()
    a = evaluate(model, nn.CrossEntropyLoss(reduction="sum"), batches(x, y, 7), topk=(1, 11))
    b = evaluate(model, CE, (x, y), topk=(1,))
    assert_close(a.loss, b.loss, what="loss")
    assert set(a.accuracy) == {"top1"}


def test_regression_targets_have_no_accuracy():
    torch.manual_seed(0)
    x = torch.randn(20, 3, dtype=torch.float64)
    t = torch.randn(20, 2, dtype=torch.float64)
    model = nn.Linear(3, 2).double()
    result = evaluate(model, nn.MSELoss(), (x, t))
    assert result.accuracy == {}
    assert_close(result.loss, nn.functional.mse_loss(model(x), t), what="MSE")


def test_batchnorm_train_uses_batch_statistics_and_keeps_buffers():
    x, y = digits(48)
    model = bn_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = evaluate(model, CE, batches(x, y, 16), batchnorm="train")
    losses = []
    for xb, yb in batches(x, y, 16):
        model.train()
        with torch.no_grad():
            losses.append(CE(model(xb), yb))
        model.load_state_dict(before)
    assert_close(result.loss, torch.stack(losses).mean(), what="train-mode BN loss")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.training  # restored: the model was built in train mode


def test_dropout_is_off_and_modes_are_restored():
    x, y = digits(30)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.5), nn.Linear(32, 10))
    model.double().train()
    a, b = evaluate(model, CE, (x, y)), evaluate(model, CE, (x, y))
    assert a.loss == b.loss and model.training


def test_bn_update_recomputes_running_statistics_weighted_by_size():
    x, y = digits(50)
    model = bn_cnn()
    model.train()
    bn1 = model.features[1]
    momentum = bn1.momentum
    bn_update(model, DataLoader(TensorDataset(x, y), batch_size=16))  # 16, 16, 16, 2
    # the first BatchNorm sees the first convolution's output: its running mean is the
    # dataset mean of each channel exactly (the short last batch counts for 2 samples)
    with torch.no_grad():
        h = model.features[0](x)
    assert_close(bn1.running_mean, h.mean(dim=(0, 2, 3)), what="running mean")
    # the running variance: the size-weighted mean of per-batch unbiased variances
    var = sum(len(hb) * hb.var(dim=(0, 2, 3), correction=1) for hb in h.split(16)) / 50
    assert_close(bn1.running_var, var, what="running variance")
    assert bn1.momentum == momentum and model.training and all(m.training for m in model.modules())


def test_bn_update_momentum_none_is_restored_and_plain_models_are_untouched():
    x, y = digits(20)
    model = bn_cnn()
    model.features[1].momentum = None
    bn_update(model, (x, y))
    assert model.features[1].momentum is None
    mlp = tanh_mlp()
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    assert bn_update(mlp, (x, y)) is mlp
    assert all(torch.equal(v, before[k]) for k, v in mlp.state_dict().items())


def test_record_prints_and_round_trips(tmp_path):
    x, y = digits(20)
    result = evaluate(tanh_mlp(), CE, (x, y))
    assert "accuracy top1" in str(result)
    assert EvaluationResult.load(result.save(tmp_path / "eval.json")) == result


def test_bad_input():
    x, y = digits(20)
    with pytest.raises(ValueError, match="batchnorm"):
        evaluate(tanh_mlp(), CE, (x, y), batchnorm="frozen")
    with pytest.raises(ValueError, match="topk"):
        evaluate(tanh_mlp(), CE, (x, y), topk=(0,))
    with pytest.raises(ValueError, match="empty"):
        evaluate(tanh_mlp(), CE, [])


def test_mean_loss_and_accuracy_count_only_the_counted_labels_over_batches():
    """Ignored labels and class weights: evaluate, the gradient statistics and the landscape
    give torch's loss over all samples at once, and the accuracy over the counted labels."""
    import jupyter_curvature as jc

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(12, 3, dtype=torch.float64), torch.randint(0, 3, (12,))
    y[:3] = -100
    data = [(x[i : i + 4], y[i : i + 4]) for i in (0, 4, 8)]
    for loss_fn in (
        nn.CrossEntropyLoss(),
        nn.CrossEntropyLoss(weight=torch.tensor([0.2, 1.0, 5.0]).double()),
    ):
        with torch.no_grad():
            true = float(loss_fn(model(x), y))
            counted = y != -100
            right = (model(x).argmax(1) == y)[counted].double().mean().item()
        result = evaluate(model, loss_fn, data, topk=(1,))
        assert result.loss == pytest.approx(true, rel=1e-12)
        assert result.accuracy["top1"] == pytest.approx(right, rel=1e-12)
        stats = jc.gradient_statistics(model, loss_fn, data, batch_size=4)
        assert stats.loss_mean == pytest.approx(true, rel=1e-12)
        assert stats.num_samples == 12
        n = sum(p.numel() for p in model.parameters())
        line = jc.landscape_1d(
            model, loss_fn, data, torch.randn(n, dtype=torch.float64), num_points=3
        )
        assert float(line.train_loss[0, 1]) == pytest.approx(true, rel=1e-12)
        assert float(line.train_accuracy[0, 1]) == pytest.approx(right, rel=1e-12)


def test_sequence_accuracy_takes_classes_on_dimension_one():
    """``(B, C, T)`` logits with ``T == C``: the classes are dimension 1 for cross-entropy,
    whatever the shapes would also allow."""
    import jupyter_curvature as jc

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 16), nn.Unflatten(1, (4, 4))).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 4, (6, 4))
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        right = (model(x).argmax(1) == y).double().mean().item()
    assert evaluate(model, loss_fn, [(x[:3], y[:3]), (x[3:], y[3:])], topk=(1,)).accuracy[
        "top1"
    ] == pytest.approx(right)
    n = sum(p.numel() for p in model.parameters())
    line = jc.landscape_1d(
        model, loss_fn, (x, y), torch.randn(n, dtype=torch.float64), num_points=3
    )
    assert float(line.train_accuracy[0, 1]) == pytest.approx(right)
