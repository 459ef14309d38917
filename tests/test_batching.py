"""The batcher on real threads: inline when idle, merged when busy, split when large."""

import threading

import numpy as np
import pytest

from torchwire.service.core.batching import Batcher, BatchingConfig


class Model:
    """Doubles its input; records the size and thread of every run; can be held busy."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, str]] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.started.set()
        self.release.wait(10)
        self.runs.append((len(batch), threading.current_thread().name))
        return batch * 2


def test_a_lone_request_runs_inline() -> None:
    model = Model()
    batcher = Batcher(model, BatchingConfig(max_batch_size=8), "t")
    (future,) = batcher.submit(np.arange(3.0)[:, None])
    np.testing.assert_array_equal(future.result()[0][:, 0], [0, 2, 4])
    assert model.runs == [(3, threading.current_thread().name)]
    batcher.close()


def test_requests_arriving_during_a_run_are_merged_in_order() -> None:
    model = Model()
    batcher = Batcher(model, BatchingConfig(max_batch_size=8), "t")
    model.release.clear()
    first = threading.Thread(target=lambda: batcher.submit(np.zeros((1, 1))))
    first.start()
    model.started.wait(10)
    futures = [batcher.submit(np.full((1, 1), float(i)))[0] for i in range(5)]
    model.release.set()
    results = [f.result(10) for f in futures]
    assert [r[0][0, 0] for r in results] == [0, 2, 4, 6, 8]
    assert {r[1] for r in results} == {5}  # one merged run of the five
    assert model.runs[1] == (5, "batcher-t")
    first.join()
    batcher.close()


def test_large_requests_are_split_and_delay_waits_for_company() -> None:
    model = Model()
    batcher = Batcher(model, BatchingConfig(max_batch_size=4, max_delay_ms=50), "t")
    futures = batcher.submit(np.arange(10.0)[:, None])
    parts = [f.result(10) for f in futures]
    assert [len(p[0]) for p in parts] == [4, 4, 2]
    assert np.concatenate([p[0] for p in parts])[:, 0].tolist() == list(range(0, 20, 2))
    batcher.close()


def test_a_failing_run_reaches_every_waiter() -> None:
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("boom")

    batcher = Batcher(broken, BatchingConfig(max_batch_size=2, max_delay_ms=1), "t")
    futures = batcher.submit(np.zeros((3, 1)))
    for future in futures:
        with pytest.raises(RuntimeError, match="boom"):
            future.result(10)
    batcher.close()


def test_a_closed_batcher_runs_late_pieces_in_the_callers_thread() -> None:
    """A caller may still hold a batcher that a reconfiguration, export or eviction closed:
    its large request is split and run, not left waiting for a thread that is gone."""
    model = Model()
    batcher = Batcher(model, BatchingConfig(max_batch_size=64), "t")
    batcher.close()
    futures = batcher.submit(np.arange(200.0)[:, None])
    parts = [f.result(10) for f in futures]
    assert [len(p[0]) for p in parts] == [64, 64, 64, 8]
    assert np.concatenate([p[0] for p in parts])[:, 0].tolist() == list(range(0, 400, 2))
    assert {name for _, name in model.runs} == {threading.current_thread().name}
    assert batcher.queued() == 0
    batcher.close()  # again: nothing happens


def test_a_queued_piece_times_out_while_the_run_is_held_then_answers() -> None:
    """A deadline shorter than the wait ends the wait (Predict answers DEADLINE_EXCEEDED);
    the piece still runs, and its result can be asked for again."""
    model = Model()
    batcher = Batcher(model, BatchingConfig(max_batch_size=8), "t")
    model.release.clear()
    first = threading.Thread(target=lambda: batcher.submit(np.zeros((1, 1))))
    first.start()
    model.started.wait(10)
    (queued,) = batcher.submit(np.ones((1, 1)))
    with pytest.raises(TimeoutError):
        queued.result(0.05)
    model.release.set()
    assert queued.result(10).outputs[0, 0] == 2.0
    assert queued.result(0).outputs[0, 0] == 2.0  # done for good: no second wait
    first.join()
    batcher.close()


def test_enqueued_pieces_call_back_from_the_run_and_at_once_once_closed() -> None:
    """`enqueue` never runs in the caller's thread while the batcher lives (a frontend's
    reader must keep reading); once closed, it runs there and calls back at once."""
    model = Model()
    batcher = Batcher(model, BatchingConfig(max_batch_size=8), "t")
    done = []
    finished = threading.Event()

    def on_done(piece) -> None:
        done.append((piece.result(0).outputs[0, 0], threading.current_thread().name))
        finished.set()

    batcher.enqueue(np.ones((1, 1)), on_done)
    assert finished.wait(10)
    assert done == [(2.0, "batcher-t")]
    batcher.close()
    batcher.enqueue(np.full((1, 1), 3.0), on_done)
    assert done[1] == (6.0, threading.current_thread().name)
