"""Typed results of the low-level client (msgspec Structs, never tuples)."""

from __future__ import annotations

from typing import Literal, Optional, Union

import msgspec


class Published(msgspec.Struct, frozen=True):
    """A published job. ``existed`` is True when the id was already queued (nothing changed)."""

    queue: str
    job_id: str
    existed: bool = False


class ReservedJob(msgspec.Struct, frozen=True):
    """A job leased by reserve: run it, then ack it with its ``lease_token``."""

    queue: str
    job_id: str
    payload: str
    lock_until_ms: int
    attempt: int
    max_attempts: int
    gid: str
    lease_token: str
    timeout_ms: int = 0  # the lease length; 0 when the reply did not say (protocol reserve)
    status: Literal["JOB"] = "JOB"
    # When the call that leased it was sent (time.monotonic(); the lease began no
    # earlier); 0 when unknown. A body that could not start within one lease of it (a
    # frozen worker, even one frozen with the reply unread) must not start.
    received_at: float = 0.0


class QueueEmpty(msgspec.Struct, frozen=True):
    """Reserve found nothing runnable."""

    queue: str
    status: Literal["EMPTY"] = "EMPTY"


class QueuePaused(msgspec.Struct, frozen=True):
    """Reserve refused: the queue is paused."""

    queue: str
    status: Literal["PAUSED"] = "PAUSED"


ReserveResult = Union[ReservedJob, QueueEmpty, QueuePaused]


class AckFailResult(msgspec.Struct, frozen=True):
    """What ack_fail did: RETRY at ``due_ms``, or FAILED for good (``due_ms`` None)."""

    status: Literal["RETRY", "FAILED"]
    due_ms: Optional[int] = None


class BatchItem(msgspec.Struct, frozen=True):
    """One id's outcome in a batch call; ``reason`` is the contract word when not ok."""

    job_id: str
    ok: bool
    reason: Optional[str] = None


class QueueStats(msgspec.Struct, frozen=True):
    """The ``{Q}:stats`` hash; times are epoch ms, 0 when never set."""

    queue: str
    waiting: int = 0
    group_waiting: int = 0
    waiting_total: int = 0
    active: int = 0
    delayed: int = 0
    failed: int = 0
    completed_kept: int = 0
    groups_ready: int = 0
    last_activity_ms: int = 0
    last_enqueue_ms: int = 0
    last_reserve_ms: int = 0
    last_finish_ms: int = 0
    paused: bool = False


class JobInfo(msgspec.Struct, frozen=True):
    """The job hash, typed. Times are epoch ms, None while unset."""

    queue: str
    id: str
    state: str
    payload: str
    attempt: int
    max_attempts: int
    timeout_ms: int
    backoff_ms: int
    gid: str = ""
    created_ms: Optional[int] = None
    updated_ms: Optional[int] = None
    queued_ms: Optional[int] = None
    first_started_ms: Optional[int] = None
    last_started_ms: Optional[int] = None
    completed_ms: Optional[int] = None
    failed_ms: Optional[int] = None
    due_ms: Optional[int] = None
    lock_until_ms: Optional[int] = None
    lease_token: str = ""
    last_error: str = ""
    last_error_ms: Optional[int] = None


class GroupLimitChange(msgspec.Struct, frozen=True):
    """What ``set_group_limit`` did: the group's limit before (None: none was set) and
    whether the new limit made the group ready (its waiting jobs may start now)."""

    queue: str
    gid: str
    limit: int
    previous: Optional[int]
    made_ready: bool
