"""retry_failed(_batch) and remove_job / remove_jobs_batch: every lane and reason word."""

from __future__ import annotations

import pytest

from helpers_state import (
    assert_idx, assert_invariants, assert_lanes, assert_stats, groups_ready, job, snapshot,
)
from omniq_tasks import OmniqClient, ProtocolError
from omniq_tasks.errors import (
    BadLaneError, BatchTooLargeError, JobActiveError, LaneMismatchError, NoJobError, NotFailedError, NotInLaneError,
)
from omniq_tasks.protocol.models import BatchItem, ReservedJob

Q = "ops"


def fail(client: OmniqClient, job_id: str, now_ms: int = 10, **kw) -> None:
    """Publish a job and fail it for good."""
    client.publish(Q, {"id": job_id}, job_id=job_id, max_attempts=1, now_ms=now_ms, **kw)
    leased = client.reserve(Q, now_ms=now_ms)
    assert isinstance(leased, ReservedJob) and leased.job_id == job_id
    assert client.ack_fail(Q, job_id, leased.lease_token, error="bad", now_ms=now_ms).status == "FAILED"


def complete(client: OmniqClient, job_id: str, now_ms: int = 10, **kw) -> None:
    client.publish(Q, {"id": job_id}, job_id=job_id, now_ms=now_ms, **kw)
    leased = client.reserve(Q, now_ms=now_ms)
    assert isinstance(leased, ReservedJob) and leased.job_id == job_id
    client.ack_success(Q, job_id, leased.lease_token, now_ms=now_ms)


# -- retry_failed ----------------------------------------------------------------


def test_retry_failed_puts_the_job_back_in_wait(client: OmniqClient, r) -> None:
    fail(client, "j")

    assert client.retry_failed(Q, "j", now_ms=100) is None

    h = job(r, Q, "j")
    assert (h["state"], h["attempt"], h["updated_ms"]) == ("wait", "0", "100")
    assert (h["failed_ms"], h["lease_token"], h["lock_until_ms"], h["due_ms"]) == ("", "", "", "")
    assert h["last_error"] == "bad"  # history is kept
    assert_lanes(r, Q, wait=["j"])
    assert_idx(r, Q, "wait", {"j": 100})
    assert_idx(r, Q, "failed", {})
    assert_stats(r, Q, failed=0, waiting=1, waiting_total=1, last_activity_ms=100)
    assert_invariants(r, Q)
    again = client.reserve(Q, now_ms=101)
    assert again.job_id == "j" and again.attempt == 1


def test_retry_failed_grouped_goes_to_its_group_lane(client: OmniqClient, r) -> None:
    fail(client, "g1", gid="g")

    client.retry_failed(Q, "g1", now_ms=100)

    assert_lanes(r, Q, groups={"g": ["g1"]})
    assert groups_ready(r, Q) == [("g", 100.0)]
    assert_stats(r, Q, failed=0, group_waiting=1, waiting_total=1, groups_ready=1)
    assert_invariants(r, Q)


def test_retry_failed_refuses_other_states_and_unknown_ids(client: OmniqClient, r) -> None:
    complete(client, "done")
    client.publish(Q, {"n": 1}, job_id="waiting", now_ms=1)
    before = snapshot(r)

    with pytest.raises(NotFailedError) as not_failed:
        client.retry_failed(Q, "waiting", now_ms=100)
    with pytest.raises(NotFailedError):
        client.retry_failed(Q, "done", now_ms=100)
    with pytest.raises(NoJobError) as no_job:
        client.retry_failed(Q, "ghost", now_ms=100)

    assert (not_failed.value.reason, no_job.value.reason) == ("NOT_FAILED", "NO_JOB")
    assert not_failed.value.job_id == "waiting"
    assert snapshot(r) == before


def test_retry_failed_batch_mixed_results(client: OmniqClient, r) -> None:
    fail(client, "f1", now_ms=10)
    fail(client, "f2", now_ms=11, gid="g")
    client.publish(Q, {"n": 1}, job_id="waiting", now_ms=12)

    items = client.retry_failed_batch(Q, ["f1", "ghost", "waiting", "f2", "", "f1"], now_ms=100)

    assert items == [
        BatchItem("f1", True), BatchItem("ghost", False, "NO_JOB"),
        BatchItem("waiting", False, "NOT_FAILED"), BatchItem("f2", True),
        BatchItem("", False, "BAD_JOB_ID"), BatchItem("f1", False, "NOT_FAILED"),
    ]
    assert_lanes(r, Q, wait=["waiting", "f1"], groups={"g": ["f2"]})
    assert_stats(r, Q, failed=0, last_activity_ms=100)
    assert_invariants(r, Q)


def test_retry_failed_batch_limits(client: OmniqClient, r) -> None:
    fail(client, "f")
    assert client.retry_failed_batch(Q, [], now_ms=100) == []

    with pytest.raises(BatchTooLargeError) as info:
        client.retry_failed_batch(Q, [f"id{n}" for n in range(101)], now_ms=100)
    assert (info.value.reason, info.value.detail) == ("BATCH_TOO_LARGE", "100")
    assert_lanes(r, Q, failed=["f"])

    items = client.retry_failed_batch(Q, ["f"] + [f"id{n}" for n in range(99)], now_ms=100)
    assert len(items) == 100 and items[0] == BatchItem("f", True)
    assert_invariants(r, Q)


def test_batch_reply_for_a_job_named_err(client: OmniqClient, r) -> None:
    fail(client, "ERR")
    assert client.retry_failed_batch(Q, ["ERR"], now_ms=100) == [BatchItem("ERR", True)]
    assert client.retry_failed_batch(Q, ["ERR"], now_ms=100) == [BatchItem("ERR", False, "NOT_FAILED")]
    assert client.remove_jobs_batch(Q, "wait", ["ERR"], now_ms=100) == [BatchItem("ERR", True)]
    assert_invariants(r, Q)


def test_retry_failed_batch_script_bad_args(client: OmniqClient, r) -> None:
    reply = client.scripts["retry_failed_batch"](keys=["{ops}:meta"], args=["100", "3", "a"])
    assert reply == [b"ERR", b"BAD_ARGS"]


# -- remove_job ------------------------------------------------------------------


def test_remove_from_wait(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="a", now_ms=1)
    client.publish(Q, {"n": 2}, job_id="b", now_ms=2)

    assert client.remove_job(Q, "a", "wait", now_ms=50) is None

    assert not r.exists("{ops}:job:a")
    assert_lanes(r, Q, wait=["b"])
    assert_idx(r, Q, "wait", {"b": 2})
    assert_stats(r, Q, waiting=1, waiting_total=1, last_activity_ms=50)
    assert_invariants(r, Q)


def test_remove_from_gwait(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="g1", gid="g", now_ms=1)
    client.publish(Q, {"n": 2}, job_id="g2", gid="g", now_ms=2)

    client.remove_job(Q, "g1", "gwait", now_ms=50)
    assert_lanes(r, Q, groups={"g": ["g2"]})
    assert groups_ready(r, Q) == [("g", 1.0)]  # still has a waiting job
    assert_stats(r, Q, group_waiting=1, waiting_total=1, groups_ready=1)
    assert_invariants(r, Q)

    client.remove_job(Q, "g2", "gwait", now_ms=51)
    assert not r.exists("{ops}:job:g2")
    assert_lanes(r, Q)
    assert groups_ready(r, Q) == []  # its last waiting job left
    assert_stats(r, Q, group_waiting=0, waiting_total=0, groups_ready=0)
    assert_idx(r, Q, "wait", {})
    assert_invariants(r, Q)


def test_remove_from_gwait_readies_a_group_with_room_at_score_zero(client: OmniqClient, r) -> None:
    # g: limit 1 (none set) with g1 running, so not ready; an operator then raises its
    # limit to 3 without making it ready; removing g3 leaves it ready (reference: score 0)
    for n in (1, 2, 3):
        client.publish(Q, {"n": n}, job_id=f"g{n}", gid="g", now_ms=n)
    assert client.reserve(Q, now_ms=10).job_id == "g1"
    r.set(f"{{{Q}}}:g:g:limit", "3")
    assert groups_ready(r, Q) == []

    client.remove_job(Q, "g3", "gwait", now_ms=50)

    assert groups_ready(r, Q) == [("g", 0.0)]
    assert_stats(r, Q, groups_ready=1, group_waiting=1)
    assert_invariants(r, Q)
    assert client.reserve(Q, now_ms=60).job_id == "g2"


def test_delayed_publish_that_sets_the_limit_readies_a_group_with_room(client: OmniqClient, r) -> None:
    for n in (1, 2):
        client.publish(Q, {"n": n}, job_id=f"g{n}", gid="g", now_ms=n)
    assert client.reserve(Q, now_ms=10).job_id == "g1"  # limit 1: full, not ready
    assert groups_ready(r, Q) == []
    client.publish(Q, {"n": 3}, job_id="g3", gid="g", group_limit=3, due_ms=9000, now_ms=11)
    assert groups_ready(r, Q) == [("g", 11.0)]  # room for g2 now
    assert_invariants(r, Q)
    assert client.reserve(Q, now_ms=12).job_id == "g2"


def test_remove_from_gwait_unreadies_a_full_group(client: OmniqClient, r) -> None:
    for n in (1, 2, 3):
        client.publish(Q, {"n": n}, job_id=f"g{n}", gid="g", group_limit=2, now_ms=n)
    assert client.reserve(Q, now_ms=10).job_id == "g1"
    assert groups_ready(r, Q) == [("g", 10.0)]
    r.set("{ops}:g:g:limit", "1")  # an operator lowers the limit: full but still ready

    client.remove_job(Q, "g3", "gwait", now_ms=50)

    assert groups_ready(r, Q) == []
    assert_stats(r, Q, groups_ready=0, group_waiting=1)
    assert_invariants(r, Q)


def test_remove_from_delayed(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="d", due_ms=900, now_ms=1)
    client.remove_job(Q, "d", "delayed", now_ms=50)
    assert not r.exists("{ops}:job:d")
    assert_lanes(r, Q)
    assert_idx(r, Q, "delayed", {})
    assert_stats(r, Q, delayed=0)
    assert_invariants(r, Q)


def test_remove_from_failed(client: OmniqClient, r) -> None:
    fail(client, "f1")
    fail(client, "f2")
    client.remove_job(Q, "f1", "failed", now_ms=50)
    assert not r.exists("{ops}:job:f1")
    assert_lanes(r, Q, failed=["f2"])
    assert_idx(r, Q, "failed", {"f2": 10})
    assert_stats(r, Q, failed=1)
    assert_invariants(r, Q)


def test_remove_from_completed(client: OmniqClient, r) -> None:
    complete(client, "c1")
    complete(client, "c2")
    client.remove_job(Q, "c2", "completed", now_ms=50)
    assert not r.exists("{ops}:job:c2")
    assert_lanes(r, Q, completed=["c1"])
    assert_idx(r, Q, "completed", {"c1": 10})
    assert_stats(r, Q, completed_kept=1)
    assert_invariants(r, Q)


def test_remove_refusals(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="running", now_ms=1)
    client.reserve(Q, now_ms=2)
    client.publish(Q, {"n": 2}, job_id="plain", now_ms=3)
    client.publish(Q, {"n": 3}, job_id="grouped", gid="g", now_ms=4)
    client.publish(Q, {"n": 4}, job_id="later", due_ms=900, now_ms=5)
    before = snapshot(r)

    cases = [
        ("running", "wait", JobActiveError, "ACTIVE"),
        ("running", "completed", JobActiveError, "ACTIVE"),
        ("plain", "delayed", LaneMismatchError, "LANE_MISMATCH"),
        ("plain", "gwait", LaneMismatchError, "LANE_MISMATCH"),  # ungrouped job
        ("plain", "bogus", LaneMismatchError, "LANE_MISMATCH"),  # unknown lane
        ("later", "wait", LaneMismatchError, "LANE_MISMATCH"),
        ("grouped", "wait", NotInLaneError, "NOT_IN_LANE"),  # waits in its group's lane
        ("ghost", "wait", NoJobError, "NO_JOB"),
    ]
    for job_id, lane, error, reason in cases:
        with pytest.raises(error) as info:
            client.remove_job(Q, job_id, lane, now_ms=50)
        assert info.value.reason == reason, (job_id, lane)
        assert isinstance(info.value, ProtocolError)
    assert snapshot(r) == before
    assert_invariants(r, Q)


# -- remove_jobs_batch -------------------------------------------------------------


def test_remove_jobs_batch_mixed_results(client: OmniqClient, r) -> None:
    fail(client, "f1", now_ms=10)
    fail(client, "f2", now_ms=11)
    client.publish(Q, {"n": 1}, job_id="waiting", now_ms=12)

    items = client.remove_jobs_batch(Q, "failed", ["f1", "ghost", "waiting", "", "f2", "f1"], now_ms=100)

    assert items == [
        BatchItem("f1", True), BatchItem("ghost", False, "NO_JOB"),
        BatchItem("waiting", False, "LANE_MISMATCH"), BatchItem("", False, "BAD_JOB_ID"),
        BatchItem("f2", True), BatchItem("f1", False, "NO_JOB"),
    ]
    assert not r.exists("{ops}:job:f1") and not r.exists("{ops}:job:f2")
    assert_lanes(r, Q, wait=["waiting"])
    assert_stats(r, Q, failed=0, waiting=1, last_activity_ms=100)
    assert_invariants(r, Q)


def test_remove_jobs_batch_gwait(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="g1", gid="g", now_ms=1)
    client.publish(Q, {"n": 2}, job_id="h1", gid="h", now_ms=2)
    client.publish(Q, {"n": 3}, job_id="u1", now_ms=3)

    items = client.remove_jobs_batch(Q, "gwait", ["g1", "h1", "u1"], now_ms=100)

    assert items == [BatchItem("g1", True), BatchItem("h1", True),
                     BatchItem("u1", False, "LANE_MISMATCH")]
    assert groups_ready(r, Q) == []
    assert_lanes(r, Q, wait=["u1"])
    assert_invariants(r, Q)


def test_remove_jobs_batch_errors(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="w", now_ms=1)
    before = snapshot(r)

    with pytest.raises(BadLaneError) as bad_lane:
        client.remove_jobs_batch(Q, "active", ["w"], now_ms=100)
    assert bad_lane.value.reason == "BAD_LANE"
    with pytest.raises(BatchTooLargeError) as too_large:
        client.remove_jobs_batch(Q, "wait", ["w"] * 101, now_ms=100)
    assert too_large.value.detail == "100"
    assert client.remove_jobs_batch(Q, "wait", [], now_ms=100) == []
    assert snapshot(r) == before

    reply = client.scripts["remove_jobs_batch"](keys=["{ops}:meta"], args=["wait", "2", "w"])
    assert reply == [b"ERR", b"BAD_ARGS"]
    assert snapshot(r) == before
