"""pause and resume: only new reserves are blocked."""

from __future__ import annotations

from helpers_state import assert_invariants, assert_lanes, job, snapshot
from omniq_tasks import OmniqClient
from omniq_tasks.protocol.models import QueuePaused, ReservedJob

Q = "pausable"


def test_pause_sets_the_flag_and_resume_clears_it(client: OmniqClient, r) -> None:
    assert client.is_paused(Q) is False
    assert client.pause(Q) is None
    assert r.get("{pausable}:paused") == "1"
    assert client.is_paused(Q) is True
    assert client.stats(Q).paused is True

    client.pause(Q)  # pausing twice is harmless
    assert client.resume(Q) is True
    assert not r.exists("{pausable}:paused")
    assert client.is_paused(Q) is False
    assert client.resume(Q) is False
    assert client.stats(Q).paused is False


def test_script_replies(client: OmniqClient, r) -> None:
    assert client.scripts["pause"](keys=["{pausable}:meta"], args=[]) == b"OK"
    assert client.scripts["resume"](keys=["{pausable}:meta"], args=[]) == 1
    assert client.scripts["resume"](keys=["{pausable}:meta"], args=[]) == 0


def test_pause_moves_no_job(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="w", now_ms=1)
    client.publish(Q, {"n": 2}, job_id="g", gid="grp", now_ms=1)
    client.publish(Q, {"n": 3}, job_id="d", due_ms=50, now_ms=1)
    client.publish(Q, {"n": 4}, job_id="a", now_ms=2)
    client.reserve(Q, now_ms=3)  # g (grouped first)
    before = snapshot(r)

    client.pause(Q)

    after = snapshot(r)
    assert after.pop("{pausable}:paused") == ("string", "1", False)
    assert after == before
    assert client.reserve(Q, now_ms=4) == QueuePaused(Q)
    assert snapshot(r) == {**before, "{pausable}:paused": ("string", "1", False)}


def test_running_jobs_keep_working_while_paused(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="a", timeout_ms=100, now_ms=1)
    client.publish(Q, {"n": 2}, job_id="b", timeout_ms=100, max_attempts=1, now_ms=1)
    client.publish(Q, {"n": 3}, job_id="c", due_ms=20, now_ms=1)
    a = client.reserve(Q, now_ms=10)
    b = client.reserve(Q, now_ms=10)
    assert isinstance(a, ReservedJob) and isinstance(b, ReservedJob)
    client.pause(Q)

    assert client.heartbeat(Q, "a", a.lease_token, now_ms=50) == 210
    client.ack_success(Q, "a", a.lease_token, now_ms=60)
    assert client.promote_delayed(Q, now_ms=60) == 1  # maintenance still runs
    assert client.reap_expired(Q, now_ms=500) == 1  # b's lease ended

    assert job(r, Q, "a")["state"] == "completed"
    assert_lanes(r, Q, wait=["c"], completed=["a"], failed=["b"])
    assert_invariants(r, Q)
    assert client.reserve(Q, now_ms=600) == QueuePaused(Q)
    client.resume(Q)
    assert client.reserve(Q, now_ms=601).job_id == "c"


def test_pause_is_per_queue(client: OmniqClient, r) -> None:
    client.publish("other", {"n": 1}, job_id="x", now_ms=1)
    client.pause(Q)
    assert client.is_paused("other") is False
    assert client.reserve("other", now_ms=2).job_id == "x"
