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

Time limits (a task's ``policy.time_limit`` and ``soft_time_limit``, see
time_limits.py and docs/tasks.md): a thread cannot be killed, so at the hard
limit the watchdog reports the job failed with TimeLimitExceeded at once (the
worker acks that as any failure: it retries or fails, and its lease is no
longer renewed) and the thread's slot stays taken (``held_slots``) until the body
returns; its late result is dropped and logged. An ``async def`` body is
cancelled at the hard limit, the same way. The soft limit raises
SoftTimeLimitExceeded in the body: in a thread by an asynchronous exception
(at its next Python bytecode: not while blocked in C, e.g. ``time.sleep``), in
a coroutine at the ``await`` it waits on. ``InlineRunner`` enforces none.

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
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .execution import PreparedCall, call, call_async, crashed, decode_leased, timed_out
from .time_limits import (HARD_CANCEL, SoftAlarm, Watchdog, hard_error, interrupt_thread, limits_of,
                          soft_exception_type, soft_limited, soft_message)
from ..errors import SoftTimeLimitExceeded
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


def run_job(app: App, hooks: Hooks, job: ReservedJob, limits: ChildLimits | None = None) -> Outcome:
    """Run ``job`` to the end in this thread (async tasks on a fresh event loop); never raises.

    With ``limits`` (a process pool's child, in its main thread) the task's soft
    time limit is enforced here and its hard limit announced to the parent.
    """
    task = ""
    try:
        if hooks.before_run:
            hooks.run_before_run(job)
        prepared = decode_leased(app, job)
        if isinstance(prepared, Outcome):
            outcome = prepared
        else:
            task = prepared.task.name
            if limits is not None:
                outcome = limits.run(prepared)
            else:
                outcome = asyncio.run(call_async(prepared)) if prepared.task.is_async else call(prepared)
    except BaseException as exc:  # e.g. CancelledError out of asyncio.run: the job fails, we live
        outcome = crashed(task, exc)
    return hooks.run_after_run(job, outcome) if hooks.after_run else outcome


class ChildLimits:
    """Time limits in a process pool's child: the soft one here, the hard one by the parent.

    ``started(hard_s)`` tells the parent a run with a hard limit began (the
    parent kills the child at the limit). The soft limit raises
    SoftTimeLimitExceeded in the body: by SIGALRM for a sync body (the child's
    main thread runs it; a blocking ``sleep`` is interrupted too), at its
    ``await`` for an async one.
    """

    def __init__(self, started: Callable[[float], None]) -> None:
        self.started = started
        self.alarm = SoftAlarm()

    def run(self, prepared: PreparedCall) -> Outcome:
        soft, hard = limits_of(prepared.task)
        begun = time.monotonic()
        if hard is not None:
            self.started(hard)
        if prepared.task.is_async:
            return asyncio.run(call_async(prepared) if soft is None
                               else soft_limited(call_async(prepared), soft, begun))
        if soft is None:
            return call(prepared)
        outcome: Outcome | None = None
        try:
            self.alarm.arm(soft, begun)
            outcome = call(prepared)
            self.alarm.disarm()
        except SoftTimeLimitExceeded as exc:  # rang after the body returned, before disarm()
            self.alarm.disarm()
            if outcome is None:
                outcome = crashed(prepared.task.name, exc, (time.monotonic() - begun) * 1000)
        return outcome


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

    def submit(self, prepared: PreparedCall, job: ReservedJob, on_done: OnDone, run: _Run | None = None) -> None:
        """Run the task on the loop; with ``run``, under its time limits (see ThreadRunner)."""
        coro = call_async(prepared) if run is None else _limited_async(prepared, run)
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)

        def done(f: Future[Outcome]) -> None:
            try:
                outcome = f.result()
            except BaseException as exc:  # cancelled, or a BaseException call_async lets through
                outcome = crashed(prepared.task.name, exc)
            on_done(job, outcome)

        future.add_done_callback(done)

    def cancel(self, run: _Run) -> None:
        """Cancel ``run``'s coroutine (from any thread); one not started yet will not start."""
        def cancel() -> None:
            if run.atask is not None:
                run.atask.cancel(HARD_CANCEL)

        try:
            self.loop.call_soon_threadsafe(cancel)
        except RuntimeError:  # the loop is closed: nothing runs there any more
            pass

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        self._stopping = True
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # the loop is closed already
            return
        self._thread.join(timeout=timeout)  # a task blocking the loop is abandoned with it


async def _limited_async(prepared: PreparedCall, run: _Run) -> Outcome:
    run.atask = asyncio.current_task()
    if run.state != _RUNNING:  # its hard limit passed before the loop could start it
        return Outcome(False, prepared.task.name, "not started: its time limit had passed")
    if run.soft_s is None:
        return await call_async(prepared)
    return await soft_limited(call_async(prepared), run.soft_s, run.started)


_RUNNING, _DONE, _TIMED_OUT = 0, 1, 2


class _Run:
    """A job running under a time limit, as its runner and the watchdog see it."""

    __slots__ = ("job", "task", "started", "soft_s", "hard_s", "thread_id", "state", "soft_sent", "atask",
                 "prepared")

    def __init__(self, job: ReservedJob, task: str, soft_s: float | None, hard_s: float | None,
                 thread_id: int | None, prepared: PreparedCall | None = None) -> None:
        self.job = job
        self.task = task
        self.prepared = prepared  # for the task's retry policy when the hard limit ends the run
        self.started = time.monotonic()
        self.soft_s = soft_s
        self.hard_s = hard_s
        self.thread_id = thread_id  # None: an async task, on the event loop
        self.state = _RUNNING
        self.soft_sent = False
        self.atask: asyncio.Task[Any] | None = None


class ThreadRunner:
    """Up to ``size`` threads, started only as needed, fed from one in-memory queue.

    ``held_slots``: slots still taken by bodies that passed their hard time limit (their
    job is reported already); the worker leases nothing into them, and
    ``on_free()`` is called when one is given back.
    """

    def __init__(self, app: App, size: int, on_done: OnDone, on_free: Callable[[], None] | None = None) -> None:
        self.app = app
        self.size = size
        self._on_done = on_done
        self._on_free = on_free
        self.held_slots = 0
        self._watchdog: Watchdog | None = None
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
                soft, hard = limits_of(prepared.task)
                if soft is None and hard is None:
                    if prepared.task.is_async:
                        self._loop().submit(prepared, job, self._ran)
                        return
                    outcome = call(prepared)
                elif prepared.task.is_async:
                    run = _Run(job, task, soft, hard, None, prepared)
                    self._watch(run)
                    self._loop().submit(prepared, job, lambda j, o: self._ran_limited(run, o), run)
                    return
                else:
                    limited = self._call_limited(
                        prepared, _Run(job, task, soft, hard, threading.get_ident(), prepared))
                    if limited is None:  # reported at its hard limit; this late result is dropped
                        return
                    outcome = limited
        except BaseException as exc:  # nothing above should raise; if it does, the job still fails
            outcome = crashed(task, exc)
        if hooks.after_run:
            outcome = hooks.run_after_run(job, outcome)
        self._report(job, outcome)

    # -- time limits ------------------------------------------------------------------

    def _call_limited(self, prepared: PreparedCall, run: _Run) -> Outcome | None:
        """Call a sync task under its limits; None when its hard limit reported it already."""
        self._watch(run)
        outcome: Outcome | None = None
        try:
            outcome = call(prepared)
            late = self._settle(run)
        except SoftTimeLimitExceeded as exc:  # raised after the body returned, before _settle withdrew it
            late = self._settle(run)
            if outcome is None:
                outcome = crashed(run.task, exc, (time.monotonic() - run.started) * 1000)
        if late:
            self._dropped(run, outcome)
            return None
        return outcome

    def _watch(self, run: _Run) -> None:
        with self._lock:
            if self._watchdog is None:
                self._watchdog = Watchdog()
            watchdog = self._watchdog
        soft = run.soft_s if run.thread_id is not None else None  # async: the loop delivers it
        first = min(x for x in (soft, run.hard_s) if x is not None) if (soft or run.hard_s) else None
        if first is not None:
            watchdog.watch(id(run), run.started + first, lambda now: self._fire(run, now))

    def _fire(self, run: _Run, now: float) -> float | None:
        """The watchdog: deliver the soft limit, or end the run at its hard one; the next due time."""
        ran = now - run.started
        soft_due = run.thread_id is not None and run.soft_s is not None and not run.soft_sent
        if soft_due and run.soft_s is not None and ran >= run.soft_s - 0.0005:
            with self._lock:
                if run.state == _RUNNING and run.thread_id is not None:
                    run.soft_sent = True
                    interrupt_thread(run.thread_id, soft_exception_type(soft_message(run.soft_s, ran)))
            return run.started + run.hard_s if run.hard_s is not None and run.state == _RUNNING else None
        if run.hard_s is None:
            return None
        with self._lock:
            if run.state != _RUNNING:
                return None
            run.state = _TIMED_OUT
            self.held_slots += 1  # before the report: the worker must never see this slot free
        if run.thread_id is None:
            what = "the coroutine was cancelled"
            if self._async is not None:
                self._async.cancel(run)
        else:
            what = "its thread cannot be stopped: its slot stays taken until the body returns, its result is dropped"
        log.error("%s job=%s queue=%s passed its time_limit of %g s; failing it", run.task, run.job.job_id,
                  run.job.queue, run.hard_s)
        self._report(run.job, timed_out(run.prepared, run.task, hard_error(run.hard_s, ran, what), ran))
        return None

    def _settle(self, run: _Run) -> bool:
        """The body returned: True when its hard limit had reported it (the slot is given back now)."""
        with self._lock:
            if run.state == _TIMED_OUT:
                run.state = _DONE
                self.held_slots -= 1
                late = True
            else:
                late = False
                if run.state == _RUNNING and run.soft_sent and run.thread_id is not None:
                    interrupt_thread(run.thread_id, None)  # withdraw a soft limit not raised yet
                run.state = _DONE
            watchdog = self._watchdog
        if watchdog is not None and not late:
            watchdog.forget(id(run))
        return late

    def _dropped(self, run: _Run, outcome: Outcome | None) -> None:
        log.warning("%s job=%s queue=%s returned %.2f s after it started, past its time_limit: "
                    "its result (%s) is dropped, its slot is free again", run.task, run.job.job_id,
                    run.job.queue, time.monotonic() - run.started,
                    "ok" if outcome is not None and outcome.ok else "failed")
        if self._on_free is not None:
            try:
                self._on_free()
            except BaseException:
                log.exception("on_free failed")

    def _ran_limited(self, run: _Run, outcome: Outcome) -> None:
        """An async job under a time limit ended (in the event loop's thread)."""
        if self._settle(run):
            self._dropped(run, outcome)
        else:
            self._ran(run.job, outcome)

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
        if self._watchdog is not None:
            self._watchdog.stop()
