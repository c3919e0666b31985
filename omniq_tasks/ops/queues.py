"""Which queues exist, and one row of counts per queue.

The protocol has no registry of queues (its own monitor SCANs for ``*:stats`` on
every refresh, which it warns "may cause high load"). :class:`QueueFinder` walks the
keyspace once, in pages, and keeps what it found for ``ttl_s``; between scans it adds
the queues the running workers announce in their records (a queue that got its first
job a moment ago is shown at the next scan, or at once when a worker serves it).
Each row is the queue's ``{Q}:stats`` hash and pause flag (``OmniqClient.stats``).
"""

from __future__ import annotations

import time
from typing import Callable, Generic, Hashable, TypeVar

import msgspec

from ..defaults import KEEP_COMPLETED, READ_PAGE
from ..protocol import keys
from ..protocol.client import OmniqClient, redis_errors
from .workers import WorkerInfo, announced_queues, live_workers

SCAN_TTL_S = 60.0
T = TypeVar("T")


class ScanCache(Generic[T]):
    """What a paged SCAN found, per key (a queue's groups, or all queues: key None), served
    again for ``ttl_s`` seconds so that a page refreshed every second does not walk the
    keyspace every second (QueueFinder, GroupFinder)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float]) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._found: dict[Hashable, tuple[float, T]] = {}
        self.scans = 0  # how many scans were made (tests, the dashboard's status)

    def get(self, key: Hashable, scan: Callable[[], T]) -> T:
        """The value ``scan()`` gave for ``key``, scanning again when it is ``ttl_s`` old."""
        now = self.clock()
        found = self._found.get(key)
        if found is None or now - found[0] >= self.ttl_s:
            found = self._found[key] = (now, scan())
            self.scans += 1
        return found[1]

    def cached(self, key: Hashable) -> T | None:
        """What the last scan for ``key`` found, however old; None before the first."""
        found = self._found.get(key)
        return None if found is None else found[1]

    def invalidate(self, key: Hashable = ...) -> None:
        """Scan ``key`` again at its next :meth:`get` (every key when none is given)."""
        if key is ...:
            self._found.clear()
        else:
            self._found.pop(key, None)


class QueueFinder:
    """The known queue names: a cached paged SCAN for ``*:stats`` plus the queues workers announce."""

    def __init__(self, client: OmniqClient, *, ttl_s: float = SCAN_TTL_S, page: int = READ_PAGE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.page = page
        self._cache: ScanCache[set[str]] = ScanCache(ttl_s, clock)

    @property
    def scans(self) -> int:
        """How many full scans were made."""
        return self._cache.scans

    def scanned(self) -> set[str]:
        """The queues the last scan found, scanning again when it is older than ``ttl_s``."""
        return set(self._cache.get(None, lambda: set(self.client.iter_queues(page=self.page))))

    def add(self, queue: str) -> None:
        """Remember a queue this process touched (published to), before the next scan finds it."""
        keys.validate_queue(queue)
        found = self._cache.cached(None)
        if found is not None:  # before the first scan there is nothing to add to: it will find it
            found.add(queue)

    def invalidate(self) -> None:
        """Scan again at the next call."""
        self._cache.invalidate()

    def names(self, workers: list[WorkerInfo] | None = None) -> list[str]:
        """Every known queue, sorted: scanned ones and those ``workers`` serve."""
        found = self.scanned()
        for worker in workers or ():
            found.update(q for q in worker.queues if _valid(q))
        return sorted(found)


def _valid(queue: str) -> bool:
    try:
        keys.validate_queue(queue)
    except ValueError:
        return False
    return True


class QueueRow(msgspec.Struct, frozen=True):
    """One queue's counts (``{Q}:stats``), pause flag, last activity and live workers serving it."""

    queue: str
    waiting: int
    group_waiting: int
    active: int
    delayed: int
    failed: int
    completed_kept: int
    groups_ready: int
    paused: bool
    last_activity_ms: int
    workers: int


def queue_row(client: OmniqClient, queue: str, workers: int = 0) -> QueueRow:
    """The row of one queue (zeros for a queue never used)."""
    s = client.stats(queue)
    return QueueRow(queue=queue, waiting=s.waiting, group_waiting=s.group_waiting, active=s.active,
                    delayed=s.delayed, failed=s.failed, completed_kept=s.completed_kept,
                    groups_ready=s.groups_ready, paused=s.paused, last_activity_ms=s.last_activity_ms,
                    workers=workers)


def queue_rows(client: OmniqClient, finder: QueueFinder | None = None,
               workers: list[WorkerInfo] | None = None) -> list[QueueRow]:
    """One row per known queue, sorted by name."""
    if workers is None:
        workers = live_workers(client)
    finder = finder or QueueFinder(client)
    serving = announced_queues(workers)
    return [queue_row(client, queue, serving.get(queue, 0)) for queue in finder.names(workers)]


class Rate(msgspec.Struct, frozen=True):
    """Jobs per second of one queue over the last interval.

    ``completed_per_s``: ids that entered ``{Q}:idx:completed`` since the last sample.
    The protocol keeps only the newest 100 completed jobs: when every kept one is newer
    than the last sample, more may have completed, and the rate is estimated from how
    long those 100 took (``estimated`` True). ``failed_per_s``: ids that entered the
    failed lane. ``backlog_per_s``: the change of waiting + delayed (stats delta; > 0:
    the queue is falling behind).
    """

    queue: str
    completed_per_s: float
    failed_per_s: float
    backlog_per_s: float
    estimated: bool


class ThroughputMeter:
    """Samples the queues' stats and idx mirrors; each :meth:`sample` gives rates since the last."""

    def __init__(self, client: OmniqClient) -> None:
        self.client = client
        self._last: dict[str, tuple[int, int]] = {}  # queue -> (server ms, backlog) at the last sample

    def sample(self, rows: list[QueueRow]) -> dict[str, Rate]:
        """Rates of ``rows``' queues since the previous sample (none for a queue's first sample)."""
        now_ms = self.client.server_now_ms()
        pipe = self.client.redis.pipeline(transaction=False)
        measured = [row for row in rows if row.queue in self._last]
        for row in measured:
            since = self._last[row.queue][0]
            pipe.zcount(keys.idx_key(row.queue, "completed"), f"({since}", "+inf")
            pipe.zcount(keys.idx_key(row.queue, "failed"), f"({since}", "+inf")
            pipe.zrange(keys.idx_key(row.queue, "completed"), 0, 0, withscores=True)
            pipe.zrange(keys.idx_key(row.queue, "completed"), -1, -1, withscores=True)
            pipe.zcard(keys.idx_key(row.queue, "completed"))
        with redis_errors(self.client.url):
            replies = pipe.execute() if measured else []
        rates: dict[str, Rate] = {}
        for n, row in enumerate(measured):
            since, backlog = self._last[row.queue]
            completed, failed, oldest, newest, kept = replies[n * 5:n * 5 + 5]
            seconds = max((now_ms - since) / 1000, 0.001)
            per_s, estimated = completed / seconds, False
            if kept >= KEEP_COMPLETED and completed >= kept and oldest and newest:
                span_s = (newest[0][1] - oldest[0][1]) / 1000
                if span_s > 0:
                    per_s, estimated = max(per_s, (kept - 1) / span_s), True
            now_backlog = row.waiting + row.group_waiting + row.delayed
            rates[row.queue] = Rate(row.queue, per_s, failed / seconds, (now_backlog - backlog) / seconds,
                                    estimated)
        self._last = {row.queue: (now_ms, row.waiting + row.group_waiting + row.delayed) for row in rows}
        return rates
