"""The explorer's live preview (1D lines on a seeded subsample) and the exact lines that follow.

Independent references: the seeded positions recomputed with ``torch.randperm``; brute-force
evaluation (the weights ``w0 + sum c_i d_i`` written into a fresh copy of the model, then a
plain forward over the chosen rows); and the landscape engine
(:class:`~jupyter_curvature.landscape.LandscapeEvaluator`) on the subsample and on the full
data.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from reference import digits_batch
from torch import nn

from jupyter_curvature.landscape import (
    HeadlessExplorer,
    LandscapeEvaluator,
    NestedSubsamples,
    subsample_data,
)
from jupyter_curvature.models.small import MLP

torch.set_num_threads(1)
POINTS = 7
PREVIEW = 64
N_TRAIN = 300


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    return {
        "model": MLP(hidden=(5,)).double(),
        "train": digits_batch("train", N_TRAIN),
        "test": digits_batch("test", 150),
        "loss_fn": nn.CrossEntropyLoss(),
    }


def _explorer(setup, **kw):
    """The headless explorer (no widgets)."""
    kw.setdefault("num_points", POINTS)
    kw.setdefault("test_data", setup["test"])
    kw.setdefault("directions", "random:2")
    kw.setdefault("preview", PREVIEW)
    kw.setdefault("loss_fn", setup["loss_fn"])
    data = kw.pop("data", setup["train"])
    return HeadlessExplorer(setup["model"], data, **kw)


def _panel(setup, **kw):
    """The panel over a headless explorer (skipped without the widget libraries)."""
    pytest.importorskip("ipywidgets")
    pytest.importorskip("bqplot")
    pytest.importorskip("anywidget")
    from jupyter_curvature.widgets.landscape import LandscapeExplorer

    return LandscapeExplorer(explorer=_explorer(setup, **kw), canvas=False)


def _move(ex, i, value):
    """What a slider does: record the coordinate, then redraw."""
    ex.set_coord(i, value)
    ex.drain()


def _brute(model, directions, coords, x, y, loss_fn):
    m = copy.deepcopy(model).eval()
    w = torch.nn.utils.parameters_to_vector(m.parameters()).detach().clone()
    for c, d in zip(coords, directions):
        w = w + float(c) * d.vector.to(w.dtype)
    torch.nn.utils.vector_to_parameters(w, m.parameters())
    with torch.no_grad():
        return float(loss_fn(m(x), y))


def _line_block(ex, coords, j):
    block = np.repeat(np.asarray(coords, dtype=np.float64)[None, :], ex.num_points, axis=0)
    block[:, j] = ex.ts
    return block


# ---------------------------------------------------------------------------------------
# the subsample


def test_subsample_takes_the_seeded_positions_across_batches():
    x, y = digits_batch("train", 100)
    batches = [(x[i : i + 30], y[i : i + 30]) for i in range(0, 100, 30)]  # 30, 30, 30, 10
    sx, sy = subsample_data(batches, 17, seed=3)
    rows = torch.randperm(100, generator=torch.Generator().manual_seed(3))[:17].sort().values
    assert torch.equal(sx, x[rows]) and torch.equal(sy, y[rows])
    # the same for one batch, and everything when asking for more than there is
    sx1, sy1 = subsample_data((x, y), 17, seed=3)
    assert torch.equal(sx1, sx) and torch.equal(sy1, sy)
    ax, ay = subsample_data(batches, 1000)
    assert torch.equal(ax, x) and torch.equal(ay, y)


class CountingBatches:
    """A re-iterable of batches that counts how many times it is read."""

    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)


def test_nested_subsamples_are_subsample_data_for_every_size_from_one_read():
    x, y = digits_batch("train", 100)
    data = CountingBatches([(x[i : i + 30], y[i : i + 30]) for i in range(0, 100, 30)])
    nested = NestedSubsamples(data, 40, seed=5)
    assert data.passes == 2  # count, then gather
    for n in (1, 7, 17, 39, 40):
        got = nested.take(n)
        ref = subsample_data([(x, y)], n, seed=5)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]), n
    assert data.passes == 2  # the sizes are indexed, not read
    with pytest.raises(ValueError, match="larger max_samples"):
        nested.take(41)
    # a known total saves the counting pass; everything when there is less than asked
    small = CountingBatches([(x[:10], y[:10])])
    everything = NestedSubsamples(small, 64, total=10).take(64)
    assert small.passes == 1 and torch.equal(everything[0], x[:10])
    with pytest.raises(ValueError, match="changed size"):
        NestedSubsamples(CountingBatches([(x[:10], y[:10])]), 4, total=11)


def test_the_explorer_reads_each_source_once_for_all_preview_sizes(setup):
    x, y = setup["train"]
    data = CountingBatches([(x[i : i + 100], y[i : i + 100]) for i in range(0, N_TRAIN, 100)])
    ex = _explorer(setup, data=data)
    ex.preview_data()
    read = data.passes
    for size in (PREVIEW, 32, 128, PREVIEW):  # what the calibration of preview="auto" does
        ex.preview_samples = size
        got = ex.preview_data()
        ref = subsample_data([(x, y)], size, seed=ex.seed)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]), size
    assert data.passes == read  # no new pass over the data for another size
    ex.close()


@pytest.mark.parametrize(
    "data, n, message",
    [
        ((torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)), 0, "positive integer"),
        ([((torch.zeros(4, 2), torch.zeros(4, 2)), torch.zeros(4))], 2, "model argument"),
    ],
)
def test_subsample_bad_input_is_one_line(data, n, message):
    with pytest.raises((ValueError, TypeError), match=message):
        subsample_data(data, n)


# ---------------------------------------------------------------------------------------
# preview and exact lines


def test_preview_lines_equal_the_engine_on_the_same_subsample(setup):
    ex = _explorer(setup)
    ex.exact_delay = 3600.0  # keep the preview on screen for this test
    assert ex.preview_samples == PREVIEW
    assert ex.line_exact.all()  # the first lines are computed exactly
    _move(ex, 0, 0.4)  # changes line 1 (along d1, through c0 = 0.4)
    assert ex.line_exact.tolist() == [True, False]
    x, y = ex.preview_data("train")
    rows = torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(0))[:PREVIEW]
    assert torch.equal(x, setup["train"][0][rows.sort().values])
    engine = LandscapeEvaluator(setup["model"], setup["loss_fn"], (x, y), ex.directions)
    ref = engine.evaluate(_line_block(ex, [0.4, 0.0], 1))
    np.testing.assert_allclose(ex.lines["train_loss"][1], ref["train_loss"], rtol=1e-12)
    np.testing.assert_allclose(ex.lines["train_accuracy"][1], ref["train_accuracy"], rtol=1e-12)
    np.testing.assert_array_equal(ex.preview_lines["train_loss"][1], ex.lines["train_loss"][1])
    for t_idx in (0, POINTS - 1):  # brute force at two of its points
        loss = _brute(setup["model"], ex.directions, [0.4, ex.ts[t_idx]], x, y, setup["loss_fn"])
        assert ex.lines["train_loss"][1, t_idx] == pytest.approx(loss, rel=1e-12)
    assert np.isnan(ex.lines["test_loss"][1]).all()  # not previewed: the exact line follows
    # the point itself is always full data
    full = LandscapeEvaluator(
        setup["model"], setup["loss_fn"], setup["train"], ex.directions, test_data=setup["test"]
    )
    assert ex.point_values == pytest.approx(full([0.4, 0.0]), rel=1e-12)
    # the shown metric decides the data of the preview
    ex.set_metric("test_loss")
    tx, ty = ex.preview_data("test")
    test_engine = LandscapeEvaluator(setup["model"], setup["loss_fn"], (tx, ty), ex.directions)
    ref_t = test_engine.evaluate(_line_block(ex, [0.4, 0.0], 1))
    np.testing.assert_allclose(ex.lines["test_loss"][1], ref_t["train_loss"], rtol=1e-12)
    assert ex.error_count == 0, ex.last_error
    ex.close()


def test_the_panel_draws_the_preview_and_says_so(setup):
    view = _panel(setup)
    view.exact_delay = 3600.0
    view.sliders[0].value = 0.4
    assert view.line_exact.tolist() == [True, False]
    assert "preview on 64 of 300 samples" in view._fig1d.title
    np.testing.assert_array_equal(view._line.y, view.lines["train_loss"])
    view._metric.value = "test_loss"
    assert view.explorer.metric == "test_loss"
    np.testing.assert_array_equal(view._line.y, view.lines["test_loss"])
    assert view.error_count == 0, view.last_error
    view.close()


def test_exact_lines_replace_the_preview_and_equal_the_full_data_engine(setup):
    before = {n: p.detach().clone() for n, p in setup["model"].named_parameters()}
    ex = _explorer(setup)
    ex.exact_delay = 0.0
    rng = np.random.default_rng(1)
    for _ in range(6):  # quick moves: the worker's stale work is dropped
        _move(ex, int(rng.integers(2)), float(rng.uniform(-1, 1)))
    ex.move_to([0.3, -0.6])
    assert ex.wait_exact(timeout=120)
    engine = LandscapeEvaluator(
        setup["model"], setup["loss_fn"], setup["train"], ex.directions, test_data=setup["test"]
    )
    for j in range(2):
        ref = engine.evaluate(_line_block(ex, [0.3, -0.6], j))
        for m in ex.metrics:
            np.testing.assert_allclose(ex.lines[m][j], ref[m], rtol=1e-12, atol=1e-15)
    assert ex.lines_result().meta["exact"] is True
    assert ex.error_count == 0, ex.last_error
    ex.close()
    for n, p in setup["model"].named_parameters():
        assert torch.equal(p, before[n]), f"parameter {n} changed"


def test_the_panel_draws_the_exact_lines(setup):
    view = _panel(setup)
    view.exact_delay = 0.0
    rng = np.random.default_rng(1)
    for _ in range(6):  # quick moves: the worker's stale work is dropped
        view.sliders[int(rng.integers(2))].value = float(rng.uniform(-1, 1))
    view.move_to([0.3, -0.6])
    assert view.wait_exact(timeout=120)
    assert "exact, 300 samples" in view._fig1d.title
    np.testing.assert_array_equal(view._line.y, view.lines["train_loss"])
    assert view.error_count == 0, view.last_error
    view.close()


def test_wait_exact_returns_only_after_the_exact_lines_are_announced(setup):
    # The worker marks a line exact, then calls the "lines" callbacks. Hold them until
    # wait_exact has returned (or for a while, if it rightly does not): a wait_exact that
    # watched the flag instead of the announcement returned before the callbacks ran.
    ex = _explorer(setup)
    ex.exact_delay = 0.0
    returned = threading.Event()
    announced = []

    def held():
        if threading.current_thread() is ex.worker and ex.line_exact.all():
            returned.wait(timeout=2.0)
            announced.append(True)

    ex.on("lines", held)
    ex.move_to([0.4, 0.1])
    assert ex.wait_exact(timeout=600)
    returned.set()
    assert announced == [True]
    ex.close()


def test_wait_exact_returns_only_after_the_exact_lines_are_drawn(setup, monkeypatch):
    # The same through the panel: its title must be the exact lines' when wait_exact returns.
    ex = _panel(setup)
    ex.exact_delay = 0.0
    returned = threading.Event()
    draw = ex._draw_lines

    def held_draw():
        if threading.current_thread() is ex._worker and ex.line_exact.all():
            returned.wait(timeout=2.0)
        draw()

    monkeypatch.setattr(ex, "_draw_lines", held_draw)
    ex.move_to([0.4, 0.1])
    assert ex.wait_exact(timeout=600)
    returned.set()
    assert "exact, 300 samples" in ex._fig1d.title, ex._fig1d.title
    ex.close()


def test_exact_lines_are_cached_by_their_coordinates(setup):
    ex = _explorer(setup)
    ex.exact_delay = 0.0
    _move(ex, 0, 0.5)
    assert ex.wait_exact(timeout=120)
    exact = ex.lines["train_loss"].copy()
    ex.exact_delay = 3600.0
    _move(ex, 0, -0.25)
    assert not ex.line_exact[1]
    _move(ex, 0, 0.5)  # back: line 1 at c0 = 0.5 comes from the cache, exact at once
    assert ex.line_exact.all()
    np.testing.assert_array_equal(ex.lines["train_loss"], exact)
    ex.close()


def test_a_summed_loss_preview_is_scaled_to_the_full_data(setup):
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    ex = _explorer(setup, loss_fn=loss_fn, test_data=None)
    ex.exact_delay = 3600.0
    _move(ex, 1, 0.2)
    x, y = ex.preview_data("train")
    ref = LandscapeEvaluator(setup["model"], loss_fn, (x, y), ex.directions).evaluate(
        _line_block(ex, [0.0, 0.2], 0)
    )
    np.testing.assert_allclose(
        ex.lines["train_loss"][0], ref["train_loss"] * N_TRAIN / PREVIEW, rtol=1e-12
    )
    ex.close()


def test_no_preview_on_small_data_or_when_asked(setup):
    ex = _explorer(setup, preview="auto")  # 300 samples of an MLP: a line is cheap
    assert ex.preview_samples is None
    _move(ex, 0, 0.3)
    assert ex.line_exact.all()
    with pytest.raises(ValueError, match="no preview"):
        ex.preview_data()
    ex.close()
    ex = _explorer(setup, preview=N_TRAIN)  # as many as the data: no preview
    assert ex.preview_samples is None
    ex.close()
    with pytest.raises(ValueError, match="preview must be"):
        _explorer(setup, preview=0)


def test_closing_while_the_worker_runs_stops_it(setup):
    ex = _explorer(setup)
    ex.exact_delay = 0.0
    _move(ex, 0, 0.7)
    worker = ex.worker
    ex.close()
    assert worker is not None and not worker.is_alive()
    assert ex.error_count == 0, ex.last_error
    view = _panel(setup)
    view.exact_delay = 0.0
    view.sliders[0].value = 0.7
    worker = view._worker
    view.close()
    assert view.explorer.closed and worker is not None and not worker.is_alive()
    assert view.error_count == 0, view.last_error


def test_a_worker_error_is_reported_and_ends_wait_exact(setup, monkeypatch):
    ex = _explorer(setup)
    ex.exact_delay = 0.0
    seen = []
    ex.on("error", lambda exc, where: seen.append((str(exc), where)))

    chunks = ex.evaluator.iter_chunks

    def boom(coords):  # the worker's exact line fails; the point (this thread) does not
        if threading.current_thread() is ex.worker:
            raise RuntimeError("exact line failed")
        return chunks(coords)

    monkeypatch.setattr(ex.evaluator, "iter_chunks", boom)
    _move(ex, 0, 0.7)
    assert not ex.wait_exact(timeout=120)
    assert ex.error_count == 1 and seen == [("exact line failed", "exact 1D lines")]
    ex.close()
