"""Middleware: hooks around a job's life, registered on the App (see docs/middleware.md).

Subclass ``Middleware`` and override the hooks you need; the others stay no-ops
and cost nothing: ``Hooks`` keeps, per hook, only the middleware that override
it, so a worker without middleware tests one empty tuple per job and per ack
batch. Every call is guarded: an exception in a hook is logged with the hook's
name and the job goes on as if the hook had done nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Sequence

import msgspec

from .outcome import Outcome

if TYPE_CHECKING:
    from .app import App
    from .protocol.client import JobSpec
    from .protocol.models import ReservedJob
    from .task import Task
    from .worker.loop import Worker

log = logging.getLogger("omniq_tasks.middleware")


class AckResult(msgspec.Struct, frozen=True):
    """What became of a finished job's ack, as Redis answered it.

    ``status``: ``completed``; ``retry`` (runs again at ``due_ms``, epoch ms);
    ``failed`` (for good); ``lost`` (not acked: the lease had ended or another
    worker owns the job, ``reason`` says which); ``error`` (the ack call itself
    failed, ``reason`` says why: the job runs again after its lease).
    """

    status: Literal["completed", "retry", "failed", "lost", "error"]
    due_ms: Optional[int] = None
    reason: str = ""


class Middleware:
    """Hooks around a job's life; every method is a no-op until overridden.

    Threads: ``before_publish`` runs in the publishing thread; ``before_run`` and
    ``after_run`` where the job runs (a pool thread, the event loop thread for
    ``async def`` tasks, or the child process with ``--pool processes``);
    ``after_ack``, ``on_worker_start`` and ``on_worker_stop`` in the worker's loop
    thread. Hooks must be quick: the loop acks every job, so a slow ``after_ack``
    slows every job of the worker.
    """

    def before_publish(self, app: App, task: Task[Any, Any], spec: JobSpec) -> None:
        """A job of ``task`` is about to be published (``spec`` is checked and encoded)."""

    def before_run(self, job: ReservedJob) -> None:
        """A leased job is about to be decoded and run."""

    def after_run(self, job: ReservedJob, outcome: Outcome) -> Optional[Outcome]:
        """The job ended so; return an Outcome to replace it (the next hook and the ack get that one)."""
        return None

    def after_ack(self, job: ReservedJob, outcome: Outcome, result: AckResult) -> None:
        """Redis answered the job's ack (or the job was settled without one: ``result`` says)."""

    def on_worker_start(self, worker: Worker) -> None:
        """The worker starts its loop (before its first lease)."""

    def on_worker_stop(self, worker: Worker) -> None:
        """The worker has stopped (its pool is stopped; whatever finished is acked)."""


_HOOK_NAMES = ("before_publish", "before_run", "after_run", "after_ack", "on_worker_start", "on_worker_stop")
_FAILED = object()


def _overriding(middleware: Sequence[Middleware], name: str) -> tuple[Callable[..., Any], ...]:
    """The bound ``name`` of each middleware that overrides it, in registration order."""
    base = getattr(Middleware, name)
    return tuple(getattr(mw, name) for mw in middleware if getattr(type(mw), name, base) is not base)


def _call(hook: Callable[..., Any], *args: Any) -> Any:
    """Call one hook; an exception is logged with the hook's name and gives _FAILED."""
    try:
        return hook(*args)
    except BaseException:  # SystemExit in a hook must not end a runner thread either
        _log_failed(hook)
        return _FAILED


def _log_failed(hook: Callable[..., Any]) -> None:
    try:
        owner = type(getattr(hook, "__self__", hook)).__name__
        log.exception("middleware %s.%s raised; ignored (the job goes on)", owner, getattr(hook, "__name__", "?"))
    except BaseException:  # logging failed (MemoryError): still never raise
        pass


class Hooks:
    """The hooks of a list of middleware, each a tuple of only the overriding bound methods.

    Callers test the tuple before calling (``if hooks.after_run:``) so that no
    middleware costs no call.
    """

    __slots__ = _HOOK_NAMES + ("middleware",)

    def __init__(self, middleware: Sequence[Middleware] = ()) -> None:
        self.middleware = tuple(middleware)
        self.before_publish = _overriding(self.middleware, "before_publish")
        self.before_run = _overriding(self.middleware, "before_run")
        self.after_run = _overriding(self.middleware, "after_run")
        self.after_ack = _overriding(self.middleware, "after_ack")
        self.on_worker_start = _overriding(self.middleware, "on_worker_start")
        self.on_worker_stop = _overriding(self.middleware, "on_worker_stop")

    def run_before_run(self, job: ReservedJob) -> None:
        for hook in self.before_run:
            _call(hook, job)

    def run_after_run(self, job: ReservedJob, outcome: Outcome) -> Outcome:
        """The outcome after every after_run hook (each may replace it); never raises."""
        for hook in self.after_run:
            replaced = _call(hook, job, outcome)
            if isinstance(replaced, Outcome):
                outcome = replaced
            elif replaced is not None and replaced is not _FAILED:
                log.error("middleware %s.after_run returned a %s, not an Outcome or None; ignored",
                          type(hook.__self__).__name__, type(replaced).__name__)  # type: ignore[attr-defined]
        return outcome

    def run_after_ack(self, job: ReservedJob, outcome: Outcome, result: AckResult) -> None:
        for hook in self.after_ack:
            _call(hook, job, outcome, result)

    def run_worker(self, hooks: tuple[Callable[..., Any], ...], worker: Worker) -> None:
        """on_worker_start or on_worker_stop, each guarded."""
        for hook in hooks:
            _call(hook, worker)


def run_before_publish(app: App, task: Task[Any, Any], spec: JobSpec) -> None:
    """Each before_publish of the app's middleware; an exception is logged, the publish goes on."""
    for hook in _overriding(app.middleware, "before_publish"):
        try:
            hook(app, task, spec)
        except Exception:  # not BaseException: Ctrl-C while publishing must still stop the caller
            _log_failed(hook)
