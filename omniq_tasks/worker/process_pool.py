"""The process pool (``--pool processes``): children that run jobs, one at a time each.

Each child is a spawned process (no locks or sockets inherited) that imports the
app by its ``"module:app"`` path and talks to the parent over its own duplex
pipe. One dispatcher thread in the parent waits on every pipe and every child's
process sentinel (``multiprocessing.connection.wait``), sends a job to an idle
child and reports the outcome it sends back, so the parent always knows which
child runs which job. Only msgpack bytes cross the pipes (``send_bytes``): job
fields one way, the whole ``Outcome`` the other (result, duration and retry time
included); nothing is pickled. The middleware's ``before_run`` and ``after_run``
run in the child, which loads the app and so has its middleware.

When a child dies (``os._exit()`` in a task, a segfault, the OOM killer, a
SIGKILL) only the job it was running fails, with "worker process died: exit
code 3" or "killed by signal SIGKILL" (not final: a retry may succeed, so a job
that kills its child every time ends failed after max_attempts), and a new
child takes its place. A child that dies idle is just replaced. Children that
die before they are ready (the app cannot be imported) are restarted with a
backoff (0.5 s doubling to 30 s), one at a time, with one ERROR line; the jobs
handed to the pool meanwhile wait.

Time limits (a task's ``policy``): at ``soft_time_limit`` the child raises
SoftTimeLimitExceeded in the body (SIGALRM for a sync body, which the child's
main thread runs; at its ``await`` for an async one), so it can clean up. A
run with a ``time_limit`` is announced by the child (``_Started``); at the
limit the parent SIGKILLs that child and fails the job with
TimeLimitExceeded (retried or not as any failure), and a new child takes
its place, as for any dead child.

Children ignore SIGINT (the parent decides when to stop) and log like the
parent. ``stop()`` closes the pipes (idle children exit at once), gives busy
children about STOP_WAIT_S to finish, then terminates and if need be kills
them; jobs stopped so are not reported (they run again after their lease).
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import signal
import sys
import threading
import time
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Callable, Union

import msgspec

from .execution import PreparedCall, crashed, exception_line, timed_out
from .time_limits import hard_error
from ..logcontext import JsonFormatter, TextFormatter
from ..outcome import Outcome
from ..protocol.models import ReservedJob

if TYPE_CHECKING:
    from ..task import Task

log = logging.getLogger("omniq_tasks.worker")
OnDone = Callable[[ReservedJob, Outcome], None]
# How long stop() lets busy children finish before terminating them.
STOP_WAIT_S = 1.0
# Restarting children that die before they are ready: first delay, doubling to the cap.
START_BACKOFF_S = 0.5
START_BACKOFF_MAX_S = 30.0


# -- what crosses a pipe ---------------------------------------------------------------


class _Ready(msgspec.Struct, tag="ready", array_like=True):
    """Child -> parent: the app is imported, send jobs."""

    pid: int


class _Done(msgspec.Struct, tag="done", array_like=True):
    """Child -> parent: the job it was given ended so."""

    outcome: Outcome


class _Started(msgspec.Struct, tag="started", array_like=True):
    """Child -> parent: the job's body starts, with a hard time limit of ``hard_s``."""

    hard_s: float


class _StartFailed(msgspec.Struct, tag="start_failed", array_like=True):
    """Child -> parent: the app could not be loaded; the child exits next."""

    error: str


_ChildMessage = Union[_Ready, _Done, _Started, _StartFailed]
_encode = msgspec.msgpack.Encoder().encode
_decode_job = msgspec.msgpack.Decoder(ReservedJob).decode
_decode_message = msgspec.msgpack.Decoder(_ChildMessage).decode


# -- the child ---------------------------------------------------------------------------


def _child_main(conn: Connection, app_path: str, log_level: int, log_format: str | None,
                log_kind: str = "plain") -> None:
    """A child's whole life: load the app, then run the jobs the parent sends until its pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    # A spawned child starts with no logging set up: log like the parent (the same
    # format or JSON, the job fields on every record), to the same inherited stderr.
    logging.basicConfig(level=log_level, format=log_format or logging.BASIC_FORMAT)
    from ..logcontext import JsonFormatter, TextFormatter, install_filter

    if log_kind != "plain":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter() if log_kind == "json" else TextFormatter(log_format or ""))
    install_filter()
    from ..app import load_app

    try:
        app = load_app(app_path)
    except BaseException as exc:
        conn.send_bytes(_encode(_StartFailed(f"cannot load app {app_path!r}: {exception_line(exc)}")))
        sys.exit(2)
    from ..middleware import Hooks
    from .runners import ChildLimits, run_job

    limits = ChildLimits(lambda hard_s: conn.send_bytes(_encode(_Started(hard_s))))
    hooks = Hooks(app.middleware)  # the app loaded here has its middleware: the hooks run in the child
    conn.send_bytes(_encode(_Ready(os.getpid())))
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):  # the parent closed the pipe (stop) or died
            return
        try:
            job = _decode_job(data)
        except BaseException as exc:  # the parent sent what it should not: fail that job, live on
            outcome = crashed("", exc)
        else:
            outcome = run_job(app, hooks, job, limits)  # never raises; before_run/after_run run here
        try:
            conn.send_bytes(_encode(_Done(outcome)))
        except (EOFError, OSError):
            return


# -- the parent --------------------------------------------------------------------------


class _Child:
    """A child process, its end of the pipe, and the job it runs (None when idle)."""

    __slots__ = ("proc", "conn", "ready", "job", "started", "deadline", "hard_s", "killed_for")

    def __init__(self, proc: BaseProcess, conn: Connection) -> None:
        self.proc = proc
        self.conn = conn
        self.ready = False
        self.job: ReservedJob | None = None
        self.started = 0.0  # when the running job's body began (monotonic), if it has a time limit
        self.deadline: float | None = None  # when that time limit ends
        self.hard_s = 0.0
        self.killed_for = ""  # the job's last_error when we killed it at its time limit


def how_it_ended(exitcode: int | None) -> str:
    """'exit code 3', 'killed by signal SIGKILL'."""
    if exitcode is None:
        return "closed its pipe"
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class ProcessRunner:
    """A pool of ``size`` spawned children running the app at ``app_path`` ("module:app")."""

    def __init__(self, app_path: str, size: int, on_done: OnDone,
                 find_task: Callable[[str], Task[Any, Any] | None] | None = None) -> None:
        self.app_path = app_path
        # the parent's registry lookup: a run killed at its time limit is retried or
        # failed under its task's policy (the child that knew it is gone)
        self._find_task = find_task
        self.size = size
        self._on_done = on_done
        root = logging.getLogger()
        formatter = root.handlers[0].formatter if root.handlers else None
        kind = ("json" if isinstance(formatter, JsonFormatter) else
                "text" if isinstance(formatter, TextFormatter) else "plain")
        self._child_args = (app_path, log.getEffectiveLevel(), formatter._fmt if formatter else None, kind)
        self._context = get_context("spawn")
        self._children: list[_Child] = []
        self._pending: collections.deque[ReservedJob] = collections.deque()
        self._lock = threading.Lock()  # guards _pending, _stopping and _woken between submit() and the dispatcher
        self._stopping = False
        self._woken = False
        self._wake_r, self._wake_w = self._context.Pipe(duplex=False)
        self._start_failures = 0
        self._start_error = ""
        self._next_start = 0.0
        # Children are not daemons (a task may start processes); at interpreter exit,
        # multiprocessing joins them, so end them first.
        atexit.register(self.stop)
        self._dispatcher = threading.Thread(target=self._dispatch, name="omniq-process-pool", daemon=True)
        self._dispatcher.start()

    # -- the worker's side ----------------------------------------------------------

    def submit(self, job: ReservedJob) -> None:
        with self._lock:
            self._pending.append(job)
            if self._woken or self._stopping:
                return
            self._woken = True
        self._wake_w.send_bytes(b"")

    def stop(self) -> None:
        """End the children: idle ones at once, busy ones after about STOP_WAIT_S (terminated)."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        atexit.unregister(self.stop)
        try:
            self._wake_w.send_bytes(b"")
        except OSError:
            pass
        self._dispatcher.join(timeout=STOP_WAIT_S)
        children = list(self._children)
        for child in children:
            child.conn.close()  # an idle child reads EOF and exits; a busy one when its job ends
        deadline = time.monotonic() + STOP_WAIT_S
        alive = [c.proc for c in children]
        while alive and time.monotonic() < deadline:
            wait([p.sentinel for p in alive], timeout=deadline - time.monotonic())
            alive = [p for p in alive if p.exitcode is None]
        for proc in alive:
            log.warning("stopping: ending worker process %s, still busy", proc.pid)
            proc.terminate()
        for proc in alive:
            proc.join(timeout=0.5)
            if proc.exitcode is None:
                proc.kill()
                proc.join(timeout=1.0)
        for child in children:
            if child.proc.exitcode is not None:
                child.proc.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- the dispatcher thread ------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._stopping:
                        return
                self._start_children()
                self._assign()
                by_conn = {c.conn: c for c in self._children}
                by_sentinel = {c.proc.sentinel: c for c in self._children}
                timeout = None
                now = time.monotonic()
                if len(self._children) < self.size and self._next_start > now:
                    timeout = self._next_start - now  # a restart waits on its backoff
                deadline = min((c.deadline for c in self._children if c.deadline is not None), default=None)
                if deadline is not None:
                    timeout = max(min(timeout if timeout is not None else deadline, deadline - now), 0.0)
                ready = wait([self._wake_r, *by_conn, *by_sentinel], timeout)
                if deadline is not None and time.monotonic() >= deadline:
                    self._enforce_limits()
                for obj in ready:
                    if obj is self._wake_r:
                        self._wake_r.recv_bytes()
                        with self._lock:
                            self._woken = False
                    elif isinstance(obj, int):
                        self._ended(by_sentinel[obj])
                    else:
                        self._read(by_conn[obj])  # type: ignore[index]
        except BaseException:  # a bug here would hang every job: say so loudly
            log.exception("the process pool's dispatcher failed; no more jobs will run")

    def _start_children(self) -> None:
        if time.monotonic() < self._next_start:
            return
        missing = self.size - len(self._children)
        if self._start_failures:  # children die at start: try one at a time
            missing = min(missing, 0 if any(not c.ready for c in self._children) else 1)
        for _ in range(missing):
            parent_end, child_end = self._context.Pipe(duplex=True)
            proc = self._context.Process(target=_child_main, args=(child_end, *self._child_args),
                                         name="omniq-child")
            log.debug("starting worker process for %s", self.app_path)
            proc.start()
            child_end.close()  # ours: closed, so the pipe reads EOF once the child is gone
            self._children.append(_Child(proc, parent_end))

    def _assign(self) -> None:
        for child in self._children:
            if not child.ready or child.job is not None:
                continue
            with self._lock:
                if not self._pending:
                    return
                job = self._pending.popleft()
            try:
                child.conn.send_bytes(_encode(job))
            except OSError:  # the child died before it got the job: the job is innocent
                with self._lock:
                    self._pending.appendleft(job)
                child.ready = False  # no more jobs for it; its sentinel reports the death
                continue
            child.job = job

    def _enforce_limits(self) -> None:
        """SIGKILL each child whose job passed its time limit; its death reports the job (_ended)."""
        now = time.monotonic()
        for child in self._children:
            if child.deadline is None or child.deadline > now or child.job is None:
                continue
            ran = now - child.started
            child.deadline = None
            child.killed_for = hard_error(child.hard_s, ran, f"its worker process (pid {child.proc.pid}) was killed")
            log.error("job=%s queue=%s passed its time_limit of %g s; killing worker process %s",
                      child.job.job_id, child.job.queue, child.hard_s, child.proc.pid)
            child.proc.kill()

    def _read(self, child: _Child) -> None:
        if child in self._children and not self._receive(child):
            self._ended(child)

    def _receive(self, child: _Child) -> bool:
        """Handle one message from ``child``; False when its pipe is closed (it died)."""
        try:
            message = _decode_message(child.conn.recv_bytes())
        except (EOFError, OSError):
            return False
        if isinstance(message, _Started):
            child.started = time.monotonic()
            child.hard_s = message.hard_s
            child.deadline = child.started + message.hard_s
        elif isinstance(message, _Done):
            job, child.job = child.job, None
            child.deadline = None
            if job is not None:
                self._report(job, message.outcome)
        elif isinstance(message, _Ready):
            child.ready = True
            if self._start_failures:
                log.info("worker process started after %d failed start(s)", self._start_failures)
                self._start_failures = 0
                self._start_error = ""
        else:
            self._start_error = message.error
        return True

    def _ended(self, child: _Child) -> None:
        """``child`` is gone: fail the job it ran, or count a failed start; a new one takes its place."""
        if child not in self._children:
            return
        while child.conn.poll():  # what it sent before dying: an outcome, or why it could not start
            if not self._receive(child):
                break
        self._children.remove(child)
        child.proc.join(timeout=1.0)
        if child.proc.exitcode is None:  # closed its pipe but lives on: it is of no use
            child.proc.kill()
            child.proc.join(timeout=1.0)
        how = how_it_ended(child.proc.exitcode)
        pid = child.proc.pid
        child.conn.close()
        with self._lock:
            if self._stopping:  # stop() ends children on purpose: not a crash
                return
        job = child.job
        if job is not None and child.killed_for:
            log.info("worker process %s killed at the time limit of job=%s; starting another", pid, job.job_id)
            self._report(job, _killed_at_limit_outcome(self._find_task, job, child.killed_for,
                                                       time.monotonic() - child.started))
        elif child.killed_for:
            log.info("worker process %s killed at a time limit its job met just in time; starting another", pid)
        elif job is not None:
            log.error("worker process %s died (%s) while running job=%s queue=%s; starting another",
                      pid, how, job.job_id, job.queue)
            error = f"worker process died: {how} (pid {pid}, attempt {job.attempt} of {job.max_attempts})"
            self._report(job, Outcome(False, _task_name(job), error))
        elif child.ready:
            log.warning("worker process %s died (%s) while idle; starting another", pid, how)
        else:
            self._start_failures += 1
            delay = min(START_BACKOFF_S * 2 ** (self._start_failures - 1), START_BACKOFF_MAX_S)
            self._next_start = time.monotonic() + delay
            if self._start_failures == 1:
                log.error("worker process could not start (%s): %s; retrying with a backoff of up to %.0f s",
                          how, self._start_error or "no reason given", START_BACKOFF_MAX_S)

    def _report(self, job: ReservedJob, outcome: Outcome) -> None:
        try:
            self._on_done(job, outcome)
        except BaseException:
            log.exception("reporting job=%s failed", job.job_id)


def _killed_at_limit_outcome(find_task: Callable[[str], Task[Any, Any] | None] | None, job: ReservedJob,
                             error: str, ran_s: float) -> Outcome:
    """The outcome of a job whose child was killed at its hard limit, under its task's policy."""
    name = _task_name(job)
    task = find_task(name) if find_task is not None and name else None
    prepared = None
    if task is not None:
        prepared = PreparedCall(task, {})
        prepared.job = job
    return timed_out(prepared, name, error, ran_s)


def _task_name(job: ReservedJob) -> str:
    """The envelope's task name, for the failure of a job whose child died ("" if unreadable)."""
    from ..envelope import read_envelope

    try:
        envelope = read_envelope(job.payload)
    except BaseException:  # the payload may be what killed the child
        return ""
    return envelope.task if envelope is not None else ""
