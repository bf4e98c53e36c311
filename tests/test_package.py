"""Packaging rules that other tests cannot see: the engine stays free of Jupyter imports."""

from __future__ import annotations

import subprocess
import sys

JUPYTER_MODULES = ("IPython", "ipywidgets", "bqplot", "traitlets", "anywidget", "ipykernel", "comm")
ENGINE = (
    "jupyter_curvature",
    "jupyter_curvature.operators",
    "jupyter_curvature.spectral",
    "jupyter_curvature.stats",
    "jupyter_curvature.landscape",
    "jupyter_curvature.models",
    "jupyter_curvature.data",
    "jupyter_curvature.optim",
    "jupyter_curvature.training",
    "jupyter_curvature.distributed",
    "jupyter_curvature.cli",
)


def _loaded_after(code: str) -> set[str]:
    probe = code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_engine_imports_no_jupyter_module():
    imports = "\n".join(f"import {name}" for name in ENGINE)
    loaded = _loaded_after(
        imports + "\nimport jupyter_curvature as jc\njc.HessianOperator, jc.eigenpairs"
    )
    leaked = sorted(m for m in loaded if m.split(".")[0] in JUPYTER_MODULES)
    assert not leaked, f"the engine imported Jupyter modules: {leaked}"


def test_plain_import_is_light():
    loaded = _loaded_after("import jupyter_curvature")
    assert "torch" not in loaded, "import jupyter_curvature should not import torch eagerly"


def test_lazy_attributes_resolve():
    import jupyter_curvature as jc

    for name in jc.__all__:
        assert getattr(jc, name) is not None, name


def test_importing_the_engine_shows_no_dependency_warning():
    """No FutureWarning/DeprecationWarning from a dependency reaches a notebook cell when the
    engine is first imported and its first products run (linear_operator's and torch's own
    forward-AD decompositions' torch.jit.script warnings are filtered narrowly)."""
    imports = "\n".join(f"import {name}" for name in ENGINE)
    done = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-W", "error::DeprecationWarning", "-c",
         imports + "\nimport jupyter_curvature as jc\njc.spectral_density, jc.eigenpairs, jc.trace"
         + "\nimport torch\nnet = torch.nn.Linear(3, 2)\nx, y = torch.randn(4, 3), torch.arange(4) % 2"
         + "\nfor Op in (jc.HessianOperator, jc.GGNOperator, jc.EmpiricalFisherOperator):"
         + "\n    Op(net, torch.nn.CrossEntropyLoss(), (x, y)) @ torch.ones(8)"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
