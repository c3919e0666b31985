"""Periodic tasks (docs/periodic.md): each tick published once by any number of
schedulers, catch-up after a downtime, daylight-saving days, a scheduler whose
machine clock is off, declarations refused at import, the CLI.

Real Redis throughout; real ``omniq-tasks beat`` / ``worker --beat`` processes where
several schedulers race (the app is tests/runner_apps/periodic_app.py); in-process
``Beat`` objects with an injected clock where time has to run fast or jump.
Checked each time: the job ids ``beat:<name>:<tick_ms>``, the wait list, the
marker ``{Q}:beat:<name>`` and its TTL, the envelope's ``meta.beat``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator
from zoneinfo import ZoneInfo

import pytest
import redis

from cli_worker import CliWorker, wait_for
from omniq_tasks import App
from omniq_tasks.envelope import read_envelope
from omniq_tasks.errors import InvalidOptionError, TaskArgumentError
from omniq_tasks.periodic import MIN_MARKER_TTL_MS, Schedule
from omniq_tasks.worker.beat import Beat
from omniq_tasks.worker.loop import Worker
from redis_server import RedisServer

TESTS_DIR = Path(__file__).parent
APP_PATH = "runner_apps.periodic_app:app"
PQ = "pq"  # periodic_app's queue
BERLIN = ZoneInfo("Europe/Berlin")
SKEW_SHIM = '''
import os, time
_skew = float(os.environ.get("OMNIQ_TEST_CLOCK_SKEW_S", "0") or 0)
if _skew:  # this process's wall clock is off by _skew seconds (monotonic is not)
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + _skew
    time.time_ns = lambda: _time_ns() + int(_skew * 1e9)
'''
# Slack for a job created before its tick: the server-clock estimate is right to within half
# the shortest of a few TIME round trips, unless the host stalled through all of them.
EARLY_MS = 50
PUBLISHED_RE = re.compile(r"published \S+ \(job (beat:[^:]+:\d+)\)")


# -- helpers ----------------------------------------------------------------------------------


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def local(tick: int) -> str:
    """``03-29 03:00 CEST``: a tick as Berlin's wall clock shows it."""
    return datetime.fromtimestamp(tick / 1000, timezone.utc).astimezone(BERLIN).strftime("%m-%d %H:%M %Z")


def published(r: redis.Redis, queue: str, name: str) -> list[int]:
    """The ticks of schedule ``name`` that have a job hash, sorted."""
    prefix = "{" + queue + "}:job:beat:" + name + ":"
    return sorted(int(key[len(prefix):]) for key in r.scan_iter(match=prefix + "*"))


def wait_list(r: redis.Redis, queue: str) -> list[str]:
    return r.lrange("{" + queue + "}:wait", 0, -1)


def marker(r: redis.Redis, queue: str, name: str) -> tuple[int | None, int]:
    """(the schedule's marker value, its PTTL)."""
    key = "{" + queue + "}:beat:" + name
    value = r.get(key)
    return (int(value) if value is not None else None), r.pttl(key)


def server_ms(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def assert_consecutive(ticks: list[int], step_ms: int) -> None:
    gaps = [(a, b) for a, b in zip(ticks, ticks[1:]) if b - a != step_ms]
    assert not gaps, f"gaps or duplicates between ticks: {gaps}"


def assert_marker(r: redis.Redis, queue: str, name: str, last: int, ttl_ms: int = MIN_MARKER_TTL_MS) -> None:
    value, pttl = marker(r, queue, name)
    assert value == last
    assert ttl_ms - 120_000 < pttl <= ttl_ms, pttl


def assert_envelope(r: redis.Redis, queue: str, name: str, tick: int, task: str, kwargs: dict[str, Any]) -> None:
    payload = r.hget("{" + queue + "}:job:beat:" + name + ":" + str(tick), "payload")
    assert payload is not None
    env = read_envelope(payload)
    assert env is not None and env.task == task and json.loads(bytes(env.kwargs)) == kwargs, payload
    assert env.meta == {"beat": {"schedule": name, "tick_ms": tick}}, payload
    assert json.loads(payload) == {"task": task, "args": [], "kwargs": kwargs, "meta": env.meta}


class CliProc(CliWorker):
    """``python -m omniq_tasks <command> APP *args`` in its own process group (CliWorker's
    log, signal, wait and kill), with extra environment and import path."""

    def __init__(self, command: str, redis_url: str, log_path: Path, *args: str, app: str = APP_PATH,
                 cwd: Path = TESTS_DIR, env: dict[str, str] | None = None, pythonpath: tuple[str, ...] = (),
                 ready_text: str = "beat for app periodic") -> None:
        self.log_path = log_path
        self.ready_text = ready_text
        full_env = {**os.environ, "OMNIQ_TASKS_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join([*pythonpath, str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "omniq_tasks", command, app, *args], cwd=cwd,
                                     env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pid = self.proc.pid

    def published_ids(self) -> list[str]:
        return PUBLISHED_RE.findall(self.log())

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM; it must exit 0."""
        self.signal(signal.SIGTERM)
        assert self.wait_exit(timeout) == 0, self.log()[-3000:]


@pytest.fixture()
def procs(r: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> Iterator[Callable[..., CliProc]]:
    started: list[CliProc] = []

    def start(command: str, *args: str, **kw: Any) -> CliProc:
        proc = CliProc(command, redis_server.url, tmp_path / f"{command}-{len(started)}.log", *args, **kw)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def make_app(url: str, queue: str, *schedules: dict[str, Any]) -> App:
    """An app with task ``work(x: int, tag: str = "")`` and a schedule of ``work.si(1)`` per
    dict of add_periodic options (``name`` included)."""
    app = App("ptest", redis_url=url, queue=queue, max_attempts=1)

    @app.task(name="work")
    def work(x: int, tag: str = "") -> int:
        return x

    for options in schedules:
        app.add_periodic(work.si(1), **options)
    return app


class StepClock:
    """A virtual clock for Beat: ``now_ms`` answers it, ``wait(d)`` moves it on by d
    (no real sleep) and says "stop" once it passes ``end``."""

    def __init__(self, start: int, end: int) -> None:
        self.now = start
        self.end = end

    def now_ms(self) -> int:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.now += max(1, round(seconds * 1000))
        return self.now >= self.end


# -- 1. several scheduler processes: each tick once ----------------------------------------------


def test_three_beat_processes_publish_each_tick_once_through_a_sigkill_and_restart(
        procs: Callable[..., CliProc], r: redis.Redis) -> None:
    """Three ``omniq-tasks beat`` on the 1 s schedule for ~20 s; one SIGKILLed in the
    middle and started again. Every tick of the window is published exactly once."""
    beats = [procs("beat") for _ in range(3)]
    for beat in beats:
        beat.wait_ready()
    started = server_ms(r)
    time.sleep(9)
    beats[1].kill()  # SIGKILL, its process group
    time.sleep(1.5)
    killed_until = server_ms(r)
    restarted = procs("beat").wait_ready()
    beats.append(restarted)
    time.sleep(max(0.0, 20 - (server_ms(r) - started) / 1000))
    stopped = server_ms(r)
    for beat in (beats[0], beats[2], restarted):
        beat.stop()
    ended = server_ms(r)

    ticks = published(r, PQ, "every-sec")
    assert_consecutive(ticks, 1000)
    assert ticks[0] <= started + 1500 and stopped - 1500 <= ticks[-1] <= ended, (started, ticks, stopped)
    assert len(ticks) >= 19
    assert any(killed_until - 1500 < t < killed_until for t in ticks)  # the kill window is covered
    ids = [f"beat:every-sec:{t}" for t in ticks]
    assert wait_list(r, PQ) == ids  # one entry per tick, oldest first: no worker ran
    assert published(r, PQ, "nightly") == []  # 03:00 Berlin is not in the window
    assert_marker(r, PQ, "every-sec", ticks[-1])
    for t in ticks:
        job = r.hgetall("{pq}:job:beat:every-sec:" + str(t))
        assert job["state"] == "wait" and job["attempt"] == "0"
        # on the server's clock, within a second of its tick (EARLY_MS: a host stalled through
        # every TIME call that measures the clock offset can leave it a little ahead)
        assert -EARLY_MS <= int(job["created_ms"]) - t < 1000, (t, job["created_ms"])
        assert_envelope(r, PQ, "every-sec", t, "sec_tick", {"label": "sec", "n": 7})

    # Who published what, from the logs: never one tick twice, and (but for a publish
    # the SIGKILL may have cut before its log line) every tick by someone.
    logged = [job_id for beat in beats for job_id in beat.published_ids()]
    assert len(logged) == len(set(logged)) and set(logged) <= set(ids)
    assert len(ids) - len(logged) <= 1
    assert "beat stopped" in restarted.log()


# -- 2. a cron schedule with a fast clock, three schedulers ---------------------------------------


def test_cron_every_five_minutes_over_three_virtual_hours_with_three_schedulers(
        redis_server: RedisServer, r: redis.Redis) -> None:
    """Three Beat objects (each with its own app and client) in threads share a clock
    running 3600 times too fast: ``*/5 * * * *`` over three virtual hours."""
    speed = 3600
    start = ms("2026-06-01T00:02:30+00:00")  # half-way between ticks
    end = start + 3 * 3600_000  # 03:02:30: half-way again
    origin = time.monotonic()
    stop = threading.Event()

    def now_ms() -> int:
        return start + int((time.monotonic() - origin) * 1000 * speed)

    def wait(seconds: float) -> bool:
        return stop.wait(seconds / speed)

    apps = [make_app(redis_server.url, "cq", {"name": "five", "cron": "*/5 * * * *"}) for _ in range(3)]
    beats = [Beat(app, now_ms=now_ms, wait=wait) for app in apps]
    threads = [threading.Thread(target=beat.run, daemon=True) for beat in beats]
    for thread in threads:
        thread.start()
    while now_ms() < end:
        time.sleep(0.005)
    stop.set()
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()
    for app in apps:
        app.close()

    expected = list(range(start + 150_000, end, 300_000))  # 00:05, 00:10 ... 03:00
    assert len(expected) == 36
    assert published(r, "cq", "five") == expected
    assert sum(beat.published for beat in beats) == 36  # each tick an OK reply once
    assert wait_list(r, "cq") == [f"beat:five:{t}" for t in expected]
    assert_marker(r, "cq", "five", expected[-1])


# -- 3. missed ticks --------------------------------------------------------------------------------

T = ms("2026-01-01T00:00:00+00:00")  # a tick of every=60 and of "* * * * *"
MIN = 60_000


@pytest.mark.parametrize("when", [{"every": 60}, {"cron": "* * * * *"}], ids=["every", "cron"])
@pytest.mark.parametrize("catch_up,expect_missed", [(0, [10]), (1, [10]), (3, [8, 9, 10])])
@pytest.mark.parametrize("how", ["restart", "pause"])
def test_after_ten_missed_ticks_the_newest_catch_up_are_published_oldest_first(
        redis_server: RedisServer, r: redis.Redis, when: dict[str, Any], catch_up: int,
        expect_missed: list[int], how: str) -> None:
    """Marker at T; then the clock jumps ten ticks on (plus 20 s), for a scheduler that
    starts then ("restart") or for the same one, paused meanwhile ("pause")."""
    clock = [T - 500]
    app = make_app(redis_server.url, "mq", {"name": "m", "catch_up": catch_up, **when})
    beat = Beat(app, now_ms=lambda: clock[0])
    assert beat.run_once() == T and published(r, "mq", "m") == []  # no marker: nothing yet
    clock[0] = T + 3
    assert beat.run_once() == T + MIN
    assert published(r, "mq", "m") == [T]
    assert_marker(r, "mq", "m", T)

    clock[0] = T + 10 * MIN + 20_000
    if how == "restart":
        beat = Beat(make_app(redis_server.url, "mq", {"name": "m", "catch_up": catch_up, **when}),
                    now_ms=lambda: clock[0])
    assert beat.run_once() == T + 11 * MIN
    expected = [T] + [T + k * MIN for k in expect_missed]
    assert published(r, "mq", "m") == expected
    assert wait_list(r, "mq") == [f"beat:m:{t}" for t in expected]  # published oldest first
    created = [int(r.hget(f"{{mq}}:job:beat:m:{t}", "created_ms")) for t in expected]
    assert created == sorted(created)
    assert_marker(r, "mq", "m", expected[-1])
    for t in expected:
        assert_envelope(r, "mq", "m", t, "work", {"x": 1})
    # Nothing more until the next tick; a second scheduler at the same moment adds nothing.
    assert beat.run_once() == T + 11 * MIN
    other = Beat(make_app(redis_server.url, "mq", {"name": "m", "catch_up": catch_up, **when}),
                 now_ms=lambda: clock[0])
    assert other.run_once() == T + 11 * MIN and other.published == 0
    assert published(r, "mq", "m") == expected
    app.close()


@pytest.mark.parametrize("gone", ["none", "expired"])
@pytest.mark.parametrize("catch_up", [0, 3])
def test_without_a_marker_a_schedule_starts_with_its_next_tick(
        redis_server: RedisServer, r: redis.Redis, gone: str, catch_up: int) -> None:
    """No marker (never published, or its TTL passed): after a downtime of ten ticks
    nothing is published at once, whatever catch_up says; the next tick is."""
    clock = [T - 500]
    app = make_app(redis_server.url, "nq", {"name": "n", "every": 60, "catch_up": catch_up})
    if gone == "expired":
        beat = Beat(app, now_ms=lambda: clock[0])
        beat.run_once()
        clock[0] = T + 1
        beat.run_once()
        assert published(r, "nq", "n") == [T] and marker(r, "nq", "n")[0] == T
        r.pexpire("{nq}:beat:n", 1)
        wait_for(lambda: r.exists("{nq}:beat:n") == 0, 5, what="the marker to expire")
    clock[0] = T + 10 * MIN + 20_000
    beat = Beat(make_app(redis_server.url, "nq", {"name": "n", "every": 60, "catch_up": catch_up}),
                now_ms=lambda: clock[0])
    before = published(r, "nq", "n")
    assert beat.run_once() == T + 11 * MIN
    assert published(r, "nq", "n") == before and beat.published == 0
    assert marker(r, "nq", "n")[0] is None
    clock[0] = T + 11 * MIN + 2
    assert beat.run_once() == T + 12 * MIN
    assert published(r, "nq", "n") == [*before, T + 11 * MIN]
    assert_marker(r, "nq", "n", T + 11 * MIN)
    app.close()


# -- 4. daylight-saving days --------------------------------------------------------------------------

SPRING = ("2026-03-28T20:00:00+00:00", "2026-03-29T06:00:00+00:00")  # Berlin: 02:00 CET -> 03:00 CEST
FALL = ("2026-10-24T20:00:00+00:00", "2026-10-25T06:00:00+00:00")  # Berlin: 03:00 CEST -> 02:00 CET
DAILY_SPRING = ["03-28 02:30 CET", "03-29 03:00 CEST", "03-30 02:30 CEST"]  # 03-27 .. 03-30
DAILY_FALL = ["10-24 02:30 CEST", "10-25 02:30 CEST", "10-26 02:30 CET"]  # 10-23 .. 10-26
HOURLY_SPRING = ["03-28 22:00 CET", "03-28 23:00 CET", "03-29 00:00 CET", "03-29 01:00 CET",  # no 02:00
                 "03-29 03:00 CEST", "03-29 04:00 CEST", "03-29 05:00 CEST", "03-29 06:00 CEST",
                 "03-29 07:00 CEST", "03-29 08:00 CEST"]
HOURLY_FALL = ["10-24 23:00 CEST", "10-25 00:00 CEST", "10-25 01:00 CEST", "10-25 02:00 CEST",
               "10-25 02:00 CET", "10-25 03:00 CET", "10-25 04:00 CET", "10-25 05:00 CET",  # 02:00 twice
               "10-25 06:00 CET", "10-25 07:00 CET"]


def _dst_schedules() -> tuple[Schedule, Schedule]:
    app = make_app("redis://localhost:1/0", "dq",
                   {"name": "daily", "cron": "30 2 * * *", "tz": "Europe/Berlin"},
                   {"name": "hourly", "cron": "0 * * * *", "tz": "Europe/Berlin"})
    return app.schedules["daily"], app.schedules["hourly"]


@pytest.mark.parametrize("day,window,daily,hourly", [
    ("spring", ("2026-03-27T12:00:00+00:00", "2026-03-30T12:00:00+00:00"), DAILY_SPRING, HOURLY_SPRING),
    ("fall", ("2026-10-23T12:00:00+00:00", "2026-10-26T12:00:00+00:00"), DAILY_FALL, HOURLY_FALL),
], ids=["spring", "fall"])
def test_dst_ticks_of_schedule(day: str, window: tuple[str, str], daily: list[str], hourly: list[str]) -> None:
    """docs/periodic.md's table, by Schedule.ticks (backwards) and next_after (forwards)."""
    sched_daily, sched_hourly = _dst_schedules()
    after, until = ms(window[0]), ms(window[1])
    daily_ticks = sched_daily.ticks(after, until, 100)
    assert [local(t) for t in daily_ticks] == daily
    forward, t = [], after
    while (t := sched_daily.next_after(t)) <= until:
        forward.append(t)
    assert forward == daily_ticks
    assert sched_daily.ticks(after, until, 2) == daily_ticks[-2:]  # the newest, oldest first

    h_after = ms((SPRING if day == "spring" else FALL)[0])
    h_until = h_after + 10 * 3600_000
    hourly_ticks = sched_hourly.ticks(h_after, h_until, 100)
    assert [local(t) for t in hourly_ticks] == hourly
    assert_consecutive(hourly_ticks, 3600_000)  # every real hour, one tick
    forward, t = [], h_after
    while (t := sched_hourly.next_after(t)) <= h_until:
        forward.append(t)
    assert forward == hourly_ticks
    # From inside the repeated hour (fall) or right before the gap (spring), the next ones.
    if day == "fall":
        first_0230 = ms("2026-10-25T00:30:00+00:00")
        assert local(sched_daily.next_after(first_0230)) == "10-26 02:30 CET"
        assert sched_hourly.next_after(ms("2026-10-25T00:30:00+00:00")) == ms("2026-10-25T01:00:00+00:00")
        assert sched_hourly.next_after(ms("2026-10-25T01:00:00+00:00")) == ms("2026-10-25T02:00:00+00:00")
    else:
        assert local(sched_daily.next_after(ms("2026-03-29T00:59:00+00:00"))) == "03-29 03:00 CEST"
        assert local(sched_hourly.next_after(ms("2026-03-29T00:00:00+00:00"))) == "03-29 03:00 CEST"


@pytest.mark.parametrize("window,daily,hourly", [
    (("2026-03-28T20:00:00+00:00", "2026-03-30T06:00:00+00:00"), DAILY_SPRING[1:], HOURLY_SPRING),
    (("2026-10-24T20:00:00+00:00", "2026-10-26T06:00:00+00:00"), DAILY_FALL[1:], HOURLY_FALL),
], ids=["spring", "fall"])
def test_dst_ticks_published_by_beat(redis_server: RedisServer, r: redis.Redis, window: tuple[str, str],
                                     daily: list[str], hourly: list[str]) -> None:
    """Beat.run over the change with a virtual clock (it sleeps from tick to tick, at most
    a minute at a time): what it publishes is the table's ticks, each once."""
    start, end = ms(window[0]), ms(window[1])
    app = make_app(redis_server.url, "dq",
                   {"name": "daily", "cron": "30 2 * * *", "tz": "Europe/Berlin"},
                   {"name": "hourly", "cron": "0 * * * *", "tz": "Europe/Berlin"})
    clock = StepClock(start, end)
    beat = Beat(app, now_ms=clock.now_ms, wait=clock.wait)
    assert beat.run() == 0
    assert [local(t) for t in published(r, "dq", "daily")] == daily
    hourly_ticks = published(r, "dq", "hourly")
    assert [local(t) for t in hourly_ticks][:len(hourly)] == hourly
    assert_consecutive(hourly_ticks, 3600_000)
    # the first tick after the start; the one at the end is not reached (the clock stops first)
    assert hourly_ticks[0] == start + 3600_000 and hourly_ticks[-1] == end - 3600_000
    assert beat.published == len(daily) + len(hourly_ticks)
    assert marker(r, "dq", "daily")[0] == published(r, "dq", "daily")[-1]
    app.close()


# -- 5. a scheduler whose machine clock is minutes off ------------------------------------------------


def test_beats_with_clocks_five_minutes_off_publish_on_the_server_clock(
        procs: Callable[..., CliProc], r: redis.Redis, tmp_path: Path) -> None:
    """``omniq-tasks beat`` with a wall clock 5 min ahead runs alone, then with an
    unskewed one and one 5 min behind; then the one behind runs alone. Each tick once,
    no gap, every job created within a second of its tick on the server's clock."""
    shim = tmp_path / "skew"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SKEW_SHIM)

    def skewed(seconds: str) -> CliProc:
        proc = procs("beat", env={"OMNIQ_TEST_CLOCK_SKEW_S": seconds}, pythonpath=(str(shim),)).wait_ready()
        shown = re.search(r"periodic_app wall clock ([\d.]+)", proc.log())
        assert shown and abs(float(shown.group(1)) - time.time() - float(seconds)) < 30, "the skew shim is not on"
        return proc

    ahead = skewed("300")
    wait_for(lambda: len(ahead.published_ids()) >= 3, 10, ahead, "3 ticks from the beat 5 min ahead")
    plain = procs("beat").wait_ready()
    behind = skewed("-300")
    time.sleep(3)
    ahead.stop()
    time.sleep(2)
    plain.stop()
    seen = len(behind.published_ids())
    wait_for(lambda: len(behind.published_ids()) >= seen + 3, 10, behind, "3 ticks from the beat 5 min behind")
    behind.stop()

    ticks = published(r, PQ, "every-sec")
    assert_consecutive(ticks, 1000)
    assert len(ticks) >= 10
    late = {t: int(r.hget(f"{{pq}}:job:beat:every-sec:{t}", "created_ms")) - t for t in ticks}
    assert all(-EARLY_MS <= d < 1000 for d in late.values()), late  # 5 min off would be -300000 or skipped
    logged = [job_id for proc in (ahead, plain, behind) for job_id in proc.published_ids()]
    assert len(logged) == len(set(logged)) == len(ticks)
    assert_marker(r, PQ, "every-sec", ticks[-1])


# -- 6. bad declarations -------------------------------------------------------------------------------


def _declare(bad: str) -> None:
    app = App("bad", redis_url="redis://localhost:1/0")

    @app.task(name="t")
    def t(x: int, tag: str = "") -> None: ...

    @app.task(name="free")
    def free() -> None: ...

    if bad == "cron":
        app.periodic(cron="61 * * * *")(free)
    elif bad == "cron fields":
        app.add_periodic(free, cron="* * *")
    elif bad == "tz":
        app.periodic(cron="0 3 * * *", tz="Mars/Olympus")(free)
    elif bad == "both":
        app.periodic(cron="0 3 * * *", every=60)(free)
    elif bad == "neither":
        app.periodic()(free)
    elif bad == "every < 1 s":
        app.periodic(every=0.5)(free)
    elif bad == "every timedelta < 1 s":
        app.periodic(every=timedelta(milliseconds=999))(free)
    elif bad == "every inf":
        app.periodic(every=float("inf"))(free)
    elif bad == "tz with every":
        app.periodic(every=60, tz="Europe/Berlin")(free)
    elif bad == "args type":
        app.periodic(every=60, kwargs={"x": "seven"})(t)
    elif bad == "args missing":
        app.periodic(every=60)(t)
    elif bad == "args extra":
        app.periodic(every=60, args=(1,), kwargs={"nope": 2})(t)
    elif bad == "duplicate":
        app.periodic(every=60)(free)
        app.periodic(cron="0 3 * * *")(free)
    elif bad == "name":
        app.periodic(every=60, name="nightly report")(free)
    elif bad == "name empty":
        app.periodic(every=60, name="")(free)
    elif bad == "name long":
        app.periodic(every=60, name="n" * 129)(free)
    elif bad == "below task":
        @app.task(name="below")
        @app.periodic(every=60)
        def below() -> None: ...
    elif bad == "catch_up negative":
        app.periodic(every=60, catch_up=-1)(free)
    elif bad == "catch_up big":
        app.periodic(every=60, catch_up=10_001)(free)
    elif bad == "catch_up bool":
        app.periodic(every=60, catch_up=True)(free)
    elif bad == "add_periodic not a call":
        app.add_periodic("free", every=60)  # type: ignore[arg-type]
    else:
        raise AssertionError(bad)


@pytest.mark.parametrize("bad,error,words", [
    ("cron", InvalidOptionError, "schedule free: bad cron expression '61 * * * *': Bad minute"),
    ("cron fields", InvalidOptionError, "bad cron expression '* * *': Wrong number of fields"),
    ("tz", InvalidOptionError, "schedule free: unknown time zone 'Mars/Olympus'"),
    ("both", InvalidOptionError, "give cron= or every=, exactly one"),
    ("neither", InvalidOptionError, "give cron= or every=, exactly one"),
    ("every < 1 s", InvalidOptionError, "every must be a timedelta or seconds >= 1, got 0.5"),
    ("every timedelta < 1 s", InvalidOptionError, "every must be a timedelta or seconds >= 1"),
    ("every inf", InvalidOptionError, "every must be a timedelta or seconds >= 1, got inf"),
    ("tz with every", InvalidOptionError, "tz applies to cron= only"),
    ("args type", TaskArgumentError, "task t: Expected `int`, got `str` (argument x)"),
    ("args missing", TaskArgumentError, "task t: missing argument(s) 'x'"),
    ("args extra", TaskArgumentError, "unexpected keyword argument 'nope'"),
    ("duplicate", InvalidOptionError, "a schedule named 'free' exists already"),
    ("name", InvalidOptionError, "schedule name must be 1..128 characters"),
    ("name empty", InvalidOptionError, "schedule name must be 1..128 characters"),
    ("name long", InvalidOptionError, "schedule name must be 1..128 characters"),
    ("below task", TypeError, "@app.periodic(...) goes above @app.task"),
    ("catch_up negative", InvalidOptionError, "catch_up must be an int in 0..10000, got -1"),
    ("catch_up big", InvalidOptionError, "catch_up must be an int in 0..10000, got 10001"),
    ("catch_up bool", InvalidOptionError, "catch_up must be an int in 0..10000, got True"),
    ("add_periodic not a call", TypeError, "add_periodic takes a signature (task.si(...)) or a task"),
])
def test_bad_declarations_are_refused_with_a_clear_message(bad: str, error: type[Exception], words: str) -> None:
    with pytest.raises(error) as info:
        _declare(bad)
    assert words in str(info.value)
    if error is TypeError:
        assert not isinstance(info.value, InvalidOptionError)


def test_a_good_declaration_keeps_its_call() -> None:
    app = App("good", redis_url="redis://localhost:1/0")

    @app.periodic(every=timedelta(minutes=5), args=(3,), kwargs={"tag": "t"}, name="a.b:c@d/e-f_g")
    @app.task(name="t")
    def t(x: int, tag: str = "") -> None: ...

    assert app.schedules["a.b:c@d/e-f_g"].every_ms == 300_000
    assert app.schedules["a.b:c@d/e-f_g"].describe() == "every 300 s"
    assert json.loads(bytes(app.schedules["a.b:c@d/e-f_g"].signature.spec.kwargs)) == {"x": 3, "tag": "t"}
    assert app.add_periodic(t.si(4), cron="0 3 * * MON-FRI", tz="Europe/Berlin").name == "t"


@pytest.mark.parametrize("source,words", [
    ('app.periodic(cron="61 * * * *", args=(1,))(t)', "bad cron expression '61 * * * *': Bad minute"),
    ('app.periodic(cron="0 3 * * *", tz="Mars/Olympus", args=(1,))(t)', "unknown time zone 'Mars/Olympus'"),
    ('app.periodic(every=60, kwargs={"x": "seven"})(t)', "TaskArgumentError: task t: Expected `int`, got `str`"),
    ('app.periodic(every=60)(t)', "TaskArgumentError: task t: missing argument(s) 'x'"),
], ids=["cron", "tz", "args", "missing"])
def test_beat_exits_2_on_an_app_with_a_bad_schedule(redis_server: RedisServer, tmp_path: Path,
                                                    source: str, words: str) -> None:
    (tmp_path / "badsched.py").write_text(
        "from omniq_tasks import App\napp = App('bad')\n"
        "@app.task(name='t')\ndef t(x: int) -> None: ...\n" + source + "\n")
    out = subprocess.run([sys.executable, "-m", "omniq_tasks", "beat", "badsched:app"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "OMNIQ_TASKS_REDIS_URL": redis_server.url})
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "omniq-tasks: cannot load app 'badsched:app'" in out.stderr and words in out.stderr, out.stderr


# -- 7, 8. schedules, worker --beat, what the job carries ----------------------------------------------


def _schedules_output(redis_server: RedisServer) -> str:
    out = subprocess.run([sys.executable, "-m", "omniq_tasks", "schedules", APP_PATH], cwd=TESTS_DIR,
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "OMNIQ_TASKS_REDIS_URL": redis_server.url,
                              "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])})
    assert out.returncode == 0, out.stderr
    return out.stdout


def _row(output: str, name: str) -> str:
    rows = [line for line in output.splitlines() if f" {name} " in line]
    assert len(rows) == 1, output
    return rows[0]


def test_worker_with_beat_publishes_and_runs_the_ticks_and_schedules_shows_them(
        procs: Callable[..., CliProc], redis_server: RedisServer, r: redis.Redis, tmp_path: Path) -> None:
    from omniq_tasks.cli.schedules import _when
    from runner_apps.periodic_app import app as periodic_app

    nightly = periodic_app.schedules["nightly"]
    before = _schedules_output(redis_server)
    now = server_ms(r)
    assert "schedules of app periodic" in before
    sec_row, nightly_row = _row(before, "every-sec"), _row(before, "nightly")
    assert "sec_tick" in sec_row and " pq " in sec_row and "every 1 s" in sec_row and "never" in sec_row
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, in [\d.]+ m?s ", sec_row), sec_row
    assert 'cron "0 3 * * *" Europe/Berlin' in nightly_row and "never" in nightly_row
    assert f"{_when(nightly.next_after(now), 'Europe/Berlin')}, in " in nightly_row, nightly_row
    assert re.search(r"\(03:00 CES?T\)", nightly_row), nightly_row

    record = tmp_path / "runs.txt"
    worker = procs("worker", "--beat", "--poll-interval", "0.2", "-c", "2", env={"PERIODIC_RECORD": str(record)},
                   ready_text="worker for app periodic").wait_ready()
    wait_for(lambda: record.exists() and len(record.read_text().splitlines()) >= 3, 15, worker, "3 runs")
    worker.stop(30)
    last, _ = marker(r, PQ, "every-sec")
    ticks = published(r, PQ, "every-sec")
    time.sleep(2.2)  # the beat stopped with the worker: no tick published since
    assert marker(r, PQ, "every-sec")[0] == last == ticks[-1] and published(r, PQ, "every-sec") == ticks
    assert_consecutive(ticks, 1000)
    assert_marker(r, PQ, "every-sec", ticks[-1])
    assert set(worker.published_ids()) == {f"beat:every-sec:{t}" for t in ticks}

    runs = [line.split(" ", 2) for line in record.read_text().splitlines()]
    ran_ids = [job_id for _, job_id, _ in runs]
    assert len(ran_ids) == len(set(ran_ids)) >= 3  # each tick ran once
    assert {task for task, _, _ in runs} == {"sec_tick"}
    assert all(json.loads(kwargs) == {"label": "sec", "n": 7} for _, _, kwargs in runs)  # the declared call
    for job_id in ran_ids:
        assert r.hget("{pq}:job:" + job_id, "state") == "completed"
    # What was not run before the worker stopped waits for the next worker, once.
    waiting = wait_list(r, PQ)
    assert sorted([*ran_ids, *waiting], key=lambda j: int(j.rsplit(":", 1)[1])) == \
        [f"beat:every-sec:{t}" for t in ticks]

    r.set("{pq}:beat:nightly", nightly.ticks(now - 2 * 86400_000, now, 1)[0])
    after = _schedules_output(redis_server)
    assert "never" not in after
    sec_row, nightly_row = _row(after, "every-sec"), _row(after, "nightly")
    assert f"{_when(ticks[-1], None)}, " in sec_row and " ago" in sec_row, sec_row
    assert f"{_when(nightly.ticks(now - 2 * 86400_000, now, 1)[0], 'Europe/Berlin')}, " in nightly_row
    assert re.search(r", \d[\w. ]* ago", nightly_row), nightly_row


def test_the_published_job_carries_meta_beat_and_runs_with_the_declared_arguments(
        redis_server: RedisServer, r: redis.Redis) -> None:
    app = App("meta", redis_url=redis_server.url, queue="eq", max_attempts=1)
    calls: list[tuple[Any, ...]] = []

    @app.periodic(every=30, args=(5,), kwargs={"tag": "five"}, name="sum")
    @app.task(name="add")
    def add(x: int, tag: str = "", y: int = 2) -> int:
        calls.append((x, tag, y))
        return x + y

    app.add_periodic(add.si(7, y=3), cron="*/10 * * * *", name="other")
    clock = [T - 1]
    beat = Beat(app, now_ms=lambda: clock[0])
    beat.run_once()
    clock[0] = T
    assert beat.run_once() == T + 30_000
    assert beat.published == 2
    assert_envelope(r, "eq", "sum", T, "add", {"x": 5, "tag": "five"})
    assert_envelope(r, "eq", "other", T, "add", {"x": 7, "y": 3})
    assert_marker(r, "eq", "sum", T)
    assert_marker(r, "eq", "other", T)
    assert Worker(app, drain=True, poll_interval_s=0.1).run() == 0
    assert sorted(calls) == [(5, "five", 2), (7, "", 3)]
    for name in ("sum", "other"):
        job = r.hgetall(f"{{eq}}:job:beat:{name}:{T}")
        assert job["state"] == "completed" and job["attempt"] == "1"
    assert r.lrange("{eq}:completed", 0, -1) and wait_list(r, "eq") == []
    app.close()


def test_a_tick_is_not_published_before_its_instant_when_the_first_connect_is_slow(
        redis_server: RedisServer, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connect that takes 100 ms (a loaded host, TLS, a far server): the Beat must still
    publish each tick at or after its instant on the server's clock."""
    import redis.connection

    real_connect = redis.connection.Connection._connect

    def slow_connect(self: redis.connection.Connection) -> Any:
        time.sleep(0.1)
        return real_connect(self)

    monkeypatch.setattr(redis.connection.Connection, "_connect", slow_connect)
    app = make_app(redis_server.url, "sq", {"name": "s", "every": 1})
    beat = Beat(app)
    thread = threading.Thread(target=beat.run, daemon=True)
    thread.start()
    wait_for(lambda: len(published(r, "sq", "s")) >= 2, 10, what="2 ticks")
    beat.stop()
    thread.join(5)
    app.close()
    early = {t: int(r.hget(f"{{sq}}:job:beat:s:{t}", "created_ms")) - t for t in published(r, "sq", "s")}
    assert all(d >= 0 for d in early.values()), f"created before the tick by (ms): {early}"
