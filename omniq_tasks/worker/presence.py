"""Worker records: what ``omniq-tasks workers`` shows of each running worker.

A running worker keeps one small hash, ``{omniq-tasks}:worker:<host>:<pid>`` (host,
pid, app, queues, concurrency, pool, running jobs, started, processed, failures,
version), with a TTL of three refreshes, and its id in the ZSET
``{omniq-tasks}:workers`` (score = the last refresh, worker's clock). One pipelined
write every PRESENCE_INTERVAL_S, from the loop's pass; a worker that stops cleanly
deletes both, one that dies is forgotten when its record's TTL runs out (readers drop
index entries whose record is gone). Written only by ``Worker.run()``: a test that
drives ``step()`` by hand writes nothing. A failed write is logged at DEBUG and tried
again at the next refresh: the records are for operators, never worth a failed pass.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from typing import TYPE_CHECKING

from ..protocol import keys

if TYPE_CHECKING:
    from .loop import Worker

log = logging.getLogger("omniq_tasks.worker")

PRESENCE_INTERVAL_S = 5.0
# A record outlives three refreshes: a worker busy in one long pass is not forgotten.
RECORD_TTL_MS = 15_000
# Index entries not refreshed for this long are dropped by any worker's refresh.
INDEX_KEEP_MS = 3_600_000


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("omniq-tasks")
    except Exception:  # not installed as a distribution (a source tree on sys.path)
        return "unknown"


class Presence:
    """The record of one worker; ``start``/``run``/``stop`` are called by its loop."""

    def __init__(self, worker: Worker, pool: str, interval_s: float = PRESENCE_INTERVAL_S) -> None:
        self.worker = worker
        self.pool = pool
        self.interval_s = interval_s
        self.worker_id = ""
        self.started_ms = 0
        self.next_at = math.inf  # nothing is written before start()

    def start(self, now: float) -> None:
        """The worker's run begins: the first refresh is due at once."""
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.started_ms = int(time.time() * 1000)
        self.next_at = now

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self) -> dict[str, str | int]:
        """The fields written now."""
        worker = self.worker
        host, _, pid = self.worker_id.rpartition(":")
        return {
            "id": self.worker_id, "host": host, "pid": int(pid), "app": worker.app.name,
            "queues": ",".join(worker.queues), "concurrency": worker.concurrency, "pool": self.pool,
            "running": worker.running, "processed": worker.processed, "failures": worker.failures,
            "started_ms": self.started_ms, "seen_ms": int(time.time() * 1000),
            "interval_ms": int(self.interval_s * 1000), "version": _version(),
        }

    def run(self, now: float) -> None:
        """Refresh the record and the index entry: one pipelined round trip, never raises."""
        self.next_at = now + self.interval_s
        fields = self.record()
        key = keys.worker_key(self.worker_id)
        seen = int(fields["seen_ms"])
        try:
            pipe = self.worker.client.redis.pipeline(transaction=False)
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.pexpire(key, RECORD_TTL_MS)
            pipe.zadd(keys.WORKER_INDEX, {self.worker_id: seen})
            pipe.zremrangebyscore(keys.WORKER_INDEX, "-inf", seen - INDEX_KEEP_MS)
            pipe.execute()
        except Exception as exc:  # an outage, an ACL without these commands: the next refresh tries again
            log.debug("could not refresh the worker record %s: %r", key, exc)

    def stop(self) -> None:
        """A clean stop: delete the record and the index entry (nothing when never started)."""
        if not self.worker_id:
            return
        self.next_at = math.inf
        try:
            pipe = self.worker.client.redis.pipeline(transaction=False)
            pipe.delete(keys.worker_key(self.worker_id))
            pipe.zrem(keys.WORKER_INDEX, self.worker_id)
            pipe.execute()
        except Exception as exc:
            log.debug("could not delete the worker record %s: %r", self.worker_id, exc)
        self.worker_id = ""
