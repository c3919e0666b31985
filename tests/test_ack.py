"""ack_success and ack_fail: completed retention, retry/fail decisions, group release."""

from __future__ import annotations

import pytest
import redis

from helpers_state import (
    assert_idx, assert_invariants, assert_lanes, assert_stats, groups_ready, inflight, job,
    snapshot,
)
from omniq_tasks import OmniqClient
from omniq_tasks.errors import LeaseLostError, TokenMismatchError, TokenRequiredError
from omniq_tasks.protocol.models import AckFailResult, ReservedJob

Q = "acks"


def publish_and_reserve(client: OmniqClient, job_id: str, now_ms: int, **kw) -> ReservedJob:
    client.publish(Q, {"id": job_id}, job_id=job_id, now_ms=now_ms, **kw)
    got = client.reserve(Q, now_ms=now_ms)
    assert isinstance(got, ReservedJob) and got.job_id == job_id
    return got


# -- ack_success -----------------------------------------------------------------


def test_ack_success_completes_the_job(client: OmniqClient, r) -> None:
    leased = publish_and_reserve(client, "j", 100)

    assert client.ack_success(Q, "j", leased.lease_token, now_ms=250) is None

    h = job(r, Q, "j")
    assert (h["state"], h["completed_ms"], h["updated_ms"]) == ("completed", "250", "250")
    assert (h["lease_token"], h["lock_until_ms"], h["failed_ms"]) == ("", "", "")
    assert (h["attempt"], h["first_started_ms"], h["last_started_ms"]) == ("1", "100", "100")
    assert_lanes(r, Q, completed=["j"])
    assert_idx(r, Q, "completed", {"j": 250})
    assert_idx(r, Q, "active", {})
    assert_stats(r, Q, active=0, completed_kept=1, last_finish_ms=250, last_activity_ms=250)
    assert_invariants(r, Q)


def test_completed_list_is_newest_first(client: OmniqClient, r) -> None:
    for n in range(3):
        leased = publish_and_reserve(client, f"j{n}", 10 + n)
        client.ack_success(Q, f"j{n}", leased.lease_token, now_ms=20 + n)
    assert_lanes(r, Q, completed=["j2", "j1", "j0"])
    assert_idx(r, Q, "completed", {"j0": 20, "j1": 21, "j2": 22})
    assert_invariants(r, Q)


def test_completed_keeps_the_newest_100_and_deletes_the_rest(client: OmniqClient, r) -> None:
    ids = [f"j{n:03d}" for n in range(105)]
    for n, job_id in enumerate(ids):
        leased = publish_and_reserve(client, job_id, 1 + n)
        client.ack_success(Q, job_id, leased.lease_token, now_ms=1000 + n)

    assert r.lrange("{acks}:completed", 0, -1) == ids[:4:-1]
    for job_id in ids[:5]:
        assert not r.exists(f"{{acks}}:job:{job_id}")
        assert r.zscore("{acks}:idx:completed", job_id) is None
    assert job(r, Q, ids[5])["state"] == "completed"
    assert r.zcard("{acks}:idx:completed") == 100
    assert_stats(r, Q, completed_kept=100, active=0, last_finish_ms=1104)
    assert_invariants(r, Q)


def test_grouped_ack_releases_the_group(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="g1", gid="g", now_ms=1)
    client.publish(Q, {"n": 2}, job_id="g2", gid="g", now_ms=2)
    leased = client.reserve(Q, now_ms=10)
    assert leased.job_id == "g1" and groups_ready(r, Q) == []
    assert r.get("{acks}:g:g:inflight") == "1"

    client.ack_success(Q, "g1", leased.lease_token, now_ms=20)

    assert inflight(r, Q, "g") == 0
    assert groups_ready(r, Q) == [("g", 20.0)]
    assert_stats(r, Q, groups_ready=1, group_waiting=1, completed_kept=1)
    assert_invariants(r, Q)
    assert client.reserve(Q, now_ms=30).job_id == "g2"


def test_grouped_ack_of_the_last_job_leaves_the_group_idle(client: OmniqClient, r) -> None:
    leased = publish_and_reserve(client, "g1", 5, gid="g")
    client.ack_success(Q, "g1", leased.lease_token, now_ms=20)
    assert not r.exists("{acks}:g:g:inflight")
    assert groups_ready(r, Q) == []
    assert_invariants(r, Q)


def test_a_job_acked_once_can_never_be_acked_again(client: OmniqClient, r) -> None:
    leased = publish_and_reserve(client, "j", 100)
    client.ack_success(Q, "j", leased.lease_token, now_ms=200)
    before = snapshot(r)

    for call in (
        lambda: client.ack_success(Q, "j", leased.lease_token, now_ms=300),
        lambda: client.ack_fail(Q, "j", leased.lease_token, error="late", now_ms=300),
    ):
        with pytest.raises(LeaseLostError) as info:
            call()
        assert info.value.reason in ("NOT_ACTIVE", "TOKEN_MISMATCH")
    assert snapshot(r) == before


@pytest.mark.parametrize("ack", ["success", "fail"])
def test_ack_lease_errors(client: OmniqClient, r, ack: str) -> None:
    publish_and_reserve(client, "j", 100)
    before = snapshot(r)

    def call(token: str) -> object:
        if ack == "success":
            return client.ack_success(Q, "j", token, now_ms=200)
        return client.ack_fail(Q, "j", token, now_ms=200)

    with pytest.raises(TokenRequiredError) as required:
        call("")
    with pytest.raises(TokenMismatchError) as mismatch:
        call("f" * 40)
    assert (required.value.reason, mismatch.value.reason) == ("TOKEN_REQUIRED", "TOKEN_MISMATCH")
    assert snapshot(r) == before


# -- ack_fail --------------------------------------------------------------------


def test_ack_fail_with_attempts_left_retries_after_backoff(client: OmniqClient, r) -> None:
    leased = publish_and_reserve(client, "j", 100, max_attempts=3, backoff_ms=700)

    got = client.ack_fail(Q, "j", leased.lease_token, error="boom", now_ms=300)

    assert got == AckFailResult("RETRY", 1000)
    h = job(r, Q, "j")
    assert (h["state"], h["due_ms"], h["updated_ms"], h["attempt"]) == ("delayed", "1000", "300", "1")
    assert (h["last_error"], h["last_error_ms"]) == ("boom", "300")
    assert (h["lease_token"], h["lock_until_ms"], h["failed_ms"]) == ("", "", "")
    assert r.zrange("{acks}:delayed", 0, -1, withscores=True) == [("j", 1000.0)]
    assert_lanes(r, Q, delayed=["j"])
    assert_idx(r, Q, "delayed", {"j": 300})
    assert_idx(r, Q, "active", {})
    assert_stats(r, Q, active=0, delayed=1, failed=0, last_finish_ms=300, last_activity_ms=300)
    assert_invariants(r, Q)


def test_ack_fail_without_error_text_stores_none(client: OmniqClient, r) -> None:
    leased = publish_and_reserve(client, "j", 100)
    assert client.ack_fail(Q, "j", leased.lease_token, now_ms=300).status == "RETRY"
    h = job(r, Q, "j")
    assert "last_error" not in h and "last_error_ms" not in h


def test_ack_fail_on_the_last_attempt_fails_for_good(client: OmniqClient, r) -> None:
    leased = publish_and_reserve(client, "j", 100, max_attempts=1, backoff_ms=50)

    got = client.ack_fail(Q, "j", leased.lease_token, error="fatal", now_ms=300)

    assert got == AckFailResult("FAILED") and got.due_ms is None
    h = job(r, Q, "j")
    assert (h["state"], h["failed_ms"], h["updated_ms"]) == ("failed", "300", "300")
    assert (h["last_error"], h["lease_token"], h["lock_until_ms"]) == ("fatal", "", "")
    assert "due_ms" not in h
    assert_lanes(r, Q, failed=["j"])
    assert_idx(r, Q, "failed", {"j": 300})
    assert_stats(r, Q, active=0, delayed=0, failed=1, last_finish_ms=300)
    assert_invariants(r, Q)


def test_ack_fail_final_extension_fails_at_once(client: OmniqClient, r) -> None:
    leased = publish_and_reserve(client, "j", 100, max_attempts=5)
    got = client.ack_fail(Q, "j", leased.lease_token, final=True, now_ms=300)
    assert got == AckFailResult("FAILED")
    h = job(r, Q, "j")
    assert (h["state"], h["attempt"], h["failed_ms"]) == ("failed", "1", "300")
    assert "last_error" not in h
    assert_lanes(r, Q, failed=["j"])
    assert_invariants(r, Q)


def test_attempts_are_counted_across_retries(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="j", max_attempts=3, backoff_ms=10, now_ms=1)
    results = []
    for n in range(3):
        now = 100 * (n + 1)
        assert client.promote_delayed(Q, now_ms=now) == (0 if n == 0 else 1)
        leased = client.reserve(Q, now_ms=now)
        assert leased.attempt == n + 1
        results.append(client.ack_fail(Q, "j", leased.lease_token, error=f"e{n}", now_ms=now + 1))
    assert results == [AckFailResult("RETRY", 111), AckFailResult("RETRY", 211), AckFailResult("FAILED")]
    assert job(r, Q, "j")["last_error"] == "e2"
    assert_lanes(r, Q, failed=["j"])
    assert_invariants(r, Q)


def test_failed_list_is_newest_first(client: OmniqClient, r) -> None:
    for n in range(3):
        leased = publish_and_reserve(client, f"j{n}", 10 + n, max_attempts=1)
        client.ack_fail(Q, f"j{n}", leased.lease_token, now_ms=20 + n)
    assert_lanes(r, Q, failed=["j2", "j1", "j0"])
    assert_invariants(r, Q)


def test_last_error_is_truncated_to_4096_bytes(client: OmniqClient, r, redis_server) -> None:
    leased = publish_and_reserve(client, "j", 100)
    client.ack_fail(Q, "j", leased.lease_token, error="é" * 3000, now_ms=200)  # 6000 bytes

    raw = redis.Redis(port=redis_server.port)  # bytes: the cut may split a UTF-8 sequence
    stored = raw.hget("{acks}:job:j", "last_error")
    raw.close()
    assert len(stored) == 4096 and stored == ("é" * 3000).encode()[:4096]

    assert client.promote_delayed(Q, now_ms=10_000) == 1
    leased = client.reserve(Q, now_ms=10_000)
    client.ack_fail(Q, "j", leased.lease_token, error="x" * 4096, now_ms=10_001)
    assert job(r, Q, "j")["last_error"] == "x" * 4096
    assert client.job(Q, "j").last_error == "x" * 4096


def test_grouped_ack_fail_releases_the_group(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="g1", gid="g", max_attempts=1, now_ms=1)
    client.publish(Q, {"n": 2}, job_id="g2", gid="g", now_ms=2)
    leased = client.reserve(Q, now_ms=10)

    assert client.ack_fail(Q, "g1", leased.lease_token, now_ms=20) == AckFailResult("FAILED")

    assert inflight(r, Q, "g") == 0
    assert groups_ready(r, Q) == [("g", 20.0)]
    assert_lanes(r, Q, failed=["g1"], groups={"g": ["g2"]})
    assert_invariants(r, Q)


def test_grouped_retry_goes_to_delayed_not_the_group_lane(client: OmniqClient, r) -> None:
    leased = publish_and_reserve(client, "g1", 5, gid="g", backoff_ms=100)
    assert client.ack_fail(Q, "g1", leased.lease_token, now_ms=20) == AckFailResult("RETRY", 120)
    assert_lanes(r, Q, delayed=["g1"])
    assert groups_ready(r, Q) == []
    assert_invariants(r, Q)
