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
- The workers take their batches from the queue themselves (Triton's and Mosec's model instances pull their
  work too): a worker that finishes a call starts the next one at once, without waiting for the event loop,
  which may be busy reading and decoding a burst of requests. The event loop only queues requests and hands
  out the answers; the queue is shared under a lock.
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
import threading
import time
from collections.abc import Awaitable, Callable
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
    enqueued: float  # time.monotonic()
    timer: asyncio.TimerHandle | None = None  # the deadline; cancelled on the event loop only
    queued: bool = field(default=True)  # False once taken, expired or dropped


class DynamicBatcher:
    """Collects concurrent requests into batches for one model.

    Args:
        run_batch: the model call, ``uint8 [n, H, W, 3] -> float32 [n, C]`` with ``n <= max_batch_size``; runs
            in the batcher's own worker threads.
        max_batch_size: most rows per call.
        max_queue_delay_s: longest time the oldest queued request waits for the batch to fill while more
            requests are on their way (announced, still decoding); 0 = no wait: run whatever is queued as soon as
            a worker is free.
        max_queue_size: most rows waiting; a request that would exceed it is rejected (503).
        name: used in logs, errors and the worker threads' names.
        observer: receives statistics (see :class:`BatchObserver`); called from the worker threads too.
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
        self._ready = threading.Condition(threading.Lock())  # guards everything below it
        self._queue: collections.deque[_Item] = collections.deque()
        self._rows = 0  # rows of queued items
        self._incoming = 0  # requests admitted (decoding) but not submitted yet
        self._running: list[list[_Item]] = []  # batches in a model call now
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------------------------------------ public

    @property
    def queue_depth(self) -> int:
        """Rows currently waiting in the queue."""
        return self._rows

    async def start(self) -> None:
        """Start the worker threads, answering on the running event loop (idempotent)."""
        if self._threads:
            return
        self._loop = asyncio.get_running_loop()
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"batcher-{self.name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def announce(self) -> None:
        """A request is on its way (decoding); the window may wait for it. ``submit(announced=True)`` ends it."""
        with self._ready:
            self._incoming += 1

    def withdraw(self) -> None:
        """An announced request will not be submitted (it failed before)."""
        with self._ready:
            self._incoming -= 1
            self._ready.notify()

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
        items = self._enqueue(x, timeout_s, announced)
        try:
            if len(items) == 1:
                return await items[0].future
            parts = await asyncio.gather(*(item.future for item in items))
            joined = np.concatenate([part.rows for part in parts])  # [rows, C]
            return BatchRows(joined, 0, int(x.shape[0]), None)
        except BaseException:
            with self._ready:  # cancelled (client gone) or a part failed: free the queue slots at once
                for item in items:
                    self._dequeue(item)
            for item in items:
                self._cancel_timer(item)
                if not item.future.done():
                    item.future.cancel()
            self.observer.on_depth(self._rows)
            raise

    def submit_nowait(self, x: np.ndarray, timeout_s: float | None = None) -> asyncio.Future[BatchRows]:
        """Queue ``x`` (``[k, ...]``, ``k <= max_batch_size``) and return the future of its rows, without awaiting.

        For callers driven by callbacks (the protocol-level ``POST /predict``): the same admission and errors as
        :meth:`submit_rows`, raised at once or set on the future (a cancelled future's rows are skipped).

        Raises:
            ValueError: ``k`` is 0 or above ``max_batch_size``.
            Overloaded, Unavailable: as :meth:`submit_rows`.
        """
        if not 1 <= int(x.shape[0]) <= self.max_batch_size:
            raise ValueError(f"submit_nowait() takes 1..{self.max_batch_size} rows, got {x.shape[0]}")
        (item,) = self._enqueue(x, timeout_s, announced=False)
        return item.future

    async def close(self, timeout_s: float | None = None) -> None:
        """Stop taking requests, run what is queued (up to ``timeout_s``), then stop the workers.

        Requests still queued after the timeout, and those in a model call that is still running, fail with
        :class:`~service.errors.Unavailable` (a running call cannot be interrupted; its answer is dropped).
        """
        with self._ready:
            self._closing = True
            self._ready.notify_all()
        try:
            await asyncio.wait_for(asyncio.to_thread(self._join), timeout_s)
        except TimeoutError:
            log.warning("model %r: drain timed out after %.1f s; failing what is left", self.name, timeout_s)
        shutting_down = Unavailable(f"model {self.name!r} is shutting down; retry on another replica")
        with self._ready:
            left = list(self._queue) + [item for batch in self._running for item in batch]
            self._queue.clear()
            self._rows = 0
        for item in left:
            item.queued = False
            self._cancel_timer(item)
            if not item.future.done():
                item.future.set_exception(shutting_down)
        self.observer.on_depth(0)

    # ------------------------------------------------------------------------------------------------ admission

    def _enqueue(self, x: np.ndarray, timeout_s: float | None, announced: bool) -> list[_Item]:
        """Admit ``x`` and queue it in chunks of at most ``max_batch_size`` rows (every submit's admission)."""
        if announced:
            with self._ready:
                self._incoming -= 1
        if self._closing or self._loop is None:
            raise Unavailable(f"model {self.name!r} is not accepting requests (shutting down or not started)")
        rows = int(x.shape[0])
        if rows < 1:
            raise ValueError("submit() needs at least one row")
        self.check_room(rows)
        loop = self._loop
        now = time.monotonic()
        step = self.max_batch_size
        items = []
        for start in range(0, rows, step):
            chunk = x[start : start + step]
            item = _Item(chunk, int(chunk.shape[0]), loop.create_future(), now)
            if timeout_s is not None:
                item.timer = loop.call_later(timeout_s, self._expire, item, timeout_s)
            items.append(item)
        with self._ready:
            self._queue.extend(items)
            self._rows += rows
            self._ready.notify()
        self.observer.on_depth(self._rows)
        return items

    def _expire(self, item: _Item, timeout_s: float) -> None:
        """The deadline timer of a request (event loop): fail it if it is still queued."""
        item.timer = None
        with self._ready:
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

    def _dequeue(self, item: _Item) -> None:
        """Take ``item`` out of the queue's count (lock held); it stays in the deque until a worker passes it."""
        if item.queued:
            item.queued = False
            self._rows -= item.rows

    @staticmethod
    def _cancel_timer(item: _Item) -> None:
        """Cancel the deadline timer (event loop only: timer handles are not thread-safe)."""
        if item.timer is not None:
            item.timer.cancel()
            item.timer = None

    # ------------------------------------------------------------------------------------------------ workers

    def _work(self) -> None:
        """A worker thread: take a batch, run the model, hand the answers to the event loop; until closed."""
        loop = self._loop
        assert loop is not None
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            n = sum(item.rows for item in batch)
            start = time.perf_counter()
            try:
                y = self._call([item.x for item in batch], n)  # [n, C]
            except Exception:
                log.exception("model %r: inference failed for a batch of %d images", self.name, n)
                y = None
            seconds = time.perf_counter() - start
            with self._ready:
                self._running.remove(batch)
            try:
                loop.call_soon_threadsafe(self._deliver, batch, y, n, seconds)
            except RuntimeError:  # the event loop is closed: nobody is waiting any more
                return

    def _next_batch(self) -> list[_Item] | None:
        """Block until a batch should run (full, window over, nothing more announced, or closing); None: stop."""
        with self._ready:
            while True:
                self._prune_head()
                if not self._queue:
                    if self._closing:
                        return None
                    self._ready.wait()
                    continue
                if self._rows < self.max_batch_size and not self._closing and self._incoming > 0:
                    # The window starts when the oldest queued request arrived.
                    remaining = self._queue[0].enqueued + self.max_queue_delay_s - time.monotonic()
                    if remaining > 0:
                        self._ready.wait(remaining)
                        continue
                batch = self._take(time.monotonic())
                if batch:
                    self._running.append(batch)
                    return batch

    def _prune_head(self) -> None:
        """Drop expired and cancelled items at the head so the window starts at the oldest live request."""
        while self._queue:
            item = self._queue[0]
            if item.queued and not item.future.done():
                return
            self._queue.popleft()
            self._dequeue(item)

    def _take(self, now: float) -> list[_Item]:
        """Pop live items in arrival order while they fit in one batch (lock held)."""
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

    def _call(self, xs: list[np.ndarray], n: int) -> np.ndarray:
        x = xs[0] if len(xs) == 1 else np.concatenate(xs)  # [n, H, W, 3]
        y = self.run_batch(x)  # [n, C]
        if getattr(y, "shape", (None,))[0] != n:
            raise RuntimeError(f"run_batch returned {getattr(y, 'shape', None)} for {n} input rows")
        return y

    def _deliver(self, batch: list[_Item], y: np.ndarray | None, n: int, seconds: float) -> None:
        """On the event loop: answer the requests of a finished call (or fail them with a 500)."""
        if y is None:
            failed = ServiceError(f"inference failed in model {self.name!r}")
            for item in batch:
                self._cancel_timer(item)
                if not item.future.done():
                    item.future.set_exception(failed)
            return
        self.observer.on_batch(n, seconds)
        offset = 0
        memo: dict[object, object] = {}  # one per model call, shared by its requests
        for item in batch:
            self._cancel_timer(item)
            if not item.future.done():  # the client may have gone away meanwhile
                item.future.set_result(BatchRows(y, offset, offset + item.rows, memo))
            offset += item.rows

    def _join(self) -> None:
        for thread in self._threads:
            thread.join()
