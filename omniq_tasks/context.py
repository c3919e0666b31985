"""JobContext: what a running task may know about its job and do inside it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .signature import Signature
    from .workflow_handles import FanoutHandle
    from .protocol.client import OmniqClient
    from .protocol.models import Published


class JobContext:
    """Handed to a task that declares a parameter annotated ``JobContext``.

    Fields: ``queue``, ``job_id``, ``attempt`` (1 on the first run; ``retries_left``
    and ``is_last_attempt`` follow from it), ``max_attempts``,
    ``gid`` ("" when ungrouped), ``lease_token``, ``lock_until_ms`` and ``payload_raw``
    (the job's JSON text). Methods are the protocol operations a job may need.
    """

    __slots__ = ("queue", "job_id", "attempt", "max_attempts", "gid", "lease_token",
                 "lock_until_ms", "payload_raw", "_client", "_fanouts")

    def __init__(self, client: OmniqClient, *, queue: str, job_id: str, attempt: int,
                 max_attempts: int, gid: str, lease_token: str, lock_until_ms: int,
                 payload_raw: str) -> None:
        self._client = client
        self.queue = queue
        self.job_id = job_id
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.gid = gid
        self.lease_token = lease_token
        self.lock_until_ms = lock_until_ms
        self.payload_raw = payload_raw
        self._fanouts = 0  # fan-outs started in this run: their default keys

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now fails the job for good."""
        return self.attempt >= self.max_attempts

    @property
    def retries_left(self) -> int:
        """How many more runs a failure of this one may get (0 on the last attempt)."""
        return max(self.max_attempts - self.attempt, 0)

    def heartbeat(self) -> int:
        """Extend this job's lease now; returns the new lock_until_ms.

        The worker already renews every running job's lease; call this only to be
        sure before a long step. The lock becomes the server's now + timeout_ms, as
        the worker's renewals set it. Raises LeaseLostError when the lease is gone.
        """
        self.lock_until_ms = self._client.renew(self.queue, self.job_id, self.lease_token)
        return self.lock_until_ms

    def publish(self, queue: str, payload: Any, **options: Any) -> Published:
        """Publish a plain JSON job (see OmniqClient.publish); for tasks use ``task.delay``."""
        return self._client.publish(queue, payload, **options)

    def pause(self, queue: str | None = None) -> None:
        """Pause a queue (this job's queue by default)."""
        self._client.pause(queue or self.queue)

    def resume(self, queue: str | None = None) -> bool:
        """Resume a queue (this job's queue by default); True if it was paused."""
        return self._client.resume(queue or self.queue)

    def is_paused(self, queue: str | None = None) -> bool:
        """True while the queue (this job's by default) is paused."""
        return self._client.is_paused(queue or self.queue)

    def childs_init(self, key: str, expected: int) -> None:
        """Start a fan-in counter expecting ``expected`` children."""
        self._client.childs_init(key, expected)

    def child_ack(self, key: str, child_id: str | None = None) -> int:
        """Count this job (or ``child_id``) as a finished child; returns how many remain.

        0 is returned exactly once per counter, to the ack that completes it (a retried
        child acking again does not count twice). After that the counter is gone and
        this raises ``NoCounterError`` (as for a counter never started).
        """
        return self._client.child_ack(key, child_id or self.job_id)

    def fanout(self, children: Sequence[Signature[Any]], *, then: Signature[Any] | None = None,
               on_error: Signature[Any] | None = None, key: str | None = None) -> FanoutHandle:
        """``app.fanout`` from inside a task (docs/workflows.md).

        Left out, ``key`` is ``<this job's id>.fo<n>`` for the n-th fan-out this run
        starts (0, 1, ...): a retried run reaches the same keys, so it starts nothing
        that its earlier attempt started.
        """
        from .fanout import start_fanout

        if key is None:
            key = f"{self.job_id}.fo{self._fanouts}"
            self._fanouts += 1
        signatures = [*children, *(s for s in (then, on_error) if s is not None)]
        if not signatures:
            raise ValueError("fanout() needs children or a callback")
        return start_fanout(signatures[0].task.app, children, then, on_error, key)

    def __repr__(self) -> str:
        return (f"JobContext(queue={self.queue!r}, job_id={self.job_id!r}, "
                f"attempt={self.attempt}/{self.max_attempts}, gid={self.gid!r})")
