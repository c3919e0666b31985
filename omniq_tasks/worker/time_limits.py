"""Time limits: which apply to a run, how the soft one is delivered, what a failure says.

A task's ``policy.time_limit`` (hard) and ``policy.soft_time_limit`` are seconds
of one run, counted from when its runner took it (docs/tasks.md, "Time limits").
The runners decide what each can do (runners.py, process_pool.py); the pieces
they share live here:

- ``limits_of(task)``: (soft, hard), each None when not set;
- ``soft_limited(coro, ...)``: runs an ``async def`` body so that, at the soft
  limit, SoftTimeLimitExceeded is thrown into it at the ``await`` it waits on
  (the task is cancelled, and the cancellation is turned into our exception
  before the body sees it);
- ``SoftAlarm``: in a process's main thread, SIGALRM (``setitimer``) raises
  SoftTimeLimitExceeded in a synchronous body, even one blocked in ``sleep``;
- ``interrupt_thread``: ``PyThreadState_SetAsyncExc``, for a body in another
  thread: raised at its next Python bytecode only (not while blocked in C);
- ``Watchdog``: one thread that calls each run's callback when it is due.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Generator, TypeVar

from ..errors import SoftTimeLimitExceeded

if TYPE_CHECKING:
    from ..task import Task

log = logging.getLogger("omniq_tasks.worker")
T = TypeVar("T")
# The cancel message of a soft limit, so that no other cancellation is mistaken for one.
SOFT_CANCEL = "omniq-tasks: soft time limit"
HARD_CANCEL = "omniq-tasks: hard time limit"


def limits_of(task: Task[Any, Any]) -> tuple[float | None, float | None]:
    """(soft_time_limit, time_limit) of ``task``, in seconds; None where not set."""
    policy = task.policy
    return policy.soft_time_limit, policy.time_limit


def seconds(value: float) -> str:
    """1 -> '1 s', 0.5 -> '0.5 s'."""
    return f"{value:g} s"


def soft_message(limit_s: float, ran_s: float) -> str:
    return f"soft_time_limit of {seconds(limit_s)} exceeded (the run had taken {ran_s:.2f} s)"


def hard_error(limit_s: float, ran_s: float, what: str) -> str:
    """last_error of a run stopped by its hard limit; ``what`` says what happened to the body."""
    return f"TimeLimitExceeded: time_limit of {seconds(limit_s)} exceeded (the run had taken {ran_s:.2f} s); {what}"


# -- async bodies -------------------------------------------------------------------------


class _SoftGuard:
    """Awaits a coroutine, turning the cancellation ``fire()`` asked for into SoftTimeLimitExceeded.

    Every value and exception passes through unchanged, except the one
    CancelledError our own ``task.cancel(SOFT_CANCEL)`` causes: that one is
    thrown into the coroutine as SoftTimeLimitExceeded, at the ``await`` where
    the body waits, and the cancellation is withdrawn (``uncancel``), so the
    body may catch it, clean up and even go on.
    """

    def __init__(self, coro: Coroutine[Any, Any, T], task: asyncio.Task[Any], limit_s: float, started: float) -> None:
        self.coro = coro
        self.task = task
        self.limit_s = limit_s
        self.started = started
        self.pending = False  # we asked for a cancellation that has not arrived yet
        self.finished = False

    def fire(self) -> None:
        """At the soft limit (a loop callback): interrupt the body, unless it has ended."""
        if not self.finished and not self.task.done():
            self.pending = True
            self.task.cancel(SOFT_CANCEL)

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self.coro
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    yielded = coro.send(value) if error is None else coro.throw(error)
                except StopIteration as stop:
                    return stop.value
                value, error = None, None
                try:
                    value = yield yielded
                except GeneratorExit:
                    coro.close()
                    raise
                except asyncio.CancelledError as exc:
                    if self.pending:  # ours: the body gets SoftTimeLimitExceeded instead
                        self.pending = False
                        uncancel = getattr(self.task, "uncancel", None)  # Python 3.11+
                        if uncancel is not None:
                            uncancel()
                        error = SoftTimeLimitExceeded(soft_message(self.limit_s, time.monotonic() - self.started))
                    else:
                        error = exc
                except BaseException as exc:
                    error = exc
        finally:
            self.finished = True


async def soft_limited(coro: Coroutine[Any, Any, T], limit_s: float, started: float) -> T:
    """Await ``coro``; at ``started + limit_s`` (monotonic) raise SoftTimeLimitExceeded into it."""
    task = asyncio.current_task()
    assert task is not None
    guard = _SoftGuard(coro, task, limit_s, started)
    handle = asyncio.get_running_loop().call_later(max(started + limit_s - time.monotonic(), 0.0), guard.fire)
    try:
        result: T = await guard
        return result
    finally:
        handle.cancel()


# -- sync bodies in a process's main thread ----------------------------------------------


class SoftAlarm:
    """SIGALRM raises SoftTimeLimitExceeded in the main thread while armed (one process, one body)."""

    def __init__(self) -> None:
        self.limit_s = 0.0
        self.started = 0.0
        self.armed = False
        signal.signal(signal.SIGALRM, self._ring)

    def _ring(self, signum: int, frame: Any) -> None:
        if self.armed:
            self.armed = False
            raise SoftTimeLimitExceeded(soft_message(self.limit_s, time.monotonic() - self.started))

    def arm(self, limit_s: float, started: float) -> None:
        self.limit_s, self.started, self.armed = limit_s, started, True
        signal.setitimer(signal.ITIMER_REAL, max(started + limit_s - time.monotonic(), 0.001))

    def disarm(self) -> None:
        self.armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)


# -- sync bodies in other threads ------------------------------------------------------


def soft_exception_type(message: str) -> type[SoftTimeLimitExceeded]:
    """A SoftTimeLimitExceeded whose instances made with no arguments say ``message``.

    PyThreadState_SetAsyncExc takes a class (it is instantiated with no arguments
    where it is raised), so the message travels in the class.
    """

    def __init__(self: SoftTimeLimitExceeded, *args: Any) -> None:
        SoftTimeLimitExceeded.__init__(self, *(args or (message,)))

    return type("SoftTimeLimitExceeded", (SoftTimeLimitExceeded,), {
        "__init__": __init__, "__qualname__": "SoftTimeLimitExceeded",
        "__module__": SoftTimeLimitExceeded.__module__})


def interrupt_thread(thread_id: int, exc_type: type[BaseException] | None) -> bool:
    """Raise ``exc_type`` in thread ``thread_id`` at its next bytecode (None: withdraw a pending one)."""
    count = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type is not None else None)
    return bool(count == 1)


# -- the watchdog -------------------------------------------------------------------------


class Watchdog:
    """One daemon thread calling ``fire(now)`` of each watched run when its ``due`` time comes.

    A run is watched until ``fire`` returns None (nothing more is due) or ``forget``;
    ``fire`` returns the next time it is due otherwise. At most one entry per
    running job, so a scan of them all on each wake stays cheap.
    """

    def __init__(self, name: str = "omniq-time-limits") -> None:
        self._cond = threading.Condition()
        self._due: dict[int, tuple[float, Callable[[float], float | None]]] = {}
        self._next = float("inf")
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def watch(self, key: int, due: float, fire: Callable[[float], float | None]) -> None:
        with self._cond:
            self._due[key] = (due, fire)
            if due < self._next:
                self._next = due
                self._cond.notify()

    def forget(self, key: int) -> None:
        with self._cond:
            self._due.pop(key, None)  # its deadline may stay _next: one wake for nothing

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    now = time.monotonic()
                    due = [(key, fire) for key, (at, fire) in self._due.items() if at <= now]
                    if due:
                        for key, _ in due:
                            del self._due[key]
                        break
                    self._next = min((at for at, _ in self._due.values()), default=float("inf"))
                    self._cond.wait(None if self._next == float("inf") else self._next - now)
            for key, fire in due:
                try:
                    again = fire(now)
                except BaseException:  # a bug here must not stop every other limit
                    log.exception("a time limit callback failed")
                    continue
                if again is not None:
                    self.watch(key, again, fire)
