"""promote_delayed and reap_expired: the two clock-driven maintenance scripts."""

from __future__ import annotations

import pytest

from helpers_state import (
    assert_idx, assert_invariants, assert_lanes, assert_stats, groups_ready, inflight, job,
    snapshot,
)
from omniq_tasks import OmniqClient
from omniq_tasks.errors import TokenMismatchError
from omniq_tasks.protocol.models import ReservedJob

Q = "maint"


# -- promote_delayed ---------------------------------------------------------------


def test_promote_moves_only_due_jobs(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="d1", due_ms=500, now_ms=100)
    client.publish(Q, {"n": 2}, job_id="d2", due_ms=300, now_ms=100)
    client.publish(Q, {"n": 3}, job_id="later", due_ms=501, now_ms=100)

    assert client.promote_delayed(Q, now_ms=500) == 2

    assert_lanes(r, Q, wait=["d2", "d1"], delayed=["later"])  # by due time
    h = job(r, Q, "d1")
    assert (h["state"], h["updated_ms"], h["queued_ms"]) == ("wait", "500", "100")
    assert_idx(r, Q, "wait", {"d1": 500, "d2": 500})
    assert_idx(r, Q, "delayed", {"later": 100})
    assert_stats(r, Q, delayed=1, waiting=2, waiting_total=2, last_activity_ms=500)
    assert_invariants(r, Q)


def test_promote_with_nothing_due_changes_nothing(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="d", due_ms=500, now_ms=100)
    before = snapshot(r)
    assert client.promote_delayed(Q, now_ms=499) == 0
    assert snapshot(r) == before


def test_promote_honours_max_promote(client: OmniqClient, r) -> None:
    for n in range(5):
        client.publish(Q, {"n": n}, job_id=f"d{n}", due_ms=200 + n, now_ms=100)

    assert client.promote_delayed(Q, max_promote=2, now_ms=1000) == 2
    assert_lanes(r, Q, wait=["d0", "d1"], delayed=["d2", "d3", "d4"])
    assert_invariants(r, Q)
    assert client.promote_delayed(Q, max_promote=2, now_ms=1000) == 2
    assert client.promote_delayed(Q, max_promote=2, now_ms=1000) == 1
    assert client.promote_delayed(Q, max_promote=2, now_ms=1000) == 0
    assert_lanes(r, Q, wait=["d0", "d1", "d2", "d3", "d4"])
    assert_stats(r, Q, delayed=0, waiting=5)
    assert_invariants(r, Q)


def test_promote_puts_grouped_jobs_in_their_lane_and_readies_the_group(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="g1", gid="g", due_ms=300, now_ms=100)
    client.publish(Q, {"n": 2}, job_id="u1", due_ms=300, now_ms=100)

    assert client.promote_delayed(Q, now_ms=400) == 2

    assert_lanes(r, Q, wait=["u1"], groups={"g": ["g1"]})
    assert groups_ready(r, Q) == [("g", 400.0)]
    assert_stats(r, Q, waiting=1, group_waiting=1, waiting_total=2, groups_ready=1, delayed=0)
    assert_invariants(r, Q)


def test_promote_into_a_full_group_does_not_ready_it(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="running", gid="g", now_ms=1)
    client.publish(Q, {"n": 2}, job_id="later", gid="g", due_ms=300, now_ms=1)
    assert client.reserve(Q, now_ms=2).job_id == "running"

    assert client.promote_delayed(Q, now_ms=400) == 1

    assert_lanes(r, Q, active=["running"], groups={"g": ["later"]})
    assert groups_ready(r, Q) == []
    assert_invariants(r, Q)


def test_promote_drops_a_delayed_id_without_job_hash(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="gone", due_ms=50, now_ms=1)
    client.publish(Q, {"n": 2}, job_id="kept", due_ms=60, now_ms=1)
    r.delete("{maint}:job:gone")  # the hash vanished (e.g. deleted by hand)

    assert client.promote_delayed(Q, now_ms=100) == 2

    assert not r.exists("{maint}:job:gone")  # no payload-less phantom job is created
    assert_lanes(r, Q, wait=["kept"])
    assert_idx(r, Q, "delayed", {})
    assert_stats(r, Q, delayed=0, waiting=1, waiting_total=1)
    assert_invariants(r, Q)


# -- reap_expired ----------------------------------------------------------------


def reserve(client: OmniqClient, now_ms: int) -> ReservedJob:
    got = client.reserve(Q, now_ms=now_ms)
    assert isinstance(got, ReservedJob)
    return got


def test_reap_retries_an_expired_lease_with_attempts_left(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="j", timeout_ms=100, backoff_ms=40, max_attempts=2, now_ms=1)
    reserve(client, 10)  # lock until 110

    assert client.reap_expired(Q, now_ms=110) == 1  # a lock ending at now has expired

    h = job(r, Q, "j")
    assert (h["state"], h["due_ms"], h["updated_ms"], h["attempt"]) == ("delayed", "150", "110", "1")
    assert (h["lease_token"], h["lock_until_ms"]) == ("", "")
    assert r.zrange("{maint}:delayed", 0, -1, withscores=True) == [("j", 150.0)]
    assert_lanes(r, Q, delayed=["j"])
    assert_idx(r, Q, "delayed", {"j": 110})
    assert_idx(r, Q, "active", {})
    assert_stats(r, Q, active=0, delayed=1, last_activity_ms=110)
    assert_invariants(r, Q)


def test_reap_fails_a_job_whose_attempts_are_used_up(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="j", timeout_ms=100, max_attempts=1, now_ms=1)
    reserve(client, 10)

    assert client.reap_expired(Q, now_ms=500) == 1

    h = job(r, Q, "j")
    assert (h["state"], h["failed_ms"], h["lease_token"], h["lock_until_ms"]) == ("failed", "500", "", "")
    assert_lanes(r, Q, failed=["j"])
    assert_idx(r, Q, "failed", {"j": 500})
    assert_stats(r, Q, active=0, failed=1, delayed=0)
    assert_invariants(r, Q)


def test_reap_leaves_unexpired_leases_alone(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="short", timeout_ms=100, now_ms=1)
    client.publish(Q, {"n": 2}, job_id="long", timeout_ms=1000, now_ms=1)
    reserve(client, 10)
    long = reserve(client, 10)
    long_before = job(r, Q, "long")

    assert client.reap_expired(Q, now_ms=200) == 1

    assert job(r, Q, "long") == long_before
    assert_lanes(r, Q, active=["long"], delayed=["short"])
    assert_stats(r, Q, active=1, delayed=1)
    assert client.reap_expired(Q, now_ms=1009) == 0
    client.ack_success(Q, "long", long.lease_token, now_ms=1009)
    assert_invariants(r, Q)


def test_reap_with_nothing_expired_changes_nothing(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="j", timeout_ms=100, now_ms=1)
    reserve(client, 10)
    before = snapshot(r)
    assert client.reap_expired(Q, now_ms=109) == 0
    assert snapshot(r) == before


def test_reap_honours_max_reap_oldest_lock_first(client: OmniqClient, r) -> None:
    for n in range(3):
        client.publish(Q, {"n": n}, job_id=f"j{n}", timeout_ms=100 - n, now_ms=1)
        reserve(client, 10)

    assert client.reap_expired(Q, max_reap=2, now_ms=1000) == 2
    assert_lanes(r, Q, active=["j0"], delayed=["j1", "j2"])
    assert_invariants(r, Q)


def test_reap_drops_an_orphan_active_id(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="j", timeout_ms=100, now_ms=1)
    reserve(client, 10)
    r.delete("{maint}:job:j")  # the hash vanished (e.g. deleted by hand)

    assert client.reap_expired(Q, now_ms=500) == 1

    assert not r.exists("{maint}:job:j")
    assert_lanes(r, Q)
    assert_idx(r, Q, "active", {})
    assert_stats(r, Q, active=0, delayed=0, failed=0)
    assert_invariants(r, Q)


def test_reap_releases_the_group(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="g1", gid="g", timeout_ms=100, now_ms=1)
    client.publish(Q, {"n": 2}, job_id="g2", gid="g", now_ms=2)
    reserve(client, 10)
    assert inflight(r, Q, "g") == 1 and groups_ready(r, Q) == []

    assert client.reap_expired(Q, now_ms=500) == 1

    assert inflight(r, Q, "g") == 0
    assert groups_ready(r, Q) == [("g", 500.0)]
    assert_lanes(r, Q, delayed=["g1"], groups={"g": ["g2"]})
    assert_invariants(r, Q)
    assert reserve(client, 501).job_id == "g2"


def test_reaped_lease_token_no_longer_acks(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="j", timeout_ms=100, now_ms=1)
    leased = reserve(client, 10)
    client.reap_expired(Q, now_ms=500)
    before = snapshot(r)
    with pytest.raises(TokenMismatchError):
        client.ack_success(Q, "j", leased.lease_token, now_ms=501)
    assert snapshot(r) == before
