"""Retries, backoff, Retry/PermanentError/Reject, autoretry_for/dont_retry_for and expiry (issue 10).

In-process workers on the inline pool, pass by pass, against a real Redis: each
test reads what the worker sent from Redis itself (the job hash's due_ms and the
delayed lane's score). A retry is made due with the protocol's own promote_delayed
given the due time as its clock, so no test waits for a backoff. The CLI tests at
the end run real worker processes (--drain, the failure log line).
"""

from __future__ import annotations

import datetime
import re
import time
from pathlib import Path
from typing import Iterator

import msgspec
import pytest
import redis

from cli_worker import CliWorker
from helpers_state import assert_invariants, job
from omniq_tasks import App, JobContext, PermanentError, Retry
from omniq_tasks.errors import InvalidOptionError, OmniqError, Reject
from omniq_tasks.protocol.client import OmniqClient, parse_ack_fail_batch
from omniq_tasks.protocol.models import AckFailResult
from omniq_tasks.worker.loop import Worker
from redis_server import RedisServer

Q = "retries"
# The worker estimates the server clock from the lease; the ack then runs a few ms
# later on the server: a due time is due_ms - (server now at the ack) = delay - that.
SLACK_MS = 150
# ... and the estimate itself may run a few ms ahead when the host stalls the worker
# between sending the lease call and Redis running it.
AHEAD_MS = 5


@pytest.fixture()
def app(r: redis.Redis, redis_server: RedisServer) -> Iterator[App]:
    application = App("retries", redis_server.url, queue=Q, timeout_ms=5000, backoff_ms=1000, max_attempts=3)
    yield application
    application.close()


def run_pass(worker: Worker) -> None:
    """Lease and run what is ready (inline), then ack it."""
    worker.step()
    worker.step()


def delayed_for(r: redis.Redis, job_id: str) -> int:
    """How long the job's retry waits: due_ms minus when the ack ran (updated_ms); checks the lane agrees."""
    info = job(r, Q, job_id)
    assert info["state"] == "delayed", info
    assert r.zscore(f"{{{Q}}}:delayed", job_id) == int(info["due_ms"])
    return int(info["due_ms"]) - int(info["updated_ms"])


def make_due(client: OmniqClient, r: redis.Redis, job_id: str) -> None:
    """Promote the job with the protocol's promote_delayed, its due time as the clock."""
    assert client.promote_delayed(Q, now_ms=int(job(r, Q, job_id)["due_ms"])) >= 1


# -- backoff --------------------------------------------------------------------------------------


def test_fixed_backoff_is_the_protocols_backoff_ms(app: App, r: redis.Redis) -> None:
    @app.task(backoff_ms=2000)
    def boom() -> None:
        raise ValueError("boom")

    handle = boom.delay()
    run_pass(Worker(app, pool="inline"))
    assert delayed_for(r, handle.id) == 2000  # exactly now + backoff_ms: computed by the script
    assert job(r, Q, handle.id)["last_error"].startswith("ValueError: boom")


def test_exponential_backoff_doubles_from_backoff_ms_up_to_the_cap(
        app: App, r: redis.Redis, client: OmniqClient) -> None:
    @app.task(backoff_ms=1000, max_attempts=6, retry_backoff=True, retry_backoff_max=5, retry_jitter=False)
    def boom() -> None:
        raise ValueError("boom")

    handle = boom.delay()
    worker = Worker(app, pool="inline")
    waits = []
    for _ in range(5):
        run_pass(worker)
        waits.append(delayed_for(r, handle.id))
        make_due(client, r, handle.id)
    for got, wanted in zip(waits, [1000, 2000, 4000, 5000, 5000]):
        assert wanted - SLACK_MS <= got <= wanted + AHEAD_MS, waits
    run_pass(worker)
    info = job(r, Q, handle.id)
    assert info["state"] == "failed" and info["attempt"] == "6"
    assert_invariants(r, Q)


def test_retry_backoff_in_seconds_and_full_jitter_stay_within_bounds(
        app: App, r: redis.Redis, client: OmniqClient) -> None:
    @app.task(max_attempts=4, retry_backoff=2, retry_backoff_max=600)
    def boom(n: int) -> None:
        raise ValueError("boom")

    handles = boom.map(range(30))
    worker = Worker(app, pool="inline", concurrency=64)
    for bound in (2000, 4000, 8000):  # attempts 1, 2, 3: 2 s doubled each time, jittered below it
        run_pass(worker)
        waits = [delayed_for(r, h.id) for h in handles]
        assert all(-SLACK_MS <= w <= bound + AHEAD_MS for w in waits), (bound, waits)
        assert len(set(waits)) > 10  # random, not in lockstep
        assert max(waits) > bound / 2
        client.promote_delayed(Q, now_ms=max(int(job(r, Q, h.id)["due_ms"]) for h in handles))
    run_pass(worker)
    assert {job(r, Q, h.id)["state"] for h in handles} == {"failed"}


# -- Retry ----------------------------------------------------------------------------------------


def test_retry_countdown_and_eta_set_the_due_time_and_count_an_attempt(
        app: App, r: redis.Redis, client: OmniqClient) -> None:
    eta = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=10)

    @app.task
    def later(ctx: JobContext, how: str) -> str:
        if ctx.attempt == 1:
            raise Retry(countdown=7) if how == "countdown" else Retry(eta=eta)
        return f"{how} on attempt {ctx.attempt}, {ctx.retries_left} left"

    by_countdown = later.delay("countdown")
    by_eta = later.delay("eta")
    worker = Worker(app, pool="inline")
    run_pass(worker)
    assert 7000 - SLACK_MS <= delayed_for(r, by_countdown.id) <= 7000 + AHEAD_MS
    assert int(job(r, Q, by_eta.id)["due_ms"]) == int(eta.timestamp() * 1000)
    assert job(r, Q, by_eta.id)["last_error"].startswith("Retry: retry at ")
    make_due(client, r, by_countdown.id)
    make_due(client, r, by_eta.id)
    run_pass(worker)
    for handle, how in ((by_countdown, "countdown"), (by_eta, "eta")):
        info = job(r, Q, handle.id)
        assert info["state"] == "completed" and info["attempt"] == "2"
    assert_invariants(r, Q)


def test_retry_with_no_attempts_left_fails_with_the_cause(app: App, r: redis.Redis, client: OmniqClient) -> None:
    @app.task(max_attempts=2)
    def stubborn() -> None:
        try:
            raise ConnectionError("upstream down")
        except ConnectionError as exc:
            raise Retry(countdown=1, exc=exc) from exc

    handle = stubborn.delay()
    worker = Worker(app, pool="inline")
    run_pass(worker)
    assert job(r, Q, handle.id)["last_error"].startswith("ConnectionError: upstream down")
    make_due(client, r, handle.id)
    run_pass(worker)
    info = job(r, Q, handle.id)
    assert info["state"] == "failed" and info["attempt"] == "2"
    assert info["last_error"].startswith("ConnectionError: upstream down")


def test_retry_checks_its_arguments() -> None:
    with pytest.raises(InvalidOptionError):
        Retry(countdown=1, eta=2)
    with pytest.raises(InvalidOptionError):
        Retry(countdown=-1)
    with pytest.raises(InvalidOptionError):
        Retry(eta=datetime.datetime(2030, 1, 1))  # naive
    assert isinstance(Retry(), OmniqError)


# -- what fails at once ---------------------------------------------------------------------------


class Quota(Exception):
    omniq_permanent = True


def test_permanent_errors_fail_at_once_whatever_attempts_are_left(app: App, r: redis.Redis) -> None:
    assert issubclass(Reject, PermanentError)

    @app.task(max_attempts=5)
    def refuse(kind: str) -> None:
        raise {"permanent": PermanentError("no way"), "reject": Reject("rejected"),
               "marked": Quota("over quota")}[kind]

    handles = {kind: refuse.delay(kind) for kind in ("permanent", "reject", "marked")}
    run_pass(Worker(app, pool="inline"))
    for kind, wanted in (("permanent", "PermanentError: no way"), ("reject", "Reject: rejected"),
                         ("marked", "Quota: over quota")):
        info = job(r, Q, handles[kind].id)
        assert info["state"] == "failed" and info["attempt"] == "1", (kind, info)
        assert info["last_error"].startswith(wanted)
    assert_invariants(r, Q)


def test_autoretry_for_and_dont_retry_for_choose_what_retries(app: App, r: redis.Redis) -> None:
    errors = {"value": ValueError("v"), "conn": ConnectionError("c"), "timeout": TimeoutError("t"),
              "key": KeyError("k")}

    @app.task(name="only_io", autoretry_for=(OSError,), dont_retry_for=(TimeoutError,))
    def only_io(kind: str) -> None:
        raise errors[kind]

    @app.task(name="default", dont_retry_for=KeyError)
    def default(kind: str) -> None:
        raise errors[kind]

    io = {kind: only_io.delay(kind) for kind in ("value", "conn", "timeout")}
    dflt = {kind: default.delay(kind) for kind in ("value", "key")}
    run_pass(Worker(app, pool="inline"))
    states = {f"only_io {k}": job(r, Q, h.id)["state"] for k, h in io.items()}
    states |= {f"default {k}": job(r, Q, h.id)["state"] for k, h in dflt.items()}
    assert states == {
        "only_io value": "failed",     # not in autoretry_for
        "only_io conn": "delayed",     # an OSError
        "only_io timeout": "failed",   # an OSError too, but dont_retry_for wins
        "default value": "delayed",    # every Exception retries by default
        "default key": "failed",
    }


# -- the extension itself -------------------------------------------------------------------------


def test_ack_fail_batch_retry_at_sets_the_due_time_and_replays(client: OmniqClient, r: redis.Redis) -> None:
    for job_id in ("a", "b"):
        client.publish_json(Q, b'{"n": 1}', job_id=job_id, max_attempts=3, backoff_ms=500)
    jobs = client.reserve_batch(Q, 2)
    assert isinstance(jobs, list)
    leased = {j.job_id: j for j in jobs}
    call = client.ack_fail_batch_call(Q, [("a", leased["a"].lease_token, "e", False, 4_000_000_000_000),
                                          ("b", leased["b"].lease_token, "e", False, 0)])
    first = parse_ack_fail_batch(client.scripts.call_many([call])[0])
    assert first[0] == AckFailResult("RETRY", 4_000_000_000_000)
    assert r.zscore(f"{{{Q}}}:delayed", "a") == 4_000_000_000_000
    assert isinstance(first[1], AckFailResult) and first[1].status == "RETRY"
    b = job(r, Q, "b")
    assert int(b["due_ms"]) == int(b["updated_ms"]) + 500  # 0: the protocol's backoff
    assert parse_ack_fail_batch(client.scripts.call_many([call])[0]) == first  # replayed, not run again
    assert_invariants(r, Q)


# -- expiry ---------------------------------------------------------------------------------------


def test_expires_on_publish_and_as_a_task_option(app: App, r: redis.Redis) -> None:
    ran: list[str] = []

    @app.task(name="note")
    def note(tag: str) -> None:
        ran.append(tag)

    @app.task(name="short", expires=0.05)
    def short(tag: str) -> None:
        ran.append(tag)

    server_ms = app.client.server_now_ms()
    gone = note.apply_async(("gone",), expires=0.05)
    at = note.apply_async(("at",), expires=datetime.datetime.now(datetime.timezone.utc)
                          + datetime.timedelta(milliseconds=50))
    kept = note.apply_async(("kept",), expires=60)
    by_option = short.delay("option")
    fresh = note.delay("fresh")
    meta = msgspec.json.decode(job(r, Q, kept.id)["payload"])["meta"]
    assert 60_000 - SLACK_MS <= meta["expires_ms"] - server_ms <= 60_000 + SLACK_MS
    assert "meta" not in msgspec.json.decode(job(r, Q, fresh.id)["payload"])
    assert "expires_ms" in msgspec.json.decode(job(r, Q, by_option.id)["payload"])["meta"]
    time.sleep(0.2)
    run_pass(Worker(app, pool="inline"))
    assert sorted(ran) == ["fresh", "kept"]
    for handle in (gone, at, by_option):
        info = job(r, Q, handle.id)
        assert info["state"] == "failed" and info["attempt"] == "1", info
        assert info["last_error"].startswith("expired: not started by its deadline")
    assert job(r, Q, kept.id)["state"] == "completed"
    with pytest.raises(InvalidOptionError):
        note.apply_async(("x",), expires=-1)
    with pytest.raises(InvalidOptionError):
        note.apply_async(("x",), expires=datetime.datetime(2030, 1, 1))  # naive


# -- real worker processes: --drain and the log line ---------------------------------------------

DRAIN_APP = r'''
from omniq_tasks import App, JobContext, Retry

app = App("drainapp", queue="drainq", max_attempts=3, timeout_ms=5000, backoff_ms=0)


@app.task
def soon(ctx: JobContext) -> None:
    if ctx.attempt == 1:
        raise Retry(countdown=2)


@app.task
def far(ctx: JobContext) -> None:
    raise Retry(countdown=3600)
'''


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_drain_waits_for_a_retry_due_soon_but_not_for_a_far_one(
        tmp_path: Path, redis_server: RedisServer, r: redis.Redis, pool: str) -> None:
    (tmp_path / "drainapp.py").write_text(DRAIN_APP)
    publisher = App("drainapp", redis_server.url, queue="drainq", max_attempts=3, timeout_ms=5000, backoff_ms=0)
    try:
        @publisher.task(name="drainapp.soon")
        def soon(ctx: JobContext) -> None: ...

        @publisher.task(name="drainapp.far")
        def far(ctx: JobContext) -> None: ...

        near, later = soon.delay(), far.delay()
        started = time.monotonic()
        worker = CliWorker(tmp_path, redis_server.url, "drainapp:app",
                           ["--drain", "--pool", pool, "-c", "2", "--poll-interval", "0.2"],
                           tmp_path / "worker.log", ready_text="worker for app drainapp")
        try:
            assert worker.wait_exit(30) == 0
        finally:
            worker.kill()
        took = time.monotonic() - started
        log = worker.log()
        assert r.hget(f"{{drainq}}:job:{near.id}", "state") == "completed", log
        assert r.hget(f"{{drainq}}:job:{near.id}", "attempt") == "2"
        assert r.hget(f"{{drainq}}:job:{later.id}", "state") == "delayed"  # an hour away: not waited for
        assert 2 <= took < 20, log
        assert re.search(r"retry in [12]\.\d s at \d\d:\d\d:\d\dZ", log), log
        assert re.search(r"retry in 3[56]\d\d\.\d s at ", log), log
        assert "drained" in log
    finally:
        publisher.close()


def test_drain_wait_0_exits_without_waiting(tmp_path: Path, redis_server: RedisServer, r: redis.Redis) -> None:
    (tmp_path / "drainapp.py").write_text(DRAIN_APP)
    publisher = App("drainapp", redis_server.url, queue="drainq", max_attempts=3, timeout_ms=5000, backoff_ms=0)
    try:
        @publisher.task(name="drainapp.soon")
        def soon(ctx: JobContext) -> None: ...

        near = soon.delay()
        worker = CliWorker(tmp_path, redis_server.url, "drainapp:app",
                           ["--drain", "--drain-wait", "0", "--poll-interval", "0.2"],
                           tmp_path / "worker.log", ready_text="worker for app drainapp")
        try:
            assert worker.wait_exit(15) == 0
        finally:
            worker.kill()
        assert r.hget(f"{{drainq}}:job:{near.id}", "state") == "delayed", worker.log()
    finally:
        publisher.close()
