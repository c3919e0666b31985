"""Time limits (``time_limit``, ``soft_time_limit``) in each pool, on a real Redis.

What each pool guarantees is the table in docs/tasks.md ("Time limits"):

- processes: the soft limit raises SoftTimeLimitExceeded in the body (SIGALRM,
  even in a blocking sleep); at the hard limit the child is killed, the job fails
  or retries with TimeLimitExceeded, a new child takes its place;
- async (threads pool): the soft limit is raised at the body's ``await``; at the
  hard limit the coroutine is cancelled and the job fails or retries;
- threads: the soft limit is an asynchronous exception (at the next bytecode); at
  the hard limit the job fails or retries at once, its lease is no longer renewed,
  the late result is dropped, and the slot stays taken until the body returns.

Tasks live in tests/runner_apps/limits.py (App time_limit 1 s).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import msgspec
import pytest
import redis

from omniq_tasks import App, OmniqClient
from omniq_tasks.envelope import build_envelope
from omniq_tasks.worker import Worker
from cli_worker import CliWorker, gone
from redis_server import RedisServer

TESTS_DIR = Path(__file__).resolve().parent
APP_PATH = "runner_apps.limits:app"
Q = "tq"


def publish(client: OmniqClient, job_id: str, task: str, *, max_attempts: int = 1, timeout_ms: int = 5000,
            queue: str = Q, **kwargs: Any) -> None:
    client.publish_json(queue, build_envelope(task, msgspec.json.encode(kwargs)).decode(), job_id=job_id,
                        max_attempts=max_attempts, backoff_ms=0, timeout_ms=timeout_ms)


def notes(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    return [(tag, int(pid)) for tag, pid in (line.split() for line in path.read_text().splitlines())]


def tags(path: Path) -> list[str]:
    return [tag for tag, _ in notes(path)]


def pid_of(path: Path, tag: str) -> list[int]:
    return [pid for seen, pid in notes(path) if seen == tag]


def job_hash(r: redis.Redis, job_id: str, queue: str = Q) -> dict[str, str]:
    return r.hgetall("{" + queue + "}:job:" + job_id)


def wait_states(r: redis.Redis, wanted: dict[str, str], worker: CliWorker | None = None, timeout: float = 20.0,
                queue: str = Q) -> None:
    deadline = time.monotonic() + timeout
    while True:
        now = {j: r.hget("{" + queue + "}:job:" + j, "state") for j in wanted}
        if now == wanted:
            return
        if time.monotonic() > deadline:
            log = worker.log()[-4000:] if worker else ""
            raise AssertionError(f"states {now}, wanted {wanted}\nworker log:\n{log}")
        time.sleep(0.02)


@pytest.fixture()
def start_worker(redis_server: RedisServer, r: redis.Redis, tmp_path: Path) -> Iterator[Callable[..., CliWorker]]:
    started: list[CliWorker] = []

    def start(*args: str) -> CliWorker:
        worker = CliWorker(TESTS_DIR, redis_server.url, APP_PATH, ["-Q", Q, "--poll-interval", "0.2", *args],
                           tmp_path / f"worker-{len(started)}.log", ready_text="worker for app limits",
                           pythonpath=[str(TESTS_DIR)])
        started.append(worker)
        return worker.wait_ready(15)

    yield start
    for worker in started:
        worker.kill()


HARD = "TimeLimitExceeded: time_limit of 1 s exceeded (the run had taken 1."
SOFT = "SoftTimeLimitExceeded: soft_time_limit of 0.5 s exceeded (the run had taken 0.5"


# -- processes -----------------------------------------------------------------------------


def test_processes_hard_limit_kills_the_child_and_the_soft_one_interrupts_the_body(
        client: OmniqClient, r: redis.Redis, start_worker: Callable[..., CliWorker], tmp_path: Path) -> None:
    path = tmp_path / "n"
    worker = start_worker("--pool", "processes", "-c", "2")
    publish(client, "hang", "hang", max_attempts=2, path=str(path), tag="hang", seconds=30)
    publish(client, "soft-caught", "soft_blocked", path=str(path), tag="sc", seconds=30)
    publish(client, "soft-raised", "soft", path=str(path), tag="sr", seconds=30, catch=False)
    publish(client, "async-soft", "asoft", path=str(path), tag="as", seconds=30, catch=True)
    wait_states(r, {"hang": "failed", "soft-caught": "completed", "soft-raised": "failed",
                    "async-soft": "completed"}, worker, timeout=30)

    hang = job_hash(r, "hang")
    killed = pid_of(path, "hang-start")
    assert hang["attempt"] == "2" and len(set(killed)) == 2, (hang, notes(path))  # retried, in a new child
    assert hang["last_error"].startswith(HARD), hang["last_error"]
    assert hang["last_error"].endswith(f"its worker process (pid {killed[-1]}) was killed"), hang["last_error"]
    assert all(gone(pid) for pid in killed)
    assert "hang-end" not in tags(path)
    # SIGALRM interrupts even a blocking sleep; the body cleaned up and returned
    assert pid_of(path, "sc-soft") and "sc-end" not in tags(path)
    raised = job_hash(r, "soft-raised")["last_error"]
    assert raised.startswith(SOFT), raised
    assert pid_of(path, "as-soft")  # async body in a child: at its await
    assert r.zcard("{tq}:active") == 0
    # the pool goes on: a later job runs in a live child
    publish(client, "after", "ok", path=str(path), tag="after")
    wait_states(r, {"after": "completed"}, worker)
    assert pid_of(path, "after")[0] not in killed
    assert worker.proc.poll() is None
    assert "passed its time_limit of 1 s; killing worker process" in worker.log()
    assert "died" not in worker.log()  # a time limit is not reported as a crash


def test_processes_hard_limit_follows_the_tasks_retry_policy(
        client: OmniqClient, r: redis.Redis, start_worker: Callable[..., CliWorker], tmp_path: Path) -> None:
    """The parent, not the killed child, decides: dont_retry_for fails at once, retry_backoff delays."""
    path = tmp_path / "n"
    worker = start_worker("--pool", "processes", "-c", "2")
    publish(client, "final", "hang_final", max_attempts=3, path=str(path), tag="f", seconds=30)
    publish(client, "later", "hang_later", max_attempts=3, path=str(path), tag="l", seconds=30)
    wait_states(r, {"final": "failed", "later": "delayed"}, worker, timeout=20)
    final = job_hash(r, "final")
    assert final["attempt"] == "1" and final["last_error"].startswith(HARD), final
    due = int(job_hash(r, "later")["due_ms"])
    now_s, now_us = r.time()
    assert 55_000 <= due - (now_s * 1000 + now_us // 1000) <= 61_000  # 60 s, not backoff_ms=0
    assert "retry in 60.0 s" in worker.log() or "retry in 59." in worker.log(), worker.log()[-2000:]


# -- async tasks and threads, end to end -------------------------------------------------------


def test_threads_pool_async_and_soft_limits(
        client: OmniqClient, r: redis.Redis, start_worker: Callable[..., CliWorker], tmp_path: Path) -> None:
    path = tmp_path / "n"
    worker = start_worker("--pool", "threads", "-c", "8")
    publish(client, "ahang", "ahang", path=str(path), tag="ah", seconds=30)
    publish(client, "asoft-caught", "asoft", path=str(path), tag="ac", seconds=30, catch=True)
    publish(client, "asoft-raised", "asoft", path=str(path), tag="ar", seconds=30, catch=False)
    publish(client, "soft-caught", "soft", path=str(path), tag="tc", seconds=30, catch=True)
    publish(client, "soft-raised", "soft", path=str(path), tag="tr", seconds=30, catch=False)
    publish(client, "soft-blocked", "soft_blocked", path=str(path), tag="tb", seconds=1.5)
    wait_states(r, {"ahang": "failed", "asoft-caught": "completed", "asoft-raised": "failed",
                    "soft-caught": "completed", "soft-raised": "failed", "soft-blocked": "completed"},
                worker, timeout=20)

    ahang = job_hash(r, "ahang")["last_error"]
    assert ahang.startswith(HARD) and ahang.endswith("the coroutine was cancelled"), ahang
    assert pid_of(path, "ah-cancelled") and "ah-end" not in tags(path)
    assert pid_of(path, "ac-soft")
    assert job_hash(r, "asoft-raised")["last_error"].startswith(SOFT)
    assert pid_of(path, "tc-soft")
    assert job_hash(r, "soft-raised")["last_error"].startswith(SOFT)
    # a thread blocked in C gets the soft limit only once it is back in Python: after its 1.5 s sleep
    assert pid_of(path, "tb-soft") and "tb-end" not in tags(path)
    assert r.zcard("{tq}:active") == 0
    publish(client, "after", "ok", path=str(path), tag="after")
    wait_states(r, {"after": "completed"}, worker)
    assert worker.proc.poll() is None


def test_threads_hard_limit_retries_and_never_overlaps_in_one_slot(
        client: OmniqClient, r: redis.Redis, start_worker: Callable[..., CliWorker], tmp_path: Path) -> None:
    """-c 1: the hung body keeps its only slot, so its retry and the next job wait for it to return."""
    path = tmp_path / "n"
    worker = start_worker("--pool", "threads", "-c", "1")
    # a short lease: it would need renewing many times while the body overstays
    publish(client, "hang", "hang", max_attempts=2, timeout_ms=600, path=str(path), tag="hang", seconds=2.0)
    publish(client, "next", "ok", path=str(path), tag="next")
    wait_states(r, {"hang": "failed", "next": "completed"}, worker, timeout=20)
    deadline = time.monotonic() + 5
    while tags(path).count("hang-end") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    order = tags(path)
    assert order in (["hang-start", "hang-end", "next", "hang-start", "hang-end"],
                     ["hang-start", "hang-end", "hang-start", "hang-end", "next"]), order
    hang = job_hash(r, "hang")
    assert hang["attempt"] == "2"
    assert hang["last_error"].startswith(HARD), hang["last_error"]
    assert "its thread cannot be stopped" in hang["last_error"]
    assert r.lrange("{tq}:completed", 0, -1) == ["next"]  # the late "late" results were never acked
    log = worker.log()
    assert log.count("past its time_limit: its result (ok) is dropped") == 2, log[-3000:]
    assert "lease lost" not in log  # its lease was handed back, not left to renew or expire


# -- threads, in-process: what the loop does with a timed-out job ------------------------------


def test_threads_timed_out_job_fails_at_once_is_not_renewed_and_keeps_its_slot(
        redis_server: RedisServer, r: redis.Redis, client: OmniqClient) -> None:
    app = App("inproc", redis_url=redis_server.url, queue="iq", max_attempts=1, backoff_ms=0)
    release = threading.Event()
    ran: list[str] = []

    @app.task(name="stuck", time_limit=0.5)
    def stuck() -> str:
        ran.append("stuck")
        release.wait(10)
        return "late"

    @app.task(name="quick")
    def quick() -> None:
        ran.append("quick")

    publish(client, "stuck", "stuck", queue="iq", timeout_ms=300)  # renewals due every 100 ms
    worker = Worker(app, concurrency=1, poll_interval_s=0.1, grace_s=1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_states(r, {"stuck": "failed"}, queue="iq", timeout=5)
        failed = job_hash(r, "stuck", "iq")
        assert failed["last_error"].startswith("TimeLimitExceeded: time_limit of 0.5 s exceeded"), failed
        assert not release.is_set() and ran == ["stuck"]  # failed while the body still runs
        assert worker.running == 0 and getattr(worker.runner, "held_slots") == 1
        publish(client, "quick", "quick", queue="iq")
        time.sleep(0.8)  # several renewal and poll intervals
        assert ran == ["stuck"] and r.hget("{iq}:job:quick", "state") == "wait"  # its slot is not free
        assert job_hash(r, "stuck", "iq") == failed  # no renewal, no ack touched it since
        release.set()
        wait_states(r, {"quick": "completed"}, queue="iq", timeout=5)
        assert ran == ["stuck", "quick"] and getattr(worker.runner, "held_slots") == 0
        assert job_hash(r, "stuck", "iq") == failed  # the late result was not acked
    finally:
        release.set()
        worker.stop()
        thread.join(10)


def test_a_timed_out_run_follows_the_tasks_retry_policy(
        redis_server: RedisServer, r: redis.Redis, client: OmniqClient) -> None:
    """TimeLimitExceeded goes through the task's policy like any exception: listed in
    dont_retry_for it fails at once; with retry_backoff the retry waits the exponential delay."""
    from omniq_tasks.errors import TimeLimitExceeded

    app = App("policy", redis_url=redis_server.url, queue="pq2", max_attempts=3, backoff_ms=0)
    release = threading.Event()

    @app.task(name="never_again", time_limit=0.3, dont_retry_for=(TimeLimitExceeded,))
    def never_again() -> None:
        release.wait(10)

    @app.task(name="later", time_limit=0.3, retry_backoff=60, retry_jitter=False)
    def later() -> None:
        release.wait(10)

    publish(client, "never_again", "never_again", queue="pq2", max_attempts=3)
    publish(client, "later", "later", queue="pq2", max_attempts=3)
    worker = Worker(app, concurrency=2, poll_interval_s=0.1, grace_s=1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_states(r, {"never_again": "failed", "later": "delayed"}, queue="pq2", timeout=5)
        assert job_hash(r, "never_again", "pq2")["attempt"] == "1"  # no retry
        due = int(job_hash(r, "later", "pq2")["due_ms"])
        now_s, now_us = r.time()
        assert 55_000 <= due - (now_s * 1000 + now_us // 1000) <= 61_000  # 60 s, not backoff_ms=0
    finally:
        release.set()
        worker.stop()
        thread.join(10)
