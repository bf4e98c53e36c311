"""The offline text task: the standard-library corpus and the small GPT built from a config.

The windows are checked against the text itself; the model's loss against transformers' own
shifted causal-LM loss; its curvature products against dense ``torch.func`` matrices.
"""

from __future__ import annotations

import pytest
import torch
from reference import assert_close, dense_ggn, dense_hessian
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from jupyter_curvature.data.text import (
    CORPUS_MODULES,
    VOCAB_SIZE,
    VOCABULARY,
    decode,
    encode,
    stdlib_text,
    text_dataset,
)

transformers = pytest.importorskip("transformers")


def test_the_vocabulary_is_fixed_and_encoding_round_trips():
    assert (
        VOCAB_SIZE == 97
        and VOCABULARY[0] == "\n"
        and VOCABULARY[1:] == "".join(map(chr, range(32, 127)))
    )
    text = 'def f(x):\n    return "~{x}"'
    assert decode(encode(text)) == text
    assert decode(encode("é\t")) == "??"  # outside the vocabulary: one token
    assert encode("é").tolist() == encode("\t").tolist() == [VOCAB_SIZE - 1]


def test_windows_are_next_character_pairs_of_the_text():
    block = 16
    ids = encode(stdlib_text())
    cut = int(len(ids) * 0.9)
    train, test = text_dataset(block_size=block), text_dataset("test", block_size=block)
    assert len(train) == (cut - 1) // block and len(test) == (len(ids) - cut - 1) // block
    for dataset, start in ((train, 0), (test, cut)):
        for i in (0, 1, len(dataset) - 1):
            x, y = dataset[i]
            at = start + i * block
            assert torch.equal(x, ids[at : at + block])
            assert torch.equal(y, ids[at + 1 : at + block + 1])
    a = text_dataset(block_size=block, num_samples=10, seed=1).tensors[0]
    assert torch.equal(a, text_dataset(block_size=block, num_samples=10, seed=1).tensors[0])
    assert not torch.equal(a, text_dataset(block_size=block, num_samples=10, seed=2).tensors[0])


def test_bad_text_arguments():
    with pytest.raises(ValueError, match="split must be"):
        text_dataset("val")
    with pytest.raises(ValueError, match="block_size"):
        text_dataset(block_size=0)
    with pytest.raises(ValueError, match="longer than the test text"):
        text_dataset("test", block_size=10**7)
    with pytest.raises(FileNotFoundError, match="modules="):
        stdlib_text(("no_such_module.py",))
    assert "textwrap.py" in CORPUS_MODULES


def _tiny(block_size=8, **kw):
    from jupyter_curvature.integrations.text_model import tiny_gpt

    return tiny_gpt(n_layer=1, n_embd=8, n_head=2, block_size=block_size, **kw).double()


def test_tiny_gpt_loss_is_transformers_causal_lm_loss():
    model = _tiny(block_size=9, seed=3)  # 9 positions: transformers' loss reads whole windows
    x, y = text_dataset(block_size=8, num_samples=6, seed=0).tensors
    ours = nn.CrossEntropyLoss()(model(x), y)
    full = torch.cat([x, y[:, -1:]], 1)  # the windows of block + 1 characters
    shifted = model.lm(input_ids=full).logits[:, :-1]  # causal: the prefix's logits
    assert_close(ours, nn.functional.cross_entropy(shifted.flatten(0, 1), full[:, 1:].flatten()),
                 rtol=1e-12, what="loss")  # fmt: skip
    theirs = model.lm(input_ids=full, labels=full).loss  # transformers shifts inside, in float32
    assert_close(ours, theirs, rtol=1e-6, what="transformers' loss")
    assert model(x).shape == (6, VOCAB_SIZE, 8)
    again = _tiny(block_size=9, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_tiny_gpt_curvature_equals_dense(kind):
    from jupyter_curvature.operators import GGNOperator, HessianOperator

    model = _tiny(seed=1)
    x, y = text_dataset(block_size=8, num_samples=6, seed=0).tensors
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    params = "lm.transformer.h.0.attn.*"
    loss_fn = nn.CrossEntropyLoss()
    Op = HessianOperator if kind == "hessian" else GGNOperator
    # the reference differentiates forward-over-reverse: torch's composite ("math") attention
    # has forward-mode derivatives, the fused CPU kernel the model runs otherwise has not
    with sdpa_kernel(SDPBackend.MATH):
        dense = (dense_hessian if kind == "hessian" else dense_ggn)(model, loss_fn, x, y, params)
    assert_close(Op(model, loss_fn, batches, params).to_dense(), dense, rtol=1e-9, atol=1e-12)


def test_text_report_trains_and_reports(tmp_path):
    """``demo --task text`` (quick, 3 steps): the files, and numbers checked independently."""
    import json

    from jupyter_curvature.tasks import text_report

    result = text_report(tmp_path, steps=3, quick=True)
    summary = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "report.md").is_file() and (tmp_path / "hessian_density.png").is_file()
    assert (tmp_path / "train" / "history.json").is_file()
    model = result.results["train"].model
    x, y = text_dataset("test", block_size=64).tensors
    with torch.no_grad():
        test_loss = float(nn.CrossEntropyLoss()(model(x), y))
    assert summary["test_loss"] == pytest.approx(test_loss, rel=1e-5)
    assert summary["test_bits_per_character"] == pytest.approx(test_loss / 0.6931471805599453)
    top = summary["hessian"]["top_eigenvalues"]
    assert len(top) == 3 and top == sorted(top, reverse=True)
    assert f"{top[0]:.4g}" in (tmp_path / "report.md").read_text()
    # per block: the blocks tile the model's parameters; each block's top eigenvalue is at
    # most the whole model's (Cauchy interlacing), up to the certificates' tolerance
    blocks = summary["blocks"]
    assert (tmp_path / "blocks.png").is_file() and (tmp_path / "blocks.json").is_file()
    assert sum(b["size"] for b in blocks) == sum(p.numel() for p in model.parameters())
    assert {"transformer.h.0.attn", "transformer.h.3.mlp", "transformer.ln_f"} <= {
        b["block"].removeprefix("lm.") for b in blocks
    }
    assert max(b["top_eigenvalue"] for b in blocks) <= top[0] * (1 + 2e-3) + 1e-6
