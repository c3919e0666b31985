"""The scheduler (``omniq-tasks beat``, or ``worker --beat``): publishes each tick of
the app's schedules, once, however many schedulers run (docs/periodic.md).

Each pass reads "now" from the Redis server's clock (so schedulers on machines
whose clocks disagree agree on the ticks), publishes every schedule's ticks due
since its last pass through enqueue_tick (which publishes a tick only if the
schedule's marker is below it, and moves the marker), then sleeps until the
earliest next tick: no polling in between.

Missed ticks: at start a schedule resumes from its marker (the last tick any
scheduler published). Of the ticks missed since, the newest ``max(1, catch_up)``
are published, oldest first; so by default a downtime costs at most one run. A
schedule never published before starts with its next tick.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable

from ..errors import OmniqConnectionError, OmniqError
from ..middleware import run_before_publish
from ..periodic import Schedule
from ..signature import build_job

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("omniq_tasks.beat")
# The longest sleep between passes, even with no tick due: the clock offset is read
# again and a scheduler that lost Redis tries again.
MAX_SLEEP_S = 60.0
# Woken this much after a tick, so that the server's clock has surely passed it.
LATE_MS = 2
RETRY_S = 1.0


class Beat:
    """Publishes ``app.schedules``' ticks until stopped.

    ``now_ms`` (the server's clock by default) and ``wait`` (sleep that many
    seconds, True when stopped meanwhile) are replaceable for tests.
    """

    def __init__(self, app: App, *, now_ms: Callable[[], int] | None = None,
                 wait: Callable[[float], bool] | None = None) -> None:
        self.app = app
        self._stopped = threading.Event()
        self._now_ms = now_ms or app.client.server_now_ms
        self._wait = wait or self._stopped.wait
        self.considered: dict[str, int] = {}  # per schedule: ticks up to this were dealt with
        self._ttl_ms: dict[str, int] = {}
        self.published = 0

    def stop(self) -> None:
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def run(self) -> int:
        """Publish ticks until ``stop()``; returns an exit code (0)."""
        schedules = list(self.app.schedules.values())
        log.info("beat for app %s: %s", self.app.name,
                 "; ".join(f"{s.name} {s.describe()}" for s in schedules) or "no schedules (nothing to do)")
        while not self._stopped.is_set():
            try:
                next_ms = self.run_once()
                delay = (next_ms - self._now_ms() + LATE_MS) / 1000 if next_ms else MAX_SLEEP_S
            except (OmniqConnectionError, ConnectionError, TimeoutError, OSError) as exc:
                log.warning("beat: Redis unreachable (%s); trying again in %.0f s", exc, RETRY_S)
                delay = RETRY_S
            if self._wait(min(max(delay, 0.001), MAX_SLEEP_S)) or self._stopped.is_set():
                break
        log.info("beat stopped (%d tick(s) published by this scheduler)", self.published)
        return 0

    def run_once(self) -> int:
        """Publish what is due now; returns the earliest next tick (epoch ms; 0: no schedules)."""
        now = self._now_ms()
        soonest = 0
        for schedule in self.app.schedules.values():
            after = self.considered.get(schedule.name)
            if after is None:
                after = self._resume_point(schedule, now)
            for tick in schedule.ticks(after, now, max(1, schedule.catch_up)):
                self._publish(schedule, tick)
            self.considered[schedule.name] = max(after, now)
            upcoming = schedule.next_after(now)
            soonest = upcoming if not soonest else min(soonest, upcoming)
        return soonest

    def _resume_point(self, schedule: Schedule, now: int) -> int:
        """Where a schedule starts: its marker (ticks after it were missed), else now."""
        last = self.app.client.last_tick(schedule.queue, schedule.name)
        if last is None or last > now:
            return now
        missed = len(schedule.ticks(last, now, max(1, schedule.catch_up) + 1))
        if missed > max(1, schedule.catch_up):
            log.info("schedule %s: ticks were missed since %d; publishing the last %d (catch_up=%d)",
                     schedule.name, last, max(1, schedule.catch_up), schedule.catch_up)
        return last

    def _publish(self, schedule: Schedule, tick: int) -> None:
        app = self.app
        spec = schedule.signature.spec
        job = build_job(spec, schedule.task, None, schedule.job_id(tick),
                        {"beat": {"schedule": schedule.name, "tick_ms": tick}}, self._now_ms)
        if app.middleware:
            run_before_publish(app, schedule.task, job)
        ttl = self._ttl_ms.get(schedule.name)
        if ttl is None:
            ttl = self._ttl_ms[schedule.name] = schedule.marker_ttl_ms()
        try:
            word = app.client.enqueue_tick(spec.queue, schedule.name, tick, ttl, job, wake_cap=app.wake_cap)
        except OmniqError as exc:
            if isinstance(exc, OmniqConnectionError):
                raise
            log.error("schedule %s: tick %d not published: %s", schedule.name, tick, exc)
            return
        if word == "OK":
            self.published += 1
            log.info("schedule %s: published %s (job %s)", schedule.name, schedule.task.name, job.job_id)
        else:
            log.debug("schedule %s: tick %d %s (another scheduler published it)", schedule.name, tick, word)
