"""The admin CLI (omniq-tasks queues|groups|jobs|job|pause|resume|retry|remove|purge|publish|
workers|stats) and the ops layer under it, on a real redis-server: run in-process through
``omniq_tasks.cli.main.main`` (capsys) and as ``python -m omniq_tasks`` subprocesses;
each test asserts the output and the Redis state it leaves."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis
from omniq import scripts as official_scripts
from omniq.client import OmniqClient as OfficialClient

from cli_worker import CliWorker, wait_for
from omniq_tasks import OmniqClient
from omniq_tasks.cli.main import main
from omniq_tasks.errors import BadArgsError
from omniq_tasks.ops.queues import QueueFinder, ThroughputMeter, queue_rows
from omniq_tasks.ops.workers import live_workers
from omniq_tasks.protocol import keys
from redis_server import RedisServer

ENVELOPE = {"task": "send", "args": [], "kwargs": {"n": 1}}


def cli(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main([*argv, "--url", url])
    except SystemExit as exc:  # argparse's errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def run(url: str, *argv: str, cwd: Path | None = None, use_url: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python -m omniq_tasks ...`` as a subprocess."""
    return subprocess.run([sys.executable, "-m", "omniq_tasks", *argv, *(["--url", url] if use_url else [])],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def make_failed(client: OmniqClient, queue: str, n: int) -> list[str]:
    """Publish ``n`` jobs and fail each for good (reserve_batch + ack_fail_batch, 1000 per call)."""
    from omniq_tasks.protocol.client import job_spec

    ids: list[str] = []
    client.enqueue_many(queue, [job_spec(json.dumps({**ENVELOPE, "kwargs": {"n": i}}).encode(), max_attempts=1)
                                for i in range(n)])
    while True:
        leased = client.reserve_batch(queue, 1000)
        assert isinstance(leased, list)
        if not leased:
            return ids
        client.scripts.call(*client.ack_fail_batch_call(
            queue, [(job.job_id, job.lease_token, "ValueError: boom", True) for job in leased]))
        ids += [job.job_id for job in leased]


# -- queues -------------------------------------------------------------------------

def test_queues_table_fits_80_columns_and_json_parses(client: OmniqClient, r: redis.Redis,
                                                      redis_server: RedisServer,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    long_name = "reports.eu-west.nightly-" + "x" * 40
    for i in range(3):
        client.publish("emails", ENVELOPE, gid=f"company:{i % 2}", group_limit=2)
    client.publish(long_name, ENVELOPE)
    client.publish(long_name, ENVELOPE, due_ms=client.server_now_ms() + 60_000)
    client.pause(long_name)
    code, out, err = cli(capsys, redis_server.url, "queues")
    assert code == 0 and err == ""
    assert all(len(line) <= 80 for line in out.splitlines()), out
    assert "emails" in out and "paused" in out.splitlines()[0]
    header = out.splitlines()[0].split()
    assert header == ["queue", "wait", "g.wait", "active", "delay", "failed", "done", "ready", "paused", "last"]
    emails = next(line for line in out.splitlines() if line.startswith("emails"))
    assert emails.split()[1:9] == ["0", "3", "0", "0", "0", "0", "2", "no"]

    code, out, _ = cli(capsys, redis_server.url, "queues", "--json")
    rows = {row["queue"]: row for row in json.loads(out)}
    assert set(rows) == {"emails", long_name}
    assert rows["emails"]["group_waiting"] == 3 and rows["emails"]["groups_ready"] == 2
    assert rows[long_name] | {"last_activity_ms": 0} == {
        "queue": long_name, "waiting": 1, "group_waiting": 0, "active": 0, "delayed": 1, "failed": 0,
        "completed_kept": 0, "groups_ready": 0, "paused": True, "last_activity_ms": 0, "workers": 0}


def test_a_queue_fed_by_the_official_sdk_shows(r: redis.Redis, redis_server: RedisServer) -> None:
    official_scripts._scripts_cache.clear()
    sdk = OfficialClient(redis=redis.Redis(port=redis_server.port, decode_responses=True),
                         scripts_dir=official_scripts.default_scripts_dir())
    # job ids given: the SDK's own ULID helper expects another "ulid" package than ours
    sdk.publish(queue="from-go-like-sdk", payload={"hello": "world"}, job_id="sdk-1")
    sdk.publish(queue="from-go-like-sdk", payload={"hello": "group"}, job_id="sdk-2", gid="tenant-1",
                group_limit=3)
    done = run(redis_server.url, "queues", "--json")
    assert done.returncode == 0, done.stderr
    row = next(q for q in json.loads(done.stdout) if q["queue"] == "from-go-like-sdk")
    assert (row["waiting"], row["group_waiting"], row["groups_ready"]) == (1, 1, 1)
    groups = json.loads(run(redis_server.url, "groups", "from-go-like-sdk", "--json").stdout)
    assert groups["groups"] == [{"gid": "tenant-1", "inflight": 0, "limit": 3, "limit_set": 3, "waiting": 1,
                                 "ready": True}]
    # a gid our publisher would refuse (a space), written by another SDK: listed, not an error
    sdk.publish(queue="from-go-like-sdk", payload={"hello": "odd"}, job_id="sdk-3", gid="tenant 2")
    odd = run(redis_server.url, "groups", "from-go-like-sdk", "--json")
    assert odd.returncode == 0, odd.stderr
    assert [g["gid"] for g in json.loads(odd.stdout)["groups"]] == ["tenant 2", "tenant-1"]


def test_queue_discovery_scans_once_per_ttl(client: OmniqClient, r: redis.Redis) -> None:
    now = [0.0]
    finder = QueueFinder(client, ttl_s=60, clock=lambda: now[0])
    client.publish("a", ENVELOPE)
    assert finder.names() == ["a"] and finder.scans == 1
    client.publish("b", ENVELOPE)
    assert finder.names() == ["a"] and finder.scans == 1  # cached: no new scan
    finder.add("b")
    assert finder.names() == ["a", "b"]
    client.publish("c", ENVELOPE)
    now[0] = 61.0
    assert finder.names() == ["a", "b", "c"] and finder.scans == 2


# -- jobs and job -------------------------------------------------------------------------

def test_jobs_pages_and_job_detail(client: OmniqClient, r: redis.Redis, redis_server: RedisServer,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    ids = [client.publish("pages", {**ENVELOPE, "kwargs": {"n": i}}).job_id for i in range(25)]
    code, out, _ = cli(capsys, redis_server.url, "jobs", "pages", "--lane", "wait", "--limit", "10",
                       "--offset", "20", "--json")
    page = json.loads(out)
    assert code == 0 and page["total"] == 25 and [j["id"] for j in page["jobs"]] == ids[20:]
    assert page["jobs"][0]["task"] == "send" and page["jobs"][0]["state"] == "wait"
    code, out, _ = cli(capsys, redis_server.url, "jobs", "pages", "--lane", "wait", "--limit", "5")
    assert code == 0 and "wait jobs 1-5 of 25 in pages (oldest first)" in out and ids[0] in out
    assert all(len(line) <= 80 for line in out.splitlines())

    failed = make_failed(client, "broken", 1)
    code, out, _ = cli(capsys, redis_server.url, "jobs", "broken", "--lane", "failed")
    assert code == 0 and failed[0] in out and "ValueError: boom" in out and "1/1" in out

    code, out, _ = cli(capsys, redis_server.url, "job", "broken", failed[0], "--json")
    detail = json.loads(out)
    assert detail["state"] == "failed" and detail["task"] == "send"
    assert detail["payload"]["task"] == "send" and detail["last_error"] == "ValueError: boom"
    assert set(detail["fields"]) >= {"id", "payload", "state", "attempt", "max_attempts", "timeout_ms",
                                     "created_ms", "failed_ms", "last_error"}
    assert {t["field"] for t in detail["times"]} >= {"created_ms", "failed_ms", "last_started_ms"}
    assert all(t["utc"].endswith(" UTC") for t in detail["times"])
    assert "last run took" in {d["name"] for d in detail["durations"]}
    code, out, _ = cli(capsys, redis_server.url, "job", "broken", failed[0])
    assert code == 0 and '"task": "send"' in out and "times (UTC)" in out and "last run took" in out
    assert "ValueError: boom" in out and "timeout_ms" in out


# -- groups and set-limit -------------------------------------------------------------------

def test_set_limit_script_makes_a_full_group_ready(client: OmniqClient, r: redis.Redis,
                                                   redis_server: RedisServer,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(3):
        client.publish("grp", ENVELOPE, gid="g", group_limit=1)
    client.publish("grp", ENVELOPE, gid="h")
    assert client.reserve("grp").status == "JOB"  # g (ready first) is now at its limit
    assert r.zscore("{grp}:groups:ready", "g") is None and r.hget("{grp}:stats", "groups_ready") == "1"
    code, out, _ = cli(capsys, redis_server.url, "groups", "grp", "--json")
    rows = {g["gid"]: g for g in json.loads(out)["groups"]}
    assert rows["g"] == {"gid": "g", "inflight": 1, "limit": 1, "limit_set": 1, "waiting": 2, "ready": False}
    assert rows["h"]["limit_set"] is None and rows["h"]["limit"] == 1

    r.delete("{grp}:wake")
    code, out, _ = cli(capsys, redis_server.url, "groups", "grp", "set-limit", "g", "3")
    assert code == 0 and "limit 1 -> 3" in out and "start now" in out
    assert r.get("{grp}:g:g:limit") == "3"
    assert r.zscore("{grp}:groups:ready", "g") is not None and r.hget("{grp}:stats", "groups_ready") == "2"
    assert r.llen("{grp}:wake") == 2  # room for the two waiting jobs: idle workers woken
    change = client.set_group_limit("grp", "h", 2)
    assert change.previous is None and not change.made_ready  # already ready: keeps its place
    for bad in (["g", "0", "0"], ["", "2", "0"], ["g", "1.5", "0"], ["g", "1" * 10, "0"]):
        reply = client.scripts.call("group_limit", keys.queue_anchor("grp"), bad)
        assert [x.decode() if isinstance(x, bytes) else x for x in reply] == ["ERR", "BAD_ARGS"]
    with pytest.raises(BadArgsError):
        client._raise_if_err(client.scripts.call("group_limit", keys.queue_anchor("grp"), ["g", "-1"]))
    assert r.get("{grp}:g:g:limit") == "3"
    with pytest.raises(ValueError):
        client.set_group_limit("grp", "g", 0)
    code, _, err = cli(capsys, redis_server.url, "groups", "grp", "set-limit", "g", "many")
    assert code == 2 and "N must be a whole number" in one_error_line(err)


def test_groups_are_paged(client: OmniqClient, r: redis.Redis, redis_server: RedisServer,
                          capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(12):
        client.publish("many", ENVELOPE, gid=f"t{i:02d}", group_limit=2)
    code, out, _ = cli(capsys, redis_server.url, "groups", "many", "--limit", "5", "--offset", "10", "--json")
    page = json.loads(out)
    assert page["total"] == 12 and [g["gid"] for g in page["groups"]] == ["t10", "t11"]
    code, out, _ = cli(capsys, redis_server.url, "groups", "many", "--limit", "3")
    assert "groups 1-3 of 12 in many" in out and "t02" in out and "t03" not in out


WORKER_APP = '''
import json, os, time
import redis
from omniq_tasks import App

app = App("admin-cli", queue="limits", timeout_ms=10000, backoff_ms=0)
_conn = None


@app.task(gid="g:{g}", group_limit=1)
def slow(g: int, n: int) -> None:
    global _conn
    if _conn is None:
        _conn = redis.Redis.from_url(os.environ["OMNIQ_TASKS_REDIS_URL"], decode_responses=True)
    start = time.time()
    time.sleep(0.6)
    _conn.rpush("rec", json.dumps([n, start, time.time()]))
'''


@pytest.fixture()
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "admin_app.py").write_text(WORKER_APP)
    return tmp_path


@pytest.fixture()
def workers(app_dir: Path, redis_server: RedisServer, r: redis.Redis) -> Iterator[list[CliWorker]]:
    started: list[CliWorker] = []
    yield started
    for worker in started:
        worker.kill()


def start_worker(app_dir: Path, url: str, started: list[CliWorker]) -> CliWorker:
    worker = CliWorker(app_dir, url, "admin_app:app", ["--poll-interval", "0.2", "-c", "8"],
                       app_dir / f"worker-{len(started)}.log", ready_text="worker for app admin-cli")
    started.append(worker)
    return worker.wait_ready()


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    best = now = 0
    for _, delta in events:
        now += delta
        best = max(best, now)
    return best


def test_set_limit_changes_how_many_run_at_once(app_dir: Path, redis_server: RedisServer, r: redis.Redis,
                                                workers: list[CliWorker]) -> None:
    sys.path.insert(0, str(app_dir))
    os.environ["OMNIQ_TASKS_REDIS_URL"] = redis_server.url
    try:
        import admin_app

        admin_app.slow.map([(7, n) for n in range(8)])  # group g:7, limit 1
    finally:
        sys.path.remove(str(app_dir))
        del os.environ["OMNIQ_TASKS_REDIS_URL"]
        sys.modules.pop("admin_app", None)
    worker = start_worker(app_dir, redis_server.url, workers)
    wait_for(lambda: r.llen("rec") >= 2, 20, worker, "two jobs one after the other")
    before = [tuple(json.loads(x)[1:]) for x in r.lrange("rec", 0, -1)]
    assert most_at_once(before) == 1
    done = run(redis_server.url, "groups", "limits", "set-limit", "g:7", "3")
    assert done.returncode == 0 and "limit 1 -> 3" in done.stdout, done.stderr
    wait_for(lambda: r.llen("rec") == 8, 30, worker, "every job")
    assert most_at_once([tuple(json.loads(x)[1:]) for x in r.lrange("rec", 0, -1)]) == 3


# -- workers ----------------------------------------------------------------------------

def test_workers_lists_a_running_worker_and_forgets_it_after_it_stops(
        app_dir: Path, redis_server: RedisServer, r: redis.Redis, workers: list[CliWorker],
        capsys: pytest.CaptureFixture[str]) -> None:
    worker = start_worker(app_dir, redis_server.url, workers)
    worker_id = f"{socket.gethostname()}:{worker.pid}"
    wait_for(lambda: r.exists(keys.worker_key(worker_id)), 10, worker, "the worker record")
    assert 0 < r.pttl(keys.worker_key(worker_id)) <= 15_000
    code, out, _ = cli(capsys, redis_server.url, "workers", "--json")
    (info,) = json.loads(out)
    assert info["id"] == worker_id and info["pid"] == worker.pid and info["host"] == socket.gethostname()
    assert info["app"] == "admin-cli" and info["queues"] == ["limits"] and info["concurrency"] == 8
    assert info["pool"] == "threads" and info["running"] == 0 and info["started_ms"] > 0
    code, out, _ = cli(capsys, redis_server.url, "workers")
    assert code == 0 and worker_id in out and "threads x8" in out
    assert all(len(line) <= 80 for line in out.splitlines())
    # a queue a worker serves shows before any job made its stats
    rows = json.loads(cli(capsys, redis_server.url, "queues", "--json")[1])
    assert [(row["queue"], row["workers"]) for row in rows] == [("limits", 1)]

    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(30) == 0
    assert not r.exists(keys.worker_key(worker_id)) and not r.exists(keys.WORKER_INDEX)
    code, out, _ = cli(capsys, redis_server.url, "workers", "--json")
    assert json.loads(out) == []


def test_a_dead_workers_index_entry_is_dropped_by_readers(client: OmniqClient, r: redis.Redis) -> None:
    r.zadd(keys.WORKER_INDEX, {"gone-host:1": 1, "live-host:2": 2})
    r.hset(keys.worker_key("live-host:2"), mapping={"host": "live-host", "pid": 2, "queues": "a,b"})
    assert [w.id for w in live_workers(client)] == ["live-host:2"]
    assert r.zrange(keys.WORKER_INDEX, 0, -1) == ["live-host:2"]


# -- actions ------------------------------------------------------------------------------

def test_purge_of_5000_failed_jobs_goes_in_batches(client: OmniqClient, r: redis.Redis,
                                                   redis_server: RedisServer) -> None:
    make_failed(client, "bulk", 5000)
    client.publish("bulk", ENVELOPE)  # another lane is left alone
    assert r.zcard("{bulk}:idx:failed") == 5000
    refused = run(redis_server.url, "purge", "bulk", "--lane", "failed")
    assert refused.returncode == 2 and "--yes" in one_error_line(refused.stderr)
    assert r.zcard("{bulk}:idx:failed") == 5000
    done = run(redis_server.url, "purge", "bulk", "--lane", "failed", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["done"] == 5000 and result["refused"] == {} and result["calls"] >= 50
    assert r.llen("{bulk}:failed") == 0 and r.zcard("{bulk}:idx:failed") == 0
    assert r.hget("{bulk}:stats", "failed") == "0"
    assert len(list(r.scan_iter(match="{bulk}:job:*", count=1000))) == 1
    assert r.hget("{bulk}:stats", "waiting") == "1"


def test_purge_leaves_no_job_behind_when_refused_ones_leave_the_lane(client: OmniqClient, r: redis.Redis,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from omniq_tasks.ops.actions import purge
    from omniq_tasks.protocol.client import job_spec

    client.enqueue_many("busy", [job_spec(json.dumps({**ENVELOPE, "kwargs": {"n": i}}).encode())
                                 for i in range(250)])
    leased: list[str] = []
    remove_batch = client.remove_jobs_batch

    def a_worker_leases_30_first(queue: str, lane: str, ids: list[str]) -> Any:
        if not leased:  # between reading the first page and removing it: refused ACTIVE, out of idx:wait
            jobs = client.reserve_batch(queue, 30)
            assert isinstance(jobs, list)
            leased.extend(job.job_id for job in jobs)
        return remove_batch(queue, lane, ids)

    monkeypatch.setattr(client, "remove_jobs_batch", a_worker_leases_30_first)
    result = purge(client, "busy", "wait")
    assert result.done == 220 and set(result.refused) <= set(leased)
    assert set(result.refused.values()) <= {"ACTIVE"}
    assert r.zcard("{busy}:idx:wait") == 0 and r.llen("{busy}:wait") == 0 and r.zcard("{busy}:active") == 30


def test_retry_all_failed_and_by_id(client: OmniqClient, r: redis.Redis, redis_server: RedisServer,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    ids = make_failed(client, "again", 250)
    code, out, _ = cli(capsys, redis_server.url, "retry", "again", ids[0], ids[1])
    assert code == 0 and "2 job(s) retried" in out
    code, out, err = cli(capsys, redis_server.url, "retry", "again", ids[0])
    assert code == 1 and "1 refused (NOT_FAILED)" in err
    code, out, _ = cli(capsys, redis_server.url, "retry", "again", "--all-failed", "--json")
    assert code == 0 and json.loads(out)["done"] == 248
    stats = client.stats("again")
    assert (stats.failed, stats.waiting, stats.waiting_total) == (0, 250, 250)
    assert r.zcard("{again}:idx:failed") == 0 and r.llen("{again}:wait") == 250
    assert r.hget(keys.job_key("again", ids[5]), "attempt") == "0"
    code, _, err = cli(capsys, redis_server.url, "retry", "again")
    assert code == 2 and "--all-failed" in one_error_line(err)


def test_remove_pause_resume_publish(client: OmniqClient, r: redis.Redis, redis_server: RedisServer,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    plain = client.publish("acts", ENVELOPE).job_id
    grouped = client.publish("acts", ENVELOPE, gid="g", group_limit=1).job_id
    code, out, _ = cli(capsys, redis_server.url, "remove", "acts", "--lane", "wait", plain, grouped)
    assert code == 0 and "2 job(s) removed from wait" in out
    stats = client.stats("acts")
    assert (stats.waiting, stats.group_waiting, stats.waiting_total, stats.groups_ready) == (0, 0, 0, 0)
    assert not r.exists(keys.job_key("acts", plain)) and r.zcard("{acts}:idx:wait") == 0
    code, _, err = cli(capsys, redis_server.url, "remove", "acts", "--lane", "failed", "nope")
    assert code == 1 and "NO_JOB" in err

    assert cli(capsys, redis_server.url, "pause", "acts")[0] == 0 and client.is_paused("acts")
    code, out, _ = cli(capsys, redis_server.url, "resume", "acts", "--json")
    assert code == 0 and json.loads(out) == {"queue": "acts", "paused": False, "was_paused": True}
    assert not client.is_paused("acts")

    code, out, _ = cli(capsys, redis_server.url, "publish", "acts", '{"to": "a@b.c"}', "--gid", "t1",
                       "--group-limit", "4", "--delay", "30", "--json")
    published = json.loads(out)
    job = client.job("acts", published["job_id"])
    assert code == 0 and job is not None and job.state == "delayed" and job.gid == "t1"
    assert job.due_ms is not None and 29_000 < job.due_ms - client.server_now_ms() <= 30_000
    assert r.get("{acts}:g:t1:limit") == "4" and json.loads(job.payload) == {"to": "a@b.c"}
    code, out, _ = cli(capsys, redis_server.url, "publish", "acts", '{"x": 1}')
    assert code == 0 and "published to acts" in out and r.llen("{acts}:wake") >= 1
    for bad in (["--delay", "inf"], ["--delay", "1e300"], ["--delay", "nan"]):
        code, _, err = cli(capsys, redis_server.url, "publish", "acts", '{"x": 1}', *bad)
        assert code == 1 and "delay must be >= 0" in one_error_line(err), bad
    code, _, err = cli(capsys, redis_server.url, "publish", "acts", '{"x": 1}', "--timeout", "inf")
    assert code == 2 and "--timeout must be > 0" in one_error_line(err)
    code, _, err = cli(capsys, redis_server.url, "publish", "acts", "not json")
    assert code == 1 and "JSON" in one_error_line(err)
    code, _, err = cli(capsys, redis_server.url, "remove", "acts", "--lane", "active", "x")
    assert code == 1 and "running jobs cannot be removed" in one_error_line(err)
    code, _, err = cli(capsys, redis_server.url, "purge", "acts", "--lane", "active")
    assert code == 1 and "running jobs cannot be removed" in one_error_line(err)
    code, _, err = cli(capsys, redis_server.url, "purge", "acts", "--lane", "nope", "--yes")
    assert code == 2 and "invalid choice" in one_error_line(err)


# -- stats ---------------------------------------------------------------------------------

def test_stats_watch_json_lines_count_jobs_per_second(client: OmniqClient, r: redis.Redis,
                                                      redis_server: RedisServer) -> None:
    for _ in range(30):
        client.publish("rates", ENVELOPE)
    proc = subprocess.Popen([sys.executable, "-m", "omniq_tasks", "stats", "--watch", "--interval", "1.5",
                             "--count", "2", "--json", "--url", redis_server.url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the first interval is over: the next one sees 30 completed, 5 failed
    leased = client.reserve_batch("rates", 100)
    assert isinstance(leased, list) and len(leased) == 30
    client.ack_success_batch("rates", [(job.job_id, job.lease_token) for job in leased])
    make_failed(client, "rates", 5)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in [first, *out.splitlines()]]
    assert len(lines) == 2
    row = next(q for q in lines[1]["queues"] if q["queue"] == "rates")
    seconds = lines[1]["interval_s"]
    assert round(row["completed_per_s"] * seconds) == 30 and round(row["failed_per_s"] * seconds) == 5, lines
    assert row["backlog_per_s"] < 0 and not row["estimated"]


def test_throughput_estimate_when_more_completed_than_kept(client: OmniqClient, r: redis.Redis) -> None:
    r.hset("{fast}:stats", "completed_kept", 0)
    meter = ThroughputMeter(client)
    meter.sample(queue_rows(client))
    since = client.server_now_ms()
    time.sleep(0.3)
    # the protocol keeps 100 completed ids: all newer than the sample, spread over 99 ms
    r.zadd("{fast}:idx:completed", {f"j{i}": since + 100 + i for i in range(100)})
    r.hset("{fast}:stats", "completed_kept", 100)
    rates = meter.sample(queue_rows(client))
    assert rates["fast"].estimated and 900 <= rates["fast"].completed_per_s <= 1100


# -- errors --------------------------------------------------------------------------------

def test_errors_are_one_line_and_non_zero(redis_server: RedisServer, r: redis.Redis, tmp_path: Path) -> None:
    down = run("redis://127.0.0.1:1/0", "queues")
    assert down.returncode == 1 and "cannot reach Redis" in one_error_line(down.stderr)
    bad_name = run(redis_server.url, "jobs", "no/such", "--lane", "wait")
    assert bad_name.returncode == 2 and "queue name" in one_error_line(bad_name.stderr)
    missing = run(redis_server.url, "job", "q", "nope")
    assert missing.returncode == 1 and "no job 'nope'" in one_error_line(missing.stderr)
    bad_app = run(redis_server.url, "queues", "--app", "no_such_module:app", use_url=False, cwd=tmp_path)
    assert bad_app.returncode == 2 and "cannot load app" in one_error_line(bad_app.stderr)
    both = run(redis_server.url, "queues", "--app", "x:app")
    assert both.returncode == 2 and "not allowed with" in one_error_line(both.stderr)
    limit = run(redis_server.url, "jobs", "q", "--limit", "0")
    assert limit.returncode == 1 and "limit must be" in one_error_line(limit.stderr)


def test_app_option_uses_the_apps_redis(redis_server: RedisServer, r: redis.Redis, tmp_path: Path) -> None:
    (tmp_path / "opsapp.py").write_text(
        f"from omniq_tasks import App\napp = App('ops', redis_url={redis_server.url!r})\n")
    OmniqClient(redis_server.url).publish("via-app", ENVELOPE)
    done = run(redis_server.url, "queues", "--app", "opsapp:app", "--json", use_url=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [q["queue"] for q in json.loads(done.stdout)] == ["via-app"]
