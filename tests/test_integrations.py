"""The integrations: a plain-loop tracker, Lightning and Hugging Face callbacks, TensorBoard and
W&B loggers. Each callback's numbers equal the engine's called directly on the weights of the
check's step; the loggers' files are read back with the packages' own readers."""

from __future__ import annotations

import copy
import glob
import importlib
import json
import sys
import time

import pytest
import torch
from torch import nn

import jupyter_curvature as jc
from jupyter_curvature.integrations import TensorBoardLogger, Tracker, WandbLogger, track


class Snapshot:
    """A logger that keeps a copy of the model's weights and buffers at each check."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def log(self, record, result) -> None:
        self.states[record["step"]] = copy.deepcopy(self.model.state_dict())


def mlp(dtype=torch.float64, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).to(dtype)


def toy_data(n=48, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def engine_numbers(model, loss_fn, data, record, *, num_iters, num_probes, trace_matvecs=None,
                   **op_kwargs):  # fmt: skip
    """The engine called directly: eigenpairs, density and trace on one operator."""
    op = jc.HessianOperator(model, loss_fn, data, **op_kwargs)
    k = len(record["top_eigenvalues"])
    eig = jc.eigenpairs(op, k=k, seed=0, warn=False)
    dens = jc.spectral_density(op, num_iters=num_iters, num_probes=num_probes, seed=0)
    out = {
        "top_eigenvalues": eig.eigenvalues.tolist(),
        "ritz_values": dens.ritz_values.tolist(),
        "trace": dens.stats.trace,
        "negative_mass": dens.stats.negative_mass,
    }
    if trace_matvecs is not None:
        out["trace"] = jc.trace(op, num_matvecs=trace_matvecs, seed=0).estimate
    return out


def assert_same(record, expected, rtol=1e-10):
    for key, value in expected.items():
        got = torch.tensor(record[key], dtype=torch.float64)
        want = torch.tensor(value, dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=rtol, atol=rtol, msg=key)


# --- plain loop ----------------------------------------------------------------------------


def test_tracker_equals_engine_on_the_weights_of_each_check():
    model = mlp()
    x, y = toy_data()
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    snap = Snapshot(model)
    curv = (x[:16], y[:16])
    # a cold start: the engine's own call, bit for bit
    tracker = track(model, loss_fn, curv, every=3, optimizer=opt, max_overhead=None,
                    num_iters=12, num_probes=2, top_k=2, trace_matvecs=12, loggers=[snap],
                    warm_start=False)  # fmt: skip
    for _ in range(7):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        tracker.step()
    assert [r["step"] for r in tracker.history] == [3, 6]
    for record in tracker.history:
        frozen = mlp()
        frozen.load_state_dict(snap.states[record["step"]])
        expected = engine_numbers(frozen, loss_fn, curv, record, num_iters=12, num_probes=2,
                                  trace_matvecs=12)  # fmt: skip
        assert_same(record, expected)
        assert record["lambda_max"] == record["top_eigenvalues"][0]
        assert record["two_over_lr"] == pytest.approx(20.0)
        assert record["sharpness_ratio"] == pytest.approx(record["lambda_max"] * 0.05)
        assert record["trace_method"] in ("hutch++", "exact")
        assert record["num_samples"] == 16


class Noisy(nn.Module):
    """BatchNorm and dropout: a check must leave buffers, modes and RNG streams untouched."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(6, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Dropout(0.3), nn.Linear(10, 3)
        )

    def forward(self, x):
        return self.body(x)


def _noisy_run(with_tracker: bool):
    torch.manual_seed(0)
    model = Noisy().double()
    x, y = toy_data(64)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    tracker = None
    if with_tracker:
        # the training loader itself as the curvature data: read once, without consuming the RNG
        tracker = Tracker(model, loss_fn, loader, every=2, num_samples=24, max_overhead=None,
                          num_iters=6, num_probes=1, top_k=1, at_start=True)  # fmt: skip
    for _ in range(2):
        for xb, yb in loader:
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
            if tracker is not None:
                tracker.step()
    return model, opt, torch.get_rng_state(), tracker


def test_tracker_leaves_training_bitwise_unchanged():
    plain, plain_opt, plain_rng, _ = _noisy_run(False)
    tracked, tracked_opt, tracked_rng, tracker = _noisy_run(True)
    assert tracker.computed == 5 and [r["step"] for r in tracker.history] == [0, 2, 4, 6, 8]
    assert tracker.history[0]["num_samples"] == 24
    for (name, a), (_, b) in zip(plain.state_dict().items(), tracked.state_dict().items()):
        assert torch.equal(a, b), name
    for a, b in zip(plain.parameters(), tracked.parameters()):
        assert torch.equal(a.grad, b.grad)
    assert torch.equal(plain_rng, tracked_rng)
    assert tracked.training and all(m.training for m in tracked.modules())
    state = tracked_opt.state_dict()["state"]
    for i, s in plain_opt.state_dict()["state"].items():
        assert torch.equal(s["momentum_buffer"], state[i]["momentum_buffer"])


def test_tracker_budget_save_and_bad_input(tmp_path):
    model = mlp()
    x, y = toy_data()
    loss_fn = nn.CrossEntropyLoss()
    tracker = Tracker(model, loss_fn, (x, y), every=1, max_overhead=1e-9, num_iters=5,
                      num_probes=1, top_k=1, lr=0.1)  # fmt: skip
    for _ in range(4):
        assert tracker.step() is None
    assert tracker.skipped == 4 and tracker.computed == 0
    tracker.check()
    saved = json.loads(tracker.save(tmp_path / "curvature.json").read_text())
    assert saved["skipped"] == 4 and saved["computed"] == 1
    assert saved["history"][0]["step"] == 4
    assert saved["history"][0]["two_over_lr"] == pytest.approx(20.0)
    assert saved["settings"]["max_overhead"] == 1e-9
    with pytest.raises(ValueError, match="every"):
        Tracker(model, loss_fn, (x, y), every=0)
    with pytest.raises(TypeError, match="one-shot iterator"):
        Tracker(model, loss_fn, iter([(x, y)]))
    # half-precision weights: a tol below what their products certify is raised to it
    with pytest.warns(UserWarning, match="pass tol=0.015625"):
        half = Tracker(mlp(torch.bfloat16), loss_fn, (x.bfloat16(), y), top_k=1, tol=1e-3,
                       num_iters=5, num_probes=1)  # fmt: skip
    record = half.check()
    assert record["converged"] and record["top_eigenvalues"][0] > 0
    with pytest.raises(TypeError, match="not a logger"):
        Tracker(model, loss_fn, (x, y), loggers=[object()])


# --- missing packages ----------------------------------------------------------------------


def test_importing_the_package_imports_no_optional_package():
    import subprocess

    code = (
        "import sys, jupyter_curvature as jc; jc.track; import jupyter_curvature.integrations; "
        "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers', "
        "'tensorboard', 'wandb') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _fresh_integrations(monkeypatch, blocked):
    # the fresh import rebinds jupyter_curvature.integrations: restore it afterwards too
    monkeypatch.setattr(jc, "integrations", jc.integrations)
    for name in blocked:  # with the submodules an earlier test imported (lightning.pytorch)
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)
    for name in list(sys.modules):
        if name.startswith("jupyter_curvature.integrations"):
            monkeypatch.delitem(sys.modules, name)
    return importlib.import_module("jupyter_curvature.integrations")


@pytest.mark.parametrize(
    "blocked, what, extra",
    [
        (("lightning", "pytorch_lightning"), "lightning", "lightning"),
        (("transformers",), "huggingface", "hf"),
        (("tensorboard",), "tensorboard", "tensorboard"),
        (("wandb",), "wandb", "wandb"),
    ],
)
def test_missing_package_is_a_one_line_error(monkeypatch, tmp_path, blocked, what, extra):
    integrations = _fresh_integrations(
        monkeypatch, ("lightning", "pytorch_lightning", "transformers", "tensorboard", "wandb")
    )
    assert integrations.track is not None  # the package itself needs none of them
    with pytest.raises(ImportError) as info:
        if what == "lightning":
            importlib.import_module("jupyter_curvature.integrations.lightning")
        elif what == "huggingface":
            integrations.HFCurvatureCallback  # noqa: B018 (resolved on access)
        elif what == "tensorboard":
            integrations.TensorBoardLogger(tmp_path)
        else:
            integrations.WandbLogger()
    message = str(info.value)
    assert f'pip install "jupyter_curvature[{extra}]"' in message
    assert "\n" not in message


# --- TensorBoard and W&B -------------------------------------------------------------------


def _short_tracked_run(loggers, steps=4):
    model = mlp()
    x, y = toy_data()
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = track(model, loss_fn, (x[:16], y[:16]), every=2, optimizer=opt, max_overhead=None,
                    num_iters=8, num_probes=2, top_k=2, loggers=loggers)  # fmt: skip
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        tracker.step()
    tracker.close()
    return tracker


def test_tensorboard_event_files_hold_the_logged_values(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = _short_tracked_run([TensorBoardLogger(tmp_path / "tb")])
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    for name, key in (("lambda_1", None), ("lambda_2", None), ("trace", "trace"),
                      ("negative_mass", "negative_mass"), ("two_over_lr", "two_over_lr")):  # fmt: skip
        events = acc.Scalars(f"curvature/{name}")
        assert [e.step for e in events] == [2, 4]
        for event, record in zip(events, tracker.history):
            want = record[key] if key else record["top_eigenvalues"][int(name[-1]) - 1]
            assert event.value == pytest.approx(want, rel=1e-6)  # stored as float32
    hist = acc.Histograms("curvature/ritz_values")
    assert [h.step for h in hist] == [2, 4]
    assert hist[0].histogram_value.num == 2 * 8  # two probes of eight Ritz values
    assert hist[0].histogram_value.max == pytest.approx(tracker.history[0]["ritz_max"], rel=1e-6)
    assert "curvature/density" in tags["images"]
    assert len(acc.Images("curvature/density")) == 2


def test_wandb_offline_run_holds_the_logged_values(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    logger = WandbLogger(project="curvature-test", dir=str(tmp_path))
    logger.log_scalars({"train/loss": 1.5}, 3)  # training metrics, on their own step metric
    tracker = _short_tracked_run([logger])
    assert wandb.run is None  # the logger's own run was finished by close()
    (run_file,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    # wandb-core, a separate process, may still be writing the log when finish() returns
    deadline = time.monotonic() + 30
    while len(rows := _wandb_history(run_file)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {"train/loss": 1.5, "trainer/step": 3}.items() <= rows[0].items()
    logged = [r for r in rows if "curvature/lambda_1" in r]
    assert [r["curvature/step"] for r in logged] == [2, 4]
    for row, record in zip(logged, tracker.history):
        assert row["curvature/lambda_1"] == pytest.approx(record["top_eigenvalues"][0])
        assert row["curvature/lambda_2"] == pytest.approx(record["top_eigenvalues"][1])
        assert row["curvature/trace"] == pytest.approx(record["trace"])
        assert row["curvature/negative_mass"] == pytest.approx(record["negative_mass"])
        assert row["curvature/two_over_lr"] == pytest.approx(20.0)
        assert row["curvature/ritz_values/_type"] == "histogram"
        assert sum(row["curvature/ritz_values/values"]) == 2 * 8
        assert row["curvature/density/_type"] == "image-file"
    images = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "files" / "media" / "images" / "**" / "*.png"), recursive=True)  # fmt: skip
    assert len(images) == 2


def _wandb_history(path):
    """The history rows of an offline W&B run, read from its transaction log (``run-*.wandb``:
    a LevelDB-style log of 32 KiB blocks, records with a 7-byte header ``crc32, length, type``
    after a 7-byte file header, each record a ``wandb_internal_pb2.Record``)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    raw = open(path, "rb").read()
    assert raw[:4] == b":W&B"
    rows, pos, block, chunk = [], 7, 32768, b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if length == 0 and kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        if pos + 7 + length > len(raw):
            break  # a record still being written
        chunk += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({"/".join([i.key] if i.key else list(i.nested_key)): json.loads(i.value_json)
                             for i in record.history.item})  # fmt: skip
    return rows


# --- Lightning -----------------------------------------------------------------------------


def _lightning_module(pl, loss_attr=True):
    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp(torch.float32)
            if loss_attr:
                self.loss_fn = nn.CrossEntropyLoss()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.2)

    return Module()


@pytest.mark.parametrize("accumulate, precision", [(1, "32-true"), (2, "bf16-mixed")])
def test_lightning_callback_equals_engine(tmp_path, accumulate, precision):
    """With gradient accumulation a step is checked once; under mixed precision the checks
    run in float32 outside autocast, equal to the engine's on the float32 weights."""
    pl = pytest.importorskip("lightning.pytorch")
    from jupyter_curvature.integrations.lightning import CurvatureCallback

    module = _lightning_module(pl)
    x, y = toy_data(64, torch.float32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    snap = Snapshot(module)
    curv = (x[:16], y[:16])
    cb = CurvatureCallback(curv, every=2, max_overhead=None, num_iters=10, num_probes=2,
                           top_k=2, loggers=[snap])  # fmt: skip
    trainer = pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accumulate_grad_batches=accumulate, precision=precision,
                         accelerator="cpu",
                         default_root_dir=tmp_path, callbacks=[cb])  # fmt: skip
    trainer.fit(module, loader)
    history = cb.tracker.history
    assert [r["step"] for r in history] == [2, 4]
    for record in history:
        frozen = _lightning_module(pl)
        frozen.load_state_dict(snap.states[record["step"]])
        expected = engine_numbers(frozen, nn.CrossEntropyLoss(), curv, record, num_iters=10,
                                  num_probes=2)  # fmt: skip
        assert_same(record, expected, rtol=1e-5)
        assert record["two_over_lr"] == pytest.approx(10.0)
    assert snap.states[4]["net.0.weight"].equal(module.state_dict()["net.0.weight"])


def test_lightning_callback_bad_input(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from jupyter_curvature.integrations.lightning import CurvatureCallback

    x, y = toy_data(16, torch.float32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    kwargs = dict(max_steps=1, logger=False, enable_checkpointing=False, accelerator="cpu",
                  enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match="loss_fn="):
        pl.Trainer(callbacks=[CurvatureCallback((x, y))], **kwargs).fit(
            _lightning_module(pl, loss_attr=False), loader
        )
    # half-precision weights are checked in their dtype, tol raised to what they certify
    cb = CurvatureCallback((x, y), every=1, max_overhead=None, top_k=1, num_iters=5, num_probes=1)
    with pytest.warns(UserWarning, match="bfloat16 products can certify"):
        pl.Trainer(callbacks=[cb], precision="bf16-true", **kwargs).fit(
            _lightning_module(pl), loader
        )
    assert cb.tracker.history[0]["converged"]


# --- Hugging Face --------------------------------------------------------------------------


class _Keywords(nn.Module):
    """The test's own keyword adapter (independent of the package's)."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits


def _tiny_bert(transformers, seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=16, num_labels=3, attn_implementation="eager",
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def _text_batches(n=32, length=6, seed=2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 30, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[::3, -2:] = 0  # some padding
    labels = torch.randint(0, 3, (n,), generator=g)
    return ids, mask, labels


class _Features(torch.utils.data.Dataset):
    def __init__(self, ids, mask, labels):
        self.ids, self.mask, self.labels = ids, mask, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


@pytest.mark.parametrize("bf16", [False, True])
def test_huggingface_callback_equals_engine(tmp_path, bf16):
    """With gradient accumulation (a step checked once) and under bf16 autocast (checks in
    float32, equal to the engine's on the float32 weights)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # the Trainer needs it
    from jupyter_curvature.integrations.huggingface import CurvatureCallback

    model = _tiny_bert(transformers)
    ids, mask, labels = _text_batches()
    train = _Features(ids, mask, labels)
    curv = {"input_ids": ids[:8], "attention_mask": mask[:8], "labels": labels[:8]}
    snap = Snapshot(model)
    # a tokenizer collator's BatchEncoding (a Mapping, not a dict) works as a dict
    cb = CurvatureCallback(transformers.BatchEncoding(curv), every=2, max_overhead=None, num_iters=8, num_probes=1,
                           top_k=1, loggers=[snap])  # fmt: skip
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, learning_rate=0.05, lr_scheduler_type="constant",
        report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
        disable_tqdm=True, seed=0, bf16=bf16,
    )  # fmt: skip
    transformers.Trainer(model=model, args=args, train_dataset=train, callbacks=[cb]).train()
    history = cb.tracker.history
    assert [r["step"] for r in history] == [2, 4]
    layout = lambda b: ((b["input_ids"], b["attention_mask"]), b["labels"])  # noqa: E731
    for record in history:
        frozen = _tiny_bert(transformers, seed=1)
        frozen.load_state_dict(snap.states[record["step"]])
        expected = engine_numbers(_Keywords(frozen), nn.CrossEntropyLoss(), [curv], record,
                                  num_iters=8, num_probes=1, batch_layout=layout)  # fmt: skip
        assert_same(record, expected, rtol=1e-5)
        assert record["two_over_lr"] == pytest.approx(2 / 0.05)
        assert record["num_samples"] == 8
    assert not any(torch.equal(snap.states[2][k], snap.states[4][k]) for k in
                   ("bert.embeddings.word_embeddings.weight", "classifier.weight"))  # fmt: skip


def test_huggingface_bad_input():
    transformers = pytest.importorskip("transformers")
    from jupyter_curvature.integrations import Tracker
    from jupyter_curvature.integrations.checks import pick_logits

    model = _tiny_bert(transformers)
    ids, mask, labels = _text_batches(8)
    with pytest.raises(TypeError, match="has no labels"):  # a batch without labels
        Tracker(
            model, nn.CrossEntropyLoss(), {"input_ids": ids, "attention_mask": mask, "y": labels}
        )
    with pytest.raises(TypeError, match="outputs="):
        pick_logits({"hidden": torch.zeros(1)})


def test_lightning_callback_logs_to_the_trainers_tensorboard(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from jupyter_curvature.integrations.lightning import CurvatureCallback

    x, y = toy_data(32, torch.float32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    cb = CurvatureCallback((x[:8], y[:8]), every=2, max_overhead=None, num_iters=4, num_probes=1,
                           top_k=1, trainer_logger=True)  # fmt: skip
    logger = LightningTensorBoard(str(tmp_path), name="run", version=0)
    pl.Trainer(max_steps=2, logger=logger, enable_checkpointing=False, accelerator="cpu",
               enable_progress_bar=False, enable_model_summary=False, callbacks=[cb]).fit(
        _lightning_module(pl), loader
    )  # fmt: skip
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    (event,) = acc.Scalars("curvature/lambda_1")
    assert event.step == 2
    assert event.value == pytest.approx(cb.tracker.history[0]["lambda_max"], rel=1e-6)


def test_package_trainer_logged_to_tensorboard(tmp_path):
    """What ``train --tensorboard DIR`` does: the Trainer's metrics and curvature records."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from jupyter_curvature.integrations import tensorboard_callback
    from jupyter_curvature.training import CurvatureCallback

    model = mlp(torch.float32)
    x, y = toy_data(32, torch.float32)
    live = CurvatureCallback(every=2, num_iters=6, max_overhead=None)
    trainer = jc.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                         torch.utils.data.TensorDataset(x, y), steps=4, batch_size=8,
                         callbacks=[live, tensorboard_callback(tmp_path / "tb")])  # fmt: skip
    trainer.fit()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3, 4]
    assert acc.Scalars("epoch/train_loss")[-1].step == 4
    records = trainer.history.curvature
    assert [r["step"] for r in records] == [2, 4]
    lam = acc.Scalars("curvature/lambda_1")
    trace = acc.Scalars("curvature/trace")
    two = acc.Scalars("curvature/two_over_lr")
    for r, a, t, w in zip(records, lam, trace, two):
        assert a.step == r["step"]
        assert a.value == pytest.approx(r["top_eigenvalues"][0], rel=1e-6)
        assert t.value == pytest.approx(r["stats"]["trace"], rel=1e-6)
        assert w.value == pytest.approx(20.0)
    assert len(acc.Images("curvature/density")) == 2
