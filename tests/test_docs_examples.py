"""Examples of docs/ that run as written (with fewer epochs), like tests/test_readme.py.

A docs example that fails when pasted is a bug users meet early: docs/training.md's trainer
once indexed an empty ``history.curvature`` (its budget skipped every check), and
docs/explorer.md's magic line once ended in a comment that IPython passed to the magic.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"


def block_after(page: str, heading: str) -> str:
    """The first fenced python block after ``heading`` in ``docs/page``."""
    text = (DOCS / page).read_text()
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, text.index(heading))
    assert match, f"no python block after {heading!r} in docs/{page}"
    return match.group(1)


def test_training_trainer_example_runs(tmp_path, monkeypatch):
    import jupyter_curvature as jc

    monkeypatch.chdir(tmp_path)  # its checkpoints go to runs/cnn
    code = block_after("training.md", "### The trainer")
    assert "epochs=30" in code
    torch.manual_seed(0)
    model = jc.models.create("small_cnn")
    namespace = {
        "model": model,
        "opt": torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        "train": jc.data.get_dataset("digits"),
        "test": jc.data.get_dataset("digits", split="test"),
    }
    # 5 epochs of 12 steps: one check at step 50, the example's last line reads it
    exec(compile(code.replace("epochs=30", "epochs=5"), "docs/training.md", "exec"), namespace)  # noqa: S102
    record = namespace["history"].curvature[-1]
    assert record["step"] == 50 and len(record["top_eigenvalues"]) == 3


def test_explorer_spectrum_line_runs_as_written():
    """docs/explorer.md's magics, each line one cell; the landscape itself is tested elsewhere."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    import jupyter_curvature as jc

    code = block_after("explorer.md", "## The landscape explorer")
    config = Config()
    config.HistoryAccessor.enabled = False
    shell = InteractiveShell.instance(config=config)
    torch.manual_seed(0)
    shell.user_ns["model"] = jc.models.create("mlp")
    shell.user_ns["train_loader"] = jc.data.get_loader("digits", batch_size=256, num_samples=256)
    try:
        for line in code.splitlines():
            if not line.strip() or line.startswith("%curv_landscape"):
                continue
            result = shell.run_cell(line)
            error = result.error_before_exec or result.error_in_exec
            if error is not None:
                pytest.fail(f"docs/explorer.md line failed: {line!r}: {error!r}")
        assert shell.user_ns["eig"].eigenvalues.shape == (4,)
    finally:
        shell.run_line_magic("unload_ext", "jupyter_curvature")
