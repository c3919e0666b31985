"""Every public exception of omniq-tasks, under one root: :class:`OmniqError`.

Protocol errors carry the contract's reason word unchanged in ``.reason`` and
each reason has its own subclass, so callers can catch exactly what they expect::

    try:
        client.ack_success("emails", job.job_id, job.lease_token)
    except LeaseLostError:
        ...  # TOKEN_MISMATCH or NOT_ACTIVE: someone else owns the job now
"""

from __future__ import annotations

import datetime
from typing import Any

import redis.exceptions


class OmniqError(Exception):
    """Raised for anything omniq-tasks refuses or cannot do; the root of all others."""


class InvalidNameError(OmniqError, ValueError):
    """Raised when a queue name, group id or child-counter key breaks the naming rules."""


class PayloadError(OmniqError, TypeError):
    """Raised when a payload is not a JSON object or array, or cannot be encoded."""


class PayloadTooLargeError(OmniqError, ValueError):
    """Raised when an encoded payload is larger than the configured limit."""


class InvalidOptionError(OmniqError, TypeError, ValueError):
    """Raised when a publish option (countdown, eta, ...) has the wrong type or is out of range.

    Both a TypeError and a ValueError, the two errors such checks raised before.
    """


class TaskArgumentError(OmniqError, TypeError):
    """Raised when a task's arguments do not fit its signature or annotations."""


class TaskDefinitionError(OmniqError, TypeError):
    """Raised when a function cannot be a task (e.g. *args, or an unencodable default)."""


class DuplicateTaskError(OmniqError, ValueError):
    """Raised when a task name, or a queue's raw handler, is registered twice."""


class Retry(OmniqError):
    """Raised by a task to run again later: ``raise Retry(countdown=30)``.

    ``countdown`` (seconds from now) or ``eta`` (an aware datetime, or epoch seconds)
    says when; with neither, the task's backoff decides. The run counts as an attempt:
    with none left the job fails. ``exc``, the exception that made the task retry, is
    what ``last_error`` shows. Retry always retries (``autoretry_for`` and
    ``dont_retry_for`` do not apply to it).
    """

    def __init__(self, countdown: float | None = None, eta: Any = None, exc: BaseException | None = None) -> None:
        if countdown is not None and eta is not None:
            raise InvalidOptionError("Retry takes countdown or eta, not both")
        if countdown is not None and (isinstance(countdown, bool) or not isinstance(countdown, (int, float))
                                      or not 0 <= countdown < 1e10):  # NaN fails too
            raise InvalidOptionError(f"Retry countdown must be seconds >= 0, got {countdown!r}")
        if eta is not None:
            if isinstance(eta, datetime.datetime):
                if eta.tzinfo is None:
                    raise InvalidOptionError("Retry eta must be an aware datetime (with tzinfo)")
            elif isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta < 253_402_300_800:
                raise InvalidOptionError(f"Retry eta must be an aware datetime or epoch seconds, got {eta!r}")
        self.countdown = countdown
        self.eta = eta
        self.exc = exc
        when = (f" in {countdown} s" if countdown is not None
                else f" at {eta.isoformat() if isinstance(eta, datetime.datetime) else eta}" if eta is not None
                else "")
        super().__init__(f"retry{when}" + (f": {type(exc).__qualname__}: {exc}" if exc is not None else ""))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.countdown, self.eta, self.exc))


class PermanentError(OmniqError):
    """Raised by a task whose job can never succeed: it fails at once, with no retry.

    Any exception class can say the same of itself with a class attribute
    ``omniq_permanent = True`` (this class has it).
    """

    omniq_permanent = True


class Reject(PermanentError):
    """Celery's name for refusing a job: a :class:`PermanentError` (fails at once, no retry)."""


class BackendError(OmniqError):
    """Raised when Redis itself fails a command (unreachable, full, or another server error).

    ``.url`` names the server without its password.
    """

    def __init__(self, message: str, *, url: str = "") -> None:
        self.url = url
        super().__init__(message)


class OmniqConnectionError(BackendError, redis.exceptions.ConnectionError, ConnectionError):
    """Raised when Redis cannot be reached or the connection breaks.

    Also a redis-py ``ConnectionError`` and the builtin ``ConnectionError``, so
    code that already catches either keeps working.
    """


class OmniqTimeoutError(OmniqConnectionError, redis.exceptions.TimeoutError, TimeoutError):
    """Raised when Redis does not answer in time (also redis-py's and the builtin TimeoutError)."""


class EmbeddedServerError(OmniqConnectionError):
    """Raised when an ``embedded://`` server cannot be found, started or reached (docs/deployment.md)."""


class RedisFullError(BackendError, redis.exceptions.ResponseError):
    """Raised when Redis refuses a write because it reached ``maxmemory`` (OOM); nothing was written."""


class RedisCommandError(BackendError, redis.exceptions.ResponseError):
    """Raised when Redis answers a command with an error that is not a protocol reply (e.g. READONLY)."""


class ProtocolError(OmniqError):
    """Raised when a script answers ``{"ERR", REASON}``; ``.reason`` is that word."""

    reason: str = "UNKNOWN"

    def __init__(self, reason: str | None = None, detail: str = "", *, queue: str = "", job_id: str = "") -> None:
        if reason is not None:
            self.reason = reason
        self.detail = detail
        self.queue = queue
        self.job_id = job_id
        where = " ".join(part for part in (f"queue={queue}" if queue else "", f"job={job_id}" if job_id else "") if part)
        text = self.reason + (f" {detail}" if detail else "") + (f" ({where})" if where else "")
        super().__init__(text)


class UnexpectedReplyError(ProtocolError):
    """Raised when a script answers something the protocol does not describe."""

    reason = "UNEXPECTED_REPLY"


class LeaseLostError(ProtocolError):
    """Raised when a heartbeat or ack finds the lease gone (base of TOKEN_MISMATCH, NOT_ACTIVE)."""


class TokenRequiredError(ProtocolError):
    """Raised when a heartbeat or ack is sent without a lease token."""

    reason = "TOKEN_REQUIRED"


class TokenMismatchError(LeaseLostError):
    """Raised when the lease token is not the job's current one (the job was re-leased)."""

    reason = "TOKEN_MISMATCH"


class NotActiveError(LeaseLostError):
    """Raised when the job is no longer in the active lane (reaped or already acked)."""

    reason = "NOT_ACTIVE"


class NoJobError(ProtocolError):
    """Raised when no job hash exists for the id."""

    reason = "NO_JOB"


class NotFailedError(ProtocolError):
    """Raised when retry_failed is asked for a job that is not in the failed state."""

    reason = "NOT_FAILED"


class JobActiveError(ProtocolError):
    """Raised when removing a job that is running."""

    reason = "ACTIVE"


class LaneMismatchError(ProtocolError):
    """Raised when the job's state does not match the lane named for removal."""

    reason = "LANE_MISMATCH"


class NotInLaneError(ProtocolError):
    """Raised when the job's state matches the lane but its id is not in that lane."""

    reason = "NOT_IN_LANE"


class BatchTooLargeError(ProtocolError):
    """Raised when a batch names more ids than the script accepts (``detail`` is the max)."""

    reason = "BATCH_TOO_LARGE"


class BadArgsError(ProtocolError):
    """Raised when a script got fewer arguments than its count says."""

    reason = "BAD_ARGS"


class BadLaneError(ProtocolError):
    """Raised when a batch removal names an unknown lane."""

    reason = "BAD_LANE"


class BadJobIdError(ProtocolError):
    """Raised when a job id is empty."""

    reason = "BAD_JOB_ID"


class NoExpectedError(ProtocolError):
    """Raised when childs_init is called without an expected count."""

    reason = "NO_EXPECTED"


class BadExpectedError(ProtocolError):
    """Raised when childs_init's expected count is not a positive integer."""

    reason = "BAD_EXPECTED"


class AlreadyInitializedError(ProtocolError):
    """Raised when childs_init finds the counter already running."""

    reason = "ALREADY_INIT"


class ChildRequiredError(ProtocolError):
    """Raised when child_ack is called without a child id."""

    reason = "CHILD_REQUIRED"


class NoCounterError(ProtocolError):
    """Raised when child_ack finds no counter for the key: never initialised, or it reached 0 already."""

    reason = "NO_COUNTER"


_BY_REASON: dict[str, type[ProtocolError]] = {
    cls.reason: cls
    for cls in (
        TokenRequiredError, TokenMismatchError, NotActiveError, NoJobError, NotFailedError,
        JobActiveError, LaneMismatchError, NotInLaneError, BatchTooLargeError, BadArgsError,
        BadLaneError, BadJobIdError, NoExpectedError, BadExpectedError,
        AlreadyInitializedError, ChildRequiredError, NoCounterError,
    )
}


def protocol_error(reason: str, detail: str = "", *, queue: str = "", job_id: str = "") -> ProtocolError:
    """Build the exception for a reason word (an unknown word keeps the base class)."""
    cls = _BY_REASON.get(reason)
    if cls is None:
        return ProtocolError(reason, detail, queue=queue, job_id=job_id)
    return cls(None, detail, queue=queue, job_id=job_id)


class TaskFailed(OmniqError):
    """Raised by ``handle.get()`` when the job failed for good.

    ``.error`` is the failure's text (the job's ``last_error``), read into
    ``.error_type`` (the remote exception's name; "" when the failure was not an
    exception, e.g. an expired lease), ``.message`` and ``.traceback`` (its last
    frames, "" if none). ``.job_id``, ``.queue`` and ``.task`` (its name, "" when
    the handle does not know it) name the job.
    """

    def __init__(self, job_id: str, queue: str, task: str, error: str) -> None:
        self.job_id = job_id
        self.queue = queue
        self.task = task
        self.error = error
        self.error_type, self.message, self.traceback = _read_error(error)
        head = f"{self.error_type}: {self.message}" if self.error_type else self.message
        super().__init__(f"task {task or '?'} job={job_id} queue={queue} failed: {head}")


def _read_error(text: str) -> tuple[str, str, str]:
    """(type, message, traceback) of a ``last_error``: ``Type: message``, then the frames
    (lines from the first ``  File ...``); a text naming no exception type is all message."""
    lines = text.split("\n")
    cut = next((n for n, line in enumerate(lines) if line.startswith("  File ")), len(lines))
    head = "\n".join(lines[:cut]).rstrip("\n")
    name, sep, message = head.partition(": ")
    if not sep or not name or not all(part.isidentifier() for part in name.split(".")):
        return "", head, "\n".join(lines[cut:]).rstrip("\n")
    return name, message, "\n".join(lines[cut:]).rstrip("\n")


class ResultTimeoutError(OmniqError, TimeoutError):
    """Raised by ``handle.get(timeout=...)`` when the job has not finished in time
    (also the builtin TimeoutError; not a connection problem)."""


class ResultMissingError(OmniqError, LookupError):
    """Raised by ``handle.get()`` when neither the job nor a stored result exists
    (removed, trimmed from the completed lane without a result, expired, or forgotten)."""


class ResultTooLargeError(OmniqError, ValueError):
    """Raised by ``handle.get()`` when the task's return value was larger than the
    payload limit, so the worker stored this mark instead of the value."""


class ResultEncodeError(OmniqError, TypeError):
    """Raised by ``handle.get()`` when the task returned a value msgspec cannot encode
    as JSON, so the worker stored this mark (type and reason) instead of the value."""


class TimeLimitExceeded(OmniqError):
    """A run passed its task's hard ``time_limit``: the job fails (or retries) with it.

    Never raised inside the task: the process pool kills the child that ran it, an
    ``async def`` task is cancelled, a thread is left to finish (its result dropped).
    See docs/tasks.md, "Time limits".
    """


class SoftTimeLimitExceeded(OmniqError):
    """Raised inside a task when its run passes ``soft_time_limit``, so it can clean up.

    Where it can be delivered depends on the pool (docs/tasks.md, "Time limits").
    """
