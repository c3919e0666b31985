"""The throughput history the overview charts: jobs/s per queue over the last minutes.

A daemon thread samples every ``interval_s`` (:class:`~omniq_tasks.ops.queues.ThroughputMeter`
on the rows of :func:`~omniq_tasks.ops.queues.queue_rows`) and keeps the last
``window_s`` seconds in memory: nothing is written to Redis, and the history starts
empty when the dashboard starts. A sample that cannot be read (Redis away) is skipped
and logged once until sampling works again.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable

import msgspec

from ..ops.queues import QueueRow, Rate, ThroughputMeter
from ..protocol.client import OmniqClient

log = logging.getLogger("omniq_tasks.dashboard")

INTERVAL_S = 2.0
WINDOW_S = 600.0


class Sample(msgspec.Struct, frozen=True):
    """Rates of every known queue since the sample before (server clock, epoch ms)."""

    at_ms: int
    interval_s: float
    completed_per_s: dict[str, float]
    failed_per_s: dict[str, float]
    backlog_per_s: dict[str, float]


class ThroughputHistory:
    """The last ``window_s`` seconds of samples taken every ``interval_s``."""

    def __init__(self, client: OmniqClient, rows: Callable[[], list[QueueRow]], *,
                 interval_s: float = INTERVAL_S, window_s: float = WINDOW_S) -> None:
        if not interval_s > 0 or not window_s >= interval_s:
            raise ValueError("interval_s must be > 0 and window_s >= interval_s")
        self.client = client
        self.rows = rows
        self.interval_s = interval_s
        self.window_s = window_s
        self._meter = ThroughputMeter(client)
        self._samples: deque[Sample] = deque(maxlen=int(window_s / interval_s))
        self._last_ms: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def sample_once(self) -> Sample | None:
        """Take one sample now (the first only sets the base: None)."""
        rows = self.rows()
        rates: dict[str, Rate] = self._meter.sample(rows)
        now_ms = self.client.server_now_ms()
        last, self._last_ms = self._last_ms, now_ms
        if last is None:
            return None
        sample = Sample(at_ms=now_ms, interval_s=round((now_ms - last) / 1000, 3),
                        completed_per_s={q: round(r.completed_per_s, 3) for q, r in rates.items()},
                        failed_per_s={q: round(r.failed_per_s, 3) for q, r in rates.items()},
                        backlog_per_s={q: round(r.backlog_per_s, 3) for q, r in rates.items()})
        with self._lock:
            self._samples.append(sample)
        return sample

    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def latest(self) -> Sample | None:
        with self._lock:
            return self._samples[-1] if self._samples else None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="omniq-dashboard-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once()
                if self._failing:
                    log.info("throughput sampling works again")
                self._failing = False
            except Exception as exc:  # Redis away, a queue that cannot be read: try again later
                if not self._failing:
                    log.warning("throughput sampling failed (retrying every %.1f s): %s", self.interval_s, exc)
                self._failing = True
            self._stop.wait(self.interval_s)
