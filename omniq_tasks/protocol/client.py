"""The OmniQ v1 operations in Python terms: typed results and one error family.

:class:`OmniqClient` is the low-level client: every method is one protocol
script call (or one read), with arguments checked before Redis is touched.
``now_ms`` defaults to 0, which the scripts read as "use the Redis server clock"
so that workers on machines with skewed clocks agree on leases; tests pass an
explicit clock.
"""

from __future__ import annotations

import itertools
import logging
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence, TypedDict

import msgspec
import redis as redis_lib
from redis.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException
from typing_extensions import Unpack

from . import keys
from ..defaults import (
    BACKOFF_MS, MAINTENANCE_LIMIT, MAX_ATTEMPTS, MAX_CALL_JOBS, MAX_DUE_MS, MAX_PAYLOAD_BYTES, READ_PAGE, REDIS_URL,
    TIMEOUT_MS, WAKE_CAP, check_int,
)
from .ids import new_job_id
from .payload import MAX_NESTING, find_nonfinite, to_plain, too_deep
from ..errors import BackendError, OmniqConnectionError, OmniqTimeoutError, RedisCommandError, RedisFullError
from .urls import redact_url
from .connection import RedisClient, connect, describe_redis
from ..errors import PayloadError, PayloadTooLargeError, UnexpectedReplyError, protocol_error
from .models import (
    AckFailResult, BatchItem, GroupLimitChange, JobInfo, Published, QueueEmpty, QueuePaused, QueueStats,
    ReservedJob, ReserveResult,
)
from .scripts import ScriptCall, Scripts

log = logging.getLogger("omniq_tasks.client")  # the name users configure

# How long a measured offset between our clock and the server's is trusted.
CLOCK_CHECK_S = 60.0
# Measuring it: at most this many TIME calls, stopping at one whose round trip is this short.
CLOCK_TRIES = 3
CLOCK_GOOD_RTT_MS = 1.0
_json_encode = msgspec.json.Encoder().encode
# What follows the id in a batch reply entry (never a reason word).
_ITEM_STATUSES = ("OK", "ERR")


# redis-py's cluster client raises these when it cannot reach or route to a node, or a
# master of the cluster is down: the service is unavailable, as with a lost connection.
CLUSTER_UNAVAILABLE = (ClusterDownError, RedisClusterException)
REDIS_ERRORS = (redis_lib.RedisError, RedisClusterException)  # RedisClusterException is not a RedisError


def backend_error(exc: Exception, url: str) -> BackendError:
    """Our error for a redis-py error; ``url`` must already be redacted."""
    text = str(exc)
    if isinstance(exc, redis_lib.TimeoutError):
        return OmniqTimeoutError(f"Redis at {url} did not answer in time: {text}", url=url)
    if isinstance(exc, (redis_lib.ConnectionError, *CLUSTER_UNAVAILABLE)):
        return OmniqConnectionError(f"cannot reach Redis at {url}: {text}", url=url)
    # redis-py strips the "OOM" word into the class; a script's error keeps it in the text
    if isinstance(exc, redis_lib.exceptions.OutOfMemoryError) or "used memory > 'maxmemory'" in text:
        return RedisFullError(
            f"Redis at {url} is full (maxmemory reached) and refused the write; nothing was written: {text}",
            url=url)
    return RedisCommandError(f"Redis at {url} refused the command: {text}", url=url)


_json_decode = msgspec.json.Decoder().decode


def check_json_text(data: bytes) -> None:
    """Raise PayloadError unless ``data`` is one whole JSON object or array in UTF-8."""
    if too_deep(data):
        raise PayloadError(f"payload_json nests arrays/objects deeper than {MAX_NESTING} levels")
    try:
        value = _json_decode(data)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"payload_json is not valid JSON: {exc}") from None
    except RecursionError:
        raise PayloadError("payload_json nests arrays/objects too deep") from None
    if not isinstance(value, (dict, list)):
        raise PayloadError("payload_json must be the JSON text of an object or array")


@contextmanager
def redis_errors(url: str) -> Iterator[None]:
    """Raise redis-py errors of the block as ours (see :func:`backend_error`)."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise backend_error(exc, url) from exc


def as_text(value: Any) -> str:
    """A reply element (bytes, str, int, None) as text: None is ""."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _int_or_none(value: Any) -> int | None:
    """A stored number, or None when missing or unreadable ("inf", "1e999", junk from another client)."""
    text = as_text(value)
    try:
        return int(float(text)) if text else None
    except (ValueError, OverflowError):
        return None


def _field_problem(fields: dict[str, str]) -> str:
    """Which of a lease's numbers cannot be read, and why (a field another client wrote
    as "1e20" or "inf"); the stored fields first, since a bad timeout_ms makes
    lock_until_ms bad too."""
    for name, text in fields.items():
        try:
            int(text)
        except ValueError:
            return f"job field {name}={text!r} is not a whole number"
    return "job fields are unreadable"


class CorruptLease(msgspec.Struct, frozen=True):
    """A leased job whose fields cannot be read: fail it (``problem`` says why), never run it."""

    job: ReservedJob
    problem: str


def parse_leases(queue: str, reply: Any, sent_at: float | None = None
                 ) -> tuple[list[ReservedJob], list[CorruptLease]] | QueuePaused:
    """The jobs in a reserve_batch reply, and those whose fields are corrupt; see lua_src/reserve_batch.lua.

    ``sent_at`` (time.monotonic()) is when the call went out, which each job keeps as
    ``received_at``: a reply read late (the process was frozen with it in the socket)
    must not look fresh.
    """
    status = as_text(reply[0])
    if status == "PAUSED":
        return QueuePaused(queue)
    jobs: list[ReservedJob] = []
    corrupt: list[CorruptLease] = []
    if status != "JOBS":
        return jobs, corrupt
    received = time.monotonic() if sent_at is None else sent_at
    for i in range(1, len(reply) - 2, 3):
        job_id, payload = as_text(reply[i]), as_text(reply[i + 1])
        lock_until, attempt, max_attempts, timeout, token, gid = as_text(reply[i + 2]).split(":", 5)
        try:  # Lua writes numbers of 1e14 and more with an exponent: int() refuses those too
            jobs.append(ReservedJob(queue, job_id, payload, int(lock_until), int(attempt), int(max_attempts),
                                    gid, token, int(timeout), "JOB", received))
        except ValueError:
            problem = _field_problem({"timeout_ms": timeout, "attempt": attempt,
                                      "max_attempts": max_attempts, "lock_until_ms": lock_until})
            corrupt.append(CorruptLease(ReservedJob(queue, job_id, payload, 0, 0, 1, gid, token, 0), problem))
    return jobs, corrupt


def parse_reserved(queue: str, reply: Any) -> list[ReservedJob] | QueuePaused:
    """The readable jobs in a reserve_batch reply ([] for EMPTY); corrupt ones are left out."""
    parsed = parse_leases(queue, reply)
    return parsed if isinstance(parsed, QueuePaused) else parsed[0]


def _lease_args(now_ms: int, leases: Sequence[tuple[str, str]]) -> list[Any]:
    """ARGV of the scripts that take ``now_ms, count`` and then (job_id, lease_token) pairs."""
    args: list[Any] = [now_ms, len(leases)]
    for job_id, token in leases:
        args += (job_id, token)
    return args


# A return value to store with an ack: (position of its lease, ttl_ms, payload).
StoredResult = tuple[int, int, bytes]


class ResultState(msgspec.Struct, frozen=True):
    """What ``handle.get()`` reads in one round trip: the stored result (None: no such
    key), and the job hash's state and last_error ("" when the hash is gone)."""

    result: bytes | None
    state: str
    last_error: str


def parse_ack_batch(reply: Any) -> dict[int, str]:
    """The leases an ack_success_batch reply says were not acked: position (0-based) -> reason."""
    return {int(reply[i]) - 1: as_text(reply[i + 1]) for i in range(1, len(reply) - 1, 2)}


# Positions 1..1000 as the bytes redis-py sends as they are (an int it converts each time).
_POSITION_ARGS = tuple(str(n).encode() for n in range(1, 1001))


def _position_arg(position: int) -> bytes:
    """The 1-based position argument of the 0-based ``position`` of a lease in its batch."""
    return _POSITION_ARGS[position] if 0 <= position < len(_POSITION_ARGS) else str(position + 1).encode()


def parse_ack_fail_batch(reply: Any) -> list[AckFailResult | str]:
    """Per lease of an ack_fail_batch reply: AckFailResult, or the reason it was not acked."""
    out: list[AckFailResult | str] = []
    for item in reply:
        text = as_text(item)
        if text == "F":
            out.append(AckFailResult("FAILED"))
        elif text.startswith("R:"):
            out.append(AckFailResult("RETRY", int(text[2:])))
        else:
            out.append(text)
    return out


def parse_heartbeat_batch(reply: Any) -> tuple[int, list[int | str]]:
    """The server clock and, per lease of a heartbeat_batch reply, its new lock_until_ms or the reason."""
    locks: list[int | str] = []
    for item in reply[1:]:
        text = as_text(item)
        locks.append(int(text) if text.isdigit() else text)
    return int(reply[0]), locks


class PublishOptions(TypedDict, total=False):
    """The per-job options of :func:`job_spec`, ``publish`` and ``publish_json``; unset ones
    take their defaults (:mod:`omniq_tasks.defaults`)."""

    job_id: str | None
    max_attempts: int
    timeout_ms: int
    backoff_ms: int
    due_ms: int
    gid: str | None
    group_limit: int


class JobSpec(msgspec.Struct, frozen=True):
    """One job for :meth:`OmniqClient.enqueue_many`, already encoded and checked."""

    job_id: str
    payload: bytes
    max_attempts: int = MAX_ATTEMPTS
    timeout_ms: int = TIMEOUT_MS
    backoff_ms: int = BACKOFF_MS
    due_ms: int = 0
    gid: str = ""
    group_limit: int = 0


def job_spec(
    payload_json: bytes,
    *,
    job_id: str | None = None,
    max_attempts: int = MAX_ATTEMPTS,
    timeout_ms: int = TIMEOUT_MS,
    backoff_ms: int = BACKOFF_MS,
    due_ms: int = 0,
    gid: str | None = None,
    group_limit: int = 0,
) -> JobSpec:
    """Check publish options and build a JobSpec (raises TypeError/ValueError/InvalidNameError)."""
    if job_id is None:
        job_id = new_job_id()
    elif not isinstance(job_id, str) or not job_id or len(job_id) > 256:
        raise ValueError(f"job_id must be a non-empty str of at most 256 chars, got {job_id!r}")
    return JobSpec(
        job_id=job_id, payload=payload_json,
        max_attempts=check_int("max_attempts", max_attempts, 1),
        timeout_ms=check_int("timeout_ms", timeout_ms, 1),
        backoff_ms=check_int("backoff_ms", backoff_ms, 0),
        due_ms=check_int("due_ms", due_ms, 0, MAX_DUE_MS),  # Lua numbers stay exact up to there
        gid=keys.validate_gid(gid) if gid is not None else "",
        group_limit=check_int("group_limit", group_limit, 0),
    )


# The largest limit group_limit.lua takes (nine digits).
GROUP_LIMIT_MAX = 999_999_999
# The TTL of a {Q}:done:<id> list a waiter pushes back (the ack script uses the same).
_DONE_TTL_MS = 60_000


class OmniqClient:
    """Typed access to the OmniQ v1 scripts on one Redis (standalone or cluster).

    ``redis`` is a URL (``redis://``, ``rediss://``, ``unix://``), an existing
    ``redis.Redis`` / ``redis.cluster.RedisCluster``, or None for
    ``redis://localhost:6379/0``.
    """

    def __init__(
        self,
        redis: str | RedisClient | None = None,
        *,
        cluster: bool = False,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        if redis is None or isinstance(redis, str):
            url = redis or REDIS_URL
            # What errors and reprs show: the URL without its password.
            self.url = redact_url(url)
            try:  # a cluster client connects here already
                self.redis: RedisClient = connect(url, cluster=cluster)
            except REDIS_ERRORS as exc:
                raise backend_error(exc, self.url) from exc
        elif isinstance(redis, (redis_lib.Redis, RedisCluster)):
            self.redis = redis
            self.url = describe_redis(redis)
        else:
            raise TypeError(f"redis must be a URL or a redis-py client, not {type(redis).__name__}")
        self.max_payload_bytes = check_int("max_payload_bytes", max_payload_bytes, 2)
        self.scripts = Scripts(self.redis)
        self._clock: tuple[float, float] | None = None  # (server ms - our ms, when measured)

    def close(self) -> None:
        """Close the connection pool."""
        self.redis.close()

    def __enter__(self) -> OmniqClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calling scripts -----------------------------------------------------

    def _call(self, name: str, anchor: str, *args: Any) -> Any:
        try:
            return self.scripts.call(name, anchor, args)
        except REDIS_ERRORS as exc:  # into our family, with the URL but no password
            raise backend_error(exc, self.url) from exc

    @staticmethod
    def _raise_if_err(reply: Any, queue: str = "", job_id: str = "") -> list[Any]:
        if not isinstance(reply, list) or not reply:
            raise UnexpectedReplyError(None, repr(reply), queue=queue, job_id=job_id)
        if as_text(reply[0]) == "ERR":
            detail = as_text(reply[2]) if len(reply) > 2 else ""
            raise protocol_error(as_text(reply[1]) if len(reply) > 1 else "UNKNOWN", detail,
                                 queue=queue, job_id=job_id)
        return reply

    @classmethod
    def _raise_if_batch_err(cls, reply: Any, queue: str) -> list[Any]:
        """A batch's flat ``id, status, ...`` reply, or raise for a whole-call ``{"ERR", REASON}``.

        A job may well be called "ERR", so the second entry decides: an item status
        (OK, ERR) is never a reason word.
        """
        if isinstance(reply, list) and len(reply) > 1 and as_text(reply[1]) in _ITEM_STATUSES:
            return reply
        return cls._raise_if_err(reply, queue)

    # -- publishing ------------------------------------------------------------

    def encode_payload(self, payload: Any) -> bytes:
        """Encode a payload to JSON bytes; it must be a JSON object or array."""
        try:
            data = _json_encode(payload)
        except (TypeError, ValueError, OverflowError) as exc:
            raise PayloadError(f"payload cannot be encoded as JSON: {exc}") from None
        except RecursionError:
            data = b"[" * (MAX_NESTING + 1)
        if data[:1] not in (b"{", b"["):
            raise PayloadError(
                f"payload must be a JSON object or array (dict, list, Struct, dataclass), "
                f"not {type(payload).__name__}"
            )
        if too_deep(data):
            raise PayloadError(f"payload nests arrays/objects deeper than {MAX_NESTING} levels")
        # msgspec writes NaN and infinities as null: refuse them rather than change them.
        if b"null" in data:
            nonfinite = find_nonfinite(to_plain(payload), "payload")
            if nonfinite is not None:
                raise PayloadError(f"{nonfinite[0]} is {nonfinite[1]}: JSON has no NaN or Infinity")
        return data

    def publish(self, queue: str, payload: Any, *, now_ms: int = 0, **options: Unpack[PublishOptions]) -> Published:
        """Publish one job. ``payload`` must encode to a JSON object or array.

        ``options`` are :class:`PublishOptions` (defaults in :mod:`omniq_tasks.defaults`):
        ``due_ms`` later than now makes it delayed; ``gid`` puts it in that group's
        FIFO lane, and ``group_limit`` > 0 sets the group's limit if none is set yet.
        Publishing an id that already exists changes nothing (``existed=True``).
        """
        return self.publish_json(queue, self.encode_payload(payload), now_ms=now_ms, **options)

    def publish_json(
        self,
        queue: str,
        payload_json: bytes | str,
        *,
        now_ms: int = 0,
        wake_cap: int = 0,
        **options: Unpack[PublishOptions],
    ) -> Published:
        """Publish already-encoded JSON text (an object or array); see :meth:`publish`.

        ``wake_cap`` > 0 also pushes a wake-up token to ``{Q}:wake`` (keeping at most
        that many), so an idle omniq-tasks worker starts the job at once.
        """
        keys.validate_queue(queue)  # a bad name is refused first, whatever the payload
        try:
            data = payload_json.encode() if isinstance(payload_json, str) else payload_json
        except UnicodeEncodeError as exc:  # a lone surrogate: no UTF-8 for it
            raise PayloadError(f"payload_json is not valid text: {exc}") from None
        if not isinstance(data, bytes) or data.lstrip()[:1] not in (b"{", b"["):
            raise PayloadError("payload_json must be the JSON text of an object or array")
        if len(data) > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"payload is {len(data)} bytes; the limit is {self.max_payload_bytes}"
            )
        check_json_text(data)
        spec = job_spec(data, **options)
        return self.publish_spec(queue, spec, wake_cap=wake_cap, now_ms=now_ms)

    def publish_spec(self, queue: str, spec: JobSpec, *, wake_cap: int = 0, now_ms: int = 0) -> Published:
        """Publish one JobSpec (from :func:`job_spec`, so already checked) with the protocol enqueue.

        ``wake_cap`` > 0 also pushes a wake-up token (see :meth:`publish_json`).
        """
        args: tuple[Any, ...] = (spec.job_id, spec.payload, spec.max_attempts, spec.timeout_ms,
                                 spec.backoff_ms, check_int("now_ms", now_ms, 0), spec.due_ms,
                                 spec.gid, spec.group_limit)
        if wake_cap:
            args += (check_int("wake_cap", wake_cap, 0),)
        reply = self._raise_if_err(self._call("enqueue", keys.queue_anchor(queue), *args), queue, spec.job_id)
        existed = len(reply) > 2
        if existed and self.scripts.take_resent():
            # The connection dropped and the call went again: if the job found is
            # this very job, the first send created it.
            stored = self.redis.hget(keys.job_key(queue, spec.job_id), "payload")
            existed = stored is None or bytes(stored if isinstance(stored, bytes) else stored.encode()) != spec.payload
        return Published(queue=queue, job_id=as_text(reply[1]), existed=existed)

    def enqueue_many(
        self, queue: str, jobs: Sequence[JobSpec], *, wake_cap: int = WAKE_CAP, now_ms: int = 0,
        once: tuple[str, int] | None = None,
    ) -> list[Published]:
        """Publish many prepared jobs with one script call per 1000 (enqueue_batch).

        Each job is enqueued exactly as :meth:`publish` would; ``wake_cap`` > 0 also
        pushes wake-up tokens to ``{Q}:wake`` so that idle omniq-tasks workers start
        at once. A chunk is one atomic script call; an error in a later chunk leaves
        the earlier ones published.

        ``once`` (a workflow's id, ttl_ms): each job id is remembered in
        ``{Q}:once:<id>`` for ttl_ms, and one remembered already is not published
        again (EXISTS) even when its job hash is gone.
        """
        anchor = keys.queue_anchor(queue)
        out: list[Published] = []
        options: dict[tuple[int, ...], bytes] = {}
        for start in range(0, len(jobs), MAX_CALL_JOBS):
            chunk = jobs[start:start + MAX_CALL_JOBS]
            args: list[Any] = [now_ms, wake_cap, len(chunk)]
            for job in chunk:
                if len(job.payload) > self.max_payload_bytes:
                    raise PayloadTooLargeError(
                        f"payload of job {job.job_id} is {len(job.payload)} bytes; "
                        f"the limit is {self.max_payload_bytes}")
                key = (job.max_attempts, job.timeout_ms, job.backoff_ms, job.due_ms, job.group_limit)
                packed = options.get(key)
                if packed is None:
                    packed = options[key] = b"%d:%d:%d:%d:%d" % key
                args += (job.job_id, job.payload, job.gid, packed)
            args += self.scripts.replay_tag("enqueue_batch")
            if once is not None:
                args += once
            reply = self._raise_if_err(self._call("enqueue_batch", anchor, *args), queue)
            refused = {int(reply[i]) - 1: as_text(reply[i + 1]) for i in range(1, len(reply) - 1, 2)}
            for position, job in enumerate(chunk):
                reason = refused.get(position)
                if reason is not None and reason != "EXISTS":
                    raise protocol_error(reason, queue=queue, job_id=job.job_id)
                out.append(Published(queue, job.job_id, reason == "EXISTS"))
        return out

    # -- running jobs -------------------------------------------------------

    def reserve(self, queue: str, *, now_ms: int = 0) -> ReserveResult:
        """Lease the next runnable job: ReservedJob, QueueEmpty or QueuePaused."""
        reply = self._raise_if_err(self._call("reserve", keys.queue_anchor(queue), now_ms), queue)
        status = as_text(reply[0])
        if status == "EMPTY":
            return QueueEmpty(queue)
        if status == "PAUSED":
            return QueuePaused(queue)
        if status != "JOB" or len(reply) < 8:
            raise UnexpectedReplyError(None, repr(reply), queue=queue)
        return ReservedJob(
            queue=queue, job_id=as_text(reply[1]), payload=as_text(reply[2]),
            lock_until_ms=int(reply[3]), attempt=int(reply[4]), max_attempts=int(reply[5]),
            gid=as_text(reply[6]), lease_token=as_text(reply[7]),
        )

    def reserve_batch(self, queue: str, max_jobs: int, *, now_ms: int = 0) -> list[ReservedJob] | QueuePaused:
        """Lease up to ``max_jobs`` jobs in one call (reserve_batch); [] when none is runnable."""
        name, anchor, args = self.reserve_batch_call(queue, check_int("max_jobs", max_jobs, 1), now_ms=now_ms)
        reply = self._raise_if_err(self._call(name, anchor, *args), queue)
        parsed = parse_leases(queue, reply)
        if isinstance(parsed, QueuePaused):
            return parsed
        jobs, corrupt = parsed
        for bad in corrupt:  # nobody could ever run it: fail it now rather than leave it leased
            log.error("job=%s queue=%s cannot be run: %s", bad.job.job_id, queue, bad.problem)
            self.ack_fail(queue, bad.job.job_id, bad.job.lease_token,
                          error=f"corrupt job: {bad.problem}", final=True, now_ms=now_ms)
        return jobs

    def ack_success_batch(
        self, queue: str, leases: Sequence[tuple[str, str]], *, now_ms: int = 0,
        results: Sequence[StoredResult] = (),
    ) -> list[BatchItem]:
        """ack_success for many (job_id, lease_token) pairs, one script call per 1000.

        ``results``: (position in ``leases``, ttl_ms, payload) to store for acked leases.
        """
        items: list[BatchItem] = []
        for start in range(0, len(leases), MAX_CALL_JOBS):
            chunk = leases[start:start + MAX_CALL_JOBS]
            mine = [(p - start, ttl, data) for p, ttl, data in results if start <= p < start + len(chunk)]
            name, anchor, args = self.ack_success_batch_call(queue, chunk, now_ms=now_ms, results=mine)
            refused = parse_ack_batch(self._raise_if_err(self._call(name, anchor, *args), queue))
            items += [BatchItem(job_id, n not in refused, refused.get(n)) for n, (job_id, _) in enumerate(chunk)]
        return items

    def heartbeat(self, queue: str, job_id: str, lease_token: str, *, now_ms: int = 0) -> int:
        """Extend a lease; returns the new lock_until_ms."""
        reply = self._raise_if_err(
            self._call("heartbeat", keys.queue_anchor(queue), job_id, now_ms, lease_token),
            queue, job_id)
        return int(reply[1])

    def renew(self, queue: str, job_id: str, lease_token: str) -> int:
        """Extend a lease to the server's now + timeout_ms (heartbeat_batch); returns lock_until_ms.

        Unlike :meth:`heartbeat` (old lock + timeout_ms), calling it often never runs
        the lock further ahead than one lease. Raises LeaseLostError when the lease is gone.
        """
        name, anchor, args = self.heartbeat_batch_call(queue, [(job_id, lease_token)])
        _, locks = parse_heartbeat_batch(self._raise_if_err(self._call(name, anchor, *args), queue, job_id))
        if isinstance(locks[0], str):
            raise protocol_error(locks[0], queue=queue, job_id=job_id)
        return locks[0]

    def ack_success(self, queue: str, job_id: str, lease_token: str, *, now_ms: int = 0) -> None:
        """Mark a leased job completed."""
        self._raise_if_err(
            self._call("ack_success", keys.queue_anchor(queue), job_id, now_ms, lease_token),
            queue, job_id)

    def ack_fail(
        self, queue: str, job_id: str, lease_token: str, *, error: str | None = None,
        final: bool = False, now_ms: int = 0,
    ) -> AckFailResult:
        """Report a failed run: the job retries after its backoff or fails for good.

        ``error`` is stored as ``last_error`` (the script keeps at most 4096 bytes).
        ``final=True`` fails the job now whatever attempts are left (for a job that
        can never succeed, e.g. an unknown task).
        """
        args: tuple[Any, ...] = (job_id, now_ms, lease_token)
        if error or final:
            args += (error or "",)
        if final:
            args += ("1",)
        reply = self._raise_if_err(self._call("ack_fail", keys.queue_anchor(queue), *args),
                                   queue, job_id)
        if as_text(reply[0]) == "RETRY":
            return AckFailResult("RETRY", int(reply[1]))
        return AckFailResult("FAILED")

    # -- maintenance ----------------------------------------------------------

    def promote_delayed(self, queue: str, *, max_promote: int = MAINTENANCE_LIMIT, now_ms: int = 0) -> int:
        """Move due delayed jobs to their wait lanes; returns how many moved."""
        reply = self._raise_if_err(self._call(
            "promote_delayed", keys.queue_anchor(queue), now_ms,
            check_int("max_promote", max_promote, 1)), queue)
        return int(reply[1])

    def reap_expired(self, queue: str, *, max_reap: int = MAINTENANCE_LIMIT, now_ms: int = 0) -> int:
        """End expired leases (retry or fail); returns how many were reaped."""
        reply = self._raise_if_err(self._call(
            "reap_expired", keys.queue_anchor(queue), now_ms,
            check_int("max_reap", max_reap, 1)), queue)
        return int(reply[1])

    # -- the server clock ----------------------------------------------------------------

    def server_now_ms(self) -> int:
        """The Redis server's clock now, in epoch ms: the clock leases and due times follow.

        Our clock plus an offset measured with one TIME round trip, again after
        CLOCK_CHECK_S, so a countdown costs no round trip of its own.
        """
        now = time.monotonic()
        if self._clock is None or now - self._clock[1] > CLOCK_CHECK_S:
            self._clock = (self._measure_clock_offset(), now)
        return int(time.time() * 1000 + self._clock[0])

    def _measure_clock_offset(self) -> float:
        """Server clock minus ours (ms), from the TIME call with the shortest round trip.

        The server read its clock somewhere within the round trip; the midpoint is
        right to within half of it. A first call that also opens the connection, or
        one the host stalled, has a long round trip: a few tries keep the shortest.
        """
        best: tuple[float, float] | None = None  # (round trip, offset)
        with redis_errors(self.url):
            for _ in range(CLOCK_TRIES):
                before = time.time()
                seconds, micros = self.redis.time()
                after = time.time()
                sample = ((after - before) * 1000, int(seconds) * 1000 + int(micros) / 1000 - (before + after) * 500)
                if best is None or sample[0] < best[0]:
                    best = sample
                if best[0] <= CLOCK_GOOD_RTT_MS:
                    break
        assert best is not None
        return best[1]

    # -- calls for batching (the worker sends several in one round trip) ------------

    def reserve_batch_call(self, queue: str, max_jobs: int, *, now_ms: int = 0) -> ScriptCall:
        """reserve_batch for up to ``max_jobs`` (1..1000), safe to send again (replay tag)."""
        return ("reserve_batch", keys.queue_anchor(queue),
                (now_ms, max_jobs, *self.scripts.replay_tag("reserve_batch")))

    def ack_success_batch_call(self, queue: str, leases: Sequence[tuple[str, str]], *,
                               now_ms: int = 0, results: Sequence[StoredResult] = ()) -> ScriptCall:
        """ack_success_batch for up to 1000 (job_id, lease_token) pairs, safe to send again.

        ``results``: (position in ``leases``, ttl_ms, payload) of the return values to
        store in ``{Q}:result:<id>`` with that TTL when the lease is acked (none: no
        extra argument at all). Sent grouped by TTL, two arguments per result: each
        argument costs redis-py about half a microsecond to pack.
        """
        args = _lease_args(now_ms, leases)
        args += self.scripts.replay_tag("ack_success_batch")
        if results:
            groups: dict[int, list[bytes]] = {}
            for position, ttl_ms, payload in results:
                group = groups.get(ttl_ms)
                if group is None:
                    group = groups[ttl_ms] = []
                group += (_position_arg(position), payload)
            args.append(len(groups))
            for ttl_ms, group in groups.items():
                args += (str(ttl_ms).encode(), len(group) // 2)
                args += group
        return ("ack_success_batch", keys.queue_anchor(queue), args)

    def ack_fail_batch_call(
        self, queue: str, failures: Sequence[tuple[str, str, str, bool] | tuple[str, str, str, bool, int]],
    ) -> ScriptCall:
        """ack_fail_batch for up to 1000 (job_id, lease_token, error, final[, retry_at_ms]), safe to send again.

        ``retry_at_ms`` (epoch ms, server clock) is when a retry falls due; left out
        or 0, the job's own backoff_ms counts from now (as the protocol's ack_fail).
        """
        args: list[Any] = [0, len(failures)]
        for failure in failures:
            job_id, token, error, final = failure[:4]
            retry_at = failure[4] if len(failure) > 4 else 0
            args += (job_id, token, error, "final" if final else "", retry_at)
        args += self.scripts.replay_tag("ack_fail_batch")
        return ("ack_fail_batch", keys.queue_anchor(queue), args)

    @staticmethod
    def heartbeat_batch_call(queue: str, leases: Sequence[tuple[str, str]]) -> ScriptCall:
        """heartbeat_batch for up to 1000 (job_id, lease_token) pairs: each lock becomes now + timeout_ms."""
        return ("heartbeat_batch", keys.queue_anchor(queue), _lease_args(0, leases))

    @staticmethod
    def maintenance_calls(queue: str, limit: int = MAINTENANCE_LIMIT) -> list[ScriptCall]:
        """promote_delayed, then reap_leases (reap_expired noting why in last_error)."""
        anchor = keys.queue_anchor(queue)
        return [("promote_delayed", anchor, (0, limit)), ("reap_leases", anchor, (0, limit))]

    def pause(self, queue: str) -> None:
        """Stop new reserves on the queue; running jobs are untouched."""
        self._call("pause", keys.queue_anchor(queue))

    def resume(self, queue: str) -> bool:
        """Allow reserves again; True if the queue was paused."""
        return int(self._call("resume", keys.queue_anchor(queue))) == 1

    def is_paused(self, queue: str) -> bool:
        """True while the queue is paused."""
        with redis_errors(self.url):
            return bool(self.redis.exists(keys.paused_key(queue)))

    def retry_failed(self, queue: str, job_id: str, *, now_ms: int = 0) -> None:
        """Put a failed job back in its wait lane with attempt reset to 0."""
        self._raise_if_err(
            self._call("retry_failed", keys.queue_anchor(queue), job_id, now_ms), queue, job_id)

    def retry_failed_batch(self, queue: str, job_ids: Sequence[str], *, now_ms: int = 0) -> list[BatchItem]:
        """retry_failed for up to 100 ids; one BatchItem per id."""
        ids = list(job_ids)
        reply = self._call("retry_failed_batch", keys.queue_anchor(queue), now_ms, len(ids), *ids)
        return self._batch_items(reply, queue)

    def remove_job(self, queue: str, job_id: str, lane: str, *, now_ms: int = 0) -> None:
        """Delete a job that is not running from ``lane`` (wait, gwait, delayed, failed, completed)."""
        self._raise_if_err(
            self._call("remove_job", keys.queue_anchor(queue), job_id, lane, now_ms), queue, job_id)

    def remove_jobs_batch(
        self, queue: str, lane: str, job_ids: Sequence[str], *, now_ms: int = 0
    ) -> list[BatchItem]:
        """remove_job for up to 100 ids of one lane; one BatchItem per id."""
        ids = list(job_ids)
        reply = self._call("remove_jobs_batch", keys.queue_anchor(queue), lane, len(ids), *ids, now_ms)
        return self._batch_items(reply, queue)

    def set_group_limit(self, queue: str, gid: str, limit: int, *, now_ms: int = 0,
                        wake_cap: int = WAKE_CAP) -> GroupLimitChange:
        """Set group ``gid``'s concurrency limit to ``limit`` (>= 1) whatever it was (extension
        script group_limit; the protocol's enqueue sets a limit only when none is set).

        When the new limit gives the group's waiting jobs room, the group is made ready
        (and, with ``wake_cap`` > 0, idle omniq-tasks workers are woken); running jobs
        are never stopped by a lower limit.
        """
        keys.validate_gid(gid)
        if check_int("limit", limit, 1) > GROUP_LIMIT_MAX:
            raise ValueError(f"limit must be <= {GROUP_LIMIT_MAX}, got {limit}")
        reply = self._raise_if_err(self._call(
            "group_limit", keys.queue_anchor(queue), gid, limit, check_int("now_ms", now_ms, 0),
            check_int("wake_cap", wake_cap, 0)), queue)
        return GroupLimitChange(queue=queue, gid=gid, limit=limit, previous=_int_or_none(reply[1]),
                                made_ready=as_text(reply[2]) == "1")

    def _batch_items(self, reply: Any, queue: str) -> list[BatchItem]:
        if reply == []:
            return []
        reply = self._raise_if_batch_err(reply, queue)
        items, i = [], 0
        while i + 1 < len(reply):
            job_id, status = as_text(reply[i]), as_text(reply[i + 1])
            if status == "ERR":
                items.append(BatchItem(job_id, False, as_text(reply[i + 2])))
                i += 3
            else:
                items.append(BatchItem(job_id, True))
                i += 2
        return items

    # -- fan-in counters ----------------------------------------------------------

    def childs_init(self, key: str, expected: int) -> None:
        """Start a fan-in counter expecting ``expected`` children."""
        self._raise_if_err(self._call("childs_init", keys.child_anchor(key),
                                      check_int("expected", expected, 1)))

    def child_ack(self, key: str, child_id: str) -> int:
        """Count one child as done (idempotent per child id); returns how many remain.

        The ack that brings the counter to 0 returns 0 and deletes the counter, so 0 is
        returned exactly once per counter: after that (or for a counter never started)
        the script answers NO_COUNTER and this raises ``NoCounterError``. A repeated
        child id does not count twice; it returns the current remaining.
        """
        if not isinstance(child_id, str) or not child_id:
            raise ValueError("child_id must be a non-empty str")
        reply = self._raise_if_err(self._call("child_ack", keys.child_anchor(key), child_id))
        return int(reply[1])

    # -- periodic ticks (extension script, docs/periodic.md) -----------------------

    def enqueue_tick(self, queue: str, name: str, tick_ms: int, marker_ttl_ms: int, job: JobSpec, *,
                     wake_cap: int = WAKE_CAP) -> str:
        """Publish one tick of schedule ``name`` unless it (or a later one) was: "OK",
        "SKIP" or "EXISTS" (see enqueue_tick.lua)."""
        if len(job.payload) > self.max_payload_bytes:
            raise PayloadTooLargeError(f"payload of job {job.job_id} is {len(job.payload)} bytes; "
                                       f"the limit is {self.max_payload_bytes}")
        reply = self._raise_if_err(self._call(
            "enqueue_tick", keys.queue_anchor(queue), name, tick_ms, marker_ttl_ms, job.job_id, job.payload,
            job.max_attempts, job.timeout_ms, job.backoff_ms, job.gid, job.group_limit, wake_cap), queue)
        return as_text(reply[0])

    def last_tick(self, queue: str, name: str) -> int | None:
        """The last tick (epoch ms) published for schedule ``name`` on ``queue``, or None."""
        value = self.redis.get(keys.beat_key(queue, name))
        return int(value) if value is not None else None

    # -- fan-outs (extension scripts, docs/workflows.md) --------------------------

    def fanout_open(self, key: str, n: int, ttl_ms: int, then: bytes, on_error: bytes,
                    queues: Sequence[str]) -> tuple[bool, bool]:
        """Open fan-out ``key`` of ``n`` children: (opened now, every child was published).

        A key opened before (a retried parent) changes nothing and answers
        (False, whether its publisher got to the end).
        """
        reply = self._raise_if_err(self._call(
            "fanout_open", keys.child_anchor(key), check_int("n", n, 0), check_int("ttl_ms", ttl_ms, 1),
            then, on_error, msgspec.json.encode(list(queues)), 0))
        if as_text(reply[0]) == "OK":
            return True, False
        return False, as_text(reply[1]) == "1"

    @staticmethod
    def fanout_child_call(key: str, child_id: str, index: int, entry: bytes) -> ScriptCall:
        """fanout_child: count child ``index`` of fan-out ``key`` as ended (``entry``: "+task\nJSON"
        or "-task\nerror"); its reply says COUNTED, DUP, FIRE, FIRED or GONE."""
        return ("fanout_child", keys.child_anchor(key), [child_id, index, entry])

    def fanout_mark(self, key: str, field: str, value: str) -> bool:
        """Note "published" = "1" or "state" = "fired" on fan-out ``key``; False when it is gone."""
        reply = self._raise_if_err(self._call("fanout_mark", keys.child_anchor(key), field, value))
        return as_text(reply[0]) == "OK"

    def fanout_info(self, key: str) -> dict[str, str]:
        """The fan-out's record (``{cc:<key>}:fo``): n, state, then, on_error, queues, ...; {} when gone."""
        raw = self.redis.hgetall(keys.fanout_key(key, "fo"))
        return {as_text(k): as_text(v) for k, v in raw.items()}

    def fanout_entries(self, key: str, n: int) -> list[bytes | None]:
        """The children's entries of fan-out ``key`` in order (None: not counted), 1000 per call."""
        out: list[Any] = []
        res = keys.fanout_key(key, "res")
        for start in range(0, n, MAX_CALL_JOBS):
            out += self.redis.hmget(res, [str(i) for i in range(start, min(n, start + MAX_CALL_JOBS))])
        return [entry.encode() if isinstance(entry, str) else entry for entry in out]

    # -- reads ---------------------------------------------------------------------

    def stats(self, queue: str) -> QueueStats:
        """The queue's counters and times (zeros for a queue never used)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.stats_key(queue))
        pipe.exists(keys.paused_key(queue))
        with redis_errors(self.url):
            raw, paused = pipe.execute()
        fields = {as_text(k): _int_or_none(v) or 0 for k, v in raw.items()}
        known = {f: fields[f] for f in QueueStats.__struct_fields__ if f in fields}
        known.pop("queue", None)
        known.pop("paused", None)
        return QueueStats(queue=queue, paused=bool(paused), **known)

    def iter_queues(self, *, page: int = READ_PAGE) -> Iterator[str]:
        """Every queue that has a ``{Q}:stats`` hash, each once, in the order SCAN meets them.

        Lazy: one SCAN step of about ``page`` keys per round trip, taken only when the
        caller asks for more, so showing the first screenful of queues does not walk a
        keyspace of millions of job hashes. (There is no registry key: the protocol has
        none, and other producers would not keep one.)
        """
        seen: set[str] = set()
        with redis_errors(self.url):
            for key in self.redis.scan_iter(match="*:stats", count=check_int("page", page, 1)):
                name = keys.queue_from_stats_key(as_text(key))
                if name and name not in seen:  # SCAN may return a key twice
                    seen.add(name)
                    yield name

    def list_queues(self, *, limit: int | None = None) -> list[str]:
        """The names :meth:`iter_queues` finds, sorted; with ``limit``, the scan stops at that many."""
        if limit is not None:
            check_int("limit", limit, 1)
        return sorted(itertools.islice(self.iter_queues(), limit))

    def job(self, queue: str, job_id: str) -> JobInfo | None:
        """The job hash, typed; None when no such job exists."""
        with redis_errors(self.url):
            raw = self.redis.hgetall(keys.job_key(queue, job_id))
        if not raw:
            return None
        h = {as_text(k): as_text(v) for k, v in raw.items()}
        times = ("created_ms", "updated_ms", "queued_ms", "first_started_ms", "last_started_ms",
                 "completed_ms", "failed_ms", "due_ms", "lock_until_ms", "last_error_ms")
        return JobInfo(
            queue=queue, id=h.get("id", job_id), state=h.get("state", ""),
            payload=h.get("payload", ""), attempt=_int_or_none(h.get("attempt")) or 0,
            max_attempts=_int_or_none(h.get("max_attempts")) or 0,
            timeout_ms=_int_or_none(h.get("timeout_ms")) or 0,
            backoff_ms=_int_or_none(h.get("backoff_ms")) or 0, gid=h.get("gid", ""),
            lease_token=h.get("lease_token", ""), last_error=h.get("last_error", ""),
            **{t: _int_or_none(h.get(t)) for t in times},
        )

    # -- results (extension keys, see docs/protocol.md) --------------------------------

    def result_state(self, queue: str, job_id: str, *, watch_until_ms: int = 0) -> ResultState:
        """The stored result, state and last_error of a job, in one round trip.

        With ``watch_until_ms`` (server clock), first mark the job watched until then
        in ``{Q}:watching``: an ack from now on pushes a token to ``{Q}:done:<id>``
        (see :meth:`wait_done`); the ack script drops marks past their time.
        """
        pipe = self.redis.pipeline(transaction=False)
        if watch_until_ms:
            watching = keys.watching_key(queue)
            pipe.zadd(watching, {job_id: watch_until_ms})
        pipe.get(keys.result_key(queue, job_id))
        pipe.hmget(keys.job_key(queue, job_id), "state", "last_error")
        with redis_errors(self.url):
            replies = pipe.execute()
        result, (state, last_error) = replies[-2], replies[-1]
        return ResultState(None if result is None else bytes(result) if isinstance(result, (bytes, bytearray))
                           else str(result).encode(), as_text(state) if state is not None else "",
                           as_text(last_error) if last_error is not None else "")

    def wait_done(self, queue: str, job_id: str, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` on ``{Q}:done:<id>``; True when an ack's token came.

        The token is pushed back at once, so every waiter of the job wakes.
        """
        key = keys.done_key(queue, job_id)
        with redis_errors(self.url):
            got = self.redis.blpop([key], timeout=max(timeout_s, 0.01))
            if not got:
                return False
            pipe = self.redis.pipeline(transaction=False)
            pipe.rpush(key, "1")
            pipe.pexpire(key, _DONE_TTL_MS)
            pipe.execute()
        return True

    def unwatch(self, queue: str, job_id: str) -> None:
        """Drop the job's mark in ``{Q}:watching``."""
        with redis_errors(self.url):
            self.redis.zrem(keys.watching_key(queue), job_id)

    def forget_result(self, queue: str, job_id: str) -> bool:
        """Delete a job's stored result; True when there was one."""
        with redis_errors(self.url):
            return int(self.redis.delete(keys.result_key(queue, job_id))) > 0

    def iter_ids(self, queue: str, lane: str, *, page_size: int = READ_PAGE) -> Iterator[str]:
        """Job ids in a lane's idx mirror (wait, active, delayed, failed, completed), oldest first.

        Read ``page_size`` ids per ZRANGE, the next page only when the caller gets
        there: a lane of millions is never loaded at once. Each page after the first
        asks, in the same round trip, where the last id given now stands, so ids that
        left the lane meanwhile do not make the next page skip any; an id that moves
        while being paged may still show up twice or not at all.
        """
        if lane not in keys.LANES:
            raise ValueError(f"lane must be one of {keys.LANES}, got {lane!r}")
        check_int("page_size", page_size, 1)
        key = keys.idx_key(queue, lane)
        start: int = 0
        last: Any = None
        members: list[Any]
        while True:
            with redis_errors(self.url):
                if last is None:
                    members = self.redis.zrange(key, start, start + page_size - 1)
                else:
                    pipe = self.redis.pipeline(transaction=False)
                    pipe.zrank(key, last)
                    pipe.zrange(key, start, start + page_size - 1)
                    rank, members = pipe.execute()
                    if rank is not None and rank + 1 != start:  # the lane shifted: go on after `last`
                        start = rank + 1
                        members = self.redis.zrange(key, start, start + page_size - 1)
            for member in members:
                yield as_text(member)
            if len(members) < page_size:
                return
            last = members[-1]
            start += page_size
