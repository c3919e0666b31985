"""Where jobs run in the worker's process: a thread pool, and an event loop for async tasks.

A runner takes a reserved job, runs it, and reports ``on_done(job, outcome)``
from whatever thread finished it; the worker does all the Redis work. (The
process pool, for ``--pool processes``, is in process_pool.py.) The middleware's
``before_run`` and ``after_run`` run where the job runs, around it; the outcome
reported is the one after ``after_run``. ``InlineRunner`` runs each job inside
``submit()``, for in-process tests of the worker loop.

Whatever a job does, a runner reports it exactly once and keeps its slot:
decoding and running are guarded down to BaseException (execution.py), and
each thread guards its loop again, so a job can never end a runner thread.

Stopping: ``stop()`` returns within about STOP_WAIT_S whatever is still
running. Idle threads exit; busy ones (daemons) are abandoned, and whatever
they or the event loop finish after ``stop()`` is dropped, not reported: the
worker has stopped acking by then, and those jobs run again after their lease.
"""

from __future__ import annotations

import asyncio
import logging
import queue as queue_mod
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Callable, Protocol

from .execution import PreparedCall, call, call_async, crashed, decode_leased
from ..outcome import Outcome
from ..middleware import Hooks
from ..protocol.models import ReservedJob

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("omniq_tasks.worker")
OnDone = Callable[[ReservedJob, Outcome], None]
NOT_STARTED = ("not run: its lease had ended before it could start (the worker was frozen or "
               "stalled for longer than timeout_ms); it runs again")
# The longest stop() waits for idle threads and the event loop to end.
STOP_WAIT_S = 0.5


class Runner(Protocol):
    """What the worker needs of a runner: take jobs, report each once through its on_done, stop."""

    def submit(self, job: ReservedJob) -> None: ...

    def stop(self) -> None: ...


# Worker(runner=...): makes a runner that reports to the given on_done.
RunnerFactory = Callable[[OnDone], Runner]


def run_job(app: App, hooks: Hooks, job: ReservedJob) -> Outcome:
    """Run ``job`` to the end in this thread (async tasks on a fresh event loop); never raises."""
    task = ""
    try:
        if hooks.before_run:
            hooks.run_before_run(job)
        prepared = decode_leased(app, job)
        if isinstance(prepared, Outcome):
            outcome = prepared
        else:
            task = prepared.task.name
            outcome = asyncio.run(call_async(prepared)) if prepared.task.is_async else call(prepared)
    except BaseException as exc:  # e.g. CancelledError out of asyncio.run: the job fails, we live
        outcome = crashed(task, exc)
    return hooks.run_after_run(job, outcome) if hooks.after_run else outcome


class InlineRunner:
    """Runs each job to the end inside ``submit()``, in the caller's thread (the worker loop).

    For tests: a step of the loop leases, runs and reports its jobs before it
    returns, so the next step acks them, with no thread to wait for.
    """

    def __init__(self, app: App, on_done: OnDone) -> None:
        self.app = app
        self.hooks = Hooks(app.middleware)
        self._on_done = on_done

    def submit(self, job: ReservedJob) -> None:
        self._on_done(job, run_job(self.app, self.hooks, job))

    def stop(self) -> None:
        pass


class AsyncLoop:
    """One event loop in its own thread; ``async def`` tasks run there, many at once."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="omniq-async", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # run_forever() re-raises SystemExit/KeyboardInterrupt escaping a callback;
        # the loop must outlive them until stop().
        while not self._stopping:
            try:
                self.loop.run_forever()
            except BaseException:
                log.exception("the event loop stopped on an error; restarting it")

    def submit(self, prepared: PreparedCall, job: ReservedJob, on_done: OnDone) -> None:
        future = asyncio.run_coroutine_threadsafe(call_async(prepared), self.loop)

        def done(f: Future[Outcome]) -> None:
            try:
                outcome = f.result()
            except BaseException as exc:  # cancelled, or a BaseException call_async lets through
                outcome = crashed(prepared.task.name, exc)
            on_done(job, outcome)

        future.add_done_callback(done)

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        self._stopping = True
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # the loop is closed already
            return
        self._thread.join(timeout=timeout)  # a task blocking the loop is abandoned with it


class ThreadRunner:
    """Up to ``size`` threads, started only as needed, fed from one in-memory queue."""

    def __init__(self, app: App, size: int, on_done: OnDone) -> None:
        self.app = app
        self.size = size
        self._on_done = on_done
        self._inbox: queue_mod.SimpleQueue[ReservedJob | None] = queue_mod.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._async: AsyncLoop | None = None
        self._stopped = False
        self.hooks = Hooks(app.middleware)

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
        """Run ``job`` here (or hand an async task to the loop) and report it; never raises."""
        if job.received_at and job.timeout_ms and time.monotonic() - job.received_at > job.timeout_ms / 1000:
            # A thread takes a job within ms of its lease; this late, the whole process
            # was frozen (SIGSTOP, a stalled VM) past the lease, and another worker may
            # have run and acked the job meanwhile: starting it now could run it again
            # after its ack. Fail this lease instead (a no-op if it was reaped already).
            self._report(job, Outcome(False, "", NOT_STARTED))
            return
        task = ""
        hooks = self.hooks
        try:
            if hooks.before_run:
                hooks.run_before_run(job)
            prepared = decode_leased(self.app, job)
            if isinstance(prepared, Outcome):
                outcome = prepared
            else:
                task = prepared.task.name
                if prepared.task.is_async:
                    self._loop().submit(prepared, job, self._ran)
                    return
                outcome = call(prepared)
        except BaseException as exc:  # nothing above should raise; if it does, the job still fails
            outcome = crashed(task, exc)
        if hooks.after_run:
            outcome = hooks.run_after_run(job, outcome)
        self._report(job, outcome)

    def _ran(self, job: ReservedJob, outcome: Outcome) -> None:
        """An async job ended (in the event loop's thread): after_run there, then report."""
        if self.hooks.after_run:
            outcome = self.hooks.run_after_run(job, outcome)
        self._report(job, outcome)

    def _report(self, job: ReservedJob, outcome: Outcome) -> None:
        if self._stopped:  # the worker no longer acks: the job runs again after its lease
            log.debug("job=%s finished after the runner stopped; not reported", job.job_id)
            return
        try:
            self._on_done(job, outcome)
        except BaseException:
            log.exception("reporting job=%s failed", job.job_id)

    def _loop(self) -> AsyncLoop:
        with self._lock:
            if self._async is None:
                self._async = AsyncLoop()
            return self._async

    def stop(self) -> None:
        """Let idle threads end and return within about STOP_WAIT_S; busy threads are abandoned."""
        self._stopped = True
        deadline = time.monotonic() + STOP_WAIT_S
        threads = list(self._threads)
        for _ in threads:
            self._inbox.put(None)
        with self._lock:
            idle = self._idle
        if idle >= len(threads):  # all idle: each takes a None and ends at once
            for thread in threads:
                thread.join(timeout=max(deadline - time.monotonic(), 0.0))
        if self._async is not None:
            self._async.stop(timeout=max(deadline - time.monotonic(), 0.05))
