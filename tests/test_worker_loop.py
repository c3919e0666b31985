"""The worker loop in-process against a real Redis: lease renewal, replies dropped on
the way back, corrupt job fields, a full Redis, and the scripts it uses for them
(heartbeat_batch, reap_leases).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import pytest
import redis

from drop_proxy import DropProxy
from helpers_state import assert_invariants, job
from omniq_tasks import App, OmniqClient
from omniq_tasks.protocol.client import parse_heartbeat_batch
from omniq_tasks.worker.loop import Worker
from redis_server import RedisServer

Q = "loop"
NOW = 1_000_000


def server_ms(r: redis.Redis) -> int:
    sec, usec = r.time()
    return int(sec) * 1000 + int(usec) // 1000


def run_in_thread(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


# -- the scripts -----------------------------------------------------------------------


def test_heartbeat_batch_sets_each_lock_to_now_plus_its_timeout(client: OmniqClient, r: redis.Redis) -> None:
    client.publish(Q, {"a": 1}, job_id="a", timeout_ms=10_000, now_ms=NOW)
    client.publish(Q, {"b": 1}, job_id="b", timeout_ms=4_000, now_ms=NOW)
    jobs = client.reserve_batch(Q, 2, now_ms=NOW)
    assert isinstance(jobs, list)
    name, anchor, args = client.heartbeat_batch_call(Q, [(j.job_id, j.lease_token) for j in jobs] + [("a", "bad")])
    reply = client.scripts.call(name, anchor, [NOW + 3000, *args[1:]])
    server_now, locks = parse_heartbeat_batch(reply)
    assert server_now == NOW + 3000
    # Not max(old lock, now) + timeout (NOW + 20000): the lock never runs ahead of now + timeout.
    assert locks == [NOW + 13_000, NOW + 7_000, "TOKEN_MISMATCH"]
    assert r.zscore("{loop}:active", "a") == NOW + 13_000
    assert job(r, Q, "a")["lock_until_ms"] == str(NOW + 13_000)
    assert_invariants(r, Q)


def test_heartbeat_batch_answers_why_a_lease_is_gone(client: OmniqClient) -> None:
    client.publish(Q, {"a": 1}, job_id="a")
    jobs = client.reserve_batch(Q, 1)
    assert isinstance(jobs, list)
    client.ack_success(Q, "a", jobs[0].lease_token)
    name, anchor, args = client.heartbeat_batch_call(Q, [("a", jobs[0].lease_token), ("", "x"), ("zz", "")])
    _, locks = parse_heartbeat_batch(client.scripts.call(name, anchor, args))
    assert locks == ["TOKEN_MISMATCH", "BAD_JOB_ID", "TOKEN_REQUIRED"]


def test_reap_leases_says_in_last_error_that_the_lease_expired(client: OmniqClient, r: redis.Redis) -> None:
    client.publish(Q, {"a": 1}, job_id="a", timeout_ms=1000, max_attempts=2, backoff_ms=0, now_ms=NOW)
    client.publish(Q, {"b": 1}, job_id="b", timeout_ms=1000, max_attempts=1, now_ms=NOW)
    client.reserve_batch(Q, 2, now_ms=NOW)
    reply = client.scripts.call("reap_leases", "{loop}:meta", [NOW + 1001, 100])
    assert reply == [b"OK", b"2"]
    a, b = job(r, Q, "a"), job(r, Q, "b")
    assert a["state"] == "delayed" and b["state"] == "failed"
    assert "lease expired" in a["last_error"] and "attempt 1 of 2" in a["last_error"]
    assert "attempt 1 of 1" in b["last_error"] and b["last_error_ms"] == str(NOW + 1001)
    assert_invariants(r, Q)


def test_a_full_redis_refuses_heartbeat_but_not_heartbeat_batch() -> None:
    """With noeviction Redis refuses a script whose first write may grow memory."""
    server = RedisServer("--maxmemory", "3mb", "--maxmemory-policy", "noeviction")
    c = OmniqClient(server.url)
    r = redis.Redis(port=server.port, decode_responses=True)
    try:
        c.publish(Q, {"a": 1}, job_id="a", timeout_ms=5000)
        jobs = c.reserve_batch(Q, 1)
        assert isinstance(jobs, list)
        r.eval("for i = 1, 60000 do redis.call('SET', 'fill' .. i, string.rep('x', 100)) end", 0)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            r.set("one-more", "x")
        with pytest.raises(Exception, match="maxmemory"):
            c.heartbeat(Q, "a", jobs[0].lease_token)
        name, anchor, args = c.heartbeat_batch_call(Q, [("a", jobs[0].lease_token)])
        server_now, locks = parse_heartbeat_batch(c.scripts.call(name, anchor, args))
        assert locks == [server_now + 5000]
        assert r.zscore("{loop}:active", "a") == server_now + 5000
        # Acks still work while full: a worker drains the queue and frees memory.
        assert c.ack_success_batch(Q, [("a", jobs[0].lease_token)])[0].ok
    finally:
        c.close()
        r.close()
        server.stop()


# -- the loop ------------------------------------------------------------------------------


@pytest.fixture()
def app(redis_server: RedisServer, r: redis.Redis) -> Iterator[App]:
    a = App("loop", redis_server.url, queue=Q, max_attempts=1, backoff_ms=0)
    yield a
    a.close()


def test_a_long_job_keeps_its_lock_within_one_lease_of_the_server_clock(app: App, r: redis.Redis) -> None:
    @app.task(timeout_ms=600)
    def slow() -> None:
        time.sleep(3.0)

    slow.delay()
    worker = Worker(app, poll_interval_s=0.1)
    thread = run_in_thread(worker)
    ahead: list[int] = []
    deadline = time.monotonic() + 2.8
    while time.monotonic() < deadline:
        active = r.zrange("{loop}:active", 0, -1, withscores=True)
        if active:
            ahead.append(int(active[0][1]) - server_ms(r))
        time.sleep(0.05)
    worker.stop()
    thread.join(10)
    assert len(ahead) > 20
    # Renewed once a third is used: the lock stays between a third and one lease
    # ahead (a little slack for the sampling), never drifting further out.
    assert max(ahead) <= 600 + 30, ahead
    assert min(ahead) >= 600 / 3 - 150, ahead
    assert r.llen("{loop}:completed") == 1


def test_every_reply_dropped_once_still_runs_each_job_once(
        redis_server: RedisServer, r: redis.Redis) -> None:
    """max_attempts=1: a reserve run twice would orphan a lease and fail a job unrun."""
    proxy = DropProxy(redis_server.port)
    app = App("loop", f"redis://127.0.0.1:{proxy.port}/0", queue=Q, max_attempts=1)
    ran: list[int] = []

    @app.task
    def note(n: int) -> None:
        time.sleep(0.002)
        ran.append(n)

    publisher = OmniqClient(redis_server.url)
    for i in range(1000):
        publisher.publish_json(Q, b'{"task":"%s","args":[%d]}' % (note.name.encode(), i))
    publisher.close()
    stop = threading.Event()

    def dropper() -> None:
        while not stop.is_set():
            proxy.drop_next_reply()
            time.sleep(0.01)

    threading.Thread(target=dropper, daemon=True).start()
    worker = Worker(app, concurrency=4, drain=True, poll_interval_s=0.1)
    thread = run_in_thread(worker)
    thread.join(120)
    stop.set()
    assert not thread.is_alive()
    assert proxy.dropped > 20
    assert sorted(ran) == list(range(1000))  # each body exactly once
    assert r.hget("{loop}:stats", "failed") in (None, "0")
    assert r.zcard("{loop}:active") == 0 and r.llen("{loop}:wait") == 0
    assert_invariants(r, Q)
    app.close()
    proxy.close()


@pytest.mark.parametrize("field,value", [("timeout_ms", "1e20"), ("attempt", "inf"), ("max_attempts", "nan")])
def test_a_job_with_a_corrupt_field_fails_clearly_and_the_worker_goes_on(
        app: App, r: redis.Redis, field: str, value: str) -> None:
    ran: list[str] = []

    @app.task
    def note(tag: str) -> None:
        ran.append(tag)

    bad = note.delay("bad")
    r.hset(f"{{loop}}:job:{bad.id}", field, value)
    note.delay("good")
    assert Worker(app, drain=True, poll_interval_s=0.1).run() == 0
    assert ran == ["good"]
    info = job(r, Q, bad.id)
    assert info["state"] == "failed"
    assert "corrupt job" in info["last_error"] and field in info["last_error"]
    assert r.zcard("{loop}:active") == 0


@pytest.mark.parametrize("policy,level,words", [
    ("allkeys-lru", "ERROR", "DELETES JOBS"), ("volatile-ttl", "WARNING", "have a TTL"), ("noeviction", None, "")])
def test_a_worker_says_loudly_at_start_when_redis_may_evict_jobs(
        caplog: pytest.LogCaptureFixture, policy: str, level: str | None, words: str) -> None:
    server = RedisServer("--maxmemory", "100mb", "--maxmemory-policy", policy)
    app = App("loop", server.url, queue=Q)

    @app.task
    def nothing() -> None: ...

    try:
        with caplog.at_level("INFO", logger="omniq_tasks.worker"):
            assert Worker(app, drain=True).run() == 0
        found = [rec for rec in caplog.records if "maxmemory-policy" in rec.getMessage()]
        if level is None:
            assert found == []
        else:
            assert len(found) == 1 and found[0].levelname == level and words in found[0].getMessage()
    finally:
        app.close()
        server.stop()


def test_reading_a_job_with_corrupt_fields_shows_what_it_can(client: OmniqClient, r: redis.Redis) -> None:
    client.publish(Q, {"a": 1}, job_id="a")
    r.hset("{loop}:job:a", mapping={"attempt": "inf", "timeout_ms": "1e999", "due_ms": "junk"})
    info = client.job(Q, "a")
    assert info is not None and info.state == "wait"
    assert (info.attempt, info.timeout_ms, info.due_ms) == (0, 0, None)


def test_a_certificate_that_does_not_verify_stops_the_worker_at_start(tmp_path: Any) -> None:
    from omniq_tasks.errors import OmniqError
    from omniq_tasks.testing import make_ca

    server = RedisServer(tls=True)
    other = make_ca(tmp_path, "other-ca")
    app = App("loop", f"rediss://:secret@127.0.0.1:{server.port}/0?ssl_ca_certs={other.cert}", queue=Q)

    @app.task
    def nothing() -> None: ...

    try:
        worker = Worker(app)
        with pytest.raises(OmniqError, match="certificate verify failed") as caught:
            worker.run()
        assert "secret" not in str(caught.value)
    finally:
        app.close()
        server.stop()


def test_a_wrong_password_stops_the_worker_at_start() -> None:
    from omniq_tasks.errors import OmniqError

    server = RedisServer("--requirepass", "right-one")
    app = App("loop", f"redis://:wrong-one@127.0.0.1:{server.port}/0", queue=Q)

    @app.task
    def nothing() -> None: ...

    try:
        with pytest.raises(OmniqError, match="refused this worker") as caught:
            Worker(app).run()
        assert "wrong-one" not in str(caught.value)
    finally:
        app.close()
        server.stop()


def test_a_countdown_counts_from_the_server_clock_not_the_producers(
        app: App, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    @app.task
    def later() -> None: ...

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 300)  # this producer runs 5 minutes ahead
    handle = later.apply_async(countdown=2)
    due = int(r.hget(f"{{loop}}:job:{handle.id}", "due_ms") or 0)
    assert abs(due - (server_ms(r) + 2000)) < 500


def test_a_job_whose_lease_ended_before_it_could_start_is_not_run(app: App, r: redis.Redis) -> None:
    """A worker frozen between leasing and starting a job (SIGSTOP past the lease) must
    not start it on waking: another worker may have run and acked it meanwhile."""
    import msgspec

    from omniq_tasks.worker.runners import NOT_STARTED, ThreadRunner

    ran: list[str] = []

    @app.task(timeout_ms=1000)
    def note(tag: str) -> None:
        ran.append(tag)

    note.delay("late")
    note.delay("fresh")
    jobs = app.client.reserve_batch(Q, 2)
    assert isinstance(jobs, list) and len(jobs) == 2
    reported: list[Any] = []
    done = threading.Event()

    def on_done(job: Any, outcome: Any) -> None:
        reported.append((job.job_id, outcome))
        if len(reported) == 2:
            done.set()

    runner = ThreadRunner(app, 2, on_done)
    frozen = msgspec.structs.replace(jobs[0], received_at=time.monotonic() - 1.5)  # 1.5 leases ago
    runner.submit(frozen)
    runner.submit(jobs[1])
    assert done.wait(10)
    runner.stop()
    outcomes = dict(reported)
    assert ran == ["fresh"]
    assert outcomes[jobs[1].job_id].ok
    late = outcomes[jobs[0].job_id]
    assert not late.ok and late.error == NOT_STARTED and not late.final


def test_a_task_renewing_its_own_lease_often_never_runs_the_lock_ahead(client: OmniqClient, r: redis.Redis) -> None:
    from omniq_tasks import JobContext

    client.publish(Q, {"a": 1}, job_id="a", timeout_ms=5000)
    jobs = client.reserve_batch(Q, 1)
    assert isinstance(jobs, list)
    job = jobs[0]
    ctx = JobContext(client, queue=Q, job_id="a", attempt=job.attempt, max_attempts=job.max_attempts, gid="",
                     lease_token=job.lease_token, lock_until_ms=job.lock_until_ms, payload_raw=job.payload)
    for _ in range(10):  # the protocol's heartbeat would push the lock 50 s ahead
        lock = ctx.heartbeat()
    assert lock - server_ms(r) <= 5000 + 50
    assert r.zscore("{loop}:active", "a") == lock
