"""A small GPT-style language model built from a ``transformers`` config (random weights,
nothing downloaded), for the offline text task (:func:`jupyter_curvature.data.text_dataset`).

>>> model = tiny_gpt(n_layer=4)  # doctest: +SKIP
>>> logits = model(inputs)       # (batch, vocab, positions), as nn.CrossEntropyLoss takes

Needs ``transformers``: ``pip install "jupyter_curvature[hf]"``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.text import VOCAB_SIZE
from .extras import require

__all__ = ["CausalLM", "tiny_gpt"]


class CausalLM(nn.Module):
    """A Hugging Face causal LM as a plain ``ids -> logits`` module.

    ``forward(ids)`` returns the logits as ``(batch, vocab, positions)``: the layout
    ``nn.CrossEntropyLoss`` takes for a sequence (class dimension second), so the loss of
    next-token targets ``(batch, positions)`` is ``nn.CrossEntropyLoss()(model(ids), targets)``,
    the mean over every position of every sample, and the engine's operators, statistics and
    landscapes use it as they use an image classifier. The wrapped model is ``.lm``; its
    blocks keep their Hugging Face names (``lm.transformer.h.0.attn``, ...).
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids).logits.transpose(1, 2)


def tiny_gpt(
    *,
    vocab_size: int = VOCAB_SIZE,
    block_size: int = 64,
    n_layer: int = 4,
    n_embd: int = 64,
    n_head: int = 4,
    seed: int = 0,
) -> CausalLM:
    """A GPT-2 architecture (``transformers.GPT2LMHeadModel``) of the given size, initialised
    by ``seed`` with transformers' own initialisation, dropout off (so curvature products are
    deterministic), wrapped as :class:`CausalLM`.

    Args:
        vocab_size: tokens (default the text task's :data:`~jupyter_curvature.data.text.VOCAB_SIZE`).
        block_size: the longest context (``n_positions``).
        n_layer, n_embd, n_head: depth, width and attention heads.
        seed: seeds the initial weights.
    """
    transformers = require("transformers")
    config = transformers.GPT2Config(
        vocab_size=vocab_size,
        n_positions=block_size,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,  # GPT-2's 50256 is outside a small vocabulary
        eos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm = transformers.GPT2LMHeadModel(config)
    return CausalLM(lm.eval())
