"""Periodic schedules: a task call published on a cron expression or an interval (docs/periodic.md).

A Schedule is checked when it is declared (the cron text, the time zone, the
call's arguments against the task's annotations), so a bad one fails at import.
Its ticks are instants (epoch ms) every scheduler computes alike:

- ``every=``: the multiples of the interval since the epoch (UTC): every=5 min
  ticks at :00, :05, :10 ... whatever the machine or the start time;
- ``cron=``: the cron expression in its time zone, by cronsim (Debian cron's rules
  at daylight-saving changes: see docs/periodic.md).

The job of tick T has the id ``beat:<name>:<T>``; enqueue_tick publishes it only
if the schedule's marker ``{Q}:beat:<name>`` is below T, and moves the marker.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Iterator, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .errors import InvalidOptionError
from .signature import Signature

if TYPE_CHECKING:
    from .task import Task

# A schedule's name: what its job ids and marker key are made of.
NAME_RE = re.compile(r"^[A-Za-z0-9_.:@/-]{1,128}$")
# The marker lives at least this long (ms), and at least three of the schedule's periods.
MIN_MARKER_TTL_MS = 7 * 24 * 3600 * 1000
# catch_up: at most this many missed ticks are published after a downtime.
MAX_CATCH_UP = 10_000


def _zone(tz: str | None) -> ZoneInfo | timezone:
    if tz is None:
        return timezone.utc
    if not isinstance(tz, str):
        raise InvalidOptionError(f"tz must be a time zone name like 'Europe/Berlin', not {type(tz).__name__}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidOptionError(f"unknown time zone {tz!r} ({exc}); on a system without a tz database, "
                                 "pip install tzdata") from None


class Schedule:
    """One periodic schedule: ``signature`` published at each tick."""

    __slots__ = ("name", "signature", "cron", "every_ms", "tz", "catch_up", "_zone")

    def __init__(self, name: str, signature: Signature[Any], *, cron: str | None = None,
                 every: Union[timedelta, float, None] = None, tz: str | None = None, catch_up: int = 0) -> None:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise InvalidOptionError(f"schedule name must be 1..128 characters of letters, digits and "
                                     f"_ . : @ / -, got {name!r}")
        if signature.spec.first:
            raise InvalidOptionError(f"schedule {name}: task {signature.task.name} is missing argument "
                                     f"{signature.spec.first!r} (a schedule's call needs all its arguments)")
        if (cron is None) == (every is None):
            raise InvalidOptionError(f"schedule {name}: give cron= or every=, exactly one")
        if isinstance(catch_up, bool) or not isinstance(catch_up, int) or not 0 <= catch_up <= MAX_CATCH_UP:
            raise InvalidOptionError(f"schedule {name}: catch_up must be an int in 0..{MAX_CATCH_UP}, got {catch_up!r}")
        self.name = name
        self.signature = signature
        self.catch_up = catch_up
        self.cron: str | None = None
        self.every_ms = 0
        self.tz = tz
        try:
            self._zone = _zone(tz)
        except InvalidOptionError as exc:  # say which schedule
            raise InvalidOptionError(f"schedule {name}: {exc}") from None
        if cron is not None:
            if not isinstance(cron, str):
                raise InvalidOptionError(f"schedule {name}: cron must be a str like '*/5 * * * *'")
            try:
                next(CronSim(cron, datetime.now(self._zone)))
            except (CronSimError, StopIteration, ValueError) as exc:
                raise InvalidOptionError(f"schedule {name}: bad cron expression {cron!r}: {exc or 'never matches'}"
                                         ) from None
            self.cron = cron
        else:
            if tz is not None:
                raise InvalidOptionError(f"schedule {name}: tz applies to cron= only (every= ticks on UTC multiples)")
            seconds = every.total_seconds() if isinstance(every, timedelta) else every
            if (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 1
                    or not math.isfinite(seconds)):
                raise InvalidOptionError(f"schedule {name}: every must be a timedelta or seconds >= 1, got {every!r}")
            self.every_ms = int(seconds * 1000)

    @property
    def task(self) -> Task[Any, Any]:
        return self.signature.task

    @property
    def queue(self) -> str:
        return self.signature.spec.queue

    def describe(self) -> str:
        """``cron "0 3 * * *" Europe/Berlin`` or ``every 300 s``."""
        if self.cron is not None:
            return f'cron "{self.cron}" {self.tz or "UTC"}'
        return f"every {self.every_ms / 1000:g} s"

    def job_id(self, tick_ms: int) -> str:
        return f"beat:{self.name}:{tick_ms}"

    def marker_ttl_ms(self) -> int:
        """How long the last-tick marker lives: past three periods, and at least a week."""
        first = self.next_after(0 if self.every_ms else _now_ms())
        period = self.next_after(first) - first
        return max(MIN_MARKER_TTL_MS, 3 * period)

    def next_after(self, after_ms: int) -> int:
        """The first tick strictly after ``after_ms``."""
        if self.every_ms:
            return (after_ms // self.every_ms + 1) * self.every_ms
        return next(self._forward(after_ms))

    def ticks(self, after_ms: int, until_ms: int, keep: int) -> list[int]:
        """The ticks in (after_ms, until_ms], only the last ``keep`` of them, oldest first."""
        if until_ms <= after_ms or keep <= 0:
            return []
        if self.every_ms:
            last = until_ms // self.every_ms
            first = max(after_ms // self.every_ms + 1, last - keep + 1)
            return [k * self.every_ms for k in range(first, last + 1)]
        out: list[int] = []
        for tick in self._backward(until_ms):
            if tick <= after_ms or len(out) == keep:
                break
            out.append(tick)
        return out[::-1]

    def _forward(self, after_ms: int) -> Iterator[int]:
        start = datetime.fromtimestamp(after_ms / 1000, self._zone).replace(microsecond=0)
        for moment in CronSim(self.cron or "", start):
            tick = int(moment.timestamp() * 1000)
            if tick > after_ms:
                yield tick

    def _backward(self, until_ms: int) -> Iterator[int]:
        """Ticks at or before ``until_ms``, newest first."""
        start = datetime.fromtimestamp(until_ms / 1000 + 1, self._zone).replace(microsecond=0)
        for moment in CronSim(self.cron or "", start, reverse=True):
            tick = int(moment.timestamp() * 1000)
            if tick <= until_ms:
                yield tick

    def __repr__(self) -> str:
        return f"<Schedule {self.name}: {self.task.name} {self.describe()}>"


def _now_ms() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1000)
