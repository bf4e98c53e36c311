"""The README's code blocks run as written (a stale README is a bug users meet first).

The Python API block runs in a fresh interpreter; the notebook block runs its magics in an
IPython shell with the widgets on, with one change: ``--epochs 5`` becomes ``--epochs 1`` to
keep the suite short (the same code path, fewer steps).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def block_after(heading: str, language: str) -> str:
    """The first fenced ``language`` block after ``heading``."""
    start = README.index(heading)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(README, start)
    assert match, f"no {language} block after {heading!r}"
    return match.group(1)


def test_python_api_block_runs(tmp_path):
    code = "import matplotlib\nmatplotlib.use('Agg')\n" + block_after("## Python API", "python")
    # the timeout only guards against a hang: on a 2-core machine shared with other test
    # suites the block took more than 600 s (it computes a 21 x 21 landscape of a CNN)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=3600
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_notebook_block_runs():
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    section = README[README.index("## In a notebook") : README.index("## Python API")]
    cells = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(cells) >= 3, "the notebook section lost its cells"
    config = Config()
    config.HistoryAccessor.enabled = False
    shell = InteractiveShell.instance(config=config)
    try:
        for cell in cells:
            code = cell.replace("--epochs 5", "--epochs 1")
            if code.startswith("%%"):  # a cell magic: the whole block is one cell
                chunks = [code]
            else:  # line magics: one cell each, as a user would run them
                chunks = [line for line in code.splitlines() if line.strip()]
            for chunk in chunks:
                result = shell.run_cell(chunk)
                error = result.error_before_exec or result.error_in_exec
                if error is not None:
                    pytest.fail(f"README cell failed: {chunk!r}: {error!r}")
        assert shell.user_ns["spec"].num_iters == 80
    finally:
        shell.run_line_magic("unload_ext", "jupyter_curvature")
