"""A character-level language-modelling corpus that ships with every Python: the standard
library's own sources.

No download and no extra package: the text is a fixed list of pure-Python modules of the
running interpreter's standard library (:data:`CORPUS_MODULES`), read as UTF-8 and
concatenated in that order. The vocabulary is fixed too (:data:`VOCABULARY`: newline, the 95
printable ASCII characters and one "other" token for anything else), so a model built for
it has the same shape on every machine; the text itself is that Python's copy of the
modules, so the numbers differ a little between Python versions, never between runs.

The samples are windows of ``block_size + 1`` characters taken every ``block_size``
characters: the inputs are the first ``block_size`` characters, the targets the next
character at each position (the causal-LM shift is done here, once, so that any model
``(batch, block_size) -> logits`` and ``nn.CrossEntropyLoss`` train on it). The first 90% of
the text gives the training windows, the rest the test windows.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from .registry import seeded_subset

__all__ = [
    "CORPUS_MODULES",
    "VOCABULARY",
    "VOCAB_SIZE",
    "decode",
    "encode",
    "stdlib_text",
    "text_dataset",
]

#: standard-library modules (paths under the stdlib folder) whose sources make the corpus:
#: pure Python, present in every CPython 3.10+, prose-rich (docstrings) as well as code.
CORPUS_MODULES = (
    "textwrap.py",
    "string.py",
    "difflib.py",
    "calendar.py",
    "fractions.py",
    "heapq.py",
    "bisect.py",
    "shlex.py",
    "glob.py",
    "fnmatch.py",
)

#: the characters a token stands for; token ``len(VOCABULARY)`` is "any other character"
VOCABULARY = "\n" + "".join(chr(c) for c in range(32, 127))
VOCAB_SIZE = len(VOCABULARY) + 1
_INDEX = {ch: i for i, ch in enumerate(VOCABULARY)}
_OTHER = len(VOCABULARY)
_TRAIN_FRACTION = 0.9


def stdlib_text(modules: tuple[str, ...] = CORPUS_MODULES) -> str:
    """The corpus: the sources of ``modules`` (paths under the standard library's folder)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    missing = [m for m in modules if not (root / m).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the standard library at {root} has no {', '.join(missing)}; pass modules= "
            f"with files that exist there (e.g. {', '.join(CORPUS_MODULES[:3])})"
        )
    return "\n".join((root / m).read_text(encoding="utf-8") for m in modules)


def encode(text: str) -> torch.Tensor:
    """Token ids (``int64``) of ``text``; characters outside :data:`VOCABULARY` map to one id."""
    return torch.tensor([_INDEX.get(ch, _OTHER) for ch in text], dtype=torch.long)


def decode(ids: torch.Tensor | list[int]) -> str:
    """The text of token ids (the "other" token shows as ``"?"``)."""
    chars = VOCABULARY + "?"
    return "".join(chars[int(i)] for i in ids)


def text_dataset(
    split: str = "train",
    *,
    block_size: int = 64,
    num_samples: int | None = None,
    seed: int = 0,
    modules: tuple[str, ...] = CORPUS_MODULES,
) -> TensorDataset:
    """Next-character windows of the standard-library corpus: ``(inputs, targets)`` items,
    each ``(block_size,)`` token ids, ``targets[t] = inputs[t + 1]`` within the text.

    Args:
        split: ``"train"`` (the first 90% of the text) or ``"test"`` (the rest).
        block_size: characters per sample (the model's context).
        num_samples: keep this many windows of the split, drawn by ``seed``.
        seed: seed of that draw.
        modules: the corpus (default :data:`CORPUS_MODULES`).

    Raises:
        ValueError: an unknown split, or a block size the split cannot hold once.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    ids = encode(stdlib_text(modules))
    cut = int(len(ids) * _TRAIN_FRACTION)
    part = ids[:cut] if split == "train" else ids[cut:]
    count = (len(part) - 1) // block_size
    if count < 1:
        raise ValueError(
            f"block_size={block_size} is longer than the {split} text ({len(part)} characters)"
        )
    starts = torch.arange(count) * block_size
    windows = part[starts[:, None] + torch.arange(block_size + 1)]
    dataset = TensorDataset(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())
    return dataset if num_samples is None else seeded_subset(dataset, num_samples, seed)
