"""One model, one generation at a time: a worker thread runs the jobs in arrival order.

The event loop never runs the model. A request becomes a `Job` (an iterator of text pieces made
by `Model.stream`, which has already checked the prompt and options) and waits in a bounded
queue; the worker thread drives the iterator and hands each piece back to the event loop. A job
whose client left is cancelled: skipped if still waiting, closed after its current token if
running (closing the stream releases the model at once).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
from typing import Any, AsyncIterator, Iterator

from edgegen.core.errors import ConfigError, ContextOverflow, EdgegenError
from edgegen.core.memory import OutOfMemory, out_of_memory_message
from edgegen.core.stats import GenerationStats
from edgegen.server._openai import ApiError

log = logging.getLogger("edgegen.server")


class QueueFull(ApiError):
    def __init__(self, limit: int):
        super().__init__(429, f"the server is busy: {limit} request(s) are already waiting; retry later",
                         type="rate_limit_error", code="queue_full")


def closing() -> ApiError:
    return ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")


class Job:
    """A generation waiting for, or running on, the worker; its events go to one event loop."""

    def __init__(self, pieces: Iterator[str], stats: GenerationStats, max_tokens: int):
        self.pieces, self.stats, self.max_tokens = pieces, stats, max_tokens
        self.cancelled = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def cancel(self) -> None:
        self.cancelled.set()

    def emit(self, kind: str, value: Any = None) -> None:
        """From the worker thread: queue ("piece", (text, n)), ("error", ApiError) or ("done", None);
        n counts the log-probabilities decided with the text (the generation goes on adding more)."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone (server shutting down): nobody listens
            self.cancel()

    async def events(self) -> AsyncIterator[tuple[str, int]]:
        """The text pieces, each with the count of log-probabilities given up to it, in order; ends
        when the generation does, raises its error if any."""
        while True:
            kind, value = await self._events.get()
            if kind == "piece":
                yield value
            elif kind == "error":
                raise value
            else:
                return


class Worker:
    """Runs jobs one at a time on its own thread; at most `max_queue` jobs wait behind the one
    running, further submissions are refused with `QueueFull` (HTTP 429)."""

    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        self.pending = 0  # jobs submitted and not finished: the running one and those waiting
        self.current: Job | None = None
        self.closed = False
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=64)
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._count = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="edgegen-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._count:
            if self.closed:
                raise closing()
            if self.pending > self.max_queue:
                raise QueueFull(self.max_queue)
            self.pending += 1
        self._jobs.put(job)

    def load(self) -> dict[str, int]:
        running = int(self.current is not None)
        return {"running": running, "waiting": max(self.pending - running, 0), "max_waiting": self.max_queue}

    def close(self) -> None:
        """Take no more jobs: the running one ends after its current token, it and the waiting ones
        are answered 503 (so that open streams end at once when the server shuts down)."""
        with self._count:
            if self.closed:
                return
            self.closed = True
        current = self.current
        if current is not None:
            current.cancel()
        self._jobs.put(None)

    def stop(self) -> None:
        self.close()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                self._drain()
                return
            self.current = job
            try:
                self._run(job)
            finally:
                self.current = None
                with self._count:
                    self.pending -= 1
                self.history.append({"finish_reason": job.stats.finish_reason,
                                     "generated_tokens": job.stats.generated_tokens,
                                     "max_tokens": job.max_tokens})

    def _run(self, job: Job) -> None:
        stream = job.pieces
        try:
            for piece in _until_cancelled(stream, job):
                job.emit("piece", (piece, len(job.stats.logprobs)))
            job.emit(*(("error", closing()) if self.closed else ("done",)))
        except EdgegenError as exc:
            status = 400 if isinstance(exc, (ConfigError, ContextOverflow)) else 503 if isinstance(exc, OutOfMemory) \
                else 500
            job.emit("error", ApiError(status, str(exc), type="invalid_request_error" if status == 400
                                       else "server_error"))
        except MemoryError:  # this request's work did not fit: it alone fails, the server goes on
            log.warning("a request ran out of memory")
            job.emit("error", ApiError(503, out_of_memory_message("for this request"), type="server_error",
                                       code="out_of_memory"))
        except Exception as exc:  # a bug or a runtime failure: answer 500, keep serving
            log.exception("generation failed")
            job.emit("error", ApiError(500, f"the generation failed ({type(exc).__name__}); see the server log",
                                       type="server_error"))
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def _drain(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.cancel()
                job.emit("error", closing())


def _until_cancelled(stream: Iterator[str], job: Job) -> Iterator[str]:
    if job.cancelled.is_set():
        job.stats.finish_reason = "interrupted"
        return
    for piece in stream:
        yield piece
        if job.cancelled.is_set():
            job.stats.finish_reason = "interrupted"
            return
