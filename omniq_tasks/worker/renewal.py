"""Lease renewal: one round trip renews every lease that is due (see leases.py for when)."""

from __future__ import annotations

import logging
from typing import Callable

import redis as redis_lib

from ..defaults import MAX_CALL_JOBS
from ..protocol.client import OmniqClient, parse_heartbeat_batch
from .leases import Lease, Leases
from .troubles import Troubles

log = logging.getLogger("omniq_tasks.worker")

# After a renewal Redis refused or could not take, try again this much later.
RETRY_S = 0.5


class Renewal:
    """Renews the due leases of ``leases``: one heartbeat_batch call per queue and 1000 leases."""

    def __init__(self, client: OmniqClient, leases: Leases, troubles: Troubles) -> None:
        self.client = client
        self.leases = leases
        self.troubles = troubles
        # Told (queue, renewed, lost) after each answered call; set by worker/metrics.py only.
        self.observer: Callable[[str, int, int], None] | None = None

    def due(self, now: float) -> bool:
        return now >= self.leases.next_due

    def renew(self, now: float) -> None:
        """Renew every lease that is due; raises ConnectionError/TimeoutError (renewals retried later)."""
        due = self.leases.due(now)
        groups: list[list[Lease]] = []
        by_queue: dict[str, list[Lease]] = {}
        for lease in due:
            by_queue.setdefault(lease.job.queue, []).append(lease)
        for held in by_queue.values():
            groups += [held[i:i + MAX_CALL_JOBS] for i in range(0, len(held), MAX_CALL_JOBS)]
        try:
            replies = self.client.scripts.call_many([
                self.client.heartbeat_batch_call(g[0].job.queue, [(x.job.job_id, x.job.lease_token) for x in g])
                for g in groups])
        except (redis_lib.ConnectionError, redis_lib.TimeoutError):
            self.leases.retry_later(due, now, RETRY_S)
            self.leases.reschedule()
            raise
        for group, reply in zip(groups, replies):
            if isinstance(reply, Exception):  # e.g. Redis busy: try again soon, say so once
                self.troubles.start("heartbeat", f"renewing {len(group)} lease(s) failed, retrying every "
                                                 f"{RETRY_S} s: {reply}")
                self.leases.retry_later(group, now, RETRY_S)
                continue
            self.troubles.over("heartbeat")
            server_now, locks = parse_heartbeat_batch(reply)
            lost = 0
            for lease, lock in zip(group, locks):
                if isinstance(lock, int):
                    self.leases.renewed(lease, now, lock, server_now)
                else:
                    lease.lost = True
                    lost += 1
                    log.warning("lease lost: job=%s queue=%s (%s); it will not be acked",
                                lease.job.job_id, lease.job.queue, lock)
            if self.observer is not None:
                self.observer(group[0].job.queue, len(locks) - lost, lost)
        self.leases.reschedule()
