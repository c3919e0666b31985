"""The app every reliability test runs: each task run appends to one ledger file.

A run writes two lines with ``os.write`` on an ``O_APPEND`` descriptor (one write
per line, so lines from many processes never interleave):

    <job_id> <attempt> <start_ms> - <pid> S <gid> <prior>        when the body starts
    <job_id> <attempt> <start_ms> <end_ms> <pid> ok|err <gid> -   when it returns or raises

``prior`` is what the job hash said when the run started: ``C`` it already had a
``completed_ms`` (it was acked before), ``F`` a ``failed_ms``, ``-`` neither,
``?`` Redis could not be asked. Times are CLOCK_REALTIME in ms with µs decimals,
read with ``clock_gettime`` so a test that skews ``time.time`` does not skew them.

Task names are explicit so the CLI worker (which imports this as ``ledger_app``)
and the test process (``reliability.ledger_app``) agree on them.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import redis

from omniq_tasks import App
from omniq_tasks.context import JobContext

LEDGER_ENV = "OMNIQ_LEDGER"
# A direct connection (never through a test's proxy) for the `prior` look-up.
LEDGER_REDIS_ENV = "OMNIQ_LEDGER_REDIS_URL"

Q_WORK = "rel"       # ungrouped
Q_GROUPED = "relg"   # groups of limit 2
Q_COLD = "relh"      # groups of limit 1 (the hot/cold fairness test)
Q_POISON = "relp"    # poison pills

_fd: int | None = None
_fd_lock = threading.Lock()
_conn: Any = None


def now_ms() -> float:
    return time.clock_gettime_ns(time.CLOCK_REALTIME) / 1e6


def _write(line: str) -> None:
    global _fd
    if _fd is None:
        with _fd_lock:
            if _fd is None:
                _fd = os.open(os.environ[LEDGER_ENV], os.O_APPEND | os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(_fd, line.encode())


def _prior(ctx: JobContext) -> str:
    """Was this job already acked (or failed) when this run started?"""
    global _conn
    url = os.environ.get(LEDGER_REDIS_ENV)
    if not url:
        return "-"
    for _ in range(3):  # a fault test may kill this connection too
        try:
            if _conn is None:
                _conn = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
            done, failed = _conn.hmget("{" + ctx.queue + "}:job:" + ctx.job_id, "completed_ms", "failed_ms")
            return "C" if done else "F" if failed else "-"
        except redis.RedisError:
            time.sleep(0.01)
    return "?"


class Run:
    """Writes the start line now and the end line on exit."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.gid = ctx.gid or "-"
        self.start = now_ms()  # before the look-up: a freeze during it must not hide an earlier start
        prior = _prior(ctx)
        _write(f"{ctx.job_id} {ctx.attempt} {self.start:.3f} - {os.getpid()} S {self.gid} {prior}\n")

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        status = "ok" if exc_type is None else "err"
        _write(f"{self.ctx.job_id} {self.ctx.attempt} {self.start:.3f} {now_ms():.3f} "
               f"{os.getpid()} {status} {self.gid} -\n")


def build(app: App) -> dict[str, Any]:
    """Register the ledger tasks on ``app``; returns them by short name."""

    @app.task(name="ledger.work", queue=Q_WORK)
    def work(ctx: JobContext, n: int, sleep_ms: int = 0, fail_times: int = 0, pad: str = "") -> None:
        with Run(ctx):
            if sleep_ms:
                time.sleep(sleep_ms / 1000)
            if ctx.attempt <= fail_times:
                raise RuntimeError(f"job {n} fails on attempt {ctx.attempt}")

    @app.task(name="ledger.grouped", queue=Q_GROUPED, gid="g:{g}", group_limit=2)
    def grouped(ctx: JobContext, g: str, n: int, sleep_ms: int = 0) -> None:
        with Run(ctx):
            if sleep_ms:
                time.sleep(sleep_ms / 1000)

    @app.task(name="ledger.cold", queue=Q_COLD, gid="{g}", group_limit=1)
    def cold(ctx: JobContext, g: str, n: int) -> None:
        with Run(ctx):
            pass

    @app.task(name="ledger.poison", queue=Q_POISON)
    def poison(ctx: JobContext, mode: str, n: int = 0, sleep_ms: int = 0) -> None:
        with Run(ctx):
            if sleep_ms:
                time.sleep(sleep_ms / 1000)
            if mode == "exit":      # the process ends at once, no cleanup
                os._exit(3)
            if mode == "segv":      # as a crash in a C extension would
                os.kill(os.getpid(), signal.SIGSEGV)
                time.sleep(5)
            if mode == "raise":
                raise RuntimeError("poison: always raises")
            if mode == "sysexit":
                raise SystemExit(4)

    return {"work": work, "grouped": grouped, "cold": cold, "poison": poison}


# The CLI worker's app: the Redis URL comes from OMNIQ_TASKS_REDIS_URL.
app = App("ledger", max_attempts=5, timeout_ms=1500, backoff_ms=0)
tasks = build(app)
