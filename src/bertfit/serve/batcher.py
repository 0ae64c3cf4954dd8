"""Dynamic batching for the HTTP server.

Concurrent requests are queued; one asyncio task takes them out in batches (at most
``max_batch_size`` texts, waiting at most ``max_wait_s`` after the oldest request arrived for more
to join), runs each batch on a single worker thread so the event loop stays free for health checks
and new requests, and answers every request with its own slice of the result.

The queue is bounded in *texts*, not requests, because texts are what cost time: a request that
would push it past ``max_queue`` is refused at once (``QueueFullError`` -> HTTP 429) instead of
waiting to time out. A request whose deadline passes gets ``DeadlineExceededError`` (HTTP 504); if
it was still queued it leaves the queue at once, so abandoned work is never computed.

This module knows nothing about models or HTTP: ``run_batch`` (called on the worker thread) turns a
list of jobs into one result (or exception) per job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

logger = logging.getLogger(__name__)

QUEUED, RUNNING, DONE = "queued", "running", "done"


class QueueFullError(Exception):
    """The queue holds too many texts to take this request now."""

    def __init__(self, queued: int, requested: int, limit: int) -> None:
        super().__init__(f"the queue holds {queued} texts; {requested} more would pass its limit of {limit}")
        self.queued, self.requested, self.limit = queued, requested, limit


class DeadlineExceededError(Exception):
    """The request was not answered before its deadline."""


class ShuttingDownError(Exception):
    """The batcher is draining for shutdown and takes no new work."""


@dataclass(eq=False)
class Job:
    """One request's texts (and optional pair texts), waiting for its batch."""

    texts: list[Any]  # texts, or a task's input objects (the batcher only counts them)
    pairs: list[str] | None
    enqueued: float  # time.monotonic()
    deadline: float  # time.monotonic()
    future: asyncio.Future = field(repr=False)
    state: str = QUEUED
    abandoned: bool = False  # its caller stopped waiting (deadline, disconnect)


BatchRunner = Callable[[Sequence[Job]], Sequence[Any]]
BatchObserver = Callable[[int, int, float], None]  # (texts, requests, seconds)


class DynamicBatcher:
    """Gathers concurrent ``submit`` calls into bounded batches run on one worker thread."""

    def __init__(self, run_batch: BatchRunner, *, max_batch_size: int, max_wait_s: float, max_queue: int,
                 on_batch: BatchObserver | None = None, executor: ThreadPoolExecutor | None = None) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_s >= 0")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        # One thread: the model computes one batch at a time anyway (and uses every core for it);
        # more threads would only queue on its lock.
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertfit-batch")
        self._pending: deque[Job] = deque()
        self._queued_texts = 0  # texts of live (not abandoned) queued jobs
        self._running_texts = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False

    # -- state, for metrics and readiness ----------------------------------------------------
    @property
    def queue_depth(self) -> int:
        """Texts waiting for a batch (not counting the batch being computed)."""
        return self._queued_texts

    @property
    def running_texts(self) -> int:
        return self._running_texts

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._batch_loop(), name="bertfit-batcher")

    async def close(self) -> None:
        """Stop taking work, finish every queued job, then stop the worker thread."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        self.executor.shutdown(wait=True)

    # -- requests ----------------------------------------------------------------------------
    async def submit(self, texts: list[Any], pairs: list[str] | None, deadline: float) -> Any:
        """Queue one request and wait for its result (whatever ``run_batch`` returned for it).

        Raises QueueFullError at once when the queue has no room, DeadlineExceededError when
        ``deadline`` (time.monotonic) passes first, or the exception ``run_batch`` gave this job.
        """
        if self._closing or self._task is None:
            raise ShuttingDownError("the server is shutting down")
        n = len(texts)
        if self._queued_texts + n > self.max_queue:
            raise QueueFullError(self._queued_texts, n, self.max_queue)
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        job = Job(texts, pairs, now, deadline, loop.create_future())
        self._pending.append(job)
        self._queued_texts += n
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            # shield: a timeout must not cancel the shared future the batch loop will resolve.
            return await asyncio.wait_for(asyncio.shield(job.future), timeout=max(0.0, deadline - now))
        except asyncio.TimeoutError:
            self._abandon(job)
            raise DeadlineExceededError(f"no result within the deadline ({deadline - now:.3g} s)") from None
        except asyncio.CancelledError:  # the client went away, or the server is force-quitting
            self._abandon(job)
            raise

    def _abandon(self, job: Job) -> None:
        job.abandoned = True
        if job.state == QUEUED:
            # Free its place now, so the queue bound counts only work someone still waits for.
            job.state = DONE
            self._queued_texts -= len(job.texts)

    # -- the batching task -------------------------------------------------------------------
    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            # Wait for work (or for close() with nothing left to do).
            while self._queued_texts == 0:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            # Wait for the batch to fill, but never longer than max_wait after the oldest job
            # arrived: jobs that queued while the previous batch ran go out without more delay.
            oldest = self._oldest_live()
            while self._queued_texts < self.max_batch_size and not self._closing and oldest is not None:
                remaining = oldest.enqueued + self.max_wait_s - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
                except asyncio.TimeoutError:
                    break
                oldest = self._oldest_live()
            batch = self._take_batch()
            if not batch:
                continue
            n_texts = sum(len(job.texts) for job in batch)
            self._running_texts = n_texts
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self._run, batch)
            except asyncio.CancelledError:  # force quit: nobody will compute these jobs
                for job in batch:
                    job.state = DONE
                    job.future.cancel()
                raise
            except RuntimeError as exc:  # executor already shut down
                results = [exc] * len(batch)
            finally:
                self._running_texts = 0
            self._deliver(batch, results)
            if self.on_batch is not None:
                self.on_batch(n_texts, len(batch), time.perf_counter() - started)

    def _oldest_live(self) -> Job | None:
        while self._pending and self._pending[0].state != QUEUED:
            self._pending.popleft()  # abandoned while queued
        return self._pending[0] if self._pending else None

    def _take_batch(self) -> list[Job]:
        """Queued jobs in arrival order, up to max_batch_size texts (a bigger job goes alone)."""
        batch: list[Job] = []
        size = 0
        now = time.monotonic()
        while self._pending:
            job = self._pending[0]
            if job.state != QUEUED:
                self._pending.popleft()
                continue
            if job.deadline <= now:  # its caller is about to get a 504; do not compute it
                self._pending.popleft()
                self._abandon(job)
                continue
            if batch and size + len(job.texts) > self.max_batch_size:
                break
            self._pending.popleft()
            job.state = RUNNING
            self._queued_texts -= len(job.texts)
            size += len(job.texts)
            batch.append(job)
        return batch

    def _run(self, batch: list[Job]) -> Sequence[Any]:
        """On the worker thread: one result or exception per job, never a raise."""
        try:
            results = list(self.run_batch(batch))
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} jobs")
            return results
        except Exception as exc:  # noqa: BLE001 - handed to each waiting request as its error
            logger.exception("batch of %d requests failed", len(batch))
            return [exc] * len(batch)

    @staticmethod
    def _deliver(batch: list[Job], results: Sequence[Any]) -> None:
        for job, result in zip(batch, results):
            job.state = DONE
            if job.abandoned or job.future.done():
                continue  # nobody is waiting; setting an exception would only log "never retrieved"
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
