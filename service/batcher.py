"""Server-side dynamic batching on asyncio, with Triton's semantics (docs/serving.md §1.1).

- A batch goes to the model as soon as it holds ``max_batch_size`` rows, or when the **oldest** queued request
  has waited ``max_queue_delay_s``; then it goes as it is.
- The queue is bounded (``max_queue_size`` rows): a request that does not fit is rejected at once with
  :class:`~service.errors.Overloaded` (503 + ``Retry-After``) instead of growing the queue.
- Each request may carry a deadline. It is enforced by a timer **while the request is queued**, also while the
  model is busy with another batch (Triton issue #7512), and expired requests are never run. Once a request is
  in a running batch it finishes.
- The model call ``run_batch(x [n, H, W, 3]) -> [n, C]`` runs in the batcher's own worker thread(s), so the
  event loop never blocks. With the default single worker, calls never overlap (ONNX Runtime already uses all
  cores inside one call); ``workers=N`` lets N calls run at once, like N Triton model instances.
- Requests are validated and preprocessed before :meth:`DynamicBatcher.submit`; each request has its own
  future, so nothing one client sends can fail another client's request. If the model call itself raises,
  every request in that batch fails with a 500 (the model is broken, not the request).
- A request larger than ``max_batch_size`` is split into several queue items and reassembled in order.
- :meth:`DynamicBatcher.submit_rows` answers with a :class:`BatchRows`: the request's rows *and* the whole model
  call's output with a memo shared by every request of that call, so per-row work (calibration, top-k) can run
  once per batch as one vectorised call (``service/inference.py``); :meth:`DynamicBatcher.submit` answers the
  rows alone.

The batcher knows nothing about HTTP, FastAPI or ONNX Runtime; tests drive it with a plain numpy function.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.errors import DeadlineExceeded, Overloaded, ServiceError, Unavailable

__all__ = ["DynamicBatcher", "BatchRows", "BatchObserver", "NullObserver", "RunBatch"]

log = logging.getLogger("rescom.service.batcher")

RunBatch = Callable[[np.ndarray], np.ndarray]


class BatchObserver(Protocol):
    """Receives batching statistics (implemented by :mod:`service.metrics`)."""

    def on_batch(self, rows: int, seconds: float) -> None:
        """A batch of ``rows`` rows ran in ``seconds`` (model call only)."""

    def on_queue_wait(self, seconds: float) -> None:
        """A request left the queue after waiting ``seconds``."""

    def on_depth(self, rows: int) -> None:
        """The number of queued rows changed to ``rows``."""

    def on_reject(self, reason: str) -> None:
        """A request was rejected: ``"queue_full"`` or ``"timeout"``."""


class NullObserver:
    """An observer that ignores everything."""

    def on_batch(self, rows: int, seconds: float) -> None:
        """Ignore a finished batch."""

    def on_queue_wait(self, seconds: float) -> None:
        """Ignore a queue wait."""

    def on_depth(self, rows: int) -> None:
        """Ignore a queue depth change."""

    def on_reject(self, reason: str) -> None:
        """Ignore a rejection."""


@dataclass(frozen=True, eq=False, slots=True)
class BatchRows:
    """One request's answer: rows ``start:stop`` of the output of the model call that ran it.

    Attributes:
        batch: the whole call's output ``[n, C]``, shared by every request of the call (read-only by contract).
        start: first row of this request in ``batch``.
        stop: one past its last row.
        memo: a dict shared by the requests of the call, for work done once per call and sliced per request
            (e.g. calibrated probabilities ``[n, C]`` keyed by the calibration); ``None`` when the request was
            split across several calls (``batch`` is then its own rows, concatenated).
    """

    batch: np.ndarray
    start: int
    stop: int
    memo: dict[object, object] | None

    @property
    def rows(self) -> np.ndarray:
        """This request's output rows ``[stop - start, C]``."""
        return self.batch[self.start : self.stop]


@dataclass(eq=False, slots=True)
class _Item:
    x: np.ndarray  # [k, H, W, 3], k <= max_batch_size
    rows: int
    future: asyncio.Future[BatchRows]
    enqueued: float  # loop.time()
    timer: asyncio.TimerHandle | None = None
    queued: bool = field(default=True)  # False once taken, expired or dropped


class DynamicBatcher:
    """Collects concurrent requests into batches for one model.

    Args:
        run_batch: the model call, ``uint8 [n, H, W, 3] -> float32 [n, C]`` with ``n <= max_batch_size``; runs
            in the batcher's own worker thread.
        max_batch_size: most rows per call.
        max_queue_delay_s: longest time the oldest queued request waits for the batch to fill (0 = no wait:
            run whatever is queued as soon as the model is free).
        max_queue_size: most rows waiting; a request that would exceed it is rejected (503).
        name: used in logs, errors and the worker thread's name.
        observer: receives statistics (see :class:`BatchObserver`).
        retry_after_s: ``Retry-After`` seconds suggested to rejected clients.
        workers: model calls that may run at once (Triton's instance count), each in its own worker thread.
            With 1 the next batch forms while the model is busy; with 2 a batch can start while another runs
            (useful on CPUs with single-threaded model calls).
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        name: str = "model",
        observer: BatchObserver | None = None,
        retry_after_s: int = 1,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue_delay_s < 0:
            raise ValueError(f"max_queue_delay_s must be >= 0, got {max_queue_delay_s}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {max_queue_size}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self.name = name
        self.observer: BatchObserver = observer or NullObserver()
        self.retry_after_s = retry_after_s
        self.workers = workers
        self._running: set[asyncio.Task[None]] = set()  # batches being run
        self._worker_free = asyncio.Event()
        self._queue: collections.deque[_Item] = collections.deque()
        self._rows = 0  # rows of queued items
        self._incoming = 0  # requests admitted (decoding) but not submitted yet
        self._wakeup = asyncio.Event()
        self._idle = True  # the loop waits for an empty queue to get its first item
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------------------------------------ public

    @property
    def queue_depth(self) -> int:
        """Rows currently waiting in the queue."""
        return self._rows

    async def start(self) -> None:
        """Start the batching loop on the running event loop (idempotent)."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix=f"batcher-{self.name}"
        )
        self._task = self._loop.create_task(self._run(), name=f"batcher-{self.name}")

    def announce(self) -> None:
        """A request is on its way (decoding); the window may wait for it. ``submit(announced=True)`` ends it."""
        self._incoming += 1

    def withdraw(self) -> None:
        """An announced request will not be submitted (it failed before)."""
        self._incoming -= 1
        if self._incoming == 0 and self._queue:
            self._wakeup.set()

    def check_room(self, rows: int) -> None:
        """Refuse at once when ``rows`` more rows would not fit in the queue now.

        :meth:`submit` calls it; callers may also call it *before* expensive preparation (decoding), so that a
        request that will be rejected anyway costs almost nothing under overload. Passing it reserves nothing.

        Raises:
            Overloaded: the queue is full (503 + ``Retry-After``).
        """
        if self._rows + rows > self.max_queue_size:
            self.observer.on_reject("queue_full")
            raise Overloaded(
                f"model {self.name!r} is overloaded: {self._rows} images are queued and the limit is "
                f"{self.max_queue_size}; retry later",
                retry_after_s=self.retry_after_s,
            )

    async def submit_prepared(
        self, rows: int, prepare: Callable[[], Awaitable[np.ndarray]], timeout_s: float | None = None
    ) -> BatchRows:
        """Admit a request of ``rows`` rows, prepare its input (decoding) and queue it: the admission steps.

        Room is checked before ``prepare`` runs (an overloaded queue rejects a request before it costs a
        decode), the request is announced while it prepares (the batching window may wait for it) and withdrawn
        when preparing fails.

        Args:
            rows: rows ``prepare`` will produce.
            prepare: coroutine function returning ``[rows, ...]``.
            timeout_s: deadline while queued (as :meth:`submit`).

        Returns:
            The request's rows of the model output, with the call's shared output (:meth:`submit_rows`).

        Raises:
            Overloaded, DeadlineExceeded, Unavailable, ServiceError: as :meth:`submit`; whatever ``prepare`` raises.
        """
        self.check_room(rows)
        self.announce()
        try:
            x = await prepare()
        except BaseException:
            self.withdraw()
            raise
        return await self.submit_rows(x, timeout_s=timeout_s, announced=True)

    async def submit(
        self, x: np.ndarray, timeout_s: float | None = None, announced: bool = False
    ) -> np.ndarray:
        """Queue ``x`` (``[k, ...]``, already preprocessed) and wait for its model output ``[k, C]``.

        The same as :meth:`submit_rows`, answering the rows alone.
        """
        return (await self.submit_rows(x, timeout_s=timeout_s, announced=announced)).rows

    async def submit_rows(
        self, x: np.ndarray, timeout_s: float | None = None, announced: bool = False
    ) -> BatchRows:
        """Queue ``x`` (``[k, ...]``, already preprocessed) and wait for its rows of the model output.

        Args:
            x: one request's rows; more than ``max_batch_size`` rows are split across batches.
            timeout_s: deadline while queued; ``None`` waits as long as it takes.
            announced: the request was announced with :meth:`announce` (this submit ends that announcement).

        Raises:
            Overloaded: the queue cannot take ``k`` more rows (503).
            DeadlineExceeded: the request was still queued after ``timeout_s`` (504).
            Unavailable: the batcher is not running or is shutting down (503).
            ServiceError: the model call failed (500).
        """
        if announced:
            self._incoming -= 1
        if self._closing or self._loop is None:
            raise Unavailable(f"model {self.name!r} is not accepting requests (shutting down or not started)")
        rows = int(x.shape[0])
        if rows < 1:
            raise ValueError("submit() needs at least one row")
        self.check_room(rows)
        loop = self._loop
        now = loop.time()
        step = self.max_batch_size
        items = []
        for start in range(0, rows, step):
            chunk = x[start : start + step]
            item = _Item(chunk, int(chunk.shape[0]), loop.create_future(), now)
            if timeout_s is not None:
                item.timer = loop.call_at(now + timeout_s, self._expire, item, timeout_s)
            items.append(item)
            self._queue.append(item)
        self._rows += rows
        self.observer.on_depth(self._rows)
        if self._idle or self._rows >= self.max_batch_size or self._incoming == 0:
            self._wakeup.set()
        try:
            if len(items) == 1:
                return await items[0].future
            parts = await asyncio.gather(*(item.future for item in items))
            joined = np.concatenate([part.rows for part in parts])  # [rows, C]
            return BatchRows(joined, 0, rows, None)
        except BaseException:
            for item in items:  # cancelled (client gone) or a part failed: free the queue slots at once
                self._dequeue(item)
                if not item.future.done():
                    item.future.cancel()
            self.observer.on_depth(self._rows)
            raise

    async def close(self, timeout_s: float | None = None) -> None:
        """Stop taking requests, run what is queued (up to ``timeout_s``), then stop the loop and the worker.

        Requests still queued after the timeout fail with :class:`~service.errors.Unavailable`.
        """
        self._closing = True
        self._wakeup.set()
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except TimeoutError:
                log.warning(
                    "model %r: drain timed out after %.1f s; cancelling the batching loop",
                    self.name,
                    timeout_s,
                )
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._fail_queued(Unavailable(f"model {self.name!r} is shutting down; retry on another replica"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------------------------------ loop

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._prune_head()
                if not self._queue:
                    if self._closing:
                        if self._running:
                            await asyncio.gather(*self._running, return_exceptions=True)
                        return
                    self._idle = True
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                self._idle = False
                if self._rows < self.max_batch_size and not self._closing and self._incoming > 0:
                    # The window starts when the oldest queued request arrived.
                    remaining = self._queue[0].enqueued + self.max_queue_delay_s - loop.time()
                    if remaining > 0:
                        self._wakeup.clear()
                        try:
                            async with asyncio.timeout(remaining):
                                await self._wakeup.wait()
                        except TimeoutError:
                            pass
                        continue
                if len(self._running) >= self.workers:
                    # Every worker is busy: requests keep queueing and the next batch takes them all.
                    self._worker_free.clear()
                    await self._worker_free.wait()
                    continue
                batch = self._take(loop.time())
                if batch:
                    # Hand the batch to the worker thread now, not in the task's first step: that step would
                    # run only after every callback already queued on the loop (e.g. the previous batch's
                    # responses), leaving the model idle meanwhile.
                    n = sum(item.rows for item in batch)
                    start = time.perf_counter()
                    call = loop.run_in_executor(self._executor, self._call, [item.x for item in batch], n)
                    task = loop.create_task(self._execute(batch, call, n, start))
                    self._running.add(task)
                    task.add_done_callback(self._batch_done)
        except asyncio.CancelledError:
            for task in self._running:
                task.cancel()
            raise
        except Exception:  # a bug here must not leave clients hanging
            log.exception("model %r: batching loop crashed", self.name)
            self._closing = True
            self._fail_queued(ServiceError(f"model {self.name!r}: internal batching error"))

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._worker_free.set()

    def _prune_head(self) -> None:
        """Drop expired and cancelled items at the head so the window starts at the oldest live request."""
        while self._queue:
            item = self._queue[0]
            if item.queued and not item.future.done():
                return
            self._queue.popleft()
            self._dequeue(item)

    def _dequeue(self, item: _Item) -> None:
        if item.queued:
            item.queued = False
            self._rows -= item.rows
        if item.timer is not None:
            item.timer.cancel()
            item.timer = None

    def _take(self, now: float) -> list[_Item]:
        """Pop live items in arrival order while they fit in one batch."""
        batch: list[_Item] = []
        n = 0
        while self._queue:
            item = self._queue[0]
            if not item.queued or item.future.done():  # expired or cancelled
                self._queue.popleft()
                self._dequeue(item)
                continue
            if n + item.rows > self.max_batch_size:
                break
            self._queue.popleft()
            self._dequeue(item)
            self.observer.on_queue_wait(now - item.enqueued)
            batch.append(item)
            n += item.rows
        self.observer.on_depth(self._rows)
        return batch

    def _expire(self, item: _Item, timeout_s: float) -> None:
        item.timer = None
        if not item.queued:
            return
        self._dequeue(item)
        self.observer.on_depth(self._rows)
        if not item.future.done():
            self.observer.on_reject("timeout")
            item.future.set_exception(
                DeadlineExceeded(
                    f"request waited {timeout_s:.3g} s in the queue of model {self.name!r} without being scheduled; "
                    "the server is overloaded or the deadline is too short"
                )
            )

    async def _execute(
        self, batch: list[_Item], call: asyncio.Future[np.ndarray], n: int, start: float
    ) -> None:
        try:
            y = await call
        except asyncio.CancelledError:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(Unavailable(f"model {self.name!r} is shutting down"))
            raise
        except Exception:
            log.exception("model %r: inference failed for a batch of %d images", self.name, n)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(ServiceError(f"inference failed in model {self.name!r}"))
            return
        self.observer.on_batch(n, time.perf_counter() - start)
        # Free the worker before waking the requests: the batching loop then starts the next batch first.
        task = asyncio.current_task()
        if task in self._running:
            self._running.discard(task)
            self._worker_free.set()
        offset = 0
        memo: dict[object, object] = {}  # one per model call, shared by its requests
        for item in batch:
            if not item.future.done():  # the client may have gone away meanwhile
                item.future.set_result(BatchRows(y, offset, offset + item.rows, memo))
            offset += item.rows

    def _call(self, xs: list[np.ndarray], n: int) -> np.ndarray:
        x = xs[0] if len(xs) == 1 else np.concatenate(xs)  # [n, H, W, 3]
        y = self.run_batch(x)  # [n, C]
        if getattr(y, "shape", (None,))[0] != n:
            raise RuntimeError(f"run_batch returned {getattr(y, 'shape', None)} for {n} input rows")
        return y

    def _fail_queued(self, error: ServiceError) -> None:
        while self._queue:
            item = self._queue.popleft()
            was_queued = item.queued
            self._dequeue(item)
            if was_queued and not item.future.done():
                item.future.set_exception(error)
        self.observer.on_depth(self._rows)
