"""The handle returned by ``task.delay()``: the job's id and queue, its state and result.

A result is stored by the worker's ack (``{Q}:result:<id>``, see docs/tasks.md
"Results"); ``get()`` waits for it by blocking on ``{Q}:done:<id>``, which our acks
(a success, or a failure for good) push to while someone watches the job, and
checks again every RECHECK_S for what none of them announces (a reaped lease, an
official SDK's ack_fail).
"""

from __future__ import annotations

import enum
import time
import typing
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import msgspec

from .errors import (PayloadError, ResultEncodeError, ResultMissingError, ResultTimeoutError, ResultTooLargeError,
                     TaskFailed)
from .protocol.models import JobInfo

if TYPE_CHECKING:
    from .protocol.client import OmniqClient, ResultState
    from .task import Task

# How long get() blocks on one notification wait before it reads the job again:
# a job failed by the reaper or another SDK (no ack of ours announces it) is seen
# within this time.
RECHECK_S = 0.5
# A watch mark lives this much past the wait it covers (clock estimate, slow replies).
_WATCH_MARGIN_MS = 5_000
# What the worker stores instead of a value it cannot keep (JSON never starts with
# "!"): b"!too-large:<bytes>:<limit>" for one over the payload limit,
# b"!unencodable:<Type: reason>" for one msgspec cannot encode.
TOO_LARGE_MARK = b"!too-large:"
UNENCODABLE_MARK = b"!unencodable:"


def result_json(data: bytes) -> bytes:
    """A kept result's JSON; b"" for a mark (a value the worker could not keep)."""
    return b"" if data.startswith(b"!") else data


class JobStatus(str, enum.Enum):
    """Where a job stands. The values are the protocol's ``state`` words, so
    ``handle.status() == "wait"`` holds for ``JobStatus.WAITING``."""

    WAITING = "wait"
    DELAYED = "delayed"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    # A state word this version does not know (another producer's, or a newer
    # protocol), or a job that is gone with no stored result.
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def _missing_(cls, value: object) -> JobStatus:
        return cls.UNKNOWN


@lru_cache(maxsize=1024)
def result_decoder(task: Task[Any, Any]) -> tuple[Any, msgspec.json.Decoder[Any]]:
    """The task's return annotation (the awaited type for ``async def``) and its decoder."""
    try:
        annotation = typing.get_type_hints(task.fn).get("return", Any)
    except Exception:  # an unresolvable forward reference: plain JSON
        annotation = Any
    if annotation is None:
        annotation = Any
    return annotation, msgspec.json.Decoder(annotation)


def decode_result(task: Task[Any, Any] | None, data: bytes, job_id: str) -> Any:
    """A kept return value decoded to ``task``'s return annotation (plain JSON without
    a task); PayloadError when it does not fit the annotation."""
    if task is None:
        return msgspec.json.decode(data)
    annotation, decoder = result_decoder(task)
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise PayloadError(f"the result of job {job_id} does not fit {task.name}'s return "
                           f"annotation {annotation!r}: {exc}") from None


def result_value(task: Task[Any, Any] | None, data: bytes) -> Any:
    """A kept return value decoded to the task's return annotation when it fits (a
    Struct comes back a Struct), else as plain JSON; ``b""`` is None."""
    if not data:
        return None
    try:
        return decode_result(task, data, "")
    except PayloadError:  # a value that does not fit its annotation
        return msgspec.json.decode(data)


class JobHandle:
    """A published job. ``existed`` is True when the id was already queued.

    Built by ``task.delay()`` (it knows its task, so ``get()`` decodes the result to
    the function's return annotation) or ``app.handle(queue, job_id, task=None)``.
    """

    __slots__ = ("id", "queue", "existed", "task", "_client")

    def __init__(self, client: OmniqClient, queue: str, job_id: str, existed: bool = False,
                 task: Task[Any, Any] | None = None) -> None:
        self._client = client
        self.id = job_id
        self.queue = queue
        self.existed = existed
        self.task = task

    def info(self) -> JobInfo | None:
        """The job hash now; None once it is gone (removed, or trimmed from completed)."""
        return self._client.job(self.queue, self.id)

    def status(self) -> JobStatus:
        """The job's :class:`JobStatus` now. A job trimmed from the completed lane whose
        result is still stored is COMPLETED; a job gone without a result is UNKNOWN."""
        return self._status(self._client.result_state(self.queue, self.id))

    @staticmethod
    def _status(state: ResultState) -> JobStatus:
        if state.state:
            return JobStatus(state.state)
        return JobStatus.COMPLETED if state.result is not None else JobStatus.UNKNOWN

    def ready(self) -> bool:
        """True once the job completed or failed for good (``get()`` would not wait)."""
        return self.status() in (JobStatus.COMPLETED, JobStatus.FAILED)

    def forget(self) -> bool:
        """Delete the stored result now (before its TTL); True when there was one."""
        return self._client.forget_result(self.queue, self.id)

    def get(self, timeout: float | None = None) -> Any:
        """The job's return value, waiting up to ``timeout`` seconds (None: forever).

        Decoded to the task's return annotation when the handle knows its task, else
        plain JSON values. None when the task returned None, stores no results
        (``store_result=False``), or the result expired or was forgotten while the
        job hash is still there.

        Raises :class:`TaskFailed` (the remote error's type, message and traceback)
        when the job failed for good, :class:`ResultTimeoutError` when ``timeout``
        passes first, :class:`ResultMissingError` when neither the job nor a result
        exists, :class:`ResultTooLargeError` when the value was over the payload limit,
        :class:`ResultEncodeError` when it could not be encoded as JSON.
        """
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be seconds >= 0 or None, got {timeout!r}")
        client = self._client
        deadline = None if timeout is None else time.monotonic() + timeout
        watched = False
        try:
            while True:
                wait = RECHECK_S if deadline is None else max(0.0, min(RECHECK_S, deadline - time.monotonic()))
                until = client.server_now_ms() + int(wait * 1000) + _WATCH_MARGIN_MS
                state = client.result_state(self.queue, self.id, watch_until_ms=until)
                watched = True
                settled, value = self._settled(state)
                if settled:
                    return value
                if deadline is not None and time.monotonic() >= deadline:
                    raise ResultTimeoutError(
                        f"job {self.id} (queue {self.queue}) did not finish within {timeout} s "
                        f"(it is {self._status(state)})")
                client.wait_done(self.queue, self.id, wait)
        finally:
            if watched:
                client.unwatch(self.queue, self.id)

    def _settled(self, state: ResultState) -> tuple[bool, Any]:
        if state.result is not None:
            return True, self._decode(state.result)
        if state.state == "completed":
            return True, None
        if state.state == "failed":
            raise TaskFailed(self.id, self.queue, self.task.name if self.task else "", state.last_error)
        if not state.state:
            raise ResultMissingError(
                f"job {self.id} (queue {self.queue}) is gone and has no stored result: removed, "
                f"trimmed from the completed lane without a result, or its result expired or was forgotten")
        return False, None

    def _decode(self, data: bytes) -> Any:
        if data.startswith(TOO_LARGE_MARK):
            size, _, limit = data[len(TOO_LARGE_MARK):].decode().partition(":")
            raise ResultTooLargeError(
                f"job {self.id} (queue {self.queue}) returned {size} bytes of JSON, over the "
                f"payload limit of {limit}; the value was not stored")
        if data.startswith(UNENCODABLE_MARK):
            raise ResultEncodeError(
                f"job {self.id} (queue {self.queue}) returned a value that cannot be encoded as "
                f"JSON ({data[len(UNENCODABLE_MARK):].decode(errors='replace')}); the value was not stored")
        return decode_result(self.task, data, self.id)

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r}, queue={self.queue!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobHandle) and (other.id, other.queue) == (self.id, self.queue)

    def __hash__(self) -> int:
        return hash((self.id, self.queue))
