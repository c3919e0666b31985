"""Results: return values stored atomically with the ack, read back by ``handle.get()``.

End-to-end tests run a real CLI worker (``python -m omniq_tasks worker``) on the test
Redis with the app below (written to a temp dir that is the worker's cwd); the test
process imports the same module to publish and read. The protocol-level tests call
ack_success_batch directly (results section, replay tag, notification keys).
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator

import msgspec
import pytest
import redis

from omniq_tasks import JobStatus
from omniq_tasks.errors import (
    ResultEncodeError, ResultMissingError, ResultTimeoutError, ResultTooLargeError, TaskFailed,
)
from omniq_tasks.protocol import keys
from omniq_tasks.protocol.client import OmniqClient, parse_ack_batch
from omniq_tasks.results import JobHandle
from cli_worker import CliWorker, wait_for
from redis_server import RedisServer

RESULTS_APP = r'''
"""Tasks for tests/test_results.py."""

from __future__ import annotations

import os
import time

import msgspec
import redis

from omniq_tasks.app import App

# Every task keeps its result an hour unless it says otherwise; 4 KiB payload limit.
app = App("results", queue="res", max_attempts=1, timeout_ms=5000, backoff_ms=0,
          result_ttl=3600, max_payload_bytes=4096)
_conn = None


def conn() -> redis.Redis:
    global _conn
    if _conn is None:
        _conn = redis.Redis.from_url(os.environ["OMNIQ_TASKS_REDIS_URL"], decode_responses=True)
    return _conn


class Point(msgspec.Struct):
    x: int
    y: int
    label: str = ""


@app.task
def point(x: int, y: int) -> Point:
    return Point(x, y, label=f"{x},{y}")


@app.task
def points(n: int) -> list[Point]:
    return [Point(i, i * i) for i in range(n)]


@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task
async def async_point(x: int) -> Point:
    return Point(x, -x)


@app.task
def nothing(tag: str) -> None:
    conn().rpush("rec:nothing", tag)


@app.task(store_result=False)
def unstored(x: int) -> int:
    conn().rpush("rec:unstored", x)
    return x * 2


@app.task(result_ttl=0.4)
def brief(x: int) -> int:
    return x


@app.task
def boom(word: str) -> int:
    raise ValueError(f"bad word {word!r}")


@app.task
def big(n: int) -> str:
    return "x" * n


@app.task
def opaque(n: int) -> object:
    return object()  # msgspec cannot encode it


@app.task
def gated(gate: str) -> str:
    # runs until the test pushes to the gate list (so the test sees it active)
    conn().blpop([gate], timeout=10)
    return "opened"
'''


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("results-app")
    (directory / "results_app.py").write_text(RESULTS_APP)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMNIQ_TASKS_REDIS_URL", redis_server.url)
        mp.syspath_prepend(str(directory))
        yield directory
        module = sys.modules.pop("results_app", None)
        if module is not None:
            module.app.close()


@pytest.fixture()
def tasks(app_dir: Path, r: redis.Redis) -> ModuleType:
    return importlib.import_module("results_app")


@pytest.fixture()
def start_worker(app_dir: Path, redis_server: RedisServer, r: redis.Redis,
                 tmp_path: Path) -> Iterator[Callable[..., CliWorker]]:
    started: list[CliWorker] = []

    def start(*args: str) -> CliWorker:
        worker = CliWorker(app_dir, redis_server.url, "results_app:app",
                           ["--poll-interval", "0.2", *args], tmp_path / f"worker-{len(started)}.log",
                           ready_text="worker for app results")
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.kill()


def result_keys(r: redis.Redis, queue: str = "res") -> list[str]:
    return sorted(r.scan_iter(match="{" + queue + "}:result:*"))


# -- end to end: a real CLI worker ------------------------------------------------------------


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_typed_results_round_trip(tasks: ModuleType, r: redis.Redis,
                                  start_worker: Callable[..., CliWorker], pool: str) -> None:
    start_worker("--pool", pool, "-c", "2")
    one = tasks.point.delay(3, 4)
    many = tasks.points.delay(3)
    total = tasks.add.delay(2, 40)
    coro = tasks.async_point.delay(7)

    assert one.get(timeout=20) == tasks.Point(3, 4, label="3,4")
    assert type(one.get(timeout=1)) is tasks.Point  # a Struct in, a Struct out
    assert many.get(timeout=10) == [tasks.Point(0, 0), tasks.Point(1, 1), tasks.Point(2, 4)]
    assert total.get(timeout=10) == 42
    assert coro.get(timeout=10) == tasks.Point(7, -7)  # async def: the awaited annotation

    # Redis state: one key per value, plain JSON, with the App's TTL (one hour)
    key = keys.result_key("res", one.id)
    assert json.loads(r.get(key)) == {"x": 3, "y": 4, "label": "3,4"}
    assert 3_590_000 < r.pttl(key) <= 3_600_000
    assert len(result_keys(r)) == 4
    assert one.status() is JobStatus.COMPLETED and one.ready()


def test_none_and_store_result_false_store_nothing(tasks: ModuleType, r: redis.Redis,
                                                   start_worker: Callable[..., CliWorker]) -> None:
    worker = start_worker()
    none = tasks.nothing.delay("n")
    unstored = tasks.unstored.delay(21)
    assert none.get(timeout=10) is None
    assert unstored.get(timeout=10) is None  # completed, and nothing was kept
    wait_for(lambda: r.llen("rec:unstored") == 1, 5, worker, "the unstored task to run")
    assert result_keys(r) == []
    assert r.hget(keys.job_key("res", none.id), "state") == "completed"
    assert r.hget(keys.job_key("res", unstored.id), "state") == "completed"


def test_result_ttl_per_task_expires(tasks: ModuleType, r: redis.Redis,
                                     start_worker: Callable[..., CliWorker]) -> None:
    start_worker()
    handle = tasks.brief.delay(5)
    assert handle.get(timeout=10) == 5
    key = keys.result_key("res", handle.id)
    assert 0 < r.pttl(key) <= 400  # the task's result_ttl=0.4 s, not the App's hour
    wait_for(lambda: not r.exists(key), 3, what="the result to expire")
    # the job hash is still there (completed): get() answers None, not an error
    assert handle.get(timeout=1) is None
    assert handle.status() is JobStatus.COMPLETED


def test_get_times_out_with_our_error(tasks: ModuleType, r: redis.Redis) -> None:
    handle = tasks.add.delay(1, 2)  # no worker runs
    start = time.monotonic()
    with pytest.raises(ResultTimeoutError) as caught:
        handle.get(timeout=0.3)
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 1.5
    assert isinstance(caught.value, TimeoutError) and "wait" in str(caught.value)
    with pytest.raises(ResultTimeoutError):
        handle.get(timeout=0)  # one look, no wait
    assert r.zscore(keys.watching_key("res"), handle.id) is None  # the watch mark is gone
    assert handle.status() is JobStatus.WAITING and not handle.ready()


def test_failed_job_raises_task_failed(tasks: ModuleType, r: redis.Redis,
                                       start_worker: Callable[..., CliWorker]) -> None:
    start_worker()
    handle = tasks.boom.delay("pear")
    with pytest.raises(TaskFailed) as caught:
        handle.get(timeout=10)
    failed = caught.value
    assert failed.error_type == "ValueError"
    assert failed.message == "bad word 'pear'"
    assert 'File "' in failed.traceback and "in boom" in failed.traceback
    assert failed.job_id == handle.id and failed.queue == "res" and failed.task == "results_app.boom"
    assert failed.error == r.hget(keys.job_key("res", handle.id), "last_error")
    assert handle.status() is JobStatus.FAILED and handle.ready()
    assert result_keys(r) == []


def test_forget_deletes_the_result(tasks: ModuleType, r: redis.Redis,
                                   start_worker: Callable[..., CliWorker]) -> None:
    start_worker()
    handle = tasks.add.delay(1, 1)
    assert handle.get(timeout=10) == 2
    assert r.exists(keys.result_key("res", handle.id))
    assert handle.forget() is True
    assert not r.exists(keys.result_key("res", handle.id))
    assert handle.forget() is False
    assert handle.get(timeout=1) is None  # still completed, value gone
    r.delete(keys.job_key("res", handle.id))
    with pytest.raises(ResultMissingError):
        handle.get(timeout=1)
    assert handle.status() is JobStatus.UNKNOWN


def test_status_through_a_jobs_life(tasks: ModuleType, r: redis.Redis,
                                    start_worker: Callable[..., CliWorker]) -> None:
    later = tasks.gated.apply_async(("gate-1",), countdown=60)
    assert later.status() is JobStatus.DELAYED and not later.ready()
    handle = tasks.gated.delay("gate-2")
    assert handle.status() is JobStatus.WAITING
    worker = start_worker()
    wait_for(lambda: handle.status() is JobStatus.ACTIVE, 10, worker, "the gated job to start")
    assert not handle.ready()
    r.rpush("gate-2", "go")
    assert handle.get(timeout=10) == "opened"
    assert handle.status() is JobStatus.COMPLETED and handle.ready()
    failing = tasks.boom.delay("x")
    wait_for(lambda: failing.status() is JobStatus.FAILED, 10, worker, "the failing job")
    tasks.app.client.remove_job("res", later.id, "delayed")
    assert later.status() is JobStatus.UNKNOWN  # gone, and no result


def test_app_handle_rebuilds_from_queue_and_id(tasks: ModuleType, r: redis.Redis,
                                               start_worker: Callable[..., CliWorker]) -> None:
    start_worker()
    job_id = tasks.point.delay(1, 2).id
    typed = tasks.app.handle("res", job_id, task=tasks.point)
    assert typed == JobHandle(tasks.app.client, "res", job_id)
    assert typed.get(timeout=10) == tasks.Point(1, 2, label="1,2")
    by_name = tasks.app.handle("res", job_id, task="results_app.point")
    assert by_name.get(timeout=1) == tasks.Point(1, 2, label="1,2")
    untyped = tasks.app.handle("res", job_id)
    assert untyped.get(timeout=1) == {"x": 1, "y": 2, "label": "1,2"}  # plain JSON without its task
    with pytest.raises(ValueError):
        tasks.app.handle("res", job_id, task="no.such.task")


def test_results_survive_the_completed_lane_trim(tasks: ModuleType, r: redis.Redis,
                                                 start_worker: Callable[..., CliWorker]) -> None:
    handles = tasks.add.map([(i, 1000) for i in range(150)])
    worker = start_worker("-c", "8")
    wait_for(lambda: r.hget(keys.stats_key("res"), "completed") == "150"
             or len(result_keys(r)) == 150, 30, worker, "150 results")
    assert r.llen(keys.lane_key("res", "completed")) == 100  # the protocol keeps only 100
    trimmed = [h for h in handles if h.info() is None]
    assert len(trimmed) == 50
    assert [h.get(timeout=5) for h in handles] == [i + 1000 for i in range(150)]
    assert {h.status() for h in trimmed} == {JobStatus.COMPLETED}


def test_result_over_the_payload_limit_is_a_mark(tasks: ModuleType, r: redis.Redis,
                                                 start_worker: Callable[..., CliWorker]) -> None:
    worker = start_worker()
    handle = tasks.big.delay(10_000)  # 10 KB of JSON; the app's limit is 4096
    with pytest.raises(ResultTooLargeError) as caught:
        handle.get(timeout=10)
    assert "10002" in str(caught.value) and "4096" in str(caught.value)
    assert r.get(keys.result_key("res", handle.id)) == "!too-large:10002:4096"
    assert r.hget(keys.job_key("res", handle.id), "state") == "completed"  # the run itself succeeded
    wait_for(lambda: "over the payload limit" in worker.log(), 5, worker, "the warning")


def test_result_that_cannot_be_encoded_is_a_mark(tasks: ModuleType, r: redis.Redis,
                                                  start_worker: Callable[..., CliWorker]) -> None:
    worker = start_worker()
    handle = tasks.opaque.delay(1)
    with pytest.raises(ResultEncodeError) as caught:
        handle.get(timeout=10)
    assert "object" in str(caught.value) and handle.id in str(caught.value)
    assert r.get(keys.result_key("res", handle.id)).startswith("!unencodable:object: ")
    assert r.hget(keys.job_key("res", handle.id), "state") == "completed"  # ran once, not retried
    wait_for(lambda: "cannot be encoded as JSON" in worker.log(), 5, worker, "the warning")


# -- the script itself -------------------------------------------------------------------------


def lease_one(client: OmniqClient, queue: str) -> tuple[str, str]:
    published = client.publish(queue, {"n": 1})
    jobs = client.reserve_batch(queue, 1)
    assert isinstance(jobs, list) and len(jobs) == 1
    assert jobs[0].job_id == published.job_id
    return jobs[0].job_id, jobs[0].lease_token


def test_replayed_ack_stores_once_and_answers_the_same(client: OmniqClient, r: redis.Redis) -> None:
    job_id, token = lease_one(client, "rp")
    call = client.ack_success_batch_call("rp", [(job_id, token)], results=[(0, 60_000, b'{"v":1}')])
    first = client.scripts.call_many([call])[0]
    key = keys.result_key("rp", job_id)
    assert r.get(key) == '{"v":1}' and 0 < r.pttl(key) <= 60_000
    r.delete(key)  # a second write would show
    again = client.scripts.call_many([call])[0]
    assert again == first and parse_ack_batch(first) == {}
    assert not r.exists(key)
    assert r.hget(keys.job_key("rp", job_id), "state") == "completed"
    # without the replay tag's protection, a repeat is refused (the lease is gone)
    repeat = client.ack_success_batch("rp", [(job_id, token)], results=[(0, 60_000, b"2")])
    assert not repeat[0].ok and repeat[0].reason in ("TOKEN_MISMATCH", "NOT_ACTIVE")
    assert not r.exists(key)  # nothing stored for a lease not acked


def test_results_section_only_for_the_positions_given(client: OmniqClient, r: redis.Redis) -> None:
    leases = [lease_one(client, "rs") for _ in range(3)]
    items = client.ack_success_batch("rs", leases, results=[(2, 5_000, b"[1,2]")])
    assert all(item.ok for item in items)
    assert r.get(keys.result_key("rs", leases[2][0])) == "[1,2]"
    assert not r.exists(keys.result_key("rs", leases[0][0]), keys.result_key("rs", leases[1][0]))
    # a malformed section (position out of range) refuses the whole call, acking nothing
    job_id, token = lease_one(client, "rs")
    name, anchor, args = client.ack_success_batch_call("rs", [(job_id, token)], results=[(5, 1000, b"1")])
    reply = client.scripts.call_many([(name, anchor, args)])[0]
    assert [x.decode() if isinstance(x, bytes) else x for x in reply] == ["ERR", "BAD_ARGS"]
    assert r.hget(keys.job_key("rs", job_id), "state") == "active"


def test_ack_wakes_a_watcher_at_once(client: OmniqClient, r: redis.Redis) -> None:
    job_id, token = lease_one(client, "wk")
    handle = JobHandle(client, "wk", job_id)
    timer = threading.Timer(0.1, lambda: client.ack_success_batch(
        "wk", [(job_id, token)], results=[(0, 60_000, msgspec.json.encode({"ok": True}))]))
    start = time.monotonic()
    timer.start()
    try:
        assert handle.get(timeout=5) == {"ok": True}
    finally:
        timer.join()
    # woken by the ack's token, not by the 0.5 s re-check
    assert time.monotonic() - start < 0.45
    assert r.zcard(keys.watching_key("wk")) == 0  # the ack dropped the mark
    assert r.lrange(keys.done_key("wk", job_id), 0, -1) == ["1"]  # left for other waiters
    assert 0 < r.pttl(keys.done_key("wk", job_id)) <= 60_000
    # nobody watching: an ack writes no notification key
    other, other_token = lease_one(client, "wk")
    client.ack_success_batch("wk", [(other, other_token)])
    assert not r.exists(keys.done_key("wk", other))


def test_failing_for_good_wakes_a_watcher_at_once_and_a_retry_does_not(
        client: OmniqClient, r: redis.Redis) -> None:
    retried, retried_token = lease_one(client, "wf")
    failed, failed_token = lease_one(client, "wf")
    client.result_state("wf", retried, watch_until_ms=client.server_now_ms() + 60_000)  # as get() does
    call = client.ack_fail_batch_call("wf", [(retried, retried_token, "E: try again", False, 0),
                                             (failed, failed_token, "E: no", True)])
    timer = threading.Timer(0.1, lambda: client.scripts.call_many([call]))
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(TaskFailed) as caught:
            JobHandle(client, "wf", failed).get(timeout=5)
    finally:
        timer.join()
    assert time.monotonic() - start < 0.45  # woken by the failing ack, not by the 0.5 s re-check
    assert caught.value.error == "E: no"
    assert r.lrange(keys.done_key("wf", failed), 0, -1) == ["1"]
    assert not r.exists(keys.done_key("wf", retried))  # a retry is not the end: no wake-up
    assert r.zrange(keys.watching_key("wf"), 0, -1) == [retried]
