"""Write notebooks/browser_checks.ipynb and notebooks/progress_checks.ipynb (run once by hand
after editing the cells below).

The notebooks are the dedicated pages of the browser suite: small, seeded, a few seconds per
cell. Kept as code so that a review sees the cells as plain Python.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

GATE_SOURCE = (
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
)

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
        "\n" + GATE_SOURCE + "\n"
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


PROGRESS_CELLS = [
    new_markdown_cell(
        "# Progress, Cancel and saved panels\n\n"
        "The second dedicated notebook of `tests/browser/test_jupyterlab.py`. Two GGN spectra of\n"
        "a tiny MLP on one batch of digits: the model pauses at chosen forward calls (a GGN\n"
        "product calls it once) until the test has read the progress line (`JC_BROWSER_GATES`),\n"
        "so the test sees the line advance, and presses Cancel, *while the cell runs*, however\n"
        "slow the machine is. The test then saves the notebook, closes it and reopens it: the\n"
        "panels render from the saved widget state. Run by hand, nothing waits."
    ),
    new_code_cell(
        "import os\n"
        "import threading\n"
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
        "\n" + GATE_SOURCE + "\n"
        "\n"
        "class Gated(torch.nn.Module):\n"
        '    """The network, pausing at chosen forward calls (`arm(name=call_number)`)."""\n'
        "\n"
        "    def __init__(self, net):\n"
        "        super().__init__()\n"
        "        self.net = net\n"
        "        self.calls = 0\n"
        "        self.gates = {}\n"
        "\n"
        "    def arm(self, **at):\n"
        "        self.calls = 0\n"
        "        self.gates = {n: name for name, n in at.items()}\n"
        "\n"
        "    def forward(self, x):\n"
        "        self.calls += 1\n"
        "        name = self.gates.pop(self.calls, None)\n"
        "        if name:\n"
        "            gate(name)\n"
        "        return self.net(x)\n"
        "\n"
        "\n"
        'model = Gated(models.create("mlp", hidden=(16,)))\n'
        'curv_data = [next(iter(jdata.digits_loader("train", batch_size=300)))]  # one batch of 300'
    ),
    new_code_cell(
        "%load_ext jupyter_curvature\n"
        "%config CurvMagics.interval = 0  # draw every progress event: the test reads each line"
    ),
    new_code_cell(
        "# live progress: pauses at two products\n"
        "model.arm(live_first=10, live_second=30)\n"
        "%curv_spectrum --model model --data curv_data --curvature ggn --num-iters 40 --num-probes 1 --out dens_live"
    ),
    new_code_cell(
        "# cancel: the test presses Cancel while the model waits\n"
        "model.arm(cancel_here=12)\n"
        "%curv_spectrum --model model --data curv_data --curvature ggn --num-iters 200 --num-probes 1 --out dens_cancel"
    ),
    new_code_cell(
        "workers = [t.name for t in threading.enumerate() if t.name.startswith('jupyter-curvature')]\n"
        'print("done:", dens_live.num_steps, dens_cancel.cancelled, dens_cancel.num_steps, workers)'
    ),
]


def write(cells: list, name: str) -> None:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    out = Path(__file__).resolve().parent / "notebooks" / name
    nbformat.write(nb, out)
    print("wrote", out)


def main() -> None:
    write(CELLS, "browser_checks.ipynb")
    write(PROGRESS_CELLS, "progress_checks.ipynb")


if __name__ == "__main__":
    main()
