"""Per-block curvature against dense float64 references restricted to each block.

Every number is checked against the dense ``torch.func`` Hessian (or GGN) of
``tests/reference.py``, cut to the block's rows and columns: top eigenvalue, trace, the
block-diagonal operator itself, the Hessian diagonal estimators, and the mini-batch top
eigenvalues (one dense Hessian per batch).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from reference import (
    assert_close,
    batches,
    bn_cnn,
    dense_ggn,
    dense_hessian,
    dense_hessian_by_differences,
    digits,
)
from torch import nn

import jupyter_curvature as jc
from jupyter_curvature.core.blocks import auto_blocks, resolve_blocks
from jupyter_curvature.operators import DenseOperator, GGNOperator, HessianOperator
from jupyter_curvature.operators.blocks import BlockDiagonalOperator


def sub(M: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return M[idx[:, None], idx]


def dense_block_diagonal(M: torch.Tensor, indices) -> torch.Tensor:
    out = torch.zeros_like(M)
    for idx in indices:
        out[idx[:, None], idx] = sub(M, idx)
    return out


class TinyTransformer(nn.Module):
    """Embedding, one torch-native encoder layer, a final norm and a head; logits flattened."""

    def __init__(self, vocab: int = 5, d: int = 4, ff: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 2, ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(self.embed(ids)))).flatten(0, 1)


def dense_transformer_hessian(model, loss_fn, ids, targets):
    """Central differences of the exact gradient (``tests/reference.py``), error ~1e-10.

    torch.func's second derivatives of this encoder layer (``hessian`` and
    ``jacrev(jacrev)``, with the math attention kernel) differ from the differences of its
    first derivatives by 3e-2 in the two LayerNorms' block, where autograd's double backward
    (the operators') agrees with the differences to 1e-11.
    """
    return dense_hessian_by_differences(model, loss_fn, ids, targets)


#: entry tolerance against the differences (their truncation and rounding error)
FD_ATOL = 1e-8


def transformer_case():
    torch.manual_seed(0)
    model = TinyTransformer().double()
    ids = torch.randint(0, 5, (3, 4))
    targets = torch.randint(0, 5, (3 * 4,))
    return model, nn.CrossEntropyLoss(), ids, targets


def small_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x = torch.randn(30, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    return model.double(), nn.CrossEntropyLoss(), x, y


def check_against_dense(result, H, model, tol_top=1e-8, atol=1e-9):
    names = [n for n, _ in model.named_parameters()]
    offsets = {}
    start = 0
    for n, p in model.named_parameters():
        offsets[n] = torch.arange(start, start + p.numel())
        start += p.numel()
    assert names  # the dense Hessian is over all parameters in model order
    for block in result.blocks:
        idx = torch.cat([offsets[p] for p in block.params])
        Hjj = sub(H, idx)
        ev = torch.linalg.eigvalsh(Hjj)
        assert block.size == idx.numel()
        scale = float(ev.abs().max())
        # certified: an eigenvalue within the residual; here the top one, to rounding
        assert block.residual <= 1e-8 * scale, block.name
        assert abs(block.top_eigenvalue - float(ev[-1])) <= tol_top * scale, block.name
        exact_trace = float(Hjj.trace())
        if block.trace.method == "exact":
            assert abs(block.trace.estimate - exact_trace) <= atol * max(
                1.0, float(Hjj.abs().sum())
            )
        else:
            assert abs(block.trace.estimate - exact_trace) <= 6 * block.trace.stderr, block.name
        # the Ritz values of a fully explored block are its eigenvalues
        if block.density.num_steps == block.size:
            ritz = block.density.ritz_values[0]
            assert_close(ritz, ev, rtol=0, atol=atol * scale, what=block.name)


def test_mlp_blocks_equal_dense_sub_hessians():
    model, loss_fn, x, y = small_mlp()
    H = dense_hessian(model, loss_fn, x, y)
    result = jc.block_spectra(model, loss_fn, (x, y), num_iters=40, num_probes=3)
    assert result.names == ["0", "2", "4"]
    check_against_dense(result, H, model)
    # one block-diagonal product per step (3 probes) and one for the residuals, all blocks
    assert result.num_matvecs == 3 * max(b.size for b in result.blocks) + 1


def test_truncated_lanczos_top_eigenvalue_and_hutchinson_trace():
    """Fewer steps than a block's dimension: certified top eigenvalue, trace within 6 s.e."""
    model, loss_fn, x, y = small_mlp()
    H = dense_hessian(model, loss_fn, x, y)
    result = jc.block_spectra(model, loss_fn, (x, y), num_iters=20, num_probes=8, tol=1e-6)
    first = result["0"]  # 35 parameters, 20 steps
    assert first.density.num_steps == 20 and first.trace.method == "hutchinson"
    idx = torch.arange(35)
    ev = torch.linalg.eigvalsh(sub(H, idx))
    assert first.converged
    assert abs(first.top_eigenvalue - float(ev[-1])) <= first.residual + 1e-12
    assert abs(first.trace.estimate - float(sub(H, idx).trace())) <= 6 * first.trace.stderr


def test_cnn_blocks_by_module_names_and_ggn():
    model = bn_cnn(width=1)
    x, y = digits(6)
    loss_fn = nn.CrossEntropyLoss()
    model.eval()
    H = dense_hessian(model, loss_fn, x, y, eval_mode=True)
    blocks = list(auto_blocks(model))
    assert len(blocks) >= 2
    result = jc.block_spectra(model, loss_fn, (x, y), blocks=blocks, num_iters=200, num_probes=2)
    check_against_dense(result, H, model)
    G = dense_ggn(model, loss_fn, x, y, eval_mode=True)
    ggn = jc.block_spectra(
        model, loss_fn, (x, y), blocks=blocks, curvature="ggn", num_iters=200, num_probes=2
    )
    assert ggn.curvature == "ggn"
    check_against_dense(ggn, G, model)


def test_tiny_transformer_auto_blocks_equal_dense():
    model, loss_fn, ids, targets = transformer_case()
    blocks = resolve_blocks(model)
    assert list(blocks) == [
        "embed",
        "encoder.layers.0.attn",
        "encoder.layers.0.mlp",
        "encoder.layers.0.norm",
        "norm",
        "head",
    ]
    H = dense_transformer_hessian(model, loss_fn, ids, targets)
    result = jc.block_spectra(model, loss_fn, (ids, targets), num_iters=100, num_probes=2)
    check_against_dense(result, H, model, tol_top=FD_ATOL, atol=FD_ATOL)


def test_gpt2_auto_blocks():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=2, n_embd=8, n_head=2, vocab_size=11, n_positions=8, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(config)
    blocks = resolve_blocks(model)
    assert list(blocks) == [
        "transformer.wte",
        "transformer.wpe",
        "transformer.h.0.norm",
        "transformer.h.0.attn",
        "transformer.h.0.mlp",
        "transformer.h.1.norm",
        "transformer.h.1.attn",
        "transformer.h.1.mlp",
        "transformer.ln_f",
    ]  # lm_head.weight is tied to transformer.wte.weight: one parameter, one block
    assert blocks["transformer.h.0.norm"] == [
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.ln_1.bias",
        "transformer.h.0.ln_2.weight",
        "transformer.h.0.ln_2.bias",
    ]


@pytest.mark.parametrize("case", ["mlp", "transformer"])
def test_block_diagonal_operator_equals_dense_block_diagonal(case):
    if case == "mlp":
        model, loss_fn, x, y = small_mlp()
    else:
        model, loss_fn, x, y = transformer_case()
    H = (dense_hessian if case == "mlp" else dense_transformer_hessian)(model, loss_fn, x, y)
    D = BlockDiagonalOperator(HessianOperator(model, loss_fn, (x, y)), "auto")
    assert D.groups is not None  # the restricted-backward path
    expected = dense_block_diagonal(H, D.indices)
    atol = 1e-11 if case == "mlp" else FD_ATOL
    assert_close(D.to_dense(), expected, rtol=1e-9, atol=atol, what="block diagonal")
    # kept graphs give the same products
    v = torch.randn(D.shape[0], 3, dtype=torch.float64)
    with D.kept_graphs(True):
        assert_close(D @ v, expected @ v, rtol=1e-9, atol=10 * atol, what="kept graphs")
    # one vectorised backward for all blocks' columns: the same products
    Dv = BlockDiagonalOperator(HessianOperator(model, loss_fn, (x, y), vectorize=True), "auto")
    assert_close(Dv @ v, expected @ v, rtol=1e-9, atol=10 * atol, what="vectorised")
    assert Dv.num_matvecs == 3


def test_block_diagonal_of_any_operator_and_composition():
    torch.manual_seed(1)
    A = torch.randn(7, 7, dtype=torch.float64)
    A = A + A.T
    D = BlockDiagonalOperator(DenseOperator(A), [2, 3, 2])
    idx = [torch.arange(0, 2), torch.arange(2, 5), torch.arange(5, 7)]
    assert_close(D.to_dense(), dense_block_diagonal(A, idx), what="sizes")
    E = BlockDiagonalOperator(DenseOperator(A), {"odd": [1, 3, 5], "even": [0, 2, 4, 6]})
    expected = dense_block_diagonal(A, [torch.tensor([1, 3, 5]), torch.tensor([0, 2, 4, 6])])
    assert_close(E.to_dense(), expected, what="index blocks")
    assert_close((2.0 * E + D).to_dense(), 2 * expected + D.to_dense(), what="composition")
    # the GGN (no restricted path) goes through the generic path: one call, b k columns
    model, loss_fn, x, y = small_mlp()
    G = GGNOperator(model, loss_fn, (x, y))
    DG = BlockDiagonalOperator(G, {"first": "0", "rest": ["2", "4"]})
    assert DG.groups is not None
    Gd = dense_ggn(model, loss_fn, x, y)
    assert_close(DG.to_dense(), dense_block_diagonal(Gd, DG.indices), rtol=1e-9, atol=1e-11)


def test_block_spectra_of_an_operator():
    A = torch.diag(torch.arange(1.0, 9.0, dtype=torch.float64))
    result = jc.block_spectra(DenseOperator(A), blocks=[3, 5], num_iters=10, num_probes=2)
    assert result.curvature == "operator"
    assert [b.top_eigenvalue for b in result.blocks] == pytest.approx([3.0, 8.0], abs=1e-12)
    assert [b.trace.estimate for b in result.blocks] == pytest.approx([6.0, 30.0], abs=1e-12)


def test_result_table_dict_save_plot(tmp_path):
    model, loss_fn, x, y = small_mlp()
    result = jc.block_spectra(model, loss_fn, (x, y), num_iters=10, num_probes=2)
    text = result.table()
    assert "top eigenvalue" in text and all(name in text for name in result.names)
    d = result.to_dict()
    assert [row["block"] for row in d["table"]] == result.names
    path = result.save(tmp_path / "blocks.json")
    assert json.loads(path.read_text())["num_probes"] == 2
    fig = result.plot()
    assert len(fig.axes) == 2


# ----------------------------------------------------------------------------- diagonal
def test_diagonal_exact_on_diagonal_matrix_and_low_rank():
    d = torch.tensor([3.0, -1.0, 0.5, 2.0, 7.0, -4.0], dtype=torch.float64)
    est = jc.diagonal(torch.diag(d), "hutchinson", num_matvecs=3)
    assert_close(est.estimate, d, rtol=0, atol=1e-14)
    assert_close(est.stderr, torch.zeros(6, dtype=torch.float64), rtol=0, atol=1e-14)
    torch.manual_seed(2)
    U = torch.randn(40, 2, dtype=torch.float64)
    low = U @ U.T  # rank 2 <= the 3-vector sketch of 9 products
    est = jc.diagonal(low, "diag++", num_matvecs=9)
    assert_close(est.estimate, low.diagonal(), rtol=1e-10, atol=1e-10)
    exact = jc.diagonal(low, "hutchinson", num_matvecs=40)
    assert exact.method == "exact"
    assert_close(exact.estimate, low.diagonal(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["hutchinson", "diag++"])
def test_hessian_diagonal_within_six_standard_errors(method):
    """Unbiasedness on a small network: every entry within 6 estimated standard errors."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    x = torch.randn(40, 10, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    loss_fn = nn.CrossEntropyLoss()
    H = dense_hessian(model, loss_fn, x, y)  # n = 171
    est = jc.diagonal(HessianOperator(model, loss_fn, (x, y)), method, num_matvecs=150, seed=3)
    assert est.method == method and est.num_matvecs == 150
    err = (est.estimate - H.diagonal()).abs()
    bound = 6 * est.stderr + 1e-12
    assert bool((err <= bound).all()), f"worst {float((err / bound).max()):.2f} of the bound"
    assert bool((est.stderr > 0).any())


# ----------------------------------------------------------------------------- mini-batches
def test_minibatch_top_eigenvalues_equal_dense_per_batch(tmp_path):
    model, loss_fn, x, y = small_mlp()
    loader = batches(x, y, 10)
    result = jc.minibatch_top_eigenvalues(model, loss_fn, loader, tol=1e-8, with_full=True)
    expected = [
        float(torch.linalg.eigvalsh(dense_hessian(model, loss_fn, bx, by))[-1]) for bx, by in loader
    ]
    assert result.values.shape == (3,) and result.converged.all()
    assert_close(torch.tensor(result.values), expected, rtol=1e-7, atol=1e-10)
    full = float(torch.linalg.eigvalsh(dense_hessian(model, loss_fn, x, y))[-1])
    assert result.full == pytest.approx(full, rel=1e-7)
    assert list(result.batch_sizes) == [10, 10, 10]
    counts, _ = result.histogram(bins=3)
    assert counts.sum() == 3
    assert json.loads(result.save(tmp_path / "m.json").read_text())["values"][0] == pytest.approx(
        expected[0], rel=1e-7
    )
    assert result.plot().axes
    assert jc.minibatch_top_eigenvalues(model, loss_fn, loader, num_batches=2).values.size == 2


# ----------------------------------------------------------------------------- errors
def test_bad_blocks_are_named():
    model, loss_fn, x, y = transformer_case()
    with pytest.raises(ValueError, match=r"did you mean 'encoder.layers.0.self_attn'"):
        resolve_blocks(model, ["encoder.layers.0.self_atn"])
    with pytest.raises(ValueError, match=r"modules that hold parameters are: embed"):
        jc.block_spectra(model, loss_fn, (x, y), blocks=["nothing_like_it"])
    with pytest.raises(ValueError, match="both hold parameter"):
        resolve_blocks(model, {"a": "encoder", "b": "encoder.layers.0.norm1"})
    with pytest.raises(ValueError, match="blocks is empty"):
        resolve_blocks(model, [])
    with pytest.raises(ValueError, match="for one block pass"):
        resolve_blocks(model, "head")
    with pytest.raises(TypeError, match="blocks must be"):
        resolve_blocks(model, 3)
    with pytest.raises(TypeError, match="needs loss_fn and data"):
        jc.block_spectra(model)
    with pytest.raises(ValueError, match="curvature must be"):
        jc.block_spectra(model, loss_fn, (x, y), curvature="fisher")
    A = DenseOperator(torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="add up to"):
        BlockDiagonalOperator(A, [2, 3])
    with pytest.raises(ValueError, match="overlaps"):
        BlockDiagonalOperator(A, {"a": [0, 1], "b": [1, 2]})
    with pytest.raises(ValueError, match="outside"):
        BlockDiagonalOperator(A, {"a": [0, 4]})
    with pytest.raises(ValueError, match="method must be"):
        jc.diagonal(torch.eye(3, dtype=torch.float64), "xdiag")
    with pytest.raises(ValueError, match="data is empty"):
        jc.minibatch_top_eigenvalues(model, loss_fn, [])
    assert math.isfinite(jc.block_spectra(A, blocks=[1, 3], num_iters=3).blocks[1].top_eigenvalue)


@pytest.mark.cuda
def test_block_spectra_on_cuda_equal_cpu():
    model, loss_fn, x, y = small_mlp()
    cpu = jc.block_spectra(model, loss_fn, (x, y), num_iters=40, num_probes=2)
    gpu = jc.block_spectra(model.cuda(), loss_fn, (x.cuda(), y.cuda()), num_iters=40, num_probes=2)
    assert_close(gpu.top_eigenvalues, cpu.top_eigenvalues, rtol=1e-9, atol=1e-12)
    assert_close(gpu.traces, cpu.traces, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------ the blocks' Lanczos vectors
EPS32 = torch.finfo(torch.float32).eps


def test_block_basis_memory_model_budget_and_float32_accuracy():
    """The blocks' memory model, the dtype a budget picks, and the float32 basis's accuracy.

    A float32 basis with float64 sums is the float64 run with each stored vector rounded: by
    Paige's backward analysis the tridiagonal is that of ``H_jj + E`` with ``||E|| <= c m
    eps32 ||H_jj||``, so each Ritz value moves by at most that (Weyl); c = 10, as for the
    whole model's density (``tests/test_spectral_memory.py``).
    """
    model, loss_fn, x, y = small_mlp()  # blocks "0", "2", "4": 35, 24 and 15 parameters
    H = dense_hessian(model, loss_fn, x, y)
    m, p, n = 20, 2, 74
    f64 = jc.spectral.memory.blocks_bytes([35, 24, 15], m, p, torch.float64)
    assert f64 == 8 * p * (20 * 35 + 20 * 24 + 15 * 15 + 8 * n)  # a block stops at its size
    f32 = jc.spectral.memory.blocks_bytes([35, 24, 15], m, p, torch.float32, torch.float64)
    assert f32 == 4 * p * (20 * 35 + 20 * 24 + 15 * 15 + 8 * n) + 2 * 8 * n * p
    run = lambda budget: jc.block_spectra(  # noqa: E731
        model, loss_fn, (x, y), num_iters=m, num_probes=p, memory_budget=budget
    )
    r64, r32 = run(f64), run(f64 - 1)
    assert r64.basis["dtype"] == "float64" and r64.basis["memory_budget"] == f64
    assert r32.basis["dtype"] == "float32" and r32.to_dict()["basis"]["device_bytes"] == f32
    for b32, b64 in zip(r32.blocks, r64.blocks):
        bound = 10 * m * EPS32 * b64.scale
        assert (b32.density.ritz_values - b64.density.ritz_values).abs().max() <= bound
        assert abs(b32.top_eigenvalue - b64.top_eigenvalue) <= bound
    last = r32["4"]  # fully explored: its Ritz values are the dense block's eigenvalues
    ev = torch.linalg.eigvalsh(sub(H, torch.arange(59, 74)))
    assert last.density.num_steps == 15
    assert_close(last.density.ritz_values[0], ev, rtol=0, atol=10 * m * EPS32 * last.scale)


def test_block_basis_budget_counts_the_spread_product_and_refuses_early():
    model, loss_fn, x, y = small_mlp()
    ggn = GGNOperator(model, loss_fn, (x, y))
    hessian = HessianOperator(model, loss_fn, (x, y))
    assert BlockDiagonalOperator(ggn, "auto").spreads  # one product of 3 p columns
    assert not BlockDiagonalOperator(hessian, "auto").spreads  # a backward per block
    sizes, m, p = [35, 24, 15], 10, 2
    spread = jc.spectral.memory.blocks_bytes(sizes, m, p, torch.float64, spreads=True)
    assert (
        spread == jc.spectral.memory.blocks_bytes(sizes, m, p, torch.float64) + 2 * 8 * 74 * 3 * p
    )
    assert jc.block_spectra(ggn, blocks=["0", "2", "4"], num_iters=m, num_probes=p,
                            memory_budget=spread).basis["dtype"] == "float64"  # fmt: skip
    with pytest.raises(ValueError, match="memory_budget=100 B cannot hold") as err:
        jc.block_spectra(hessian, blocks=["0", "2", "4"], num_iters=m, memory_budget=100)
    assert "float32 basis on cpu" in str(err.value) and "none of them fits" in str(err.value)
    assert 'reorthogonalize="none"' not in str(err.value)  # the blocks have no such mode
    assert hessian.num_matvecs == 0
