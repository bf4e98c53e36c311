"""Smoke test of benchmarks/bench_scale.py: its quick floors section runs and reports.

No timed assertion: only that the script parses its flags, builds its network and data, and
returns the measured floors with the fixed-cost units the README's figures are stated in.
"""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scale.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_product_section_runs(tmp_path):
    bench = load_bench()
    out = tmp_path / "scale.json"
    record = bench.main(["--quick", "--only", "product", "--peers", "none", "--json", str(out)])
    floors = record["floors"]
    assert set(floors) == {"gradient", "kept", "build"}
    assert floors["gradient"] > 0 and floors["kept"] > 0 and floors["build"] >= 0
    assert json.loads(out.read_text())["parameters"] == record["parameters"] > 0


def test_unknown_peer_is_refused():
    bench = load_bench()
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--peers", "pyhesian"])


def test_bookkeeping_bench_runs_on_a_small_diagonal(capsys):
    """benchmarks/bench_bookkeeping.py: both runs report a table row; its diagonal operator
    has the spectrum it says (the top-5 it certifies are the diagonal's five largest)."""
    path = SCRIPT.parent / "bench_bookkeeping.py"
    spec = importlib.util.spec_from_file_location("bench_bookkeeping", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--n", "3000", "--rounds", "1"])
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| 3,000 |")]
    assert [r.split("|")[2].strip() for r in rows] == ["top-5", "density"]
    assert all(int(r.split("|")[3]) > 0 for r in rows)
    from jupyter_curvature.spectral import eigenpairs

    d = bench.spectrum(3000)
    r = eigenpairs(bench.Diagonal(d), k=5, seed=0)
    assert r.converged
    top = d.double().sort(descending=True).values[:5]
    assert (r.eigenvalues - top).abs().max() <= r.residuals.max() + 1e-9 * top[0]
