"""Products of an FSDP2-sharded model on 2 gloo processes equal the unsharded ones (float64, CPU).

The model is sharded with ``fully_shard`` (parameters are DTensors, split across the two
ranks) and the data with ``shard_loader`` (uneven: 48 and 22 samples). The references are
dense float64 matrices from ``torch.func`` on the unsharded model and the whole data,
computed in the parent process.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from test_distributed import BATCH, START, WORLD, make_problem, probe_block
from torch import nn
from torch.func import functional_call, jacrev

import jupyter_curvature.distributed as jd
from jupyter_curvature.operators import ShardedOperator

TOL = 1e-10  # the differences are rounding of a different summation order (about 1e-16)
STEP = 0.05  # the in-place change of the weights between the two products


def _shard(model: nn.Module, mesh=None) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _replica(hidden: int = 5) -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 3)).double()


def _error(fn, kind=ValueError) -> str:
    try:
        fn()
    except kind as err:
        return str(err)
    return ""


def _job():
    from torch.distributed.device_mesh import DeviceMesh

    model, loss_fn, dataset = make_problem()
    _shard(model)
    loader = jd.shard_loader(dataset, BATCH)
    out = {"local_sizes": [p.to_local().numel() for p in model.parameters()]}

    # FSDP's own graph cannot be differentiated with respect to the shards (module docstring)
    x, y = dataset.tensors
    loss = loss_fn(model(x[:8]), y[:8])
    out["fsdp_grad_error"] = _error(
        lambda: torch.autograd.grad(loss, list(model.parameters()), create_graph=True),
        RuntimeError,
    )

    H = ShardedOperator(model, loss_fn, loader, _replica())
    G = ShardedOperator(model, loss_fn, loader, _replica(), curvature="ggn")
    V = probe_block(H.shape[0])
    out["Hv"], out["Gv"] = H @ V, G @ V
    out["eigenvalues"] = torch.as_tensor(jd.eigenpairs(H, k=2, tol=1e-8, seed=0).eigenvalues)
    density = jd.spectral_density(G, num_iters=12, num_probes=2, seed=0)
    out["ritz_values"], out["weights"] = density.ritz_values, density.weights

    pieces = H.shard(V[:, 0])  # back to the parameters' layout, and gathered again
    out["shard_is_local"] = all(
        s.to_local().shape == p.to_local().shape for s, p in zip(pieces, model.parameters())
    )
    out["roundtrip"] = torch.equal(H.unshard(pieces), V[:, 0])

    with torch.no_grad():  # a training step on the shards: the next product sees it
        for p in model.parameters():
            p.to_local().add_(STEP)
    out["Hv_after_step"] = H @ V
    for p in model.parameters():  # a hand-written step through .data: versions do not move
        p.to_local().data.add_(STEP)
    out["Hv_after_data_step"] = H @ V

    # bad input: parameters sharded over a group of one rank, not over the world's two
    groups = [dist.new_group([r]) for r in range(WORLD)]  # every rank creates every group
    mesh = DeviceMesh.from_group(groups[jd.get_rank()], "cpu")
    other, _, _ = make_problem()
    _shard(other, mesh)
    out["mesh_error"] = _error(lambda: ShardedOperator(other, loss_fn, loader, _replica()))
    out["replica_error"] = _error(lambda: ShardedOperator(model, loss_fn, loader, _replica(4)))
    plain, _, _ = make_problem()
    out["plain_error"] = _error(lambda: ShardedOperator(plain, loss_fn, loader, _replica()))
    return out


@pytest.fixture(scope="module")
def results():
    return jd.launch(_job, WORLD, timeout=30, join_timeout=180, start_method=START)


def _dense(shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The Hessian and the GGN of the mean loss over all the data, by torch.func."""
    model, loss_fn, dataset = make_problem()
    x, y = dataset.tensors
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]) + shift

    def split(flat):
        sizes = [s.numel() for s in shapes]
        return {n: t.reshape(s) for n, t, s in zip(names, flat.split(sizes), shapes)}

    def outputs(flat):
        return functional_call(model, split(flat), (x,))

    H = jacrev(jacrev(lambda flat: loss_fn(outputs(flat), y)))(theta)  # no forward AD
    J = jacrev(outputs)(theta).reshape(-1, theta.numel())  # (N * C, n)
    out = outputs(theta).detach()
    H_out = jacrev(jacrev(lambda o: loss_fn(o.reshape(out.shape), y)))(out.reshape(-1))
    return H, J.T @ H_out.reshape(out.numel(), out.numel()) @ J


def assert_close(actual, expected, what):
    err = float((actual - expected).abs().max())
    scale = float(expected.abs().max())
    assert err <= TOL * scale, f"{what}: max |difference| {err:.3e} (scale {scale:.3e})"


@pytest.mark.distributed
def test_parameters_are_sharded_and_fsdp_cannot_be_differentiated(results):
    # dim 0 split as torch.chunk: (5, 6) -> 3 + 2 rows, (5,) -> 3 + 2, (3, 5) -> 2 + 1, (3,) -> 2 + 1
    sizes = [r["local_sizes"] for r in results]
    assert sizes == [[18, 3, 10, 2], [12, 2, 5, 1]]  # 33 + 20 = 53 parameters
    for result in results:
        assert "appears to not have been used in the graph" in result["fsdp_grad_error"]


@pytest.mark.distributed
def test_sharded_products_equal_the_dense_unsharded_matrices(results):
    H, G = _dense()
    V = probe_block(H.shape[0])
    for rank, result in enumerate(results):
        assert_close(result["Hv"], H @ V, f"Hv on rank {rank}")
        assert_close(result["Gv"], G @ V, f"Gv on rank {rank}")
        assert result["roundtrip"] and result["shard_is_local"]
    H_step, _ = _dense(STEP)
    assert_close(results[0]["Hv_after_step"], H_step @ V, "Hv after an in-place step")
    H_data_step, _ = _dense(2 * STEP)
    for rank, result in enumerate(results):
        assert_close(result["Hv_after_data_step"], H_data_step @ V, f"Hv after .data, rank {rank}")


@pytest.mark.distributed
def test_spectra_of_the_sharded_model(results):
    H, G = _dense()
    top = torch.linalg.eigvalsh(H).flip(0)[:2]
    for result in results:
        assert_close(result["eigenvalues"], top, "top-2 eigenvalues")
    eig_G = torch.linalg.eigvalsh(G)
    # 12 Lanczos steps on the GGN (rank <= 3 x 70): the extreme Ritz values converge
    assert abs(float(results[0]["ritz_values"].max()) - float(eig_G.max())) <= 1e-8 * float(
        eig_G.max()
    )
    assert torch.equal(results[0]["weights"], results[1]["weights"])


@pytest.mark.distributed
def test_bad_sharding_is_named(results):
    for result in results:
        assert "sharded over ranks" in result["mesh_error"]
        assert "a mesh of 1" in result["mesh_error"]
        assert "process group has 2 ranks" in result["mesh_error"]
        assert "replica's parameters differ" in result["replica_error"]
        assert "no sharded (DTensor) parameter" in result["plain_error"]
