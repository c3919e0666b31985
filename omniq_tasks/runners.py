"""Where jobs run: a thread pool (default), a process pool, and an event loop for async tasks.

A runner takes a reserved job, runs it, and reports ``on_done(job, outcome)``
from whatever thread finished it; the worker does all the Redis work.
"""

from __future__ import annotations

import asyncio
import logging
import queue as queue_mod
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any, Callable

from .context import JobContext
from .execution import Outcome, PreparedCall, call, call_async, prepare
from .models import ReservedJob

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("omniq_tasks.worker")
OnDone = Callable[[ReservedJob, Outcome], None]


def _context(app: App, job: ReservedJob) -> Callable[[], JobContext]:
    return lambda: JobContext(
        app.client, queue=job.queue, job_id=job.job_id, attempt=job.attempt,
        max_attempts=job.max_attempts, gid=job.gid, lease_token=job.lease_token,
        lock_until_ms=job.lock_until_ms, payload_raw=job.payload)


def _log_start(job: ReservedJob, task: str) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug("start %s job=%s queue=%s attempt=%d/%d", task, job.job_id, job.queue,
                 job.attempt, job.max_attempts)


class AsyncLoop:
    """One event loop in its own thread; ``async def`` tasks run there, many at once."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="omniq-async", daemon=True)
        self._thread.start()

    def submit(self, prepared: PreparedCall, job: ReservedJob, on_done: OnDone) -> None:
        future = asyncio.run_coroutine_threadsafe(call_async(prepared), self.loop)

        def done(f: Future[Outcome]) -> None:
            try:
                outcome = f.result()
            except BaseException as exc:  # cancelled at shutdown
                outcome = Outcome(False, prepared.task.name, f"{type(exc).__name__}: {exc}")
            on_done(job, outcome)

        future.add_done_callback(done)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


class ThreadRunner:
    """Up to ``size`` threads, started only as needed, fed from one in-memory queue."""

    def __init__(self, app: App, size: int, on_done: OnDone) -> None:
        self.app = app
        self.size = size
        self.on_done = on_done
        self._inbox: queue_mod.SimpleQueue[ReservedJob | None] = queue_mod.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._async: AsyncLoop | None = None

    def submit(self, job: ReservedJob) -> None:
        with self._lock:
            grow = self._idle == 0 and len(self._threads) < self.size
            if not grow:
                self._idle -= 1
        if grow:
            thread = threading.Thread(target=self._work, name=f"omniq-run-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()
        self._inbox.put(job)

    def _work(self) -> None:
        while True:
            job = self._inbox.get()
            if job is None:
                return
            self.run_one(job)
            with self._lock:
                self._idle += 1

    def run_one(self, job: ReservedJob) -> None:
        prepared = prepare(self.app.registry, job.queue, job.payload, _context(self.app, job))
        if isinstance(prepared, Outcome):
            self.on_done(job, prepared)
            return
        _log_start(job, prepared.task.name)
        if prepared.task.is_async:
            self._loop().submit(prepared, job, self.on_done)
            return
        self.on_done(job, call(prepared))

    def _loop(self) -> AsyncLoop:
        with self._lock:
            if self._async is None:
                self._async = AsyncLoop()
            return self._async

    def stop(self) -> None:
        for _ in self._threads:
            self._inbox.put(None)
        for thread in self._threads:
            thread.join(timeout=1)
        if self._async is not None:
            self._async.stop()


# -- process pool: the child imports the app by its "module:app" path ---------

_child_app: App | None = None


def _child_init(app_path: str, log_level: int, log_format: str | None) -> None:
    global _child_app
    import signal

    from .app import load_app

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    # A spawned child starts with no logging set up: log like the parent, to the
    # same inherited stderr.
    logging.basicConfig(level=log_level, format=log_format or logging.BASIC_FORMAT)
    _child_app = load_app(app_path)


def _child_run(job_fields: tuple[Any, ...]) -> tuple[bool, str, str, bool]:
    """Run one job in a child process; only strings and numbers cross the pipe."""
    assert _child_app is not None
    job = ReservedJob(*job_fields)
    prepared = prepare(_child_app.registry, job.queue, job.payload, _context(_child_app, job))
    if isinstance(prepared, PreparedCall):
        _log_start(job, prepared.task.name)
        if prepared.task.is_async:
            outcome = asyncio.run(call_async(prepared))
        else:
            outcome = call(prepared)
    else:
        outcome = prepared
    return outcome.ok, outcome.task, outcome.error, outcome.final


class ProcessRunner:
    """A pool of ``size`` child processes (spawned, so no locks or sockets are inherited)."""

    def __init__(self, app_path: str, size: int, on_done: OnDone) -> None:
        self.on_done = on_done
        root = logging.getLogger()
        log_format = root.handlers[0].formatter._fmt if root.handlers and root.handlers[0].formatter else None
        self._pool = ProcessPoolExecutor(
            max_workers=size, mp_context=get_context("spawn"),
            initializer=_child_init, initargs=(app_path, log.getEffectiveLevel(), log_format))

    def submit(self, job: ReservedJob) -> None:
        fields = (job.queue, job.job_id, job.payload, job.lock_until_ms, job.attempt,
                  job.max_attempts, job.gid, job.lease_token)
        future = self._pool.submit(_child_run, fields)

        def done(f: Future[tuple[bool, str, str, bool]]) -> None:
            try:
                outcome = Outcome(*f.result())
            except BaseException as exc:  # the child died, or the pool broke
                outcome = Outcome(False, "", f"worker process failed: {type(exc).__name__}: {exc}")
            self.on_done(job, outcome)

        future.add_done_callback(done)

    def stop(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
