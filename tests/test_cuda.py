"""The engine on a CUDA device, checked against float64 references computed on the CPU.

Every test here is marked ``cuda`` and skipped on machines without a GPU (conftest.py). They
run on the lent GPU machine through ``benchmarks/gpu_check.sh``. TF32 is switched off, so
float32 products are true float32 and can be held to float32 tolerances.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from reference import (
    ElementaryLayerNorms,
    MaskedAttention,
    TinyTransformerBlock,
    assert_close,
    dense_ggn,
    dense_hessian,
)
from torch import nn

import jupyter_curvature as jc
from jupyter_curvature.data import digits_loader
from jupyter_curvature.models import MLP, SmallCNN
from jupyter_curvature.operators import GGNOperator, HessianOperator

#: JC_CUDA_TEST_DEVICE=cpu dry-runs these tests on the CPU (checks the tests, not the GPU)
CUDA = os.environ.get("JC_CUDA_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.cuda if CUDA.startswith("cuda") else []
DT = torch.float64


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def bn_cnn(dtype=DT):
    torch.manual_seed(2)
    model = SmallCNN(width=3, batch_norm=True).to(DT)
    with torch.no_grad():  # non-trivial running statistics (drawn in float64 for every dtype)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.to(dtype).eval()


def digits(dtype=DT, device="cpu", flatten=False):
    """70 samples in batches of 32 (the last one short), on ``device``."""
    loader = digits_loader(batch_size=32, limit=70, dtype=dtype, flatten=flatten)
    return [(x.to(device), y.to(device)) for x, y in loader]


def dense_reference(kind, model, loss_fn, batches):
    dense = dense_hessian if kind == "hessian" else dense_ggn
    return sum(len(y) / 70 * dense(model, loss_fn, x, y) for x, y in batches)


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_products_on_cuda_float64_equal_the_dense_cpu_reference(kind):
    model, loss_fn = bn_cnn(), nn.CrossEntropyLoss()
    dense = dense_reference(kind, model, loss_fn, digits())
    op_class = HessianOperator if kind == "hessian" else GGNOperator
    op = op_class(model.to(CUDA), loss_fn, digits(device=CUDA))
    V = torch.randn(op.shape[0], 3, dtype=DT)
    assert op.device.type == torch.device(CUDA).type
    single = op @ V[:, 0].to(CUDA)
    block = op @ V.to(CUDA)
    assert single.device.type == torch.device(CUDA).type
    assert_close(single.cpu(), dense @ V[:, 0], rtol=1e-9, atol=1e-12)
    assert_close(block.cpu(), dense @ V, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("keep_graphs", [False, True])
def test_lean_layer_norm_and_gelu_routes_on_cuda_equal_the_dense_cpu_reference(keep_graphs):
    """The Hessian's LayerNorm and GELU double backwards (torch's CUDA kernels inside) in
    float64 on the device against the dense CPU Hessian with LayerNorm in elementary
    operations (torch.func's own Hessian of ``F.layer_norm`` is wrong)."""
    model, loss_fn = TinyTransformerBlock().double(), nn.CrossEntropyLoss()
    x, y = torch.randn(6, 12, dtype=DT), torch.randint(0, 3, (6,))
    with ElementaryLayerNorms():
        dense = dense_hessian(model, loss_fn, x, y)
    op = HessianOperator(model.to(CUDA), loss_fn, (x.to(CUDA), y.to(CUDA)), keep_graphs=keep_graphs)
    assert op._reroute is True
    V = torch.randn(op.shape[0], 3, dtype=DT)
    assert_close((op @ V.to(CUDA)).cpu(), dense @ V, rtol=1e-9, atol=1e-12)


def test_masked_attention_hessian_on_cuda_equals_the_dense_cpu_reference():
    """Attention through the math kernel (causal and padding masks, a query with no key) and
    an explicit softmax, float64 on the device, against the dense CPU Hessian of the same
    block in elementary operations."""
    model, loss_fn = MaskedAttention().double(), nn.CrossEntropyLoss()
    reference = MaskedAttention(fused=False).double()
    reference.load_state_dict(model.state_dict())
    x, y = torch.randn(3, 5, 4, dtype=DT), torch.tensor([0, 2, 1])
    dense = dense_hessian(reference, loss_fn, x, y)
    op = HessianOperator(model.to(CUDA), loss_fn, (x.to(CUDA), y.to(CUDA)), keep_graphs=True)
    assert op._reroute is True
    V = torch.randn(op.shape[0], 3, dtype=DT)
    assert_close((op @ V.to(CUDA)).cpu(), dense @ V, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_products_on_cuda_float32_within_float32_rounding(kind):
    model64, loss_fn = bn_cnn(), nn.CrossEntropyLoss()
    dense = dense_reference(kind, model64, loss_fn, digits())
    model = bn_cnn(torch.float32).to(CUDA)
    op_class = HessianOperator if kind == "hessian" else GGNOperator
    op = op_class(model, loss_fn, digits(torch.float32, CUDA))
    v = torch.randn(op.shape[0], dtype=DT)
    product = (op @ v.float().to(CUDA)).double().cpu()
    expected = dense @ v
    # float32: relative error a few hundred ulps of the product's norm, far below TF32's 1e-3
    assert (product - expected).norm() / expected.norm() < 1e-4


@pytest.mark.skipif(not CUDA.startswith("cuda"), reason="needs two devices")
def test_vector_on_the_wrong_device_is_a_clear_error():
    model = bn_cnn().to(CUDA)
    op = HessianOperator(model, nn.CrossEntropyLoss(), digits(device=CUDA))
    with pytest.raises(ValueError, match=r"v is on cpu but the operator lives on cuda"):
        op @ torch.zeros(op.shape[0], dtype=DT)


def _dense_spectrum(model, loss_fn, batches):
    return torch.linalg.eigvalsh(dense_reference("hessian", model, loss_fn, batches))


@pytest.mark.parametrize("basis_device", [None, "cpu"])
def test_eigenpairs_on_cuda_are_certified_and_exact(basis_device):
    model, loss_fn = bn_cnn(), nn.CrossEntropyLoss()
    exact = _dense_spectrum(model, loss_fn, digits())
    op = HessianOperator(model.to(CUDA), loss_fn, digits(device=CUDA))
    result = jc.eigenpairs(op, k=5, tol=1e-9, seed=0, basis_device=basis_device)
    assert bool(np.all(result.converged))
    top = exact.flip(0)[:5].numpy()
    scale = exact.abs().max().item()
    assert np.max(np.abs(np.asarray(result.eigenvalues) - top)) <= 1e-8 * scale
    vectors = torch.as_tensor(result.eigenvectors, dtype=DT).to(CUDA)
    values = torch.as_tensor(np.asarray(result.eigenvalues), dtype=DT, device=CUDA)
    residuals = op @ vectors - vectors * values
    np.testing.assert_allclose(
        residuals.norm(dim=0).cpu().numpy(), np.asarray(result.residuals), rtol=1e-3, atol=1e-12
    )


def test_spectral_density_on_cuda_equals_the_cpu_run():
    model, loss_fn = bn_cnn(), nn.CrossEntropyLoss()
    cpu = jc.spectral_density(HessianOperator(model, loss_fn, digits()), num_iters=20, num_probes=3)
    gpu_op = HessianOperator(model.to(CUDA), loss_fn, digits(device=CUDA))
    gpu = jc.spectral_density(gpu_op, num_iters=20, num_probes=3)
    assert_close(torch.as_tensor(gpu.ritz_values), torch.as_tensor(cpu.ritz_values), rtol=1e-9)
    assert_close(torch.as_tensor(gpu.weights), torch.as_tensor(cpu.weights), rtol=1e-7, atol=1e-12)


def test_trace_on_cuda_matches_the_exact_trace():
    model, loss_fn = bn_cnn(), nn.CrossEntropyLoss()
    exact = torch.trace(dense_reference("ggn", model, loss_fn, digits())).item()
    op = GGNOperator(model.to(CUDA), loss_fn, digits(device=CUDA))
    estimate = jc.trace(op, method="hutch++", num_matvecs=3 * op.shape[0], seed=0)
    # Hutch++ with as many probes as the dimension sketches the whole range: exact
    assert estimate.estimate == pytest.approx(exact, rel=1e-8)


def test_hutchpp_remainder_on_a_float32_cuda_operator_matches_the_cpu_float64_run():
    """Hutch++'s remainder is the composite ``A.projected(Q)``: on a float32 GPU operator the
    float64 sketch is projected in float32; the estimate stays the float64 one to rounding."""
    model, loss_fn = bn_cnn(), nn.CrossEntropyLoss()
    cpu = jc.trace(GGNOperator(model, loss_fn, digits()), num_matvecs=30, seed=4)
    model32 = bn_cnn(torch.float32).to(CUDA)
    gpu = jc.trace(GGNOperator(model32, loss_fn, digits(torch.float32, CUDA)), num_matvecs=30,
                   seed=4)  # fmt: skip
    assert gpu.num_matvecs == cpu.num_matvecs == 30 and gpu.method == "hutch++"
    assert gpu.estimate == pytest.approx(cpu.estimate, rel=1e-4)


def test_landscape_on_cuda_equals_the_cpu_landscape():
    torch.manual_seed(0)
    model, loss_fn = MLP(in_features=64, hidden=(8,), num_classes=10).to(DT), nn.CrossEntropyLoss()
    data = digits(flatten=True)
    directions = jc.landscape.random_directions(model, 2, seed=0)
    cpu = jc.landscape_2d(model, loss_fn, data, directions, span=0.5, num_points=5)
    gpu_data = [(x.to(CUDA), y.to(CUDA)) for x, y in data]
    gpu = jc.landscape_2d(model.to(CUDA), loss_fn, gpu_data, directions, span=0.5, num_points=5)
    np.testing.assert_allclose(gpu.train_loss, cpu.train_loss, rtol=1e-10)
    # accuracy is a count over 70 samples: the counts agree exactly (the means may differ
    # in the last bit through the summation order on the GPU)
    np.testing.assert_array_equal(
        np.rint(gpu.train_accuracy * 70), np.rint(cpu.train_accuracy * 70)
    )


def test_training_step_on_cuda_equals_the_cpu_step():
    """One SGD and one K-FAC step in float64: the same weights on both devices."""
    for name in ("sgd", "kfac"):
        results = []
        for device in ("cpu", CUDA):
            torch.manual_seed(0)
            model = MLP(in_features=64, hidden=(8,), num_classes=10).to(DT).to(device)
            optimizer = jc.optim.create_optimizer(name, model, lr=0.1)
            x, y = digits(device=device, flatten=True)[0]
            for _ in range(2):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
            results.append(torch.cat([p.detach().cpu().reshape(-1) for p in model.parameters()]))
        assert_close(results[1], results[0], rtol=1e-10, atol=1e-12, what=name)


def test_gradient_statistics_on_cuda_equal_the_cpu_ones():
    torch.manual_seed(0)
    model, loss_fn = MLP(in_features=64, hidden=(8,), num_classes=10).to(DT), nn.CrossEntropyLoss()
    data = digits(flatten=True)
    cpu = jc.gradient_statistics(model, loss_fn, data, per_sample=True)
    gpu_data = [(x.to(CUDA), y.to(CUDA)) for x, y in data]
    gpu = jc.gradient_statistics(model.to(CUDA), loss_fn, gpu_data, per_sample=True)
    for field in ("loss_mean", "loss_var", "grad_mean_norm_sq", "grad_var", "snr"):
        assert getattr(gpu, field) == pytest.approx(getattr(cpu, field), rel=1e-10), field


def _nccl_product(seed: int):
    """One rank's Hessian product with its shard (every other sample)."""
    import jupyter_curvature.distributed as jd

    rank, world = jd.get_rank(), jd.get_world_size()
    model = bn_cnn().to(f"cuda:{rank}")
    x, y = next(iter(digits_loader(batch_size=70, limit=70, dtype=DT)))
    shard = [(x[rank::world].to(f"cuda:{rank}"), y[rank::world].to(f"cuda:{rank}"))]
    op = HessianOperator(model, nn.CrossEntropyLoss(), shard)
    torch.manual_seed(seed)
    v = torch.randn(op.shape[0], dtype=DT)
    return (op @ v.to(op.device)).cpu()


@pytest.mark.skipif(not CUDA.startswith("cuda"), reason="NCCL needs a GPU")
def test_nccl_product_equals_the_single_process_product():
    import jupyter_curvature.distributed as jd

    world = torch.cuda.device_count()  # NCCL needs one GPU per process
    results = jd.launch(
        _nccl_product, world, (0,), backend="nccl", device=None, timeout=60, join_timeout=240
    )
    model, loss_fn = bn_cnn().to(CUDA), nn.CrossEntropyLoss()
    x, y = next(iter(digits_loader(batch_size=70, limit=70, dtype=DT)))
    op = HessianOperator(model, loss_fn, [(x.to(CUDA), y.to(CUDA))])
    torch.manual_seed(0)
    expected = (op @ torch.randn(op.shape[0], dtype=DT).to(CUDA)).cpu()
    for result in results:
        assert_close(result, expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-9), (torch.float32, 2e-3)])
def test_hugging_face_gpt2_on_cuda_equals_the_cpu(dtype, rtol):
    """A tiny GPT2 with padded dict batches and the token loss: Hessian, GGN and token Fisher
    products, gradient statistics and a landscape line on CUDA equal float64 on the CPU
    (CUDA's fused attention kernels differ from the CPU's; the masks travel as keywords)."""
    pytest.importorskip("transformers")
    import test_transformers as hf
    from torch.utils.data import DataLoader

    def run(device, dt):
        model = hf.tiny_gpt2().to(device=device, dtype=dt)
        loader = DataLoader(hf.lm_samples(), batch_size=3)
        loss = jc.TokenCrossEntropy()
        n = sum(p.numel() for _, p in jc.operators.select_parameters(model, hf.GPT2_PARAMS))
        g = torch.Generator().manual_seed(5)
        V = torch.randn(n, 3, generator=g, dtype=DT)
        out = {}
        for name, cls in (("H", HessianOperator), ("G", GGNOperator), ("F", jc.EmpiricalFisherOperator)):  # fmt: skip
            op = cls(model, loss, loader, params=hf.GPT2_PARAMS)
            out[name + " v"] = (op @ V[:, 0].to(device, dt)).to("cpu", DT)
            out[name + " V"] = (op @ V.to(device, dt)).to("cpu", DT)
        s = jc.gradient_statistics(model, loss, loader, batch_size=2, params=hf.GPT2_PARAMS)
        out["statistics"] = torch.tensor([s.loss_mean, s.grad_mean_norm_sq, s.grad_var])
        line = jc.landscape_1d(
            model,
            loss,
            loader,
            torch.randn(n, generator=g, dtype=DT),
            params=hf.GPT2_PARAMS,
            coords=[-0.5, 0.0, 0.5, 1.0],
            batch_points=4,
        )
        out["landscape"] = torch.tensor(line.train_loss[0], dtype=DT)
        return out

    expected, got = run("cpu", DT), run(CUDA, dtype)
    for key, value in expected.items():
        scale = float(value.abs().max())
        assert_close(got[key], value, rtol=rtol, atol=rtol * scale, what=key)
