"""Distributed curvature on 2 gloo processes equals the single-process results (float64).

The processes are started once for the main comparison (a module fixture runs every
distributed computation in one :func:`launch`, to keep the cost of starting processes low);
the parent process computes the single-process references on the same data and compares.
The data are split unevenly: 70 samples in batches of 16 make 5 batches, 3 on rank 0
(48 samples) and 2 on rank 1 (22 samples).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import jupyter_curvature.distributed as jd
from jupyter_curvature.core.distributed import primitives as op_dist
from jupyter_curvature.operators import GGNOperator, HessianOperator

NUM_SAMPLES, BATCH, WORLD = 70, 16, 2
H_DEVICE = torch.device("cpu")
TOL = 1e-6  # the bar; the observed differences are rounding (about 1e-15)


# ------------------------------------------------------------------ shared problem
def make_problem(hidden: int = 5):
    torch.manual_seed(0)
    x = torch.randn(NUM_SAMPLES, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (NUM_SAMPLES,))
    model = nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 3)).double()
    return model, nn.CrossEntropyLoss(), TensorDataset(x, y)


def probe_block(n: int) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def grid_coords() -> np.ndarray:
    a = np.linspace(-1.0, 1.0, 3)
    return np.stack(np.meshgrid(a, a, indexing="ij"), -1).reshape(-1, 2)  # 9 points


def landscape_directions(model):
    n = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(2)
    return [torch.randn(n, generator=gen, dtype=torch.float64) * 0.3 for _ in range(2)]


def landscape_evaluator(model, loss_fn, dataset):
    from jupyter_curvature.landscape.evaluator import LandscapeEvaluator

    loader = DataLoader(dataset, batch_size=BATCH)  # the full data on every rank
    return LandscapeEvaluator(model, loss_fn, loader, landscape_directions(model), batch_points=1)


def compute_all(model, loss_fn, data, total=None):
    """Every checked computation, through jupyter_curvature.distributed (plain in one process)."""
    H = HessianOperator(model, loss_fn, data)
    G = GGNOperator(model, loss_fn, data)
    V = probe_block(H.shape[0])
    eig = jd.eigenpairs(H, k=2, tol=1e-8, seed=0, total=total)
    density = jd.spectral_density(G, num_iters=12, num_probes=2, seed=0, total=total)
    stats = jd.gradient_statistics(model, loss_fn, data, batch_size=BATCH, total=total)
    surface = jd.evaluate_landscape(
        landscape_evaluator(model, loss_fn, data.dataset), grid_coords()
    )
    plane = jd.landscape_2d(
        model,
        loss_fn,
        DataLoader(data.dataset, batch_size=BATCH),
        landscape_directions(model),
        span=1.0,
        num_points=5,
        coarse=3,
    )
    return {
        "Hv": H @ V,
        "Gv": G @ V,
        "num_samples": H.num_samples,
        "eigenvalues": torch.as_tensor(eig.eigenvalues),
        "eigenvectors": torch.as_tensor(eig.eigenvectors),
        "ritz_values": density.ritz_values,
        "weights": density.weights,
        "stats": stats.to_dict() if hasattr(stats, "to_dict") else vars(stats),
        "landscape": surface,
        "plane": {
            "train_loss": plane.train_loss,
            "train_accuracy": plane.train_accuracy,
            "complete": bool(plane.complete),
        },
    }


def _main_job():
    model, loss_fn, dataset = make_problem()
    loader = jd.shard_loader(dataset, BATCH)
    out = compute_all(model, loss_fn, loader, total=NUM_SAMPLES)
    out["rank"] = jd.get_rank()
    out["shard"] = len(loader.sampler)
    out["counts"] = jd.check_shards(loader, NUM_SAMPLES)
    # bad input, detected on every rank: whole dataset everywhere; a different model
    out["whole_data_error"] = _error(lambda: jd.check_shards(NUM_SAMPLES, NUM_SAMPLES))
    other, _, _ = make_problem(hidden=5 if jd.get_rank() == 0 else 4)
    out["model_error"] = _error(lambda: jd.check_consistent_model(other))
    out["model_ok"] = jd.check_consistent_model(model)
    names, params = zip(*other.named_parameters())
    out["start_error"] = _error(lambda: op_dist.check_start(list(names), list(params), H_DEVICE))
    return out


def _error(fn) -> str:
    try:
        fn()
    except jd.DistributedMismatchError as err:
        return str(err)
    return ""


#: fork: the children inherit the imported, warmed-up torch of the test process (spawn
#: would import torch afresh in every child, several seconds each on a loaded machine)
START = "fork"


@pytest.fixture(scope="module")
def distributed_results(single_results):  # the references first: they warm torch up
    return jd.launch(_main_job, WORLD, timeout=30, join_timeout=120, start_method=START)


@pytest.fixture(scope="module")
def single_results():
    model, loss_fn, dataset = make_problem()
    return compute_all(model, loss_fn, DataLoader(dataset, batch_size=BATCH))


def assert_close(actual, expected, what):
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, what
    err = float((actual - expected).abs().max())
    scale = max(float(expected.abs().max()), 1e-300)
    assert err <= TOL * scale, f"{what}: max |difference| {err:.3e} (scale {scale:.3e})"


# ------------------------------------------------------------------ equality with one process
@pytest.mark.distributed
def test_shards_are_uneven_and_cover_the_data(distributed_results):
    assert [r["shard"] for r in distributed_results] == [48, 22]
    assert distributed_results[0]["counts"] == [48, 22]
    assert all(r["num_samples"] == NUM_SAMPLES for r in distributed_results)


@pytest.mark.distributed
@pytest.mark.parametrize(
    "key", ["Hv", "Gv", "eigenvalues", "eigenvectors", "ritz_values", "weights"]
)
def test_tensor_results_equal_single_process(distributed_results, single_results, key):
    for rank, result in enumerate(distributed_results):
        assert_close(result[key], single_results[key], f"{key} on rank {rank}")
    # the ranks agree bit for bit (one reduced product for all, same seeded Lanczos)
    assert torch.equal(distributed_results[0][key], distributed_results[1][key])


@pytest.mark.distributed
def test_eigenvectors_are_eigenvectors_of_the_full_hessian(distributed_results):
    model, loss_fn, dataset = make_problem()
    H = HessianOperator(model, loss_fn, DataLoader(dataset, batch_size=NUM_SAMPLES))
    dense = H.to_dense()
    expected = torch.linalg.eigvalsh(dense).flip(0)[:2]
    assert_close(distributed_results[0]["eigenvalues"], expected, "eigenvalues vs dense eigvalsh")


@pytest.mark.distributed
def test_gradient_statistics_equal_single_process(distributed_results, single_results):
    ref = single_results["stats"]
    for name in ("loss_mean", "loss_var", "grad_mean_norm_sq", "grad_var", "snr"):
        for rank, result in enumerate(distributed_results):
            assert_close(result["stats"][name], ref[name], f"{name} on rank {rank}")
    for name in ("num_batches", "num_samples", "num_params"):
        assert distributed_results[0]["stats"][name] == ref[name]
    assert ref["num_batches"] == 5


@pytest.mark.distributed
def test_landscape_equals_single_process(distributed_results, single_results):
    ref = single_results["landscape"]
    assert set(distributed_results[0]["landscape"]) == set(ref)
    for metric, values in ref.items():
        for rank, result in enumerate(distributed_results):
            assert_close(result["landscape"][metric], values, f"landscape {metric} on rank {rank}")


@pytest.mark.distributed
def test_bad_shards_and_mismatched_models_are_named(distributed_results):
    for result in distributed_results:
        assert "every rank holds the whole dataset" in result["whole_data_error"]
        assert "rank 0: 70, rank 1: 70" in result["whole_data_error"]
        message = result["model_error"]
        # rank 1's hidden layer has 4 units instead of 5: 6*4+4+4*3+3 = 43 against 53
        assert "rank 1 has 43 parameters" in message and "rank 0: 53" in message
        assert "0.weight: shape [4, 6]" in message
        # the operators' start-up hook (proposed for EmpiricalRiskOperator) says the same
        assert "rank 1 has 43 parameters" in result["start_error"]
        assert result["model_ok"] == 53


@pytest.mark.distributed
def test_landscape_2d_with_split_points_equals_single_process(distributed_results, single_results):
    ref = single_results["plane"]
    assert ref["complete"] and ref["train_loss"].shape == (5, 5)
    for rank, result in enumerate(distributed_results):
        assert result["plane"]["complete"]
        for metric in ("train_loss", "train_accuracy"):
            assert_close(
                result["plane"][metric], ref[metric], f"landscape_2d {metric} on rank {rank}"
            )


# ------------------------------------------------------------------ failures stop everyone
def _failing_job():
    model, loss_fn, dataset = make_problem()
    H = HessianOperator(model, loss_fn, jd.shard_loader(dataset, BATCH))
    if jd.get_rank() == 1:
        raise ValueError("rank one cannot read its shard")
    return H @ probe_block(H.shape[0])  # rank 0 waits in the all-reduce


def _hanging_job():
    model, loss_fn, dataset = make_problem()
    H = HessianOperator(model, loss_fn, jd.shard_loader(dataset, BATCH))
    if jd.get_rank() == 1:
        time.sleep(60)  # stuck, not dead: only the collective timeout can stop rank 0
    return H @ probe_block(H.shape[0])


@pytest.mark.distributed
def test_a_failing_rank_stops_the_others_with_its_error():
    start = time.monotonic()
    with pytest.raises(jd.DistributedRunError, match="rank 1 failed: ValueError: rank one cannot"):
        jd.launch(_failing_job, WORLD, timeout=20, join_timeout=90, start_method=START)
    assert time.monotonic() - start < 90  # no hang (the join timeout was not needed)


@pytest.mark.distributed
def test_a_hanging_rank_times_out_the_others():
    with pytest.raises(jd.DistributedRunError) as info:
        jd.launch(_hanging_job, WORLD, timeout=3, join_timeout=50, start_method=START)
    message = str(info.value)
    assert "rank 0 failed" in message
    assert "all-reduce of a curvature product" in message


# ------------------------------------------------------------------ single-process pieces
@pytest.mark.parametrize(
    "total,world",
    [(t, w) for t in (1, 7, 16, 17, 70, 100) for w in (1, 2, 3) if -(-t // BATCH) >= w],
)
@pytest.mark.parametrize("shuffle", [False, True])
def test_shard_sampler_partitions_along_batches(total, world, shuffle):
    dataset = TensorDataset(torch.arange(total))
    shards = [
        jd.ShardSampler(dataset, BATCH, rank=r, world_size=world, shuffle=shuffle, seed=3)
        for r in range(world)
    ]
    indices = [i for s in shards for i in s]
    assert sorted(indices) == list(range(total))  # every sample exactly once, no padding
    # the ranks' batches, in rank order, are the single-process batches
    single = list(DataLoader(dataset, BATCH, sampler=list(shards[0].order())))
    parts = [b for r in range(world) for b in DataLoader(dataset, BATCH, sampler=shards[r])]
    assert len(parts) == len(single)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(parts, single))
    num_batches = [-(-len(s) // BATCH) for s in shards]
    assert max(num_batches) - min(num_batches) <= 1  # as even as whole batches allow


def test_shard_loader_rejects_padding_options_and_empty_ranks():
    dataset = TensorDataset(torch.arange(20.0))
    with pytest.raises(ValueError, match="drop_last"):
        jd.shard_loader(dataset, 4, rank=0, world_size=2, drop_last=True)
    with pytest.raises(ValueError, match="some rank would get no data"):
        jd.shard_loader(dataset, 16, rank=0, world_size=3)
    with pytest.raises(ValueError, match="rank must be below"):
        jd.ShardSampler(dataset, 4, rank=2, world_size=2)


def test_backend_device_errors(monkeypatch):
    op_dist.check_backend_device(torch.device("meta"))  # no process group: nothing to reduce
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    with pytest.raises(ValueError, match="NCCL backend, which reduces CUDA tensors only"):
        op_dist.check_backend_device(torch.device("cpu"))
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "cpu:gloo,cuda:nccl")
    op_dist.check_backend_device(torch.device("cpu"))  # gloo serves the CPU here
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    with pytest.raises(ValueError, match="gloo backend cannot reduce tensors on meta"):
        op_dist.check_backend_device(torch.device("meta"))


def test_single_process_helpers_are_plain():
    assert not jd.is_initialized() and jd.get_rank() == 0 and jd.is_main_process()
    ctx = jd.init_distributed()  # no torchrun environment: nothing to start
    assert (ctx.rank, ctx.world_size, ctx.backend) == (0, 1, None)
    assert jd.split_map(lambda x: x * x, [1, 2, 3]) == [1, 4, 9]
    assert jd.check_shards(5, 5) == [5]
    with pytest.raises(jd.DistributedMismatchError, match="leave samples out"):
        jd.check_shards(4, 5)
    assert jd.verify_identical(torch.ones(3)) == 0.0
    with op_dist.local_only():
        assert not op_dist.is_distributed()
    with pytest.raises(ValueError, match="timeout must be a positive"):
        jd.init_distributed(timeout=0)
