"""End to end: a real worker process started through the CLI, on the test Redis.

Each test writes nothing but jobs: the worker runs ``tasks_app`` (the module below,
written into a temp dir that is the worker's cwd), whose tasks record what they
did with an RPUSH of JSON to ``rec:<name>``. The test then asserts those records
and the job hashes. Worker processes are always killed at teardown.
"""

from __future__ import annotations

import importlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import pytest
import redis

from omniq_tasks import OmniqClient
from omniq_tasks.arguments import TaskArgumentError
from cli_worker import CliWorker, wait_for
from redis_server import RedisServer

TASKS_APP = r'''
"""Tasks for tests/test_worker_e2e.py: each records what it did in Redis."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import msgspec
import redis

from omniq_tasks.app import App
from omniq_tasks.context import JobContext

app = App("e2e", queue="e2e", max_attempts=3, timeout_ms=5000, backoff_ms=0)
_conn = None


def record(name: str, /, **fields: object) -> None:
    global _conn
    if _conn is None:
        _conn = redis.Redis.from_url(os.environ["OMNIQ_TASKS_REDIS_URL"], decode_responses=True)
    fields.setdefault("t", time.time())
    fields["pid"] = os.getpid()
    _conn.rpush("rec:" + name, json.dumps(fields))


class Order(msgspec.Struct):
    id: int
    company: str


class RawEvent(msgspec.Struct):
    kind: str
    count: int


@app.task
def note(ctx: JobContext, tag: str) -> None:
    record("note", tag=tag, job_id=ctx.job_id, attempt=ctx.attempt)


@app.task
def typed(order: Order) -> None:
    record("typed", id=order.id, company=order.company)


@app.task(queue="grp", gid="company:{company}", group_limit=2)
def grouped(ctx: JobContext, company: str, seq: int, sleep_s: float) -> None:
    start = time.time()
    time.sleep(sleep_s)
    record("grouped", company=company, seq=seq, gid=ctx.gid, start=start, end=time.time())


@app.task
def flaky(ctx: JobContext, tag: str) -> None:
    record("flaky", tag=tag, attempt=ctx.attempt)
    raise ValueError(f"flaky {tag} failed on attempt {ctx.attempt}")


@app.task
def sleeper(tag: str, seconds: float) -> None:
    start = time.time()
    record("sleeper_start", tag=tag)
    time.sleep(seconds)
    record("sleeper_end", tag=tag, start=start, end=time.time())


@app.task
async def asleep(tag: str, seconds: float) -> None:
    start = time.time()
    await asyncio.sleep(seconds)
    record("asleep", tag=tag, start=start, end=time.time())


@app.task(queue="lease", timeout_ms=1000, backoff_ms=0)
def killable(ctx: JobContext, tag: str) -> None:
    record("killable", tag=tag, attempt=ctx.attempt)
    if ctx.attempt == 1:
        time.sleep(60)


@app.task(timeout_ms=500)
def outlives_lease(ctx: JobContext, seconds: float) -> None:
    time.sleep(seconds)
    record("outlives", attempt=ctx.attempt, job_id=ctx.job_id)


@app.task(queue="ctxq", gid="user:{user}", group_limit=1, max_attempts=4)
def inspect_ctx(ctx: JobContext, user: str) -> None:
    before = ctx.lock_until_ms
    record("ctx", queue=ctx.queue, job_id=ctx.job_id, attempt=ctx.attempt,
           max_attempts=ctx.max_attempts, gid=ctx.gid, lease_token=ctx.lease_token,
           lock_until_ms=before, payload_raw=ctx.payload_raw, heartbeat=ctx.heartbeat(),
           paused=ctx.is_paused(), last=ctx.is_last_attempt, user=user)


@app.task(queue="fan")
def fan_out(ctx: JobContext, key: str, n: int) -> None:
    ctx.childs_init(key, n)
    for i in range(n):
        fan_child.delay(key, i)
    record("fan_out", key=key)


@app.task(queue="fan")
def fan_child(ctx: JobContext, key: str, i: int) -> None:
    remaining = ctx.child_ack(key)
    record("fan_child", i=i, remaining=remaining, job_id=ctx.job_id)
    if remaining == 0:
        record("fan_in", key=key)


@app.task(queue="raw", raw=True)
def on_raw(ctx: JobContext, event: RawEvent) -> None:
    record("raw", type=type(event).__name__, kind=event.kind, count=event.count, job_id=ctx.job_id)


@app.task
def where(tag: str) -> None:
    record("where", tag=tag)


@app.task
async def where_async(tag: str) -> None:
    await asyncio.sleep(0)
    record("where", tag=tag)


@app.task
def quits(code: int) -> None:
    sys.exit(code)
'''

LOG_TIME = r"\d+\.\d+"


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Path]:
    """The worker's cwd, holding tasks_app.py; the test process imports the same module."""
    directory = tmp_path_factory.mktemp("e2e-app")
    (directory / "tasks_app.py").write_text(TASKS_APP)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMNIQ_TASKS_REDIS_URL", redis_server.url)
        mp.syspath_prepend(str(directory))
        yield directory
        module = sys.modules.pop("tasks_app", None)
        if module is not None:
            module.app.close()


@pytest.fixture()
def tasks(app_dir: Path, r: redis.Redis) -> ModuleType:
    """The tasks_app module, imported here to publish (same task names as in the worker)."""
    return importlib.import_module("tasks_app")


class WorkerProcess(CliWorker):
    """``python -m omniq_tasks worker tasks_app:app ...`` in its own process group."""

    def __init__(self, cwd: Path, redis_url: str, args: list[str], log_path: Path) -> None:
        super().__init__(cwd, redis_url, "tasks_app:app", ["--poll-interval", "0.2", *args], log_path,
                         ready_text="worker for app e2e")


@pytest.fixture()
def start_worker(app_dir: Path, redis_server: RedisServer, r: redis.Redis,
                 tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(*args: str, ready: bool = True) -> WorkerProcess:
        worker = WorkerProcess(app_dir, redis_server.url, list(args), tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    for worker in started:
        worker.kill()


def records(r: redis.Redis, name: str) -> list[dict[str, Any]]:
    return [json.loads(item) for item in r.lrange("rec:" + name, 0, -1)]


def job(r: redis.Redis, queue: str, job_id: str) -> dict[str, str]:
    return r.hgetall("{" + queue + "}:job:" + job_id)


def state(r: redis.Redis, queue: str, job_id: str) -> str | None:
    return r.hget("{" + queue + "}:job:" + job_id, "state")


def wait_state(r: redis.Redis, queue: str, job_ids: list[str], wanted: str, timeout: float,
               worker: WorkerProcess | None = None) -> None:
    wait_for(lambda: all(state(r, queue, j) == wanted for j in job_ids), timeout, worker,
             f"jobs {job_ids} of {queue} to be {wanted} (now "
             f"{[state(r, queue, j) for j in job_ids]})")


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """How many [start, end) intervals overlap at the busiest instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda ev: (ev[0], ev[1]))  # an end before a start at the same instant
    busiest = current = 0
    for _, delta in events:
        current += delta
        busiest = max(busiest, current)
    return busiest


# -- running jobs ---------------------------------------------------------------------------


def test_delay_runs_exactly_once_with_start_and_end_log_lines(
        tasks: ModuleType, r: redis.Redis, start_worker: Callable[..., WorkerProcess]) -> None:
    with pytest.raises(TaskArgumentError):
        tasks.note.delay(5)  # refused at publish: nothing reaches Redis
    assert r.dbsize() == 0

    worker = start_worker("-Q", "e2e", "--log-level", "DEBUG")  # DEBUG: a line per job start and end
    handle = tasks.note.delay("once")
    wait_state(r, "e2e", [handle.id], "completed", 10, worker)
    time.sleep(0.5)  # a second run would show up by now

    assert [(x["tag"], x["job_id"], x["attempt"]) for x in records(r, "note")] == [("once", handle.id, 1)]
    assert records(r, "note")[0]["pid"] == worker.pid
    h = job(r, "e2e", handle.id)
    assert h["attempt"] == "1" and h["completed_ms"] != ""
    assert r.lrange("{e2e}:completed", 0, -1) == [handle.id]
    assert r.zcard("{e2e}:active") == 0 and r.llen("{e2e}:wait") == 0

    def log_has_done_line() -> bool:
        return f"done tasks_app.note job={handle.id}" in worker.log()

    wait_for(log_has_done_line, 5, worker, "the done line")
    log = worker.log()
    assert re.search(rf"start tasks_app\.note job={handle.id} queue=e2e attempt=1/3\b", log), log
    assert re.search(rf"done tasks_app\.note job={handle.id} queue=e2e attempt=1/3 in {LOG_TIME} ms", log), log
    # one start line, one end line (lines made inside the body also name the job: not these)
    assert sum(f"omniq_tasks.worker: " in line and f"job={handle.id}" in line for line in log.splitlines()) == 2
    assert "Traceback" not in log


def test_apply_at_is_honoured(tasks: ModuleType, r: redis.Redis,
                              start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker("-Q", "e2e")
    due = time.time() + 1.5
    handle = tasks.note.apply_at(due, "later")
    assert state(r, "e2e", handle.id) == "delayed"
    rec = wait_for(lambda: records(r, "note"), 6, worker, "the delayed job to run")
    ran_at = rec[0]["t"]
    assert ran_at >= due - 0.002, f"ran {due - ran_at:.3f} s early"
    assert ran_at <= due + 1.5, f"ran {ran_at - due:.3f} s late"
    wait_state(r, "e2e", [handle.id], "completed", 5, worker)


def test_groups_keep_fifo_and_never_exceed_their_limit(
        tasks: ModuleType, r: redis.Redis, start_worker: Callable[..., WorkerProcess]) -> None:
    published: dict[str, list[str]] = {"a": [], "b": []}
    for seq in range(6):  # interleaved: a0 b0 a1 b1 ...
        published["a"].append(tasks.grouped.delay("a", seq, 0.2).id)  # task default limit 2
        if seq < 4:
            published["b"].append(tasks.grouped.apply_async(("b", seq, 0.2), group_limit=1).id)
    assert r.get("{grp}:g:company:a:limit") == "2" and r.get("{grp}:g:company:b:limit") == "1"

    worker = start_worker("-Q", "grp", "-c", "6")
    wait_state(r, "grp", published["a"] + published["b"], "completed", 15, worker)

    recs = records(r, "grouped")
    assert len(recs) == 10
    for company, limit in (("a", 2), ("b", 1)):
        mine = [x for x in recs if x["company"] == company]
        assert {x["gid"] for x in mine} == {f"company:{company}"}
        overlap = max_overlap([(x["start"], x["end"]) for x in mine])
        assert overlap == limit, f"group {company}: {overlap} at once, limit {limit}"
        # dispatch is FIFO within the group: leased in publish order
        leased = [int(job(r, "grp", j)["first_started_ms"]) for j in published[company]]
        assert leased == sorted(leased), f"group {company} leased out of order: {leased}"
        by_start = [x["seq"] for x in sorted(mine, key=lambda x: x["start"])]
        if limit == 1:
            assert by_start == list(range(len(mine)))
    # with -c 6 both groups ran side by side: more at once than either limit
    assert max_overlap([(x["start"], x["end"]) for x in recs]) == 3


def test_unknown_task_bad_payload_and_no_raw_handler_fail_at_once(
        tasks: ModuleType, r: redis.Redis, client: OmniqClient,
        start_worker: Callable[..., WorkerProcess]) -> None:
    client.publish("e2e", {"task": "tasks_app.nope", "args": [], "kwargs": {}}, job_id="unknown")
    client.publish("e2e", {"task": "tasks_app.typed", "args": [], "kwargs": {"order": {"id": "x", "company": "c"}}},
                   job_id="bad-types")
    client.publish("e2e", {"plain": "json", "from": "another sdk"}, job_id="no-raw")
    client.publish("e2e", {"task": "tasks_app.typed", "args": [{"id": 5, "company": "c"}]}, job_id="positional")

    worker = start_worker("-Q", "e2e")
    wait_state(r, "e2e", ["unknown", "bad-types", "no-raw"], "failed", 10, worker)
    wait_state(r, "e2e", ["positional"], "completed", 10, worker)

    for job_id in ("unknown", "bad-types", "no-raw"):
        h = job(r, "e2e", job_id)
        assert (h["attempt"], h["max_attempts"]) == ("1", "3"), f"{job_id} was retried: {h}"
    assert job(r, "e2e", "unknown")["last_error"] == (
        "unknown task 'tasks_app.nope': not registered in this worker (known tasks: "
        + ", ".join(sorted(tasks.app.registry.names())) + ")")
    assert job(r, "e2e", "bad-types")["last_error"] == (
        "invalid arguments: task tasks_app.typed: Expected `int`, got `str` (argument order.id)")
    assert job(r, "e2e", "no-raw")["last_error"] == (
        "payload is not a task envelope and queue 'e2e' has no raw handler "
        "(declare one with @app.task(queue='e2e', raw=True))")
    assert sorted(r.lrange("{e2e}:failed", 0, -1)) == ["bad-types", "no-raw", "unknown"]
    assert [(x["id"], x["company"]) for x in records(r, "typed")] == [(5, "c")]
    log = worker.log()
    assert log.count("for good") == 3 and "Traceback" not in log


def test_raw_job_from_the_official_sdk_runs_on_the_raw_handler(
        tasks: ModuleType, r: redis.Redis, redis_server: RedisServer,
        start_worker: Callable[..., WorkerProcess]) -> None:
    from omniq import scripts as official_scripts
    from omniq.client import OmniqClient as OfficialClient

    official_scripts._scripts_cache.clear()  # it caches SHAs per process, not per server
    conn = redis.Redis(port=redis_server.port, decode_responses=True)
    official = OfficialClient(redis=conn)
    worker = start_worker("-Q", "raw")
    assert official.publish(queue="raw", payload={"kind": "click", "count": 3}, job_id="official-1") == "official-1"
    assert official.publish(queue="raw", payload={"kind": "click"}, job_id="official-2") == "official-2"

    wait_state(r, "raw", ["official-1"], "completed", 10, worker)
    wait_state(r, "raw", ["official-2"], "failed", 10, worker)
    assert [(x["type"], x["kind"], x["count"], x["job_id"]) for x in records(r, "raw")] == \
        [("RawEvent", "click", 3, "official-1")]
    failed = job(r, "raw", "official-2")
    assert failed["attempt"] == "1"
    assert failed["last_error"] == \
        "raw task tasks_app.on_raw: payload does not fit: Object missing required field `count`"
    conn.close()


def test_exception_is_retried_then_failed_with_traceback(
        tasks: ModuleType, r: redis.Redis, start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker("-Q", "e2e")
    handle = tasks.flaky.delay("f1")
    wait_state(r, "e2e", [handle.id], "failed", 12, worker)

    assert [x["attempt"] for x in records(r, "flaky")] == [1, 2, 3]
    h = job(r, "e2e", handle.id)
    assert (h["attempt"], h["max_attempts"]) == ("3", "3")
    error = h["last_error"]
    assert error.startswith("ValueError: flaky f1 failed on attempt 3\n"), error
    assert 'tasks_app.py", line' in error and "in flaky" in error
    assert 'raise ValueError(f"flaky {tag} failed on attempt {ctx.attempt}")' in error
    assert len(error.encode()) <= 4096
    log = worker.log()
    assert log.count(f"failed tasks_app.flaky job={handle.id}") == 3
    assert len(re.findall(r", retry in 0\.0 s at \d\d:\d\d:\d\dZ: ValueError: flaky f1", log)) == 2, log
    assert log.count(", for good: ValueError: flaky f1") == 1


def test_async_tasks_run_concurrently(tasks: ModuleType, r: redis.Redis,
                                      start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker("-Q", "e2e", "-c", "8")
    handles = tasks.asleep.map([(f"a{i}", 1.0) for i in range(6)])
    wait_state(r, "e2e", [h.id for h in handles], "completed", 10, worker)
    recs = records(r, "asleep")
    assert sorted(x["tag"] for x in recs) == [f"a{i}" for i in range(6)]
    span = max(x["end"] for x in recs) - min(x["start"] for x in recs)
    assert span < 1.8, f"6 async tasks of 1 s took {span:.2f} s: not concurrent"
    assert max_overlap([(x["start"], x["end"]) for x in recs]) == 6
    assert {x["pid"] for x in recs} == {worker.pid}


def test_process_pool_runs_sync_and_async_tasks(tasks: ModuleType, r: redis.Redis,
                                                start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker("-Q", "e2e", "--pool", "processes", "-c", "2")
    ok = [tasks.where.delay("p1"), tasks.where_async.delay("p2"), tasks.note.delay("p3")]
    bad = tasks.flaky.apply_async(("p4",), max_attempts=1)
    wait_state(r, "e2e", [h.id for h in ok], "completed", 20, worker)
    wait_state(r, "e2e", [bad.id], "failed", 10, worker)

    recs = records(r, "where") + records(r, "note") + records(r, "flaky")
    assert sorted(x["tag"] for x in recs) == ["p1", "p2", "p3", "p4"]
    pids = {x["pid"] for x in recs}
    assert worker.pid not in pids and 1 <= len(pids) <= 2  # ran in the pool's children
    assert job(r, "e2e", bad.id)["last_error"].startswith("ValueError: flaky p4 failed on attempt 1\n")


def test_process_pool_logs_start_lines(tasks: ModuleType, r: redis.Redis,
                                       start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker("-Q", "e2e", "--pool", "processes", "-c", "1", "--log-level", "DEBUG")
    handle = tasks.where.delay("logged")
    wait_state(r, "e2e", [handle.id], "completed", 20, worker)
    wait_for(lambda: f"done tasks_app.where job={handle.id}" in worker.log(), 5, worker, "the done line")
    assert f"start tasks_app.where job={handle.id} queue=e2e attempt=1/3" in worker.log()


# -- leases -----------------------------------------------------------------------------------


def test_heartbeats_keep_a_job_longer_than_its_lease_alive(
        tasks: ModuleType, r: redis.Redis, start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker("-Q", "e2e")
    handle = tasks.outlives_lease.delay(1.6)  # lease 0.5 s
    assert job(r, "e2e", handle.id)["timeout_ms"] == "500"
    wait_state(r, "e2e", [handle.id], "completed", 10, worker)
    assert [x["attempt"] for x in records(r, "outlives")] == [1]
    assert job(r, "e2e", handle.id)["attempt"] == "1"
    assert "lease lost" not in worker.log()


def test_a_job_whose_lease_was_lost_is_not_acked_and_is_logged(
        tasks: ModuleType, r: redis.Redis, client: OmniqClient,
        start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker("-Q", "e2e")
    handle = tasks.sleeper.apply_async(("lost", 1.2), timeout_ms=1500, backoff_ms=600_000)
    wait_for(lambda: records(r, "sleeper_start"), 10, worker, "the job to start")
    # another worker's reaper, an hour from now, takes the lease away
    assert client.reap_expired("e2e", now_ms=int(time.time() * 1000) + 3_600_000) == 1
    assert state(r, "e2e", handle.id) == "delayed"

    wait_for(lambda: records(r, "sleeper_end"), 10, worker, "the job to finish")
    wait_for(lambda: "lease lost" in worker.log(), 5, worker, "the lease-lost line")
    time.sleep(0.3)
    h = job(r, "e2e", handle.id)
    assert (h["state"], h["attempt"]) == ("delayed", "1")  # not acked by the old holder
    assert r.llen("{e2e}:completed") == 0
    assert handle.id in worker.log().split("lease lost", 1)[1]


def test_sigkilled_worker_job_runs_again_on_another_worker_after_its_lease(
        tasks: ModuleType, r: redis.Redis, start_worker: Callable[..., WorkerProcess]) -> None:
    first = start_worker("-Q", "lease", "-c", "1")
    handle = tasks.killable.delay("k")
    wait_for(lambda: records(r, "killable"), 10, first, "the first run")
    first.kill()
    assert state(r, "lease", handle.id) == "active"

    second = start_worker("-Q", "lease", "-c", "1")
    wait_state(r, "lease", [handle.id], "completed", 10, second)
    runs = records(r, "killable")
    assert [(x["attempt"], x["pid"]) for x in runs] == [(1, first.pid), (2, second.pid)]
    assert job(r, "lease", handle.id)["attempt"] == "2"


# -- stopping ----------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_lets_running_jobs_finish_and_exits_0(
        tasks: ModuleType, r: redis.Redis, start_worker: Callable[..., WorkerProcess], signum: int) -> None:
    worker = start_worker("-Q", "e2e", "-c", "3", "--grace", "10")
    handles = tasks.sleeper.map([(f"s{i}", 1.0) for i in range(5)])
    wait_for(lambda: len(records(r, "sleeper_start")) == 3, 10, worker, "3 running jobs")
    time.sleep(0.3)
    sent = time.monotonic()
    worker.signal(signum)
    assert worker.wait_exit(10) == 0
    took = time.monotonic() - sent
    assert took < 3, f"exit took {took:.1f} s"

    started = {x["tag"] for x in records(r, "sleeper_start")}
    assert len(started) == 3 and {x["tag"] for x in records(r, "sleeper_end")} == started
    states = {h.id: state(r, "e2e", h.id) for h in handles}
    assert sorted(states.values()) == ["completed"] * 3 + ["wait"] * 2, states  # nothing lost
    assert r.zcard("{e2e}:active") == 0 and r.llen("{e2e}:wait") == 2
    assert f"signal {signal.Signals(signum).name}" in worker.log()
    assert "Traceback" not in worker.log()


def test_second_signal_exits_at_once_and_the_job_comes_back_after_its_lease(
        tasks: ModuleType, r: redis.Redis, client: OmniqClient,
        start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker("-Q", "e2e", "-c", "2", "--grace", "30")
    handle = tasks.sleeper.apply_async(("stuck", 30.0), timeout_ms=1000)
    wait_for(lambda: records(r, "sleeper_start"), 10, worker, "the job to start")
    worker.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert worker.proc.poll() is None  # the first signal waits for the job
    sent = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(5) != 0
    assert time.monotonic() - sent < 2
    assert "second signal" in worker.log()
    assert state(r, "e2e", handle.id) == "active"  # unacked

    time.sleep(1.2)  # the lease (1 s) runs out without heartbeats
    assert client.reap_expired("e2e") == 1
    h = job(r, "e2e", handle.id)
    assert h["state"] in ("delayed", "wait") and h["attempt"] == "1"


def test_grace_period_over_exits_0_leaving_the_job_to_its_lease(
        tasks: ModuleType, r: redis.Redis, start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker("-Q", "e2e", "--grace", "0.5")
    handle = tasks.sleeper.delay("too-long", 30.0)
    wait_for(lambda: records(r, "sleeper_start"), 10, worker, "the job to start")
    sent = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(8) == 0
    assert time.monotonic() - sent < 4
    assert "grace period over: 1 job(s) left unacked" in worker.log()
    assert state(r, "e2e", handle.id) == "active" and records(r, "sleeper_end") == []


def test_drain_exits_0_when_the_queues_are_empty(
        tasks: ModuleType, r: redis.Redis, start_worker: Callable[..., WorkerProcess]) -> None:
    handles = tasks.where.map([f"d{i}" for i in range(5)])
    later = tasks.where.apply_async(("later",), countdown=60)
    worker = start_worker("-Q", "e2e", "--drain", ready=False)
    assert worker.wait_exit(15) == 0
    assert sorted(x["tag"] for x in records(r, "where")) == [f"d{i}" for i in range(5)]
    assert all(state(r, "e2e", h.id) == "completed" for h in handles)
    assert state(r, "e2e", later.id) == "delayed"  # not ready: not waited for
    assert "drained" in worker.log()

    empty = start_worker("-Q", "ctxq", "--drain", ready=False)
    assert empty.wait_exit(15) == 0


# -- JobContext and fan-in ----------------------------------------------------------------------


def test_job_context_fields(tasks: ModuleType, r: redis.Redis,
                            start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker("-Q", "ctxq")
    published_ms = int(time.time() * 1000)
    handle = tasks.inspect_ctx.apply_async(("bob",), job_id="ctx-job-1")
    wait_state(r, "ctxq", ["ctx-job-1"], "completed", 10, worker)
    (rec,) = records(r, "ctx")
    assert (rec["queue"], rec["job_id"], rec["attempt"], rec["max_attempts"], rec["gid"], rec["user"]) == \
        ("ctxq", "ctx-job-1", 1, 4, "user:bob", "bob")
    assert re.fullmatch(r"[0-9a-f]{40}", rec["lease_token"])
    assert published_ms < rec["lock_until_ms"] <= rec["heartbeat"] < published_ms + 60_000
    assert rec["payload_raw"] == job(r, "ctxq", handle.id)["payload"] == \
        '{"task":"tasks_app.inspect_ctx","args":[],"kwargs":{"user":"bob"}}'
    assert rec["paused"] is False and rec["last"] is False


def test_fan_out_and_child_ack_fan_in(tasks: ModuleType, r: redis.Redis,
                                      start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker("-Q", "fan", "-c", "4")
    parent = tasks.fan_out.delay("batch-1", 5)
    wait_for(lambda: len(records(r, "fan_child")) == 5 and records(r, "fan_in"), 10, worker,
             "5 children and the fan-in")
    children = records(r, "fan_child")
    assert sorted(x["i"] for x in children) == [0, 1, 2, 3, 4]
    assert sorted(x["remaining"] for x in children) == [0, 1, 2, 3, 4]
    assert [x["key"] for x in records(r, "fan_in")] == ["batch-1"]  # exactly one saw 0
    wait_state(r, "fan", [parent.id] + [x["job_id"] for x in children], "completed", 10, worker)


def test_sys_exit_in_a_task_fails_the_job_and_keeps_the_slot(
        tasks: ModuleType, r: redis.Redis, start_worker: Callable[..., WorkerProcess]) -> None:
    quit_job = tasks.quits.apply_async((3,), max_attempts=1)
    worker = start_worker("-Q", "e2e", "-c", "1", "--log-level", "WARNING", ready=False)
    wait_state(r, "e2e", [quit_job.id], "failed", 10, worker)
    assert job(r, "e2e", quit_job.id)["last_error"].startswith("SystemExit: 3\n")
    after = tasks.where.delay("after")  # the only slot is free again
    wait_state(r, "e2e", [after.id], "completed", 10, worker)
    assert worker.proc.poll() is None
    log = worker.log()
    assert f"failed tasks_app.quits job={quit_job.id}" in log and "for good: SystemExit: 3" in log
    assert "INFO" not in log and "start tasks_app" not in log  # --log-level WARNING


def test_default_queues_are_those_of_the_registered_tasks(
        tasks: ModuleType, r: redis.Redis, start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker()
    assert "queues e2e,grp,lease,ctxq,fan,raw, concurrency " in worker.log()
    jobs = [tasks.where.delay("q-e2e"), tasks.grouped.delay("z", 0, 0.0), tasks.inspect_ctx.delay("u"),
            tasks.on_raw.delay(tasks.RawEvent("view", 1))]
    for handle in jobs:
        wait_state(r, handle.queue, [handle.id], "completed", 10, worker)
    assert [h.queue for h in jobs] == ["e2e", "grp", "ctxq", "raw"]


def test_several_queues_with_q(tasks: ModuleType, r: redis.Redis,
                               start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker("-Q", "raw, e2e")
    assert "queues raw,e2e, concurrency" in worker.log()
    one, two = tasks.where.delay("q1"), tasks.on_raw.delay({"kind": "k", "count": 2})
    wait_state(r, "e2e", [one.id], "completed", 10, worker)
    wait_state(r, "raw", [two.id], "completed", 10, worker)
    grouped = tasks.grouped.delay("not-served", 0, 0.0)
    time.sleep(0.5)
    assert state(r, "grp", grouped.id) == "wait"  # grp is not one of its queues


# -- the command line ---------------------------------------------------------------------------


def run_cli(app_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "omniq_tasks", *args], cwd=app_dir,
                          capture_output=True, text=True, timeout=30)


def test_version(app_dir: Path) -> None:
    result = run_cli(app_dir, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == "omniq-tasks 0.1.0"
    script = Path(sys.executable).parent / "omniq-tasks"  # the console script, same parser
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout.strip()) == (0, "omniq-tasks 0.1.0")


@pytest.mark.parametrize("args, message", [
    (["no_such_module:app"], "cannot load app 'no_such_module:app': No module named 'no_such_module'"),
    (["tasks_app:nope"], "cannot load app 'tasks_app:nope': module 'tasks_app' has no attribute 'nope'"),
    (["tasks_app"], "cannot load app 'tasks_app': expected 'module:app'"),
    (["tasks_app:record"], "cannot load app 'tasks_app:record': tasks_app:record is a function, not an omniq_tasks.App"),
    (["tasks_app:app", "-c", "0"], "--concurrency must be >= 1"),
    (["tasks_app:app", "-Q", "bad queue"], "queue name 'bad queue' may only hold"),
])
def test_bad_worker_arguments_are_clear_errors(app_dir: Path, args: list[str], message: str) -> None:
    result = run_cli(app_dir, "worker", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_default_log_level_has_no_per_job_lines(
        tasks: ModuleType, r: redis.Redis, start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker("-Q", "e2e")
    handle = tasks.where.delay("quiet")
    wait_state(r, "e2e", [handle.id], "completed", 10, worker)
    log = worker.log()
    assert "INFO omniq_tasks.worker: worker for app" in log  # lifecycle lines stay at INFO
    assert f"job={handle.id}" not in log  # per-job start/end lines are DEBUG
