"""Run one reserved job without Redis: decode its payload, call the task, classify.

Outcomes are plain data the worker turns into acks: ``ok`` -> ack_success;
otherwise ack_fail with ``error`` as the text, and ``final`` when retrying can
never help (unknown task, payload that does not fit the annotations), so the
job fails at once instead of burning its attempts.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any, Callable

import msgspec

from .arguments import TaskArgumentError
from .envelope import read_envelope

if TYPE_CHECKING:
    from .context import JobContext
    from .registry import Registry
    from .task import Task

MAX_ERROR_CHARS = 4096  # ack_fail keeps 4096 bytes of last_error: we send at most that many
TRACEBACK_FRAMES = 5


def clip_error(text: str) -> str:
    """At most MAX_ERROR_CHARS UTF-8 bytes, cut on a character boundary.

    The script cuts last_error at 4096 bytes, which could split a character and
    leave invalid UTF-8 in the job hash; lone surrogates (unencodable) become "?".
    """
    return text.encode("utf-8", "replace")[:MAX_ERROR_CHARS].decode("utf-8", "ignore")


class Outcome(msgspec.Struct, frozen=True):
    """How a run ended, with the task name ("" when no task was found)."""

    ok: bool
    task: str = ""
    error: str = ""
    final: bool = False


class PreparedCall:
    """A decoded job, ready to call: the task and its keyword arguments."""

    __slots__ = ("task", "kwargs")

    def __init__(self, task: Task[Any, Any], kwargs: dict[str, Any]) -> None:
        self.task = task
        self.kwargs = kwargs


def prepare(registry: Registry, queue: str, payload: str | bytes,
            make_context: Callable[[], JobContext]) -> PreparedCall | Outcome:
    """Find the task for a payload and decode its arguments, or say why it cannot run."""
    envelope = read_envelope(payload)
    if envelope is None:
        task = registry.raw_handler(queue)
        if task is None or task.raw_decoder is None:
            return Outcome(False, "", clip_error(
                f"payload is not a task envelope and queue {queue!r} has no raw handler "
                f"(declare one with @app.task(queue={queue!r}, raw=True))"), final=True)
        try:
            value = task.raw_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            return Outcome(False, task.name, clip_error(f"raw task {task.name}: payload does not fit: {exc}"),
                           final=True)
        kwargs = {task.codec.params[0]: value}
    else:
        found = registry.get(envelope.task)
        if found is None:
            known = ", ".join(registry.names()) or "none"
            return Outcome(False, envelope.task, clip_error(
                f"unknown task {envelope.task!r}: not registered in this worker "
                f"(known tasks: {known})"), final=True)
        task = found
        try:
            decoded = task.codec.decode_parts(bytes(envelope.args), bytes(envelope.kwargs))
        except TaskArgumentError as exc:
            return Outcome(False, task.name, clip_error(f"invalid arguments: {exc}"), final=True)
        kwargs = task.codec.call_kwargs(decoded)
    if task.codec.context_param is not None:
        kwargs[task.codec.context_param] = make_context()
    return PreparedCall(task, kwargs)


def describe_exception(exc: BaseException) -> str:
    """Exception type, message and the last frames of its traceback, at most 4096 bytes."""
    frames = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-TRACEBACK_FRAMES)
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not lose the failure
        message = "<exception str() failed>"
    text = f"{type(exc).__qualname__}: {message}\n" + "".join(frames[1:-1])
    return clip_error(text)


def call(prepared: PreparedCall) -> Outcome:
    """Run a prepared synchronous task."""
    try:
        prepared.task.fn(**prepared.kwargs)
    except BaseException as exc:  # SystemExit too: uncaught, it would end the runner thread unacked
        return Outcome(False, prepared.task.name, describe_exception(exc))
    return Outcome(True, prepared.task.name)


async def call_async(prepared: PreparedCall) -> Outcome:
    """Run a prepared ``async def`` task."""
    try:
        await prepared.task.fn(**prepared.kwargs)
    except (Exception, SystemExit, KeyboardInterrupt) as exc:  # those two would stop the loop
        return Outcome(False, prepared.task.name, describe_exception(exc))
    return Outcome(True, prepared.task.name)
