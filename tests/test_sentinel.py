"""Redis Sentinel: ``redis+sentinel://`` URLs for publishers and workers, through real failovers.

Every test runs against real servers started here (tests/sentinel_server.py: a
master, a replica, Sentinels on free ports); nothing skips. What a failover may lose
is stated in each failover test's docstring: Redis replicates asynchronously, so a
write the old master accepted but had not yet sent to the replica is gone after the
promotion. The tests therefore assert "none lost" on two sets of jobs:

* the jobs published before the failover and then confirmed replicated (a write on
  the master followed by ``WAIT 1`` — the replication stream is ordered, so the
  marker's acknowledgement covers every earlier write);
* the jobs whose publish *started* after the failover was over.

Jobs published during the failover are counted and printed, not asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from omniq_tasks import App, OmniqClient, Worker
from omniq_tasks.context import JobContext
from omniq_tasks.protocol.connection import connect, describe_redis, parse_sentinel_url
from sentinel_server import MASTER_NAME, SentinelGroup, wait_until

QUEUE = "sent"


@pytest.fixture(scope="module")
def group() -> Iterator[SentinelGroup]:
    """3 Sentinels, a master and a replica, shared by this module's non-destructive tests."""
    g = SentinelGroup(sentinels=3)
    yield g
    g.stop()


@pytest.fixture()
def master(group: SentinelGroup) -> Iterator[redis.Redis]:
    """A decoded client straight on the current master, flushed."""
    conn = group.master_client()
    conn.flushall()
    conn.execute_command("WAIT", 1, 2000)  # type: ignore[no-untyped-call]
    yield conn
    conn.close()


def job_state(conn: redis.Redis, job_id: str) -> str | None:
    state = conn.hget("{" + QUEUE + "}:job:" + job_id, "state")
    return None if state is None else str(state)


def replicated(conn: redis.Redis) -> None:
    """Every write the master took so far is on the replica (WAIT after a write of our own)."""
    conn.set("omniq-test:marker", time.time())
    acked = conn.execute_command("WAIT", 1, 5000)  # type: ignore[no-untyped-call]
    assert acked >= 1, "the replica did not acknowledge in 5 s"


def make_app(url: str, runs: list[str], lock: threading.Lock) -> App:
    app = App("sent", url, queue=QUEUE, max_attempts=5, timeout_ms=3000, backoff_ms=0)

    @app.task(name="work")
    def work(ctx: JobContext, n: int) -> None:
        with lock:
            runs.append(ctx.job_id)

    return app


def work_task(app: App) -> Any:
    task = app.registry.get("work")
    assert task is not None
    return task


def publish(app: App, count: int) -> list[str]:
    task = work_task(app)
    return [task.delay(i).id for i in range(count)]


class Publisher(threading.Thread):
    """Publishes a job every ``every_s`` until stopped; notes when each call started and how it ended."""

    def __init__(self, app: App, every_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.app = app
        self.every_s = every_s
        self.ok: list[tuple[float, str]] = []  # (when the call started, job id)
        self.errors: list[tuple[float, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        task = work_task(self.app)
        n = 0
        while not self.halt.is_set():
            started = time.monotonic()
            try:
                handle = task.delay(n)
                self.ok.append((started, handle.id))
            except Exception as exc:  # the test asserts on these
                self.errors.append((started, f"{type(exc).__name__}: {exc}"))
            n += 1
            self.halt.wait(self.every_s)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)
        assert not self.is_alive(), "the publisher hung"


# -- URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("url, problem", [
    ("redis+sentinel://127.0.0.1:26379", "no master name"),
    ("redis+sentinel://127.0.0.1:26379/", "no master name"),
    ("redis+sentinel:///mymaster", "no Sentinel host"),
    ("redis+sentinel://:s3cret@/mymaster", "no Sentinel host"),
    ("redis+sentinel://h1:26379,,h2/mymaster", "an empty Sentinel host"),
    ("redis+sentinel://u:s3cret@h1:99999/mymaster", "bad port '99999'"),
    ("redis+sentinel://h1:abc/mymaster", "bad port 'abc'"),
    ("redis+sentinel://h1:/mymaster", "bad port ''"),
    ("redis+sentinel://h1/mymaster/zero", "the database must be a number"),
    ("redis+sentinel://h1/mymaster/0/extra", "the path is /<master-name>[/<db>]"),
    ("redis+sentinel://h1/mymaster?socket_timeout=soon", "socket_timeout"),
    ("redis+sentinel://h1/mymaster?sentinel_db=1", "sentinel_db is not an option"),
])
def test_bad_sentinel_urls_raise_a_clear_value_error_without_the_password(url: str, problem: str) -> None:
    for make in (lambda: App("bad", url).client, lambda: OmniqClient(url), lambda: connect(url)):
        with pytest.raises(ValueError) as info:
            make()
        message = str(info.value)
        assert problem in message and "bad Redis Sentinel URL" in message
        assert "s3cret" not in message and "s3cret" not in repr(info.value)


def test_url_form_is_read_as_documented() -> None:
    s = parse_sentinel_url("rediss+sentinel://app:pw@s1,s2:26380,[::1]/cache/3"
                           "?socket_timeout=1.5&sentinel_password=sp&ssl_ca_certs=/ca.pem")
    assert s.sentinels == [("s1", 26379), ("s2", 26380), ("::1", 26379)]
    assert s.master == "cache" and s.tls
    assert s.connection_kwargs == {"username": "app", "password": "pw", "db": 3, "socket_timeout": 1.5,
                                   "ssl_ca_certs": "/ca.pem", "ssl": True}
    assert s.sentinel_kwargs == {"password": "sp", "socket_timeout": 1.5, "socket_connect_timeout": 1.5,
                                 "ssl_ca_certs": "/ca.pem", "ssl": True}
    plain = parse_sentinel_url("redis+sentinel://s1/m")
    assert plain.connection_kwargs == {"db": 0} and not plain.tls
    assert plain.sentinel_kwargs == {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}


def test_no_sentinel_answers_is_a_connection_error_naming_the_url() -> None:
    from omniq_tasks import OmniqConnectionError
    from redis_server import free_port

    client = OmniqClient(f"redis+sentinel://:s3cret@127.0.0.1:{free_port()}/{MASTER_NAME}")
    started = time.monotonic()
    with pytest.raises(OmniqConnectionError) as info:
        client.publish(QUEUE, {"a": 1})
    assert time.monotonic() - started < 30
    assert "No master found" in str(info.value) and "s3cret" not in str(info.value)
    assert "redis+sentinel://:***@127.0.0.1" in str(info.value)


# -- publishing and working through the Sentinels ----------------------------------------------


def test_publish_and_in_process_worker_through_sentinel(group: SentinelGroup, master: redis.Redis) -> None:
    runs: list[str] = []
    app = make_app(group.url, runs, threading.Lock())
    try:
        assert type(app.client.redis) is redis.Redis and app.client.scripts._direct  # the fast path
        assert app.client.url == describe_redis(app.client.redis) == group.url
        ids = publish(app, 20)
        assert {job_state(master, j) for j in ids} == {"wait"}  # on the master itself
        worker = Worker(app, concurrency=4, drain=True, poll_interval_s=0.2, grace_s=5)
        assert worker.run() == 0
        assert sorted(runs) == sorted(ids)
        assert {job_state(master, j) for j in ids} == {"completed"}
    finally:
        app.close()


WORKER_APP = r'''
import os
from omniq_tasks import App
from omniq_tasks.context import JobContext

app = App("sentcli", queue="sent", max_attempts=5, timeout_ms=3000, backoff_ms=0)


@app.task(name="work")
def work(ctx: JobContext, n: int) -> None:
    with open(os.environ["RUNS_FILE"], "a") as f:
        f.write(ctx.job_id + "\n")
'''


class CliWorker:
    """``python -m omniq_tasks worker sentapp:app`` on a Sentinel URL, in its own process group."""

    def __init__(self, directory: Path, url: str) -> None:
        (directory / "sentapp.py").write_text(WORKER_APP)
        self.runs_file = directory / "runs.txt"
        self.log_path = directory / "worker.log"
        self._log = open(self.log_path, "w")
        env = {**os.environ, "OMNIQ_TASKS_REDIS_URL": url, "RUNS_FILE": str(self.runs_file),
               "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omniq_tasks", "worker", "sentapp:app", "-c", "4", "--poll-interval", "0.2"],
            cwd=directory, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: "worker for app sentcli" in self.log() or self.proc.poll() is not None, 20,
                   "the CLI worker to start")
        assert self.proc.poll() is None, f"worker exited at start:\n{self.log()}"

    def log(self) -> str:
        return self.log_path.read_text()

    def runs(self) -> list[str]:
        return self.runs_file.read_text().split() if self.runs_file.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=10)
        self._log.close()


def test_cli_worker_through_sentinel(group: SentinelGroup, master: redis.Redis, tmp_path: Path) -> None:
    worker = CliWorker(tmp_path, group.url)
    app = make_app(group.url, [], threading.Lock())
    try:
        ids = publish(app, 20)
        wait_until(lambda: all(job_state(master, j) == "completed" for j in ids), 20,
                   "the CLI worker to complete the jobs")
        assert sorted(worker.runs()) == sorted(ids)
        assert "Traceback" not in worker.log()
    finally:
        app.close()
        worker.stop()
    assert worker.proc.returncode == 0, worker.log()


# -- failovers -----------------------------------------------------------------------------------


def wait_completed(conn_of: Any, ids: list[str], runs: Any, timeout: float, what: str) -> None:
    """Wait until every job of ``ids`` ran (``runs()``) and the queue on the master
    ``conn_of()`` reaches holds no unfinished job; each job hash still there is completed.

    (The master keeps the hashes of the last 100 completed jobs only: an older one is gone.)
    """
    def check() -> tuple[set[str], dict[str, str], dict[str, str | None]]:
        with conn_of() as conn:
            pipe = conn.pipeline(transaction=False)
            pipe.hgetall("{" + QUEUE + "}:stats")
            for j in ids:
                pipe.hget("{" + QUEUE + "}:job:" + j, "state")
            stats, *states = pipe.execute()
        return set(ids) - set(runs()), stats, {j: s for j, s in zip(ids, states) if s != "completed"}

    def done() -> bool:
        not_run, stats, unfinished = check()
        busy = {k: v for k, v in stats.items() if k in ("waiting_total", "active", "delayed", "failed")}
        return not not_run and not set(unfinished.values()) - {None} and set(busy.values()) <= {"0"}
    try:
        wait_until(done, timeout, what, interval=0.1)
    except AssertionError as exc:
        not_run, stats, unfinished = check()
        raise AssertionError(f"{exc}; never ran: {sorted(not_run)[:10]}; stats: {stats}; "
                             f"not completed: {list(unfinished.items())[:10]}") from None


def test_manual_failover_publisher_and_in_process_worker_continue(
        group: SentinelGroup, master: redis.Redis) -> None:
    """``SENTINEL FAILOVER``: publishing and a running in-process Worker carry on on the new master.

    None lost: the 30 jobs published before the failover and confirmed replicated
    (``WAIT 1``), and every job whose publish started after the failover was over
    (every Sentinel names the new master, it answers as master, and the old master
    answers as a replica: from then on nothing can write to the old master). Each of
    those is completed on the new master and ran at least once (twice is allowed:
    an ack the old master took but did not replicate is undone by the promotion).
    Jobs published during the failover may be lost (the old master accepts writes
    until the client learns of the switch, ~1 s after the Sentinels announce it);
    they are counted and printed. No publish may fail, and nothing may hang.
    """
    runs: list[str] = []
    app = make_app(group.url, runs, threading.Lock())
    worker = Worker(app, concurrency=4, poll_interval_s=0.2, grace_s=5)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    publisher = Publisher(app, every_s=0.05)
    try:
        before = publish(app, 30)
        replicated(master)
        publisher.start()
        time.sleep(0.3)
        old = group.master_port()
        started = time.monotonic()
        new = group.failover()
        done = time.monotonic()
        time.sleep(1.0)
        publisher.stop()
        assert new != old
        after = [j for t, j in publisher.ok if t >= done]
        during = [j for t, j in publisher.ok if started <= t < done]
        assert len(after) >= 10, f"too few publishes after the failover: {len(after)}"
        assert not publisher.errors, publisher.errors[:5]
        wait_completed(group.master_client, before + after, lambda: runs, 20,
                       "the worker to complete the replicated and the post-failover jobs on the new master")
        lost = set(during) - set(runs)  # published, acknowledged, and never run
        print(f"\nmanual failover: {done - started:.1f} s until over; {len(during)} published during it, "
              f"{len(lost)} of them never ran; {len(runs) - len(set(runs))} extra runs")
        assert thread.is_alive(), "the worker stopped"
    finally:
        publisher.halt.set()
        worker.stop()
        thread.join(timeout=15)
        app.close()
    assert not thread.is_alive(), "the worker did not stop within 15 s"


def test_killed_master_publisher_and_cli_worker_continue(tmp_path: Path) -> None:
    """SIGKILL the master: a CLI worker and a publisher carry on on the promoted replica.

    None lost: the 30 jobs published before the kill and confirmed replicated
    (``WAIT 1``), and every job whose publish started after the failover was over
    (every Sentinel names the promoted replica and it answers as master). Each is
    completed on the new master and ran at least once. Publishes during the outage
    (down-after 1 s plus the election) raise OmniqConnectionError; a publish whose
    reply was lost with the master may or may not have been written there, and is
    lost with it. The worker backs off and reconnects; nothing may hang.
    """
    g = SentinelGroup(sentinels=1)
    worker: CliWorker | None = None
    app = make_app(g.url, [], threading.Lock())
    publisher = Publisher(app)
    try:
        worker = CliWorker(tmp_path, g.url)
        before = publish(app, 30)
        with g.master_client() as conn:
            replicated(conn)
        publisher.start()
        time.sleep(0.3)
        started = time.monotonic()
        old = g.kill_master()
        new = g.wait_failover_done(old, timeout=20)
        done = time.monotonic()
        time.sleep(1.0)
        publisher.stop()
        assert new != old
        after = [j for t, j in publisher.ok if t >= done]
        assert len(after) >= 10, f"too few publishes after the failover: {len(after)}\n{g.logs()}"
        late_errors = [e for t, e in publisher.errors if t >= done]
        assert not late_errors, late_errors[:5]
        assert all("OmniqConnectionError" in e for _, e in publisher.errors), publisher.errors[:5]
        wait_completed(g.master_client, before + after, worker.runs, 20,
                       "the CLI worker to complete the replicated and the post-failover jobs on the new master")
        during = [j for t, j in publisher.ok if started <= t < done]
        lost = set(during) - set(worker.runs())
        outage = (publisher.errors[-1][0] - publisher.errors[0][0]) if publisher.errors else 0.0
        print(f"\nkilled master: failover over {done - started:.1f} s after the kill; publishes failed "
              f"for {outage:.1f} s ({len(publisher.errors)} errors); {len(during)} published during the "
              f"failover, {len(lost)} of them never ran; "
              f"{len(worker.runs()) - len(set(worker.runs()))} extra runs")
        assert worker.proc.poll() is None, worker.log()
        assert "Traceback" not in worker.log()
    finally:
        publisher.halt.set()
        app.close()
        if worker is not None:
            worker.stop()
        g.stop()
