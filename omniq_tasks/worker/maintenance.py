"""Maintenance: promote due delayed jobs and reap expired leases on every queue, each interval."""

from __future__ import annotations

import logging
from typing import Sequence

import redis as redis_lib

from ..protocol.client import OmniqClient
from ..protocol.scripts import ScriptCall
from .troubles import Troubles

log = logging.getLogger("omniq_tasks.worker")


class Maintenance:
    """promote_delayed and reap_leases on ``queues``, in one round trip, every ``interval_s``.

    Any number of workers may do this at once safely; a pass Redis refuses is
    warned about once and tried again at the next interval.
    """

    def __init__(self, client: OmniqClient, queues: Sequence[str], interval_s: float, troubles: Troubles) -> None:
        self.client = client
        self.queues = list(queues)
        self.interval_s = interval_s
        self.troubles = troubles
        self.next_at = 0.0  # the first pass runs at once

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def run(self, now: float) -> None:
        """One pass; never raises a Redis error (the next interval tries again)."""
        self.next_at = now + self.interval_s
        calls: list[ScriptCall] = []
        for queue in self.queues:
            calls += self.client.maintenance_calls(queue)
        try:
            replies = self.client.scripts.call_many(calls)
        except redis_lib.RedisError as exc:
            self.troubles.start("maintenance", f"maintenance of queues {','.join(self.queues)} failed: {exc}")
            return
        errors = [f"{name} on {anchor}: {reply}" for (name, anchor, _), reply in zip(calls, replies)
                  if isinstance(reply, Exception)]
        if errors:
            self.troubles.start("maintenance", "maintenance failed: " + "; ".join(errors))
        else:
            self.troubles.over("maintenance")
