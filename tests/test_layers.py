"""The package's architecture, checked: the layer contract and no import cycle.

The contract (``[tool.importlinter]`` in pyproject.toml) lists the layers from the top
down; a module may import only from the layers below its own. The cycle check reads the
same import graph (grimp, import-linter's own graph builder) and looks for strongly
connected components of modules, lazy imports included.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_layer_contract_is_kept():
    pytest.importorskip("importlinter")
    # the console script of import-linter, run with this interpreter (no cache: a fresh read)
    script = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    done = subprocess.run(
        [sys.executable, "-c", script, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "broken" in done.stdout and "0 broken" in done.stdout, done.stdout[-2000:]


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("jupyter_curvature", include_external_packages=False)
    # a package's __init__ re-exporting its own modules is not a cycle between modules
    for module in sorted(graph.modules):
        if graph.find_children(module):
            for child in graph.find_modules_directly_imported_by(module):
                if child.startswith(module + "."):
                    graph.remove_import(importer=module, imported=child)
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


_SHADOW_CHECK = r"""
import importlib, pkgutil, sys, types
import jupyter_curvature
first = sys.argv[1]
importlib.import_module(first)  # this package's __init__ runs before any other's
for info in pkgutil.walk_packages(jupyter_curvature.__path__, "jupyter_curvature."):
    if info.name.split(".")[1] not in ("__main__", "magics", "cell_step", "widgets", "plots", "api"):
        importlib.import_module(info.name)
bad = []
for name, module in list(sys.modules.items()):
    if not name.startswith("jupyter_curvature.") or module is None:
        continue
    for attr, value in vars(module).items():
        if not isinstance(value, types.ModuleType) or not value.__name__.startswith(
            "jupyter_curvature."
        ) or value.__name__.rsplit(".", 1)[1] != attr:
            continue
        parent = sys.modules.get(value.__name__.rsplit(".", 1)[0])
        exported = getattr(parent, "__all__", ())
        if attr in exported and getattr(parent, attr) is not value:
            bad.append(f"{name}.{attr} is the module {value.__name__}, not its {attr}")
print("\n".join(bad))
"""


@pytest.mark.parametrize(
    "first",
    # the engine's siblings may import each other (the layer contract's ``:``): the cycles
    # through their ``__init__`` files can only form there
    ["spectral", "stats", "landscape", "plotting"],
)  # fmt: skip
def test_no_name_is_bound_to_a_half_initialised_package(first):
    """Importing any package first leaves every ``from ..pkg import name`` bound to the name.

    A module imported while another package's ``__init__`` is still running (package ``a``
    imports package ``b``, whose modules import names from ``a``) can bind a submodule of the
    same name instead of the function (``from ..spectral import eigenpairs`` gave the module
    ``spectral.eigenpairs``): an import cycle through ``__init__`` files that no module-level
    cycle search sees.
    """
    out = subprocess.run(
        [sys.executable, "-c", _SHADOW_CHECK, f"jupyter_curvature.{first}"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "", out.stdout
