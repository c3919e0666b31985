"""The worker's parts in-process, pass by pass, against a real Redis (each test well under a second).

A fake clock decides when renewals and maintenance are due; the inline pool runs
each job inside the pass that leased it, and a held runner keeps jobs running
until the test lets them finish. The end-to-end CLI tests (test_worker_e2e.py,
tests/reliability/) still run the real thing.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterator

import msgspec
import pytest
import redis

from helpers_state import assert_invariants, job
from omniq_tasks import App
from omniq_tasks.outcome import Outcome
from omniq_tasks.middleware import AckResult, Middleware
from omniq_tasks.protocol.models import ReservedJob
from omniq_tasks.worker.process_pool import _decode_message, _Done, _encode
from omniq_tasks.worker.runners import OnDone, run_job
from omniq_tasks.middleware import Hooks
from omniq_tasks.worker.loop import Worker
from redis_server import RedisServer

Q = "parts"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class HeldRunner:
    """Keeps every job running until ``finish()``: for renewals of long jobs."""

    def __init__(self, on_done: OnDone) -> None:
        self.on_done = on_done
        self.held: list[ReservedJob] = []

    def submit(self, job: ReservedJob) -> None:
        self.held.append(job)

    def finish(self) -> None:
        for held in self.held:
            self.on_done(held, Outcome(True, "held"))
        self.held = []

    def stop(self) -> None:
        pass


class Recorder(Middleware):
    """Notes every hook call: (hook, job id or "", extra)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def before_publish(self, app: App, task: Any, spec: Any) -> None:
        self.calls.append(("before_publish", spec.job_id, task.name))

    def before_run(self, job: ReservedJob) -> None:
        self.calls.append(("before_run", job.job_id, None))

    def after_run(self, job: ReservedJob, outcome: Outcome) -> None:
        self.calls.append(("after_run", job.job_id, outcome))

    def after_ack(self, job: ReservedJob, outcome: Outcome, result: AckResult) -> None:
        self.calls.append(("after_ack", job.job_id, result))

    def on_worker_start(self, worker: Worker) -> None:
        self.calls.append(("on_worker_start", "", None))

    def on_worker_stop(self, worker: Worker) -> None:
        self.calls.append(("on_worker_stop", "", None))


@pytest.fixture()
def app(r: redis.Redis, redis_server: RedisServer) -> Iterator[App]:
    application = App("parts", redis_server.url, queue=Q, timeout_ms=3000, backoff_ms=0, max_attempts=2)
    yield application
    application.close()


def test_renewals_are_due_a_third_into_the_lease_and_follow_the_lock_redis_answered(
        app: App, r: redis.Redis) -> None:
    @app.task
    def long() -> None: ...

    handle = long.delay()
    clock = Clock()
    worker = Worker(app, clock=clock, runner=HeldRunner)
    assert worker.step() == 1
    lease = worker.leases.get(handle.id)
    assert lease is not None and lease.renew_at == pytest.approx(1001.0)  # 3 s lease, renewed with 2 s left
    lock_before = int(job(r, Q, handle.id)["lock_until_ms"])
    clock.now = 1000.9
    worker.step()
    assert lease.renew_at == pytest.approx(1001.0)  # not yet due: nothing renewed
    time.sleep(0.01)  # so the renewed lock is visibly later on the server clock
    clock.now = 1001.0
    worker.step()
    assert int(job(r, Q, handle.id)["lock_until_ms"]) > lock_before
    # Scheduled from the answer: the lock is 3 s ahead of the server, renew with 2 s left.
    assert lease.renew_at == pytest.approx(1002.0, abs=0.05)
    assert worker.leases.next_due == lease.renew_at
    held = worker.runner
    assert isinstance(held, HeldRunner)
    held.finish()
    worker.step()
    assert job(r, Q, handle.id)["state"] == "completed" and not worker.leases


def test_maintenance_runs_once_per_interval_on_the_clock(app: App) -> None:
    @app.task
    def noop() -> None: ...

    clock = Clock()
    worker = Worker(app, clock=clock, pool="inline", maintenance_interval_s=1.0)
    passes: list[float] = []
    run = worker.maintenance.run
    worker.maintenance.run = lambda now: (passes.append(now), run(now))[-1]  # type: ignore[method-assign]
    for now in (1000.0, 1000.5, 1000.99, 1001.0, 1001.5, 1002.2):
        clock.now = now
        worker.step()
    assert passes == [1000.0, 1001.0, 1002.2]
    assert worker.maintenance.next_at == pytest.approx(1003.2)
    assert not worker.troubles.now


def test_a_round_trip_that_fails_is_resent_unchanged_and_leases_nothing_twice(app: App, r: redis.Redis) -> None:
    ran: list[int] = []

    @app.task
    def work(n: int) -> None:
        ran.append(n)

    work.map(range(5))
    worker = Worker(app, clock=Clock(), runner=HeldRunner, concurrency=5)
    scripts = worker.client.scripts
    sent: list[Any] = []
    real = scripts.call_many

    def reply_lost_once(calls: Any) -> Any:
        sent.append(calls)
        replies = real(calls)  # Redis runs it...
        if len(sent) == 2:     # ...and the reply of the first round trip is lost (the first is maintenance)
            raise redis.ConnectionError("reply lost")
        return replies

    scripts.call_many = reply_lost_once  # type: ignore[method-assign]
    with pytest.raises(redis.ConnectionError):
        worker.step()
    pending = worker.exchanger.pending
    assert pending is not None and not worker.leases
    assert worker.step() == 5  # the very same calls again; Redis answers with its first answer
    assert sent[2] is pending.calls
    assert sorted(j.job_id for j in worker.runner.held) == sorted(worker.leases._held)  # type: ignore[attr-defined]
    assert int(r.hget("{parts}:stats", "active") or 0) == 5
    assert {job(r, Q, j)["attempt"] for j in worker.leases._held} == {"1"}  # leased once each
    worker.runner.finish()  # type: ignore[attr-defined]
    worker.step()
    assert int(r.hget("{parts}:stats", "active") or 0) == 0
    assert_invariants(r, Q)


def test_leases_date_from_the_first_send_of_their_round_trip(app: App, r: redis.Redis) -> None:
    """A lease may begin as soon as its reserve call is sent: jobs keep that time as
    ``received_at``, also when the reply is read late or comes from a resend, so a worker
    frozen with the reply unread does not start a job whose lease has ended."""

    @app.task
    def work(n: int) -> None: ...

    work.map(range(3))
    clock = Clock(1000.0)
    worker = Worker(app, clock=clock, runner=HeldRunner, concurrency=3)
    scripts = worker.client.scripts
    real = scripts.call_many
    calls = [0]

    def reply_lost_once(batch: Any) -> Any:
        calls[0] += 1
        replies = real(batch)
        if calls[0] == 2:  # the first exchange (after maintenance): Redis ran it, the reply is lost
            raise redis.ConnectionError("reply lost")
        return replies

    scripts.call_many = reply_lost_once  # type: ignore[method-assign]
    with pytest.raises(redis.ConnectionError):
        worker.step()
    clock.now += 3.0  # the resend goes 3 s later
    assert worker.step() == 3
    assert {job.received_at for job in worker.runner.held} == {1000.0}  # type: ignore[attr-defined]
    worker.runner.finish()  # type: ignore[attr-defined]
    worker.step()


def test_drain_inline_runs_everything_and_exits(app: App, r: redis.Redis) -> None:
    ran: list[int] = []

    @app.task
    def work(n: int) -> int:
        ran.append(n)
        return n

    handles = work.map(range(50))
    started = time.monotonic()
    assert Worker(app, pool="inline", drain=True, concurrency=8).run() == 0
    assert time.monotonic() - started < 0.5
    assert sorted(ran) == list(range(50))
    assert {h.status() for h in handles} == {"completed"}
    assert_invariants(r, Q)


class Point(msgspec.Struct):
    x: int


def test_hooks_run_once_each_in_order_with_the_outcome_and_the_ack(app: App, r: redis.Redis) -> None:
    rec = Recorder()
    app.add_middleware(rec)

    @app.task(name="point")
    def point(x: int) -> Point:
        return Point(x)

    @app.task(name="bad")
    def bad() -> None:
        raise ValueError("no")

    good = point.delay(7)
    failing = bad.delay()
    worker = Worker(app, pool="inline", drain=True, drain_wait_s=0)  # not its retry: one run each
    assert worker.run() == 0
    hooks = [(name, job_id) for name, job_id, _ in rec.calls]
    assert hooks[:2] == [("before_publish", good.id), ("before_publish", failing.id)]
    assert hooks[2] == ("on_worker_start", "") and hooks[-1] == ("on_worker_stop", "")
    for handle in (good, failing):
        assert [name for name, job_id in hooks if job_id == handle.id] == [
            "before_publish", "before_run", "after_run", "after_ack"]
    by = {(name, job_id): extra for name, job_id, extra in rec.calls}
    ok = by[("after_run", good.id)]
    assert ok.ok and msgspec.json.decode(ok.result) == {"x": 7} and ok.duration_ms > 0
    assert by[("after_ack", good.id)] == AckResult("completed")
    failed = by[("after_run", failing.id)]
    assert not failed.ok and failed.retry and failed.error.startswith("ValueError: no")
    retry = by[("after_ack", failing.id)]
    assert retry.status == "retry" and isinstance(retry.due_ms, int)


def test_after_run_may_replace_the_outcome(app: App, r: redis.Redis) -> None:
    class NoRetries(Middleware):
        def after_run(self, job: ReservedJob, outcome: Outcome) -> Outcome | None:
            return None if outcome.ok else Outcome(False, outcome.task, "given up: " + outcome.error, final=True)

    app.add_middleware(NoRetries())

    @app.task
    def bad() -> None:
        raise ValueError("no")

    handle = bad.delay()
    assert Worker(app, pool="inline", drain=True).run() == 0
    info = job(r, Q, handle.id)
    assert info["state"] == "failed" and info["attempt"] == "1"
    assert info["last_error"].startswith("given up: ValueError: no")


def test_a_hook_that_raises_is_logged_and_the_job_is_still_acked(
        app: App, r: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Middleware):
        def before_publish(self, app: App, task: Any, spec: Any) -> None:
            raise RuntimeError("publish hook")

        def before_run(self, job: ReservedJob) -> None:
            raise RuntimeError("before hook")

        def after_run(self, job: ReservedJob, outcome: Outcome) -> Outcome | None:
            raise SystemExit("after hook")

        def after_ack(self, job: ReservedJob, outcome: Outcome, result: AckResult) -> None:
            raise RuntimeError("ack hook")

        def on_worker_start(self, worker: Worker) -> None:
            raise RuntimeError("start hook")

    rec = Recorder()
    app.add_middleware(Broken())
    app.add_middleware(rec)  # the next middleware still runs

    @app.task
    def work() -> None: ...

    with caplog.at_level(logging.ERROR, logger="omniq_tasks.middleware"):
        handle = work.delay()
        assert Worker(app, pool="inline", drain=True).run() == 0
    assert handle.status() == "completed"
    failed = sorted(rec.getMessage() for rec in caplog.records)
    assert failed == [f"middleware Broken.{hook} raised; ignored (the job goes on)" for hook in
                      ("after_ack", "after_run", "before_publish", "before_run", "on_worker_start")]
    assert [name for name, job_id, _ in rec.calls if job_id == handle.id] == [
        "before_publish", "before_run", "after_run", "after_ack"]


def test_a_job_whose_lease_ended_is_settled_unacked_and_after_ack_says_lost(app: App, r: redis.Redis) -> None:
    rec = Recorder()
    app.add_middleware(rec)

    @app.task
    def work() -> None: ...

    handle = work.delay()
    clock = Clock()
    worker = Worker(app, clock=clock, runner=HeldRunner)
    worker.step()
    r.hset(f"{{parts}}:job:{handle.id}", "lease_token", "x" * 40)  # as if another worker owned it now
    worker.runner.finish()  # type: ignore[attr-defined]
    worker.step()
    acks = [extra for name, job_id, extra in rec.calls if name == "after_ack" and job_id == handle.id]
    assert len(acks) == 1 and acks[0].status == "lost" and acks[0].reason == "TOKEN_MISMATCH"
    assert not worker.leases


def test_no_middleware_means_empty_hooks(app: App) -> None:
    @app.task
    def noop() -> None: ...

    class Partial(Middleware):
        def after_ack(self, job: ReservedJob, outcome: Outcome, result: AckResult) -> None: ...

    hooks = Worker(app, pool="inline").hooks
    assert not (hooks.before_run or hooks.after_run or hooks.after_ack)
    only = Hooks([Partial()])
    assert len(only.after_ack) == 1 and not only.before_run and not only.after_run
    with pytest.raises(TypeError):
        app.add_middleware(object())  # type: ignore[arg-type]


def test_an_outcome_crosses_the_process_pipe_whole() -> None:
    outcome = Outcome(False, "t", "boom", final=False, result=b'{"a":1}', retry_at_ms=1_700_000_000_123,
                      duration_ms=12.5)
    got = _decode_message(_encode(_Done(outcome)))
    assert isinstance(got, _Done)
    assert msgspec.structs.asdict(got.outcome) == msgspec.structs.asdict(outcome)


def test_run_job_measures_and_encodes(app: App) -> None:
    @app.task(name="pair")
    def pair(a: int) -> tuple[int, str]:
        time.sleep(0.002)
        return a, "x"

    @app.task(name="opaque")
    def opaque() -> object:
        return object()  # msgspec cannot encode it: the job still succeeded, with a mark as its result

    def leased(payload: str) -> ReservedJob:
        return ReservedJob(Q, "j", payload, 0, 1, 2, "", "t" * 40, 3000)

    outcome = run_job(app, Hooks(), leased('{"task":"pair","kwargs":{"a":3}}'))
    assert outcome.ok and outcome.result == b'[3,"x"]' and outcome.duration_ms >= 2
    unencodable = run_job(app, Hooks(), leased('{"task":"opaque","kwargs":{}}'))
    assert unencodable.ok and unencodable.result.startswith(b"!unencodable:object: TypeError: ")
