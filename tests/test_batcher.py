"""DynamicBatcher semantics with a plain numpy function (no HTTP, no ONNX Runtime)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.batcher import DynamicBatcher
from service.errors import DeadlineExceeded, Overloaded, ServiceError, Unavailable


class Recorder:
    """A fake model: logits row i = [x_i.sum(), batch size]; records every batch size; optional delay."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.sizes: list[int] = []
        self.seen: list[int] = []
        self.delay = delay
        self.fail_on = fail_on
        self.thread_names: set[str] = set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.thread_names.add(threading.current_thread().name)
        self.sizes.append(len(x))
        self.seen.extend(int(v) for v in x[:, 0, 0, 0])
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in x[:, 0, 0, 0]:
            raise RuntimeError("model exploded")
        return np.stack(
            [x.reshape(len(x), -1).sum(1).astype(np.float32), np.full(len(x), len(x), np.float32)], 1
        )


def item(value: int, rows: int = 1) -> np.ndarray:
    return np.full((rows, 2, 2, 3), value, dtype=np.uint8)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def make(fake, **kw) -> DynamicBatcher:
    args = {"max_batch_size": 8, "max_queue_delay_s": 0.05, "max_queue_size": 64, "name": "fake"} | kw
    return DynamicBatcher(fake, **args)


def test_full_batch_goes_at_once_and_results_map_back_in_order():
    fake = Recorder()

    async def main():
        b = make(fake, max_queue_delay_s=5.0)  # a long window: only a full batch can explain a quick answer
        await b.start()
        start = time.perf_counter()
        outs = await asyncio.gather(*(b.submit(item(i)) for i in range(8)))
        elapsed = time.perf_counter() - start
        await b.close(1)
        return outs, elapsed

    outs, elapsed = run(main())
    assert elapsed < 1.0
    assert fake.sizes == [8]
    for i, out in enumerate(outs):
        assert out.shape == (1, 2)
        assert out[0, 0] == 12 * i  # its own row, not a neighbour's
    assert fake.thread_names == {next(iter(fake.thread_names))} and "batcher-fake" in next(
        iter(fake.thread_names)
    )


def test_partial_batch_waits_for_the_window_from_the_oldest_request():
    fake = Recorder()

    async def main():
        b = make(fake, max_queue_delay_s=0.2)
        await b.start()
        start = time.perf_counter()
        for _ in range(3):  # three requests are decoding (what the HTTP layer does before it submits)
            b.announce()
        first = asyncio.ensure_future(b.submit(item(1), announced=True))
        await asyncio.sleep(0.1)
        # joins; the window still ends 0.2 s after the first
        second = asyncio.ensure_future(b.submit(item(2), announced=True))
        await asyncio.gather(first, second)  # the third is still on its way: the window decides
        elapsed = time.perf_counter() - start
        b.withdraw()
        await b.close(1)
        return elapsed

    elapsed = run(main())
    assert fake.sizes == [2]
    assert 0.18 <= elapsed < 1.5


def test_nothing_announced_means_no_window_wait():
    """A lone request with no other request on its way runs at once instead of idling for the window."""
    fake = Recorder()

    async def main():
        b = make(fake, max_queue_delay_s=5.0)
        await b.start()
        start = time.perf_counter()
        out = await b.submit(item(3))
        elapsed = time.perf_counter() - start
        await b.close(1)
        return out, elapsed

    out, elapsed = run(main())
    assert fake.sizes == [1] and out[0, 0] == 36
    assert elapsed < 1.0  # far below the 5 s window


def test_a_withdrawn_announcement_releases_the_window():
    """An announced request that fails before submitting must not hold the queued ones for the whole window."""
    fake = Recorder()

    async def main():
        b = make(fake, max_queue_delay_s=5.0)
        await b.start()
        b.announce()
        b.announce()
        start = time.perf_counter()
        pending = asyncio.ensure_future(b.submit(item(1), announced=True))
        await asyncio.sleep(0.05)
        b.withdraw()  # the second one failed to decode
        await pending
        elapsed = time.perf_counter() - start
        await b.close(1)
        return elapsed

    elapsed = run(main())
    assert fake.sizes == [1]
    assert elapsed < 1.0


def test_zero_delay_runs_what_is_queued_and_batches_while_busy():
    fake = Recorder(delay=0.05)

    async def main():
        b = make(fake, max_queue_delay_s=0.0)
        await b.start()
        first = asyncio.ensure_future(b.submit(item(0)))
        await asyncio.sleep(0.01)  # the model is now busy with [0]
        rest = [asyncio.ensure_future(b.submit(item(i))) for i in range(1, 6)]
        await asyncio.gather(first, *rest)
        await b.close(1)

    run(main())
    assert fake.sizes == [1, 5]


def test_requests_of_one_call_share_its_output_and_memo():
    """submit_rows: every request of a model call sees the whole output and one memo, and its own rows."""
    fake = Recorder()

    async def main():
        b = make(fake, max_queue_delay_s=5.0)
        await b.start()
        answers = await asyncio.gather(*(b.submit_rows(item(i, rows=2)) for i in range(4)))
        split = await make_split_call(b)
        await b.close(1)
        return answers, split

    async def make_split_call(b: DynamicBatcher):
        return await b.submit_rows(np.concatenate([item(i) for i in range(10)]))  # 10 rows > batch of 8

    answers, split = run(main())
    assert fake.sizes[0] == 8
    assert all(a.batch is answers[0].batch and a.memo is answers[0].memo for a in answers)
    assert answers[0].memo == {}
    for i, a in enumerate(answers):
        assert (a.start, a.stop) == (2 * i, 2 * i + 2)
        np.testing.assert_array_equal(a.rows[:, 0], [12 * i, 12 * i])  # its own rows
    assert split.memo is None and (split.start, split.stop) == (0, 10)  # spans two calls: nothing to share
    np.testing.assert_array_equal(split.rows[:, 0], 12 * np.arange(10))


def test_large_request_is_split_and_reassembled():
    fake = Recorder()

    async def main():
        b = make(fake, max_batch_size=4, max_queue_delay_s=0.0)
        await b.start()
        x = np.concatenate([item(i) for i in range(10)])  # [10, 2, 2, 3]
        out = await b.submit(x)
        await b.close(1)
        return out

    out = run(main())
    assert out.shape == (10, 2)
    np.testing.assert_array_equal(out[:, 0], 12 * np.arange(10))
    assert sum(fake.sizes) == 10 and max(fake.sizes) <= 4


def test_full_queue_rejects_at_once_with_retry_after():
    fake = Recorder(delay=0.3)

    async def main():
        b = make(fake, max_batch_size=2, max_queue_size=3, max_queue_delay_s=0.0)
        await b.start()
        busy = asyncio.ensure_future(b.submit(item(0, rows=2)))
        await asyncio.sleep(0.05)  # taken: the queue is empty again but the model is busy
        queued = asyncio.ensure_future(b.submit(item(1, rows=3)))  # fills the queue (3 rows)
        await asyncio.sleep(0.01)
        start = time.perf_counter()
        with pytest.raises(Overloaded) as err:
            await b.submit(item(2))
        rejected_after = time.perf_counter() - start
        await asyncio.gather(busy, queued)
        await b.close(1)
        return err.value, rejected_after

    err, rejected_after = run(main())
    assert rejected_after < 0.2
    assert err.status_code == 503 and err.headers["Retry-After"] == "1"
    assert "queued" in err.message


def test_deadline_fires_while_the_model_is_busy_and_expired_requests_never_run():
    fake = Recorder(delay=1.0)

    async def main():
        b = make(fake, max_batch_size=1, max_queue_delay_s=0.0)
        await b.start()
        busy = asyncio.ensure_future(b.submit(item(7)))
        await asyncio.sleep(0.05)
        start = time.perf_counter()
        with pytest.raises(DeadlineExceeded):
            await b.submit(item(9), timeout_s=0.1)
        fired_after = time.perf_counter() - start
        await busy
        await asyncio.sleep(0.05)
        await b.close(1)
        return fired_after

    fired_after = run(main())
    assert 0.08 <= fired_after < 0.7  # not after the 1 s batch
    assert fake.seen == [7]  # 9 expired in the queue and was dropped


def test_a_failing_batch_fails_only_its_own_requests():
    fake = Recorder(fail_on=13)

    async def main():
        b = make(fake, max_batch_size=2, max_queue_delay_s=0.0)
        await b.start()
        bad = await asyncio.gather(b.submit(item(13)), return_exceptions=True)
        good = await b.submit(item(1))
        await b.close(1)
        return bad[0], good

    bad, good = run(main())
    assert isinstance(bad, ServiceError) and bad.status_code == 500
    assert "model exploded" not in bad.message  # internals stay in the log
    assert good[0, 0] == 12


def test_cancelled_requests_are_skipped_and_free_their_slot():
    fake = Recorder(delay=0.2)

    async def main():
        b = make(fake, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=2)
        await b.start()
        busy = asyncio.ensure_future(b.submit(item(0)))
        await asyncio.sleep(0.05)
        doomed = asyncio.ensure_future(b.submit(item(5, rows=2)))
        await asyncio.sleep(0.01)
        doomed.cancel()
        await asyncio.sleep(0.01)
        kept = await asyncio.wait_for(asyncio.gather(busy, b.submit(item(6))), 5)
        await b.close(1)
        return kept

    run(main())
    assert 5 not in fake.seen and 6 in fake.seen


def test_close_drains_queued_requests_then_refuses_new_ones():
    fake = Recorder(delay=0.05)

    async def main():
        b = make(fake, max_batch_size=2, max_queue_delay_s=1.0)
        await b.start()
        pending = [asyncio.ensure_future(b.submit(item(i))) for i in range(3)]
        await asyncio.sleep(0.01)
        await b.close(5)  # does not wait for the 1 s window
        outs = await asyncio.gather(*pending)
        with pytest.raises(Unavailable):
            await b.submit(item(1))
        return outs

    outs = run(main())
    assert [int(o[0, 0]) for o in outs] == [0, 12, 24]


def test_observer_sees_batches_waits_depth_and_rejections():
    class Obs:
        def __init__(self):
            self.batches, self.waits, self.depths, self.rejects = [], [], [], []

        def on_batch(self, rows, seconds):
            self.batches.append(rows)

        def on_queue_wait(self, seconds):
            self.waits.append(seconds)

        def on_depth(self, rows):
            self.depths.append(rows)

        def on_reject(self, reason):
            self.rejects.append(reason)

    obs = Obs()

    async def main():
        b = make(Recorder(), max_queue_size=4, max_queue_delay_s=0.05, observer=obs)
        await b.start()
        futs = [asyncio.ensure_future(b.submit(item(i))) for i in range(4)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await b.submit(item(9))
        await asyncio.gather(*futs)
        await b.close(1)

    run(main())
    assert obs.batches == [4] and len(obs.waits) == 4 and obs.rejects == ["queue_full"]
    assert max(obs.depths) == 4 and obs.depths[-1] == 0


def test_several_workers_run_batches_at_once():
    fake = Recorder(delay=0.4)

    async def main():
        b = make(fake, max_batch_size=2, max_queue_delay_s=0.0, workers=2)
        await b.start()
        start = time.perf_counter()
        outs = await asyncio.gather(*(b.submit(item(i)) for i in range(4)))
        elapsed = time.perf_counter() - start
        await b.close(5)
        return outs, elapsed

    outs, elapsed = run(main())
    assert [int(o[0, 0]) for o in outs] == [0, 12, 24, 36]
    assert sorted(fake.sizes) == [2, 2] and len(fake.thread_names) == 2
    assert elapsed < 0.75  # two 0.4 s batches side by side, not one after the other


def test_constructor_validates():
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(Recorder(), max_batch_size=0, max_queue_delay_s=0, max_queue_size=1)
    with pytest.raises(ValueError, match="workers"):
        DynamicBatcher(Recorder(), max_batch_size=1, max_queue_delay_s=0, max_queue_size=1, workers=0)
    with pytest.raises(ValueError, match="max_queue_delay_s"):
        DynamicBatcher(Recorder(), max_batch_size=1, max_queue_delay_s=-1, max_queue_size=1)
