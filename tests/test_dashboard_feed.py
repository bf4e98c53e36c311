"""The live dashboard fed by the trackers of other loops (``jc.track``, Lightning, Hugging
Face): its marks hold the checks' certified eigenvalues (checked against dense float64
Hessians of the weights at each check), the 2 / lr line, the latest density (the engine's,
called directly on those weights) and the training losses the loop reported."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ipywidgets.widgets.widget import _instances
from reference import dense_hessian
from torch import nn

import jupyter_curvature as jc
from jupyter_curvature.widgets import TrainingDashboard


class Snapshot:
    """A logger that keeps a copy of the model's weights at each check."""

    def __init__(self, model):
        self.model, self.states = model, {}

    def log(self, record, result):
        self.states[record["step"]] = copy.deepcopy(self.model.state_dict())


def mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)


def data(n=24, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 5, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def dense_top(model, batch, k):
    """The k largest eigenvalues of the dense float64 Hessian (torch.func)."""
    model = copy.deepcopy(model).double()
    H = dense_hessian(model, nn.CrossEntropyLoss(), batch[0].double(), batch[1])
    return torch.linalg.eigvalsh(H).flip(0)[:k]


@pytest.fixture
def leak_check():
    before = len(_instances)
    yield
    assert len(_instances) == before, f"{len(_instances) - before} widgets left open"


def check_marks(dash, snap, build, batch, steps, k, lr, num_iters, num_probes):
    np.testing.assert_array_equal(dash.top_lines.x, steps)
    for j, step in enumerate(steps):
        model = build()
        model.load_state_dict(snap.states[step])
        want = dense_top(model, batch, k).numpy()
        np.testing.assert_allclose(dash.top_lines.y[:, j], want, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dash.threshold_line.y, [2 / lr] * len(steps))
    model = build()
    model.load_state_dict(snap.states[steps[-1]])
    model = model.to(batch[0].dtype)
    op = jc.HessianOperator(model, nn.CrossEntropyLoss(), [batch])
    curve = jc.spectral_density(op, num_iters=num_iters, num_probes=num_probes, seed=0).density()
    np.testing.assert_allclose(dash.density_line.x, curve.grid, rtol=1e-5)
    np.testing.assert_allclose(dash.density_line.y, curve.density, rtol=1e-4, atol=1e-6)
    assert f"step {steps[-1]}" in dash.density_fig.title


def test_plain_loop_tracker_feeds_the_dashboard(leak_check):
    model, (x, y), lr = mlp(), data(), 0.3
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    dash = TrainingDashboard("my loop", interval=0.0)
    snap = Snapshot(model)
    feed = dash.feed(total_steps=6)
    tracker = jc.track(model, nn.CrossEntropyLoss(), (x, y), every=3, top_k=2, tol=1e-8,
                       num_iters=8, num_probes=2, max_overhead=None, optimizer=opt,
                       loggers=[snap, feed])  # fmt: skip
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        tracker.step(loss=loss)
    tracker.close()
    np.testing.assert_array_equal(dash.loss_lines.x, np.arange(1, 7))
    np.testing.assert_allclose(dash.loss_lines.y, losses, rtol=1e-12)
    check_marks(dash, snap, mlp, (x, y), [3, 6], k=2, lr=lr, num_iters=8, num_probes=2)
    assert dash.progress.value == 6 and dash.progress.max == 6
    assert "finished at step 6 (2 checks" in dash.status.value
    assert "2 / lr" in dash.stats_html.value and "λ max" in dash.stats_html.value
    assert dash.to_matplotlib() is not None  # the static figure of the same view
    dash.close()


def test_lightning_callback_feeds_the_dashboard(tmp_path, leak_check):
    pl = pytest.importorskip("lightning.pytorch")
    from jupyter_curvature.integrations.lightning import CurvatureCallback

    losses = []

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp(dtype=torch.float32)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
            losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.2)

    module = Module()
    x, y = data(32, torch.float32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    dash = TrainingDashboard("Lightning", interval=0.0)
    snap = Snapshot(module.net)
    cb = CurvatureCallback((x[:16], y[:16]), every=2, max_overhead=None, num_iters=6,
                           num_probes=2, top_k=1, tol=1e-5, loss_fn=nn.CrossEntropyLoss(),
                           loggers=[snap, dash.feed(total_steps=4)])  # fmt: skip
    trainer = pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", default_root_dir=tmp_path, callbacks=[cb])  # fmt: skip
    trainer.fit(module, loader)
    np.testing.assert_array_equal(dash.loss_lines.x, [1, 2, 3, 4])
    np.testing.assert_allclose(dash.loss_lines.y, losses, rtol=1e-6)

    def build():
        return mlp(dtype=torch.float32)

    batch = (x[:16], y[:16])
    np.testing.assert_array_equal(dash.top_lines.x, [2, 4])
    for j, step in enumerate([2, 4]):
        model = build()
        model.load_state_dict(snap.states[step])
        want = dense_top(model, batch, 1).numpy()
        top = np.atleast_2d(dash.top_lines.y)  # bqplot keeps one line as a 1-D array
        np.testing.assert_allclose(top[:, j], want, rtol=1e-4)  # float32 checks
    np.testing.assert_allclose(dash.threshold_line.y, [10.0, 10.0])
    assert "finished at step 4 (2 checks" in dash.status.value
    dash.close()


def test_huggingface_callback_feeds_the_logged_losses(tmp_path, leak_check):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from jupyter_curvature.integrations.huggingface import CurvatureCallback

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=16, num_labels=3, attn_implementation="eager",
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(2)
    ids, labels = (
        torch.randint(1, 30, (16, 6), generator=g),
        torch.randint(0, 3, (16,), generator=g),
    )
    rows = [{"input_ids": ids[i], "labels": labels[i]} for i in range(16)]
    dash = TrainingDashboard("Hugging Face", interval=0.0)
    cb = CurvatureCallback({"input_ids": ids[:8], "labels": labels[:8]}, every=2,
                           max_overhead=None, num_iters=4, num_probes=1, top_k=1,
                           loggers=[dash.feed()])  # fmt: skip
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4,
        learning_rate=0.05, lr_scheduler_type="constant", report_to=[], use_cpu=True,
        save_strategy="no", logging_strategy="steps", logging_steps=1, disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=[cb])
    trainer.train()
    logged = [(r["step"], r["loss"]) for r in trainer.state.log_history if "loss" in r]
    np.testing.assert_array_equal(dash.loss_lines.x, [s for s, _ in logged])
    np.testing.assert_allclose(dash.loss_lines.y, [v for _, v in logged])
    np.testing.assert_array_equal(dash.top_lines.x, [2, 4])
    assert dash.progress.layout.display == "none"  # no total_steps: no bar
    dash.close()
