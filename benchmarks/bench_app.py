"""The task apps the benchmark's workers run, imported by ``python -m omniq_tasks worker``.

Each App has its tasks on one queue, so a worker started with the default settings
(every queue of the app) serves just that queue:

    app        queue bench-noop    ``noop``   threads / processes rows
    result_app queue bench-results ``rstruct`` threads, each returning a small Struct (stored)
    mw_app     queue bench-mw      ``mnoop``  threads, with a no-op Middleware present
    async_app  queue bench-async   ``anoop``  async row (``async def``)
    group_app  queue bench-groups  ``gnoop``  1,000 groups of limit 1
    lat_app    queue bench-lat     ``lat``    latency, foreign producers, idle CPU
    rss_app    queue bench-rss     ``rnoop``  RSS over a long run
    fan_app    queue bench-fan     ``fchild`` children of one fan-out, ``fsum`` its callback
    multi_app  queues bench-c0, bench-c2, bench-c3   ``cnoop0/2/3``  three queues, one worker:
               on a 3-master Redis Cluster each queue's slot is on another master
               (the same app runs the standalone figure it is compared with)

The no-op tasks keep their timing in process memory, not in Redis: the time the
first one started, the time the last one ended and how many ran. When the
environment names a directory in BENCH_TIMES_DIR, every process that ran one
(the worker, or each child of ``--pool processes``) writes those three numbers to
``<dir>/times-<pid>.json`` at exit. The benchmark's processing figure is then
jobs / (last end - first start): the worker's own startup and shutdown are left
out, and the task costs a clock read, nothing else.

The Redis URL comes from OMNIQ_TASKS_REDIS_URL, which the benchmark sets.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import time

import msgspec

from omniq_tasks import ChildResult
from omniq_tasks.app import App
from omniq_tasks.middleware import AckResult, Middleware
from omniq_tasks.outcome import Outcome
from omniq_tasks.protocol.models import ReservedJob

TIMES_DIR_ENV = "BENCH_TIMES_DIR"
GROUPS = 1000

app = App("bench", queue="bench-noop")
async_app = App("bench-async", queue="bench-async")
group_app = App("bench-groups", queue="bench-groups")
lat_app = App("bench-lat", queue="bench-lat")
result_app = App("bench-results", queue="bench-results")
fan_app = App("bench-fan", queue="bench-fan")


class NoopMiddleware(Middleware):
    """Hooks that do nothing: what having a middleware costs per job."""

    def before_run(self, job: ReservedJob) -> None:
        pass

    def after_run(self, job: ReservedJob, outcome: Outcome) -> None:
        return None

    def after_ack(self, job: ReservedJob, outcome: Outcome, result: AckResult) -> None:
        pass


mw_app = App("bench-mw", queue="bench-mw", middleware=[NoopMiddleware()])
rss_app = App("bench-rss", queue="bench-rss")
multi_app = App("bench-multi", queue="bench-c0")
# slots 4282, 12536 and 8409: one in each third of the slots, which is how
# `redis-cli --cluster create` shares them among three masters
MULTI_QUEUES = ("bench-c0", "bench-c2", "bench-c3")

_first = 0.0
_last = 0.0
_counter = itertools.count()


def _ran() -> None:
    global _first, _last
    now = time.time()
    if not _first:
        _first = now
    _last = now
    next(_counter)


def _write_times() -> None:
    directory = os.environ.get(TIMES_DIR_ENV)
    count = next(_counter)  # jobs run so far (the counter started at 0)
    if not directory or count == 0:
        return
    path = os.path.join(directory, f"times-{os.getpid()}.json")
    with open(path, "w") as f:
        json.dump({"first": _first, "last": _last, "count": count, "pid": os.getpid()}, f)


if os.environ.get(TIMES_DIR_ENV):
    atexit.register(_write_times)


@app.task
def noop(i: int = 0) -> None:
    _ran()


class Small(msgspec.Struct):
    i: int
    status: str


@result_app.task
def rstruct(i: int = 0) -> Small:
    _ran()
    return Small(i, "ok")


@fan_app.task
def fchild(i: int = 0) -> int:
    return i


@fan_app.task
def fsum(children: list[ChildResult[int]]) -> int:
    """The fan-out's callback: every child's value, in order."""
    return sum(c.value for c in children if c.ok and c.value is not None)


@mw_app.task
def mnoop(i: int = 0) -> None:
    _ran()


@async_app.task
async def anoop(i: int = 0) -> None:
    _ran()


def _gid(i: int = 0) -> str:
    return f"g{i % GROUPS}"


@group_app.task(gid=_gid, group_limit=1)
def gnoop(i: int = 0) -> None:
    _ran()


@lat_app.task
def lat(t: float, key: str) -> None:
    """Record how long after its publish (``t``, epoch seconds) this job started."""
    started = time.time()
    lat_app.client.redis.rpush(key, repr(started - t))


@rss_app.task
def rnoop(i: int = 0) -> None:
    pass


@multi_app.task(queue=MULTI_QUEUES[0])
def cnoop0(i: int = 0) -> None:
    _ran()


@multi_app.task(queue=MULTI_QUEUES[1])
def cnoop2(i: int = 0) -> None:
    _ran()


@multi_app.task(queue=MULTI_QUEUES[2])
def cnoop3(i: int = 0) -> None:
    _ran()


MULTI_TASKS = (cnoop0, cnoop2, cnoop3)
