"""Eager mode: ``.delay()``, ``.apply_async()`` and ``.map()`` run the task at once, here.

For unit tests of code that publishes tasks (docs/testing.md): with
``app.eager = True`` (or ``App(..., eager=True)``, or ``with app.eager_mode():``)
a publish checks and encodes the call exactly as a real one, decodes that JSON
back as a worker would (so an argument the worker would refuse or receive
changed fails here too), runs the body once in this thread (``async def``
tasks on a fresh event loop) and returns an :class:`EagerHandle` holding the
outcome. Nothing touches Redis, unless the task itself does (a ``JobContext``
parameter gets a context with the call's job id and the App's client).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Sequence

import msgspec

from .context import JobContext
from .envelope import read_envelope
from .errors import PayloadError, TaskArgumentError, TaskFailed
from .results import JobHandle, JobStatus, decode_result
from .signature import local_ms, build_job, step_job_id
from .workflow_handles import ChainHandle, FanoutHandle

if TYPE_CHECKING:
    from .app import App
    from .signature import Chain, Signature
    from .protocol.models import JobInfo
    from .task import Task

log = logging.getLogger("omniq_tasks.eager")


class EagerHandle(JobHandle):
    """What an eager publish returns: a ``JobHandle`` whose reading methods are answered
    from the run that already happened (``info()`` is None: there is no job hash)."""

    __slots__ = ("_ok", "_value", "_error", "_exception", "result_json")

    def __init__(self, task: Task[Any, Any], queue: str, job_id: str, *, ok: bool, value: Any = None,
                 error: str = "", exception: BaseException | None = None, result_json: bytes = b"") -> None:
        # No super().__init__: no client (making one may start an embedded:// server).
        self.id = job_id
        self.queue = queue
        self.existed = False
        self.task = task
        self._ok = ok
        self._value = value
        self._error = error
        self._exception = exception
        self.result_json = result_json  # what a worker would keep (b"": None, or not encodable)

    def get(self, timeout: float | None = None) -> Any:
        """The return value, round-tripped through JSON and decoded as ``JobHandle.get()``
        decodes a stored one; raises :class:`~omniq_tasks.errors.TaskFailed` if the body
        raised (``__cause__`` is that exception), PayloadError if the value does not fit
        the return annotation. ``timeout`` is accepted and unused."""
        if not self._ok:
            raise TaskFailed(self.id, self.queue, self.task.name if self.task else "", self._error) \
                from self._exception
        if isinstance(self._exception, PayloadError):
            raise self._exception
        return self._value

    def status(self) -> JobStatus:
        return JobStatus.COMPLETED if self._ok else JobStatus.FAILED

    def ready(self) -> bool:
        """Always True: the run is over."""
        return True

    def successful(self) -> bool:
        return self._ok

    def failed(self) -> bool:
        return not self._ok

    def info(self) -> JobInfo | None:
        """None: an eager job has no job hash."""
        return None

    def forget(self) -> bool:
        """False: nothing is kept in Redis."""
        return False

    def __repr__(self) -> str:
        return f"EagerHandle(id={self.id!r}, queue={self.queue!r}, status={'completed' if self._ok else 'failed'!r})"


def _exception_text(exc: BaseException) -> str:
    try:
        message = str(exc)
    except Exception:
        message = "<exception str() failed>"
    return f"{type(exc).__qualname__}: {message}".split("\n", 1)[0]


def run_eager(task: Task[Any, Any], queue: str, job_id: str, payload: bytes,
              given: dict[str, Any] | None = None) -> EagerHandle:
    """Decode ``payload`` as a worker would, run ``task``'s body once here, keep the outcome.

    Raises TaskArgumentError when the payload does not decode back to the call
    (what a worker would fail as "invalid arguments").
    """
    envelope = read_envelope(payload)
    if envelope is None:  # a raw task: its one parameter gets the payload
        assert task.raw_decoder is not None
        kwargs: dict[str, Any] = {task.codec.params[0]: task.raw_decoder.decode(payload)}
    else:
        decoded = task.codec.decode_parts(bytes(envelope.args), bytes(envelope.kwargs))
        kwargs = task.codec.call_kwargs(decoded)
    if given:  # what a worker puts in itself (a fan-out callback's children outcomes)
        kwargs.update(given)
    if task.codec.context_param is not None:
        kwargs[task.codec.context_param] = JobContext(
            task.app.client, queue=queue, job_id=job_id, attempt=1, max_attempts=task.max_attempts,
            gid="", lease_token="", lock_until_ms=0, payload_raw=payload.decode("utf-8", "replace"))
    try:
        if task.is_async:
            value = asyncio.run(task.fn(**kwargs))
        else:
            value = task.fn(**kwargs)
    except Exception as exc:
        return EagerHandle(task, queue, job_id, ok=False, error=_exception_text(exc), exception=exc)
    try:  # what a worker keeps is JSON: the caller gets what JSON gives back
        data = msgspec.json.encode(value) if value is not None else b""
    except Exception as exc:  # as in a worker: the run succeeded, its result is not kept
        log.warning("task %s returned a %s that cannot be encoded as JSON; result not kept: %s",
                    task.name, type(value).__name__, _exception_text(exc))
        data = b""
    if not data:
        return EagerHandle(task, queue, job_id, ok=True)
    try:
        return EagerHandle(task, queue, job_id, ok=True, value=decode_result(task, data, job_id), result_json=data)
    except PayloadError as exc:  # what JobHandle.get() would raise
        return EagerHandle(task, queue, job_id, ok=True, exception=exc, result_json=data)


class _EagerWorkflow:
    """A workflow handle answered from an eager run's EagerHandle (its last step, or the callback)."""

    _outcome: EagerHandle

    def get(self, timeout: float | None = None) -> Any:
        return self._outcome.get(timeout)

    def status(self) -> JobStatus:
        return self._outcome.status()

    def ready(self) -> bool:
        return True


class EagerChainHandle(_EagerWorkflow, ChainHandle):
    """``chain(...).delay()`` in eager mode: every step ran already."""

    def __init__(self, chain_id: str, steps: list[JobHandle], outcome: EagerHandle) -> None:
        self.id = chain_id
        self.steps = steps
        self._outcome = outcome

    def failed_step(self) -> JobHandle | None:
        return None if self._outcome.successful() else self._outcome


class EagerFanoutHandle(_EagerWorkflow, FanoutHandle):
    """``app.fanout(...)`` in eager mode: the children and the callback ran already."""

    def __init__(self, app: App, key: str, results: list[Any], outcome: EagerHandle) -> None:
        self._app = app
        self.key = key
        self._results = results
        self._outcome = outcome

    def results(self) -> list[Any]:
        return list(self._results)


def run_eager_chain(chain: Chain[Any], chain_id: str) -> EagerChainHandle:
    """Run a chain's steps here, in order, each given the previous value; the handle
    answers as the last step, or as the step that failed (the chain stops there)."""
    steps: list[JobHandle] = []
    handle: EagerHandle | None = None
    for index, step in enumerate(chain.steps):
        previous = (handle.result_json or b"null") if handle is not None else None
        try:
            job = build_job(step.spec, step.task, previous, step_job_id(chain_id, index), None, local_ms)
        except (TaskArgumentError, ValueError) as exc:
            if handle is None:  # the first step's arguments were checked when it was made
                raise
            # as a worker does it: the step before fails for good, saying why
            before = chain.steps[index - 1]
            handle = EagerHandle(before.task, before.spec.queue, handle.id, ok=False, exception=exc,
                                 error=f"chain {chain_id}: step {index} ({step.spec.task}) refuses this "
                                       f"step's result: {exc}")
            steps[-1] = handle
            break
        handle = run_eager(step.task, step.spec.queue, job.job_id, job.payload)
        steps.append(handle)
        if not handle.successful():
            break
    assert handle is not None
    return EagerChainHandle(chain_id, steps, handle)


def run_eager_fanout(app: App, key: str, children: Sequence[Signature[Any]], then: Signature[Any] | None,
                     on_error: Signature[Any] | None) -> EagerFanoutHandle:
    """Run a fan-out here: each child in order, then the callback with their outcomes.

    The handle answers as the callback's run, or (no callback) as a completed run whose
    value is the list of ChildResult."""
    from .fanout import CALLBACK_STEP, ChildResult

    results: list[ChildResult[Any]] = []
    for index, child in enumerate(children):
        job_id = step_job_id(key, index)
        job = build_job(child.spec, child.task, None, job_id, None, local_ms)
        handle = run_eager(child.task, child.spec.queue, job_id, job.payload)
        error = "" if handle.successful() else handle._error
        results.append(ChildResult(index, job_id, child.task.name, handle.successful(),
                                   handle._value if handle.successful() else None, error))
    callback = on_error if on_error is not None and not all(r.ok for r in results) else then
    job_id = step_job_id(key, CALLBACK_STEP)
    if callback is None:
        done = EagerHandle(None, "", job_id, ok=True, value=results)  # type: ignore[arg-type]
        return EagerFanoutHandle(app, key, results, done)
    job = build_job(callback.spec, callback.task, b"[]" if callback.spec.first else None, job_id, None, local_ms)
    given = {callback.spec.first: results} if callback.spec.first else None
    return EagerFanoutHandle(app, key, results,
                             run_eager(callback.task, callback.spec.queue, job_id, job.payload, given))
