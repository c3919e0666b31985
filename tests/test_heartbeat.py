"""heartbeat: lease extension and the lease checks shared with both acks."""

from __future__ import annotations

import pytest

from helpers_state import assert_invariants, job, snapshot
from omniq_tasks import OmniqClient, OmniqError, ProtocolError
from omniq_tasks.errors import LeaseLostError, NotActiveError, TokenMismatchError, TokenRequiredError
from omniq_tasks.protocol.models import ReservedJob

Q = "beats"


def leased(client: OmniqClient, *, timeout_ms: int = 1000, now_ms: int = 100, **kw) -> ReservedJob:
    client.publish(Q, {"n": 1}, job_id="j", timeout_ms=timeout_ms, now_ms=now_ms, **kw)
    got = client.reserve(Q, now_ms=now_ms)
    assert isinstance(got, ReservedJob)
    return got


def test_heartbeat_before_expiry_extends_from_the_old_lock(client: OmniqClient, r) -> None:
    job_ = leased(client, timeout_ms=1000, now_ms=100)
    assert job_.lock_until_ms == 1100

    assert client.heartbeat(Q, "j", job_.lease_token, now_ms=600) == 2100  # max(1100, 600) + 1000

    h = job(r, Q, "j")
    assert (h["lock_until_ms"], h["updated_ms"], h["state"]) == ("2100", "600", "active")
    assert h["lease_token"] == job_.lease_token and h["attempt"] == "1"
    assert r.zscore("{beats}:active", "j") == 2100
    assert_invariants(r, Q)


def test_heartbeat_after_expiry_extends_from_now(client: OmniqClient, r) -> None:
    job_ = leased(client, timeout_ms=1000, now_ms=100)

    assert client.heartbeat(Q, "j", job_.lease_token, now_ms=5000) == 6000  # max(1100, 5000) + 1000

    assert job(r, Q, "j")["lock_until_ms"] == "6000"
    assert r.zscore("{beats}:active", "j") == 6000
    assert_invariants(r, Q)


def test_repeated_heartbeats_keep_extending(client: OmniqClient, r) -> None:
    job_ = leased(client, timeout_ms=1000, now_ms=100)
    locks = [client.heartbeat(Q, "j", job_.lease_token, now_ms=200) for _ in range(3)]
    assert locks == [2100, 3100, 4100]
    assert r.zscore("{beats}:active", "j") == 4100


def test_heartbeat_leaves_idx_and_stats_alone(client: OmniqClient, r) -> None:
    job_ = leased(client)
    idx_before = r.zrange("{beats}:idx:active", 0, -1, withscores=True)
    stats_before = r.hgetall("{beats}:stats")
    client.heartbeat(Q, "j", job_.lease_token, now_ms=700)
    assert r.zrange("{beats}:idx:active", 0, -1, withscores=True) == idx_before
    assert r.hgetall("{beats}:stats") == stats_before


def test_empty_token_is_token_required(client: OmniqClient, r) -> None:
    leased(client)
    before = snapshot(r)
    with pytest.raises(TokenRequiredError) as info:
        client.heartbeat(Q, "j", "", now_ms=200)
    assert info.value.reason == "TOKEN_REQUIRED"
    assert (info.value.queue, info.value.job_id) == (Q, "j")
    assert not isinstance(info.value, LeaseLostError)
    assert snapshot(r) == before


def test_wrong_token_is_token_mismatch(client: OmniqClient, r) -> None:
    leased(client)
    before = snapshot(r)
    with pytest.raises(TokenMismatchError) as info:
        client.heartbeat(Q, "j", "0" * 40, now_ms=200)
    err = info.value
    assert err.reason == "TOKEN_MISMATCH"
    assert isinstance(err, LeaseLostError) and isinstance(err, ProtocolError)
    assert isinstance(err, OmniqError)
    assert "TOKEN_MISMATCH" in str(err)
    assert snapshot(r) == before


def test_token_of_an_earlier_lease_is_token_mismatch(client: OmniqClient, r) -> None:
    first = leased(client, timeout_ms=100, now_ms=100, backoff_ms=0)
    assert client.reap_expired(Q, now_ms=300) == 1
    assert client.promote_delayed(Q, now_ms=300) == 1
    second = client.reserve(Q, now_ms=400)
    assert isinstance(second, ReservedJob) and second.attempt == 2

    with pytest.raises(TokenMismatchError):
        client.heartbeat(Q, "j", first.lease_token, now_ms=450)
    assert r.zscore("{beats}:active", "j") == 500  # the new lease is untouched
    assert client.heartbeat(Q, "j", second.lease_token, now_ms=450) == 600
    assert_invariants(r, Q)


def test_unknown_job_is_token_mismatch(client: OmniqClient, r) -> None:
    with pytest.raises(TokenMismatchError):
        client.heartbeat(Q, "nope", "a" * 40, now_ms=1)
    assert r.dbsize() == 0


def test_heartbeat_after_ack_is_refused(client: OmniqClient, r) -> None:
    # The contract checks the token first, and an ack clears it ("" once the lease ends),
    # so a late heartbeat of the acked lease answers TOKEN_MISMATCH: a LeaseLostError.
    job_ = leased(client)
    client.ack_success(Q, "j", job_.lease_token, now_ms=300)
    before = snapshot(r)

    with pytest.raises(LeaseLostError) as info:
        client.heartbeat(Q, "j", job_.lease_token, now_ms=400)
    assert info.value.reason == "TOKEN_MISMATCH"
    assert snapshot(r) == before


def test_matching_token_outside_active_is_not_active(client: OmniqClient, r) -> None:
    # Our scripts clear the token whenever a job leaves active, so NOT_ACTIVE needs a
    # job whose token is still set but whose id left {Q}:active (state written by
    # another writer); heartbeat and both acks must then refuse it.
    job_ = leased(client)
    r.zrem("{beats}:active", "j")
    before = snapshot(r)

    for call in (
        lambda: client.heartbeat(Q, "j", job_.lease_token, now_ms=200),
        lambda: client.ack_success(Q, "j", job_.lease_token, now_ms=200),
        lambda: client.ack_fail(Q, "j", job_.lease_token, error="x", now_ms=200),
    ):
        with pytest.raises(NotActiveError) as info:
            call()
        assert info.value.reason == "NOT_ACTIVE"
        assert isinstance(info.value, LeaseLostError)
        assert snapshot(r) == before
