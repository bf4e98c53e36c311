"""Hugging Face ``transformers`` models: dict batches, ``.logits``, token-level cross-entropy.

Tiny models built from configs (no download), in float64. Every number is checked against an
independent route: dense ``torch.func`` Hessians/GGNs of a hand-written token-mean loss (on an
eager-attention copy of the model, which torch.func can differentiate twice), brute-force loops
over batches and tokens, and Hugging Face's own loss.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from reference import assert_close
from torch import nn
from torch.func import functional_call, hessian, jacrev
from torch.utils.data import DataLoader

import jupyter_curvature as jc
from jupyter_curvature.operators import select_parameters

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()  # the tiny vocabulary makes it warn about token ids

VOCAB = 31
GPT2_PARAMS = [
    "transformer.wpe.weight",
    "transformer.h.0.attn.c_attn.bias",
    "transformer.h.1.attn.c_proj.weight",
    "transformer.ln_f.weight",
]
BERT_PARAMS = [
    "bert.encoder.layer.0.attention.self.query.weight",
    "bert.pooler.dense.bias",
    "classifier.*",
]


def tiny_gpt2(seed: int = 0) -> nn.Module:
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=16,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=16,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config).double().eval()


def tiny_bert(seed: int = 0) -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        type_vocab_size=2,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(config).double().eval()


def eager(model: nn.Module) -> nn.Module:
    """A copy with plain attention (softmax of matmuls): torch.func differentiates it twice."""
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    return ref


def lm_samples() -> list[dict[str, torch.Tensor]]:
    """Five sequences of length 7 as a tokenizer + collator gives them: right padding
    (attention_mask 0, label -100), one prompt token labelled -100, and one padded position
    whose label the data left as a token (the layout must not count it)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (5, 7), generator=g)
    mask = torch.ones(5, 7, dtype=torch.long)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, 2] = -100  # a prompt token that does not count
    labels[4, 6] = 5
    mask[4, 6] = 0  # padding whose label was not masked by the data
    return [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(5)]


def counted(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Positions (after the shift) whose label counts: not -100 and not padding."""
    return (batch["labels"][:, 1:] != -100) & (batch["attention_mask"][:, 1:] == 1)


def functional(model: nn.Module, params: list[str]):
    named = select_parameters(model, params)
    names = [n for n, _ in named]
    tensors = [p.detach() for _, p in named]
    theta = torch.cat([t.reshape(-1) for t in tensors])

    def logits(t: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        values, start = {}, 0
        for name, p in zip(names, tensors):
            values[name] = t[start : start + p.numel()].view_as(p)
            start += p.numel()
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return functional_call(model, values, (), inputs, strict=False).logits

    return theta, logits


def token_sum(z: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The hand-written sum of the counted tokens' negative log-likelihoods (causal shift)."""
    logp = z[:, :-1].log_softmax(-1)
    labels = batch["labels"][:, 1:].clamp_min(0)
    nll = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return (nll * counted(batch)).sum()


def lm_batches(batch_size: int = 3) -> list[dict[str, torch.Tensor]]:
    return list(DataLoader(lm_samples(), batch_size=batch_size))


@pytest.fixture(scope="module")
def gpt2_dense():
    """Dense Hessian and GGN of the token-mean loss over the two batches (3 + 2 sequences)."""
    model = tiny_gpt2()
    theta, logits = functional(eager(model), GPT2_PARAMS)
    batches = lm_batches()
    total = sum(int(counted(b).sum()) for b in batches)
    assert [int(counted(b).sum()) for b in batches] == [14, 6]  # different counts per batch

    def risk(t):
        return sum(token_sum(logits(t, b), b) for b in batches) / total

    # reverse over reverse, row by row: torch.func's jacrev(jacrev(.)) of this model disagrees
    # with central differences of the gradient by 2e-2 (torch 2.14); autograd's agrees to 1e-8
    t = theta.clone().requires_grad_()
    g = torch.autograd.grad(risk(t), t, create_graph=True)[0]
    H = torch.stack([torch.autograd.grad(g[i], t, retain_graph=True)[0] for i in range(len(t))])
    H = H.detach()
    gradient, eps = torch.func.grad(risk), 1e-5
    for i in (0, 100, 300, 570):  # wpe, c_attn.bias, c_proj.weight, ln_f.weight
        e = torch.zeros_like(theta)
        e[i] = eps
        column = (gradient(theta + e) - gradient(theta - e)) / (2 * eps)
        assert_close(H[:, i], column, rtol=1e-5, atol=1e-7, what="dense Hessian vs differences")
    G = torch.zeros_like(H)
    for b in batches:
        z = logits(theta, b)
        J = jacrev(lambda t, b=b: logits(t, b))(theta).reshape(z.numel(), -1)
        H_L = hessian(lambda o, b=b: token_sum(o, b) / total)(z).reshape(z.numel(), z.numel())
        G += J.T @ H_L @ J
    return model, H, G


def _check_operator(op, dense):
    torch.manual_seed(3)
    dense = dense.detach()
    n = dense.shape[0]
    assert op.shape == (n, n)
    v = torch.randn(n, dtype=torch.float64)
    V = torch.randn(n, 3, dtype=torch.float64)
    scale = float(dense.abs().max())
    assert_close(op @ v, dense @ v, rtol=1e-9, atol=1e-11 * scale, what="product")
    assert_close(op @ V, dense @ V, rtol=1e-9, atol=1e-11 * scale, what="block product")
    assert_close(op.to_dense(), dense, rtol=1e-9, atol=1e-11 * scale, what="to_dense")


def test_token_cross_entropy_is_hugging_faces_loss():
    model = tiny_gpt2()
    batch = lm_batches()[0]
    ours = jc.TokenCrossEntropy()(model(**batch).logits, batch["labels"])
    # Hugging Face shifts, ignores -100 and takes the mean, in float32 (it upcasts the logits)
    assert_close(ours, model(**batch).loss, rtol=1e-6, what="loss")
    assert jc.TokenCrossEntropy().num_terms(batch["labels"]) == int(
        (batch["labels"][:, 1:] != -100).sum()
    )


def test_gpt2_hessian_equals_dense_over_two_batches(gpt2_dense):
    model, H, _ = gpt2_dense
    loader = DataLoader(lm_samples(), batch_size=3)  # a plain loader of HF dict samples
    op = jc.HessianOperator(model, jc.TokenCrossEntropy(), loader, params=GPT2_PARAMS)
    _check_operator(op, H)
    assert op.num_samples == 20  # the counted tokens of the data, 14 + 6


def test_gpt2_ggn_equals_dense_over_two_batches(gpt2_dense):
    model, _, G = gpt2_dense
    loader = DataLoader(lm_samples(), batch_size=3)
    op = jc.GGNOperator(model, jc.TokenCrossEntropy(), loader, params=GPT2_PARAMS)
    _check_operator(op, G)


def test_gpt2_kept_graphs_and_batches_of_other_lengths(gpt2_dense):
    """Batches of different lengths, and a batch whose tokens all are ignored (weight 0)."""
    model, H, _ = gpt2_dense
    first, second = lm_batches()
    second = {k: v[:, :6] for k, v in second.items()}  # another length: still the same tokens
    assert int(counted(second).sum()) == 6
    nothing = {k: v.clone() for k, v in second.items()}
    nothing["labels"].fill_(-100)
    op = jc.HessianOperator(
        model, jc.TokenCrossEntropy(), [first, nothing, second], params=GPT2_PARAMS
    )
    v = torch.randn(H.shape[0], dtype=torch.float64)
    scale = float(H.abs().max())
    assert_close(op @ v, H @ v, rtol=1e-9, atol=1e-11 * scale, what="product")
    with op.kept_graphs(True):
        assert_close(op @ v, H @ v, rtol=1e-9, atol=1e-11 * scale, what="kept graphs")


def test_gpt2_empirical_fisher_over_counted_tokens():
    """F = (1/T) sum_t g_t g_t^T over every counted token of both batches, by a loop."""
    model = tiny_gpt2()
    theta, logits = functional(eager(model), GPT2_PARAMS)
    batches = lm_batches()
    total = sum(int(counted(b).sum()) for b in batches)
    F_ref = torch.zeros(theta.numel(), theta.numel(), dtype=torch.float64)
    for b in batches:
        for i, t in counted(b).nonzero().tolist():

            def token_loss(th, b=b, i=i, t=t):
                logp = logits(th, b)[i, t].log_softmax(-1)
                return -logp[b["labels"][i, t + 1]]

            g = torch.func.grad(token_loss)(theta)
            F_ref += torch.outer(g, g)
    F_ref /= total
    op = jc.EmpiricalFisherOperator(model, jc.TokenCrossEntropy(), batches, params=GPT2_PARAMS)
    _check_operator(op, F_ref)


def classification_samples() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, VOCAB, (5, 6), generator=g)
    mask = torch.ones(5, 6, dtype=torch.long)
    mask[2, 3:] = 0
    mask[4, 5:] = 0
    types = torch.zeros(5, 6, dtype=torch.long)
    types[:, 3:] = 1
    labels = torch.tensor([0, 2, 1, 1, 0])
    return [
        {
            "input_ids": ids[i],
            "attention_mask": mask[i],
            "token_type_ids": types[i],
            "labels": labels[i],
        }
        for i in range(5)
    ]


def test_bert_sequence_classification_through_dict_batches():
    model = tiny_bert()
    loader = DataLoader(classification_samples(), batch_size=3)
    loss_fn = nn.CrossEntropyLoss()
    theta, logits = functional(eager(model), BERT_PARAMS)
    batches = list(loader)

    def risk(t):  # the mean over the five samples: batches weighted by their size
        return sum(F.cross_entropy(logits(t, b), b["labels"], reduction="sum") for b in batches) / 5

    H = hessian(risk)(theta)
    G = torch.zeros_like(H)
    Fisher = torch.zeros_like(H)
    for b in batches:
        z = logits(theta, b)
        J = jacrev(lambda t, b=b: logits(t, b))(theta).reshape(z.numel(), -1)
        H_L = hessian(lambda o, b=b: F.cross_entropy(o, b["labels"], reduction="sum") / 5)(z)
        G += J.T @ H_L.reshape(z.numel(), z.numel()) @ J
        for i in range(len(b["labels"])):
            one = {k: v[i : i + 1] for k, v in b.items()}
            g = torch.func.grad(lambda t, one=one: F.cross_entropy(logits(t, one), one["labels"]))(
                theta
            )
            Fisher += torch.outer(g, g) / 5
    _check_operator(jc.HessianOperator(model, loss_fn, loader, params=BERT_PARAMS), H)
    _check_operator(jc.GGNOperator(model, loss_fn, loader, params=BERT_PARAMS), G)
    _check_operator(jc.EmpiricalFisherOperator(model, loss_fn, loader, params=BERT_PARAMS), Fisher)


def test_gradient_statistics_and_evaluate_equal_a_loop():
    model = tiny_gpt2()
    loader = DataLoader(lm_samples(), batch_size=3)
    stats = jc.gradient_statistics(
        model, jc.TokenCrossEntropy(), loader, batch_size=2, params=GPT2_PARAMS
    )
    theta, logits = functional(model, GPT2_PARAMS)
    samples = lm_samples()
    groups = [samples[0:2], samples[2:4], samples[4:5]]  # the samples regrouped by twos
    weights, losses, grads = [], [], []
    for group in groups:
        b = {k: torch.stack([s[k] for s in group]) for k in group[0]}
        w = int(counted(b).sum())
        g = torch.func.grad(lambda t, b=b, w=w: token_sum(logits(t, b), b) / w)(theta)
        weights.append(w)
        losses.append(float(token_sum(logits(theta, b), b).detach()) / w)
        grads.append(g)
    w = torch.tensor(weights, dtype=torch.float64) / sum(weights)
    loss_mean = sum(wi * li for wi, li in zip(w, losses))
    g_mean = sum(wi * gi for wi, gi in zip(w, grads))
    assert_close(stats.loss_mean, loss_mean, rtol=1e-12, what="loss_mean")
    assert_close(
        stats.loss_var, sum(wi * (li - loss_mean) ** 2 for wi, li in zip(w, losses)), rtol=1e-9
    )
    assert_close(stats.grad_mean_norm_sq, g_mean @ g_mean, rtol=1e-10, what="grad_mean_norm_sq")
    assert_close(
        stats.grad_var,
        sum(wi * (gi - g_mean) @ (gi - g_mean) for wi, gi in zip(w, grads)),
        rtol=1e-10,
        what="grad_var",
    )
    assert (stats.num_samples, stats.num_batches) == (5, 3)

    result = jc.evaluate(model, jc.TokenCrossEntropy(), loader)
    full = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    expected = token_sum(model(**{k: v for k, v in full.items() if k != "labels"}).logits, full)
    assert_close(result.loss, float(expected.detach()) / int(counted(full).sum()), rtol=1e-12)


def test_curvature_statistics_weight_batches_by_counted_tokens():
    from jupyter_curvature.stats.curvature import make_probes

    model = tiny_gpt2()
    stats = jc.curvature_statistics(
        model,
        jc.TokenCrossEntropy(),
        DataLoader(lm_samples(), batch_size=3),
        batch_size=2,
        num_probes=2,
        params=GPT2_PARAMS,
    )
    samples = lm_samples()
    Z, _ = make_probes(576, 2, seed=0)
    total, weighted = 0, torch.zeros(576, 2, dtype=torch.float64)
    for group in (samples[0:2], samples[2:4], samples[4:5]):  # a loop over the batches of two
        b = {k: torch.stack([s[k] for s in group]) for k in group[0]}
        w = int(counted(b).sum())
        H_b = jc.HessianOperator(model, jc.TokenCrossEntropy(), b, params=GPT2_PARAMS)
        weighted += w * (H_b @ Z)
        total += w
    assert_close(stats.per_probe["rayleigh"], (Z * weighted / total).sum(0), rtol=1e-10)
    assert (stats.num_samples, stats.num_batches) == (5, 3)


def test_gradient_statistics_per_sample_refuses_a_token_loss():
    with pytest.raises(ValueError, match="per_sample=True with TokenCrossEntropy"):
        jc.gradient_statistics(tiny_gpt2(), jc.TokenCrossEntropy(), lm_batches(), per_sample=True)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no fallback from the batched points
@pytest.mark.parametrize("batch_points", [1, 4])
def test_landscape_line_equals_brute_force_loss(batch_points):
    model = tiny_gpt2()
    theta, logits = functional(model, GPT2_PARAMS)
    direction = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(4)).double()
    coords = [-0.5, 0.0, 0.25, 1.0]
    batches = lm_batches()
    line = jc.landscape_1d(
        model,
        jc.TokenCrossEntropy(),
        DataLoader(lm_samples(), batch_size=3),
        direction,
        params=GPT2_PARAMS,
        coords=coords,
        batch_points=batch_points,  # one point at a time, or all four in one vmapped pass
    )
    total = sum(int(counted(b).sum()) for b in batches)
    for j, c in enumerate(coords):
        t = theta + c * direction
        loss = sum(float(token_sum(logits(t, b), b).detach()) for b in batches) / total
        hits = 0
        for b in batches:
            predicted = logits(t, b)[:, :-1].argmax(-1)
            hits += int(((predicted == b["labels"][:, 1:]) & counted(b)).sum())
        assert_close(line.train_loss[0, j], loss, rtol=1e-11, what=f"loss at t={c}")
        assert_close(line.train_accuracy[0, j], hits / total, rtol=1e-12, what="token accuracy")


def test_a_batch_without_labels_names_data_and_batch_layout():
    model = tiny_gpt2()
    unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b in lm_batches()]
    with pytest.raises(TypeError, match=r"data: .*no labels.*batch_layout="):
        jc.HessianOperator(model, jc.TokenCrossEntropy(), unlabelled, params=GPT2_PARAMS)


def test_an_output_without_logits_asks_for_outputs():
    base = tiny_gpt2().transformer  # GPT2Model: hidden states, no logits
    for cls in (jc.HessianOperator, jc.GGNOperator):
        with pytest.raises(TypeError, match=r"no logits.*outputs=lambda out"):
            cls(base, jc.TokenCrossEntropy(), lm_batches())
    with pytest.raises(TypeError, match=r"no logits.*outputs=lambda out"):
        jc.landscape_1d(
            base, jc.TokenCrossEntropy(), lm_batches(), torch.ones(256).double(), params="wpe.*"
        )
    # with the hook, the hidden states are what the loss takes
    op = jc.HessianOperator(
        base,
        lambda h, y: h.pow(2).mean(),
        lm_batches(),
        params="ln_f.*",
        outputs=lambda out: out.last_hidden_state,
    )
    assert op.shape == (32, 32)


def test_token_cross_entropy_checks_its_inputs():
    with pytest.raises(ValueError, match="reduction"):
        jc.TokenCrossEntropy(reduction="none")
    loss = jc.TokenCrossEntropy()
    with pytest.raises(ValueError, match="do not pair up"):
        loss(torch.zeros(2, 5, VOCAB), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer labels"):
        loss(torch.zeros(2, 5, VOCAB), torch.zeros(2, 5))


def test_rerouted_attention_honours_a_boolean_mask():
    """Hessian products reroute fused attention to torch's math kernel; a boolean mask (what
    Hugging Face passes) must mean the same there (True: attend)."""
    from jupyter_curvature.operators._second_order import twice_differentiable

    q, k, v = torch.randn(3, 2, 2, 5, 4, dtype=torch.float64)
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()
    mask[1, :, :, 3:] = False
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with twice_differentiable():
        routed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert_close(routed, expected, rtol=1e-12, atol=1e-14, what="attention")


def test_the_documented_example_runs():
    """docs/integrations.md's Transformers example, as written."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "integrations.md").read_text()
    start = text.index("## Transformers and timm models")
    code = re.compile(r"```python\n(.*?)```", re.S).search(text, start).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/integrations.md", "exec"), namespace)  # noqa: S102
    H, stats = namespace["H"], namespace["stats"]
    assert H.num_samples == int((namespace["mask"][:, 1:] == 1).sum())  # the counted tokens
    assert stats.num_samples == 8


def test_timm_vit_still_works():
    """A timm ViT (fused attention, one tensor in): products equal autograd's double backward
    on a copy with plain attention."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=8,
        patch_size=4,
        embed_dim=8,
        depth=1,
        num_heads=2,
        num_classes=3,
    )
    model = model.double().eval()
    plain = copy.deepcopy(model)
    plain.blocks[0].attn.fused_attn = False
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    params = ["blocks.0.attn.qkv.bias", "blocks.0.norm1.weight", "head.*"]
    chosen = [p for _, p in select_parameters(plain, params)]
    loss = F.cross_entropy(plain(x), y)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, chosen, create_graph=True)])
    v = torch.randn(g.numel(), dtype=torch.float64)
    Hv = torch.cat([t.reshape(-1) for t in torch.autograd.grad(g @ v, chosen)])
    H = jc.HessianOperator(model, nn.CrossEntropyLoss(), (x, y), params=params)
    assert_close(H @ v, Hv, rtol=1e-9, atol=1e-12, what="ViT Hessian product")


def test_the_landscape_names_a_batch_without_labels_once():
    unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b in lm_batches()]
    with pytest.raises(TypeError, match=r"^test_data: a dict batch .* no labels"):
        jc.landscape_1d(
            tiny_gpt2(),
            jc.TokenCrossEntropy(),
            lm_batches(),
            torch.ones(256).double(),
            test_data=unlabelled,
            params="transformer.wpe.*",
        )
