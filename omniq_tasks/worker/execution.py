"""Run one reserved job without Redis: decode its payload, call the task, classify.

Outcomes are plain data the worker turns into acks: ``ok`` -> ack_success (with
``result``, the task's return value as msgspec JSON); otherwise ack_fail with
``error`` as the text, and ``final`` when retrying can never help (unknown task,
payload that does not fit the annotations, payload the decoder cannot take at
all), so the job fails at once instead of burning its attempts. Every outcome of
a call says how long the body ran (``duration_ms``).

A task's exception is classified by its policy (classify()): ``Retry`` retries at
the time it names, a permanent exception (``PermanentError``, ``Reject``, a class
with ``omniq_permanent = True``, one in ``dont_retry_for`` or outside
``autoretry_for``) fails at once, anything else retries, at the time the task's
backoff gives (``retry_at_ms``; None leaves it to the job's fixed backoff_ms). A
job whose envelope's ``meta.expires_ms`` has passed when it starts is not run.
Times are the Redis server's clock, estimated from the lease (server_now_ms()).

Nothing here may raise out of a runner: decode_job() turns any exception while
decoding (RecursionError from 100,000 nested lists, MemoryError, ...) into a
final Outcome, call()/call_async() turn whatever the task raises into a failed
Outcome, and describe_exception() survives exceptions whose str() raises.
"""

from __future__ import annotations

import datetime
import logging
import random
import time
import traceback
from time import perf_counter
from typing import TYPE_CHECKING, Any, Callable

import msgspec

from ..arguments import TaskArgumentError
from ..defaults import MAX_DUE_MS, MAX_ERROR_BYTES
from ..errors import Retry, TimeLimitExceeded
from ..outcome import Outcome
from ..context import JobContext
from ..envelope import read_envelope
from ..logcontext import JobLogContext, current_job
from ..results import UNENCODABLE_MARK
from ..fanout import load_child_results

if TYPE_CHECKING:
    from ..app import App
    from ..protocol.models import ReservedJob
    from ..registry import Registry
    from ..task import Task

log = logging.getLogger("omniq_tasks.worker")

# ack_fail keeps MAX_ERROR_BYTES of last_error: we send at most that many
MAX_ERROR_CHARS = MAX_ERROR_BYTES
TRACEBACK_FRAMES = 5


def clip_error(text: str) -> str:
    """At most MAX_ERROR_CHARS UTF-8 bytes, cut on a character boundary.

    The script cuts last_error at 4096 bytes, which could split a character and
    leave invalid UTF-8 in the job hash; lone surrogates (unencodable) become "?".
    """
    return text.encode("utf-8", "replace")[:MAX_ERROR_CHARS].decode("utf-8", "ignore")


# The return value as JSON (see succeeded() for a type msgspec cannot encode).
_encode_result = msgspec.json.Encoder().encode


class PreparedCall:
    """A decoded job, ready to call: the task and its keyword arguments."""

    __slots__ = ("task", "kwargs", "log_context", "expires_ms", "job", "fanin")

    def __init__(self, task: Task[Any, Any], kwargs: dict[str, Any], expires_ms: int = 0) -> None:
        self.task = task
        self.kwargs = kwargs
        # the envelope's deadline (epoch ms, 0: none) and the lease it runs under
        # (None outside a worker: attempt 1, this machine's clock)
        self.expires_ms = expires_ms
        self.job: ReservedJob | None = None
        # set as logcontext.current_job while the body runs (decode_leased fills it)
        self.log_context: JobLogContext | None = None
        # a fan-out's callback: (the fan-out's key, the parameter that gets its children's outcomes)
        self.fanin: tuple[str, str] | None = None


def server_now_ms(job: ReservedJob | None) -> int:
    """The Redis server's clock now (epoch ms), estimated from ``job``'s lease.

    reserve_batch set the lock to the server's now + timeout_ms when it leased the
    job, no earlier than ``received_at``; the time since then is counted on the
    monotonic clock (shared by the worker's processes). Without a lease that says
    (the protocol's reserve, a test), this machine's clock.
    """
    if job is not None and job.received_at and job.timeout_ms:
        return job.lock_until_ms - job.timeout_ms + int((time.monotonic() - job.received_at) * 1000)
    return int(time.time() * 1000)


def utc_clock(epoch_ms: int) -> str:
    """``12:03:07Z`` (with the date when it is not today, UTC); never raises."""
    try:
        when = datetime.datetime.fromtimestamp(epoch_ms / 1000, datetime.timezone.utc)
        now = datetime.datetime.now(datetime.timezone.utc)
        return when.strftime("%H:%M:%SZ" if when.date() == now.date() else "%Y-%m-%d %H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        return f"{epoch_ms} ms"




def backoff_at_ms(prepared: PreparedCall, now_ms: int) -> int | None:
    """When the retry of a failed run falls due under the task's policy (None: the job's backoff_ms).

    Fixed backoff (``retry_backoff=False``) is the protocol's own: None. Exponential:
    base (the task's backoff_ms, or ``retry_backoff`` seconds) times 2 ** (attempt - 1),
    at most ``retry_backoff_max`` s, then a random part of it with ``retry_jitter``.
    """
    task = prepared.task
    policy = task.policy
    if policy.retry_backoff is False:
        return None
    base_ms = task.backoff_ms if policy.retry_backoff is True else float(policy.retry_backoff) * 1000
    attempt = prepared.job.attempt if prepared.job is not None else 1
    delay_ms = min(base_ms * 2.0 ** min(max(attempt - 1, 0), 64), policy.retry_backoff_max * 1000)
    if policy.retry_jitter:
        delay_ms = random.uniform(0, delay_ms)
    return min(max(now_ms + int(delay_ms), 1), MAX_DUE_MS)


def _retry_requested_at(retry: Retry, prepared: PreparedCall, now_ms: int) -> int | None:
    if retry.countdown is not None:
        due = now_ms + retry.countdown * 1000
    elif isinstance(retry.eta, datetime.datetime):
        due = retry.eta.timestamp() * 1000
    elif retry.eta is not None:
        due = float(retry.eta) * 1000
    else:
        return backoff_at_ms(prepared, now_ms)
    return min(max(int(due), 1), MAX_DUE_MS)


def is_permanent(exc: BaseException, autoretry_for: tuple[type[BaseException], ...],
                 dont_retry_for: tuple[type[BaseException], ...]) -> bool:
    """True when ``exc`` must fail its job at once (no retry).

    A class marked ``omniq_permanent = True`` (PermanentError, Reject) or listed in
    ``dont_retry_for`` is permanent; an Exception outside ``autoretry_for`` too.
    What is not an Exception (SystemExit, KeyboardInterrupt) retries as before.
    """
    if getattr(type(exc), "omniq_permanent", False) is True or isinstance(exc, dont_retry_for):
        return True
    return isinstance(exc, Exception) and not isinstance(exc, autoretry_for)


def classify(prepared: PreparedCall, exc: BaseException, duration_ms: float) -> Outcome:
    """The failed Outcome of a task body that raised ``exc``, under its policy; never raises."""
    name = prepared.task.name
    try:
        policy = prepared.task.policy
        if isinstance(exc, Retry):
            error = describe_exception(exc.exc) if exc.exc is not None else describe_exception(exc)
            return Outcome(False, name, error, retry_at_ms=_retry_requested_at(
                exc, prepared, server_now_ms(prepared.job)), duration_ms=duration_ms)
        if is_permanent(exc, policy.autoretry_for, policy.dont_retry_for):
            return Outcome(False, name, describe_exception(exc), final=True, duration_ms=duration_ms)
        return Outcome(False, name, describe_exception(exc),
                       retry_at_ms=backoff_at_ms(prepared, server_now_ms(prepared.job)), duration_ms=duration_ms)
    except BaseException:  # a policy that cannot be read (MemoryError): fail as before the policies
        return crashed(name, exc, duration_ms)


def timed_out(prepared: PreparedCall | None, task: str, error: str, ran_s: float) -> Outcome:
    """A run ended by its hard limit: retried or failed as the task's policy says for
    TimeLimitExceeded (dont_retry_for, exponential backoff), with ``error`` as last_error."""
    outcome = Outcome(False, task, error, duration_ms=ran_s * 1000)
    if prepared is None:
        return outcome
    verdict = classify(prepared, TimeLimitExceeded(error.partition(": ")[2]), ran_s * 1000)
    return msgspec.structs.replace(verdict, error=error)


def decode_job(registry: Registry, queue: str, payload: str | bytes,
               make_context: Callable[[], JobContext]) -> PreparedCall | Outcome:
    """Find the task for a leased job's payload and decode its arguments, or say why it cannot run."""
    name = ""
    expires_ms = 0
    flow: Any = None
    fanin: Any = None
    try:
        envelope = read_envelope(payload)
        if envelope is None:
            task = registry.raw_handler(queue)
            if task is None or task.raw_decoder is None:
                return Outcome(False, "", clip_error(
                    f"payload is not a task envelope and queue {queue!r} has no raw handler "
                    f"(declare one with @app.task(queue={queue!r}, raw=True))"), final=True)
            name = task.name
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
            name = task.name
            try:
                decoded = task.codec.decode_parts(bytes(envelope.args), bytes(envelope.kwargs))
            except TaskArgumentError as exc:
                return Outcome(False, task.name, clip_error(f"invalid arguments: {exc}"), final=True)
            kwargs = task.codec.call_kwargs(decoded)
            expires = envelope.meta.get("expires_ms") if envelope.meta else None
            if isinstance(expires, int) and not isinstance(expires, bool) and expires > 0:
                expires_ms = expires
            flow = envelope.meta.get("flow") if envelope.meta else None
            fanin = flow.get("fanin") if isinstance(flow, dict) else None
    except BaseException as exc:  # RecursionError on deep nesting, MemoryError: retrying cannot help
        return Outcome(False, name, "payload could not be decoded: " + exception_line(exc), final=True)
    if task.codec.context_param is not None:
        kwargs[task.codec.context_param] = make_context()
    prepared = PreparedCall(task, kwargs, expires_ms)
    if envelope is not None and isinstance(fanin, str) and fanin:
        arg = flow.get("arg") if isinstance(flow, dict) else ""
        prepared.fanin = (fanin, arg if isinstance(arg, str) else "")
    return prepared


def job_context(app: App, job: ReservedJob) -> Callable[[], JobContext]:
    """Makes the JobContext of ``job``, only if its task asks for one."""
    return lambda: JobContext(
        app.client, queue=job.queue, job_id=job.job_id, attempt=job.attempt,
        max_attempts=job.max_attempts, gid=job.gid, lease_token=job.lease_token,
        lock_until_ms=job.lock_until_ms, payload_raw=job.payload)


def decode_leased(app: App, job: ReservedJob) -> PreparedCall | Outcome:
    """decode_job() for a reserved job, logging its start at DEBUG; never raises."""
    try:
        prepared = decode_job(app.registry, job.queue, job.payload, job_context(app, job))
        if isinstance(prepared, PreparedCall):
            prepared.log_context = JobLogContext(job.job_id, prepared.task.name, job.attempt, job.queue)
            prepared.job = job
            if prepared.fanin is not None:
                gone = _give_children_outcomes(app, prepared)
                if gone is not None:
                    return gone
            if prepared.expires_ms:
                now_ms = server_now_ms(job)
                if now_ms > prepared.expires_ms:
                    return Outcome(False, prepared.task.name, (
                        f"expired: not started by its deadline {utc_clock(prepared.expires_ms)} "
                        f"({(now_ms - prepared.expires_ms) / 1000:.1f} s late); not run"), final=True)
        if isinstance(prepared, PreparedCall) and log.isEnabledFor(logging.DEBUG):
            log.debug("start %s job=%s queue=%s attempt=%d/%d", prepared.task.name, job.job_id,
                      job.queue, job.attempt, job.max_attempts)
        return prepared
    except BaseException as exc:  # making the JobContext, or logging, failed: retrying may help
        return crashed("", exc)


def _give_children_outcomes(app: App, prepared: PreparedCall) -> Outcome | None:
    """Put a fan-out callback's children outcomes in its first parameter; the failed
    Outcome when the fan-out is gone (a Redis error raises: the job is retried)."""
    assert prepared.fanin is not None
    key, arg = prepared.fanin
    try:
        results = load_child_results(app.client, key, app.registry.get)
    except LookupError as exc:
        return Outcome(False, prepared.task.name, f"{exc}: the callback cannot get its children's outcomes",
                       final=True)
    if arg:
        prepared.kwargs[arg] = results
    return None


def crashed(task: str, exc: BaseException, duration_ms: float = 0.0) -> Outcome:
    """The failed Outcome for an exception that escaped a task's own handling; never raises."""
    return Outcome(False, task, describe_exception(exc), duration_ms=duration_ms)


def succeeded(task: str, value: Any, duration_ms: float) -> Outcome:
    """The ok Outcome of a body that returned ``value``; never raises.

    A value msgspec cannot encode does not fail the job (its body ran and
    succeeded: failing would run it again): UNENCODABLE_MARK and the reason are
    kept instead, so ``get()`` raises ResultEncodeError, and a WARNING says why.
    """
    if value is None:
        return Outcome(True, task, duration_ms=duration_ms)
    try:
        result = _encode_result(value)
    except BaseException as exc:
        reason = exception_line(exc)
        result = UNENCODABLE_MARK + f"{type(value).__qualname__}: {reason}".encode(errors="replace")
        try:
            log.warning("task %s returned a %s that cannot be encoded as JSON; result not kept: %s",
                        task, type(value).__name__, reason)
        except BaseException:  # logging itself failed (MemoryError): the job still succeeded
            pass
    return Outcome(True, task, result=result, duration_ms=duration_ms)


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:  # a broken __str__ (even one raising SystemExit) must not lose the failure
        return "<exception str() failed>"


def exception_line(exc: BaseException) -> str:
    """``Type: message`` on one line (the first of the message), at most 4096 bytes; never raises."""
    try:
        message = _message(exc)
        return clip_error(f"{type(exc).__qualname__}: {message}".split("\n", 1)[0])
    except BaseException:  # MemoryError while formatting
        return "exception (could not be described)"


def describe_exception(exc: BaseException) -> str:
    """Exception type, message and the last frames of its traceback, at most 4096 bytes; never raises."""
    try:
        message = _message(exc)
        try:
            frames = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-TRACEBACK_FRAMES)
            trail = "".join(frames[1:-1])
        except BaseException:  # traceback formats str(exc) again, and may run out of memory
            trail = ""
        return clip_error(f"{type(exc).__qualname__}: {message}\n" + trail)
    except BaseException:
        return "exception (could not be described)"


def call(prepared: PreparedCall) -> Outcome:
    """Run a prepared synchronous task."""
    start = perf_counter()
    token = current_job.set(prepared.log_context)  # log records made in the body name the job
    try:
        value = prepared.task.fn(**prepared.kwargs)
    except BaseException as exc:  # SystemExit too: uncaught, it would end the runner thread unacked
        return classify(prepared, exc, (perf_counter() - start) * 1000)
    finally:
        current_job.reset(token)
    if value is None:  # most tasks: no result to encode (inlined, this is per job)
        return Outcome(True, prepared.task.name, duration_ms=(perf_counter() - start) * 1000)
    return succeeded(prepared.task.name, value, (perf_counter() - start) * 1000)


async def call_async(prepared: PreparedCall) -> Outcome:
    """Run a prepared ``async def`` task."""
    start = perf_counter()
    token = current_job.set(prepared.log_context)  # this asyncio Task's own context
    try:
        value = await prepared.task.fn(**prepared.kwargs)
    except (Exception, SystemExit, KeyboardInterrupt) as exc:  # those two would stop the loop
        return classify(prepared, exc, (perf_counter() - start) * 1000)
    finally:
        try:
            current_job.reset(token)
        except ValueError:  # closed outside its asyncio Task (by the garbage collector): nothing to undo
            pass
    # Other BaseExceptions (CancelledError, ...) end the asyncio Task; the runner's
    # done-callback reports them.
    return succeeded(prepared.task.name, value, (perf_counter() - start) * 1000)
