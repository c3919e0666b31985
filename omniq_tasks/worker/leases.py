"""The leases a worker holds, and when each must be renewed.

A lease is renewed (heartbeat_batch: lock = server now + timeout_ms) once two
thirds of it are left, so two renewals can fail before it ends. Renewals are
scheduled from the ``lock_until_ms`` Redis answers, measured against the server
clock of the same answer, never by counting intervals on our own clock: the lock
stays between a third and one lease ahead of the server, however long the job
runs, and a dead worker's job comes back one lease after its last renewal.
Times here are ``time.monotonic()`` seconds unless a name ends in ``_ms``.
"""

from __future__ import annotations

from ..defaults import TIMEOUT_MS
from ..protocol.models import ReservedJob

# Renew when this share of the lease is left.
RENEW_WHEN_LEFT = 2 / 3
# Never renew more often than this (a lease of a few ms would otherwise spin).
MIN_RENEW_S = 0.05


class Lease:
    """A job this worker holds a lease on."""

    __slots__ = ("job", "started", "renew_at", "lost")

    def __init__(self, job: ReservedJob, started: float, renew_at: float) -> None:
        self.job = job
        self.started = started
        self.renew_at = renew_at
        self.lost = False  # Redis said the lease is gone: the result will not be acked


def renew_at(now: float, lock_until_ms: int, server_now_ms: int, timeout_ms: int) -> float:
    """When to renew a lock that ends at ``lock_until_ms`` by a server clock reading ``server_now_ms`` at ``now``."""
    left_s = (lock_until_ms - server_now_ms) / 1000.0
    return now + max(left_s - timeout_ms * RENEW_WHEN_LEFT / 1000.0, MIN_RENEW_S)


class Leases:
    """The held leases by job id, and the time the next renewal is due."""

    def __init__(self) -> None:
        self._held: dict[str, Lease] = {}
        self.next_due = float("inf")

    def __len__(self) -> int:
        return len(self._held)

    def get(self, job_id: str) -> Lease | None:
        return self._held.get(job_id)

    def add(self, job: ReservedJob, now: float) -> Lease:
        """A job just leased: its lock is ``timeout_ms`` past the server clock of the reply."""
        # renew_at() with the server clock at lock_until_ms - timeout, inlined: this runs per job.
        left_s = (job.timeout_ms or TIMEOUT_MS) * (1 - RENEW_WHEN_LEFT) / 1000.0
        lease = Lease(job, now, now + (left_s if left_s > MIN_RENEW_S else MIN_RENEW_S))
        self._held[job.job_id] = lease
        if lease.renew_at < self.next_due:
            self.next_due = lease.renew_at
        return lease

    def held(self) -> list[Lease]:
        """The leases held now: a copy, safe to take from another thread (metrics)."""
        return list(self._held.values())

    def pop(self, job_id: str) -> Lease | None:
        return self._held.pop(job_id, None)

    def due(self, now: float) -> list[Lease]:
        """Leases to renew now (not those already lost)."""
        return [lease for lease in self._held.values() if lease.renew_at <= now and not lease.lost]

    def renewed(self, lease: Lease, now: float, lock_until_ms: int, server_now_ms: int) -> None:
        lease.renew_at = renew_at(now, lock_until_ms, server_now_ms, lease.job.timeout_ms or TIMEOUT_MS)

    def retry_later(self, leases: list[Lease], now: float, delay_s: float) -> None:
        """A renewal that could not be sent (Redis down or full): try again after ``delay_s``."""
        for lease in leases:
            lease.renew_at = now + delay_s

    def reschedule(self) -> None:
        """Recompute ``next_due`` after renewals changed."""
        self.next_due = min((lease.renew_at for lease in self._held.values() if not lease.lost),
                            default=float("inf"))
