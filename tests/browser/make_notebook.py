"""Write notebooks/browser_checks.ipynb (run once by hand after editing the cells below).

The notebook is the dedicated page of the browser suite: small, seeded, a few seconds per cell.
Kept as code so that a review sees the cells as plain Python.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell(
        "# Browser checks\n\n"
        "The dedicated notebook of `tests/browser/test_jupyterlab.py`: the live training dashboard,\n"
        "the spectrum panel and the landscape explorer with its JS canvas, on the built-in digits\n"
        "and a tiny MLP (seconds on a CPU). Under the test, `JC_BROWSER_GATES` names a folder for a\n"
        "handshake: the training cell waits at two steps until the test has read the dashboard, so\n"
        "the test sees it grow *while the cell runs* however slow the machine is. Run by hand, the\n"
        "variable is unset and nothing waits."
    ),
    new_code_cell(
        "import os\n"
        "import time\n"
        "from pathlib import Path\n"
        "\n"
        "import torch\n"
        "\n"
        "from jupyter_curvature import data as jdata\n"
        "from jupyter_curvature import models\n"
        "\n"
        "torch.manual_seed(0)\n"
        "torch.set_num_threads(1)\n"
        'GATES = os.environ.get("JC_BROWSER_GATES")\n'
        "\n"
        "\n"
        "def gate(name, timeout=180.0):\n"
        '    """Under the browser test: say we reached `name`, then wait for the test to release us."""\n'
        "    if not GATES:\n"
        "        return\n"
        "    folder = Path(GATES)\n"
        '    (folder / f"{name}.reached").touch()\n'
        "    start = time.monotonic()\n"
        '    while not (folder / f"{name}.release").exists():\n'
        "        if time.monotonic() - start > timeout:\n"
        '            raise TimeoutError(f"the browser test did not release gate {name!r} in {timeout} s")\n'
        "        time.sleep(0.05)\n"
        "\n"
        "\n"
        'model = models.create("mlp", hidden=(16,))\n'
        'curv_data = [next(iter(jdata.digits_loader("train", batch_size=300)))]  # one batch of 300\n'
        'print(sum(p.numel() for p in model.parameters()), "parameters")'
    ),
    new_code_cell("%load_ext jupyter_curvature"),
    new_code_cell(
        "%%curv_train --model model --data digits --steps 120 --lr 0.1 --spectrum-every 40 --num-iters 12 --num-probes 1 --top-k 2 --spectrum-samples 128 --out run\n"
        "if step == 40:\n"
        '    gate("train_middle")\n'
        "if step == 120:\n"
        '    gate("train_end")\n'
        "time.sleep(0.01)\n"
        "outputs = model(x)\n"
        "loss = loss_fn(outputs, y)"
    ),
    new_code_cell(
        "%curv_spectrum --model model --data curv_data --num-iters 30 --num-probes 2 --top-k 3 --out dens --out-eigen eig"
    ),
    new_code_cell(
        "%curv_landscape --model model --data curv_data --eigen eig --directions top:2 --span 1.0 --num-points 11 --out ex"
    ),
    new_code_cell('print("done:", run.status, run.trainer.step, "steps")  # noqa: F821'),
]


def main() -> None:
    nb = new_notebook(cells=CELLS)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    out = Path(__file__).resolve().parent / "notebooks" / "browser_checks.ipynb"
    nbformat.write(nb, out)
    print("wrote", out)


if __name__ == "__main__":
    main()
