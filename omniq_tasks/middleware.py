"""Middleware: hooks around a job's life, registered on the App (see docs/middleware.md).

Subclass ``Middleware`` and override the hooks you need; the others stay no-ops
and cost nothing: ``Hooks`` keeps, per hook, only the middleware that override
it, so a worker without middleware tests one empty tuple per job and per ack
batch. Every call is guarded: an exception in a hook is logged with the hook's
name and the job goes on as if the hook had done nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
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


# -- the built-in middleware: each task's on_success / on_failure / on_retry ------------------


class JobView(msgspec.Struct, frozen=True):
    """The job a task callback is called for (read-only).

    ``attempt`` is the run that just ended (1 for the first); ``args`` and
    ``kwargs`` are the call's arguments as JSON decodes them (our publisher sends
    every argument by name, in ``kwargs``; a raw task's payload is ``args[0]``).
    """

    id: str
    queue: str
    task: str
    attempt: int
    max_attempts: int
    gid: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def job_view(job: ReservedJob, task: str) -> JobView:
    """The JobView of a leased job (arguments left empty when its payload does not decode)."""
    from .envelope import read_envelope

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    try:
        envelope = read_envelope(job.payload)
        if envelope is None:
            args = (msgspec.json.decode(job.payload),)
        else:
            args = tuple(msgspec.json.decode(envelope.args)) if envelope.args else ()
            kwargs = dict(msgspec.json.decode(envelope.kwargs)) if envelope.kwargs else {}
    except Exception:
        pass
    return JobView(job.job_id, job.queue, task, job.attempt, job.max_attempts, job.gid, args, kwargs)


# The longest on_worker_stop waits for callbacks still queued.
CALLBACK_FLUSH_S = 10.0
_FLUSH = object()


class TaskCallbacks(Middleware):
    """Calls a task's ``on_success(job, result)``, ``on_retry(job, error)`` and
    ``on_failure(job, error)`` (from its Policy) once the job's ack says which happened.

    ``job`` is a :class:`JobView`; ``result`` the return value (decoded to the
    task's return annotation when it fits, else plain JSON; None when it returned
    None or its value could not be kept); ``error`` the failure's text, as kept in
    the job's ``last_error`` (``Type: message`` then the last traceback frames).
    A job whose ack was lost or failed calls nothing (it runs again).

    The App adds one when it registers a task with a callback. Callbacks run in
    one thread of their own, in ack order, so a slow callback never slows the
    worker's loop; ``on_worker_stop`` waits up to CALLBACK_FLUSH_S for those still
    queued. A callback that raises is logged (``omniq_tasks.middleware``) and
    changes nothing: the job is acked already.
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def after_ack(self, job: ReservedJob, outcome: Outcome, result: AckResult) -> None:
        if not outcome.task or result.status in ("lost", "error"):
            return
        task = self.app.registry.get(outcome.task)
        if task is None:
            return
        policy = task.policy
        callback = (policy.on_success if result.status == "completed"
                    else policy.on_retry if result.status == "retry" else policy.on_failure)
        if callback is not None:
            self._start()
            self._inbox.put((callback, task, job, outcome, result))

    def on_worker_stop(self, worker: Worker) -> None:
        if not self.flush(CALLBACK_FLUSH_S):
            log.warning("task callbacks still running after %.0f s; not waiting for them", CALLBACK_FLUSH_S)

    def flush(self, timeout: float) -> bool:
        """Wait until every callback queued so far has run; False if ``timeout`` (seconds) ran out."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._inbox.put((_FLUSH, done))
        return done.wait(timeout)

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="omniq-callbacks", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._inbox.get()
            if item[0] is _FLUSH:
                item[1].set()
                continue
            callback, task, job, outcome, result = item
            try:
                view = job_view(job, task.name)
                if result.status == "completed":
                    from .results import result_value  # (tasks layer, imported late: no cycle)

                    callback(view, result_value(task, outcome.result))
                else:
                    callback(view, outcome.error)
            except BaseException:
                try:
                    log.exception("task %s: callback %s for job=%s raised; ignored (the job is acked)",
                                  task.name, getattr(callback, "__qualname__", repr(callback)), job.job_id)
                except BaseException:
                    pass


def add_task_callbacks(app: App, task: Task[Any, Any]) -> None:
    """Give ``app`` its TaskCallbacks middleware when ``task`` has a callback (once per app)."""
    policy = task.policy
    if (policy.on_success or policy.on_failure or policy.on_retry) and not any(
            isinstance(mw, TaskCallbacks) for mw in app.middleware):
        app.middleware.append(TaskCallbacks(app))
