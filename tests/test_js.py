"""The JS unit tests (node's built-in runner), run from the Python suite so one command runs all."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_node_unit_tests_pass():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the JS unit tests need Node.js 18 or newer")
    tests = sorted(str(p) for p in (ROOT / "js" / "tests").glob("*.test.mjs"))
    assert tests, "no JS test files found under js/tests"
    run = subprocess.run(
        [node, "--test", *tests], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, f"node --test failed:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"
    assert "# fail 0" in run.stdout
