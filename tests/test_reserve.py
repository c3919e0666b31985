"""reserve: leasing, EMPTY/PAUSED, lane round-robin and group fairness and limits."""

from __future__ import annotations

import re

from helpers_state import (
    assert_idx, assert_invariants, assert_lanes, assert_stats, groups_ready, inflight, job,
    snapshot,
)
from omniq_tasks import OmniqClient
from omniq_tasks.protocol.models import QueueEmpty, QueuePaused, ReservedJob

Q = "work"


def reserved_id(client: OmniqClient, now_ms: int) -> str | None:
    got = client.reserve(Q, now_ms=now_ms)
    return got.job_id if isinstance(got, ReservedJob) else None


def test_reserve_answers_empty_on_an_empty_queue(client: OmniqClient, r) -> None:
    assert client.reserve(Q, now_ms=10) == QueueEmpty(Q)
    assert r.dbsize() == 0


def test_ungrouped_jobs_are_served_fifo(client: OmniqClient, r) -> None:
    for n in range(4):
        client.publish(Q, {"n": n}, job_id=f"j{n}", now_ms=100 + n)

    assert [reserved_id(client, 200 + n) for n in range(5)] == ["j0", "j1", "j2", "j3", None]
    assert_lanes(r, Q, active=["j0", "j1", "j2", "j3"])
    assert_invariants(r, Q)


def test_lease_fields_reply_and_state(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="j", max_attempts=5, timeout_ms=3000, now_ms=1000)

    got = client.reserve(Q, now_ms=1500)

    assert isinstance(got, ReservedJob)
    assert (got.queue, got.job_id, got.payload, got.lock_until_ms, got.attempt,
            got.max_attempts, got.gid) == (Q, "j", '{"n":1}', 4500, 1, 5, "")
    assert re.fullmatch(r"[0-9a-f]{40}", got.lease_token)
    h = job(r, Q, "j")
    assert (h["state"], h["attempt"], h["lock_until_ms"], h["lease_token"]) == (
        "active", "1", "4500", got.lease_token)
    assert (h["first_started_ms"], h["last_started_ms"], h["updated_ms"]) == ("1500", "1500", "1500")
    assert h["created_ms"] == h["queued_ms"] == "1000"
    assert r.zrange("{work}:active", 0, -1, withscores=True) == [("j", 4500.0)]
    assert_idx(r, Q, "active", {"j": 1500})
    assert_idx(r, Q, "wait", {})
    assert_stats(r, Q, active=1, waiting=0, waiting_total=0, last_reserve_ms=1500,
                 last_activity_ms=1500)
    assert_invariants(r, Q)


def test_second_attempt_keeps_first_started_and_gets_a_new_token(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="j", timeout_ms=100, backoff_ms=0, now_ms=1000)
    first = client.reserve(Q, now_ms=1100)
    assert client.reap_expired(Q, now_ms=1300) == 1
    assert client.promote_delayed(Q, now_ms=1300) == 1

    second = client.reserve(Q, now_ms=1400)

    assert isinstance(first, ReservedJob) and isinstance(second, ReservedJob)
    assert (first.attempt, second.attempt) == (1, 2)
    assert second.lease_token != first.lease_token
    assert re.fullmatch(r"[0-9a-f]{40}", second.lease_token)
    h = job(r, Q, "j")
    assert (h["first_started_ms"], h["last_started_ms"], h["attempt"]) == ("1100", "1400", "2")
    assert h["lock_until_ms"] == "1500" and h["lease_token"] == second.lease_token
    assert_invariants(r, Q)


def test_tokens_differ_for_every_reserve_even_at_the_same_ms(client: OmniqClient, r) -> None:
    for n in range(20):
        client.publish(Q, {"n": n}, job_id=f"j{n}", now_ms=1)
    tokens = {client.reserve(Q, now_ms=5).lease_token for _ in range(20)}
    assert len(tokens) == 20
    assert r.get("{work}:lease:seq") == "20"


def test_paused_queue_answers_paused_and_moves_nothing(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="u", now_ms=1)
    client.publish(Q, {"n": 2}, job_id="g", gid="grp", now_ms=2)
    client.pause(Q)
    before = snapshot(r)

    assert client.reserve(Q, now_ms=10) == QueuePaused(Q)
    assert snapshot(r) == before

    assert client.resume(Q) is True
    assert reserved_id(client, 11) == "g"


def test_lanes_alternate_grouped_first_then_ungrouped(client: OmniqClient, r) -> None:
    # interleaved: u1 g-a u2 g-b u3 g-c, each group holding one job
    for n, gid in enumerate("abc", start=1):
        client.publish(Q, {"u": n}, job_id=f"u{n}", now_ms=10 * n)
        client.publish(Q, {"g": n}, job_id=f"g{n}", gid=gid, now_ms=10 * n + 5)
    assert r.get("{work}:lane:rr") is None  # missing = "0": grouped first

    served, rr = [], []
    for n in range(6):
        served.append(reserved_id(client, 100 + n))
        rr.append(r.get("{work}:lane:rr"))

    assert served == ["g1", "u1", "g2", "u2", "g3", "u3"]
    assert rr == ["1", "0", "1", "0", "1", "0"]
    assert client.reserve(Q, now_ms=200) == QueueEmpty(Q)
    assert r.get("{work}:lane:rr") == "0"  # EMPTY does not flip
    assert_invariants(r, Q)


def test_lane_rr_one_serves_ungrouped_first(client: OmniqClient, r) -> None:
    client.publish(Q, {"g": 1}, job_id="g1", gid="a", now_ms=1)
    client.publish(Q, {"u": 1}, job_id="u1", now_ms=2)
    r.set("{work}:lane:rr", "1")

    assert reserved_id(client, 10) == "u1"
    assert r.get("{work}:lane:rr") == "0"
    assert reserved_id(client, 11) == "g1"
    assert r.get("{work}:lane:rr") == "1"


def test_an_empty_lane_falls_through_and_still_flips(client: OmniqClient, r) -> None:
    for n in range(3):
        client.publish(Q, {"u": n}, job_id=f"u{n}", now_ms=n + 1)

    rr = []
    for n in range(3):
        assert reserved_id(client, 10 + n) == f"u{n}"
        rr.append(r.get("{work}:lane:rr"))
    assert rr == ["1", "0", "1"]


def test_groups_are_served_oldest_ready_first(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="from-b", gid="b", now_ms=100)
    client.publish(Q, {"n": 2}, job_id="from-c", gid="c", now_ms=300)
    client.publish(Q, {"n": 3}, job_id="from-a", gid="a", now_ms=200)
    assert groups_ready(r, Q) == [("b", 100.0), ("a", 200.0), ("c", 300.0)]

    assert [reserved_id(client, 1000 + n) for n in range(3)] == ["from-b", "from-a", "from-c"]
    assert groups_ready(r, Q) == []
    assert_stats(r, Q, groups_ready=0, group_waiting=0, active=3)
    assert_invariants(r, Q)


def test_a_served_group_with_room_goes_to_the_back(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="a1", gid="a", group_limit=5, now_ms=100)
    client.publish(Q, {"n": 2}, job_id="a2", gid="a", now_ms=101)
    client.publish(Q, {"n": 3}, job_id="b1", gid="b", now_ms=150)

    assert reserved_id(client, 1000) == "a1"
    # re-added with score now, behind b (ready since 150)
    assert groups_ready(r, Q) == [("b", 150.0), ("a", 1000.0)]
    assert reserved_id(client, 1001) == "b1"
    assert reserved_id(client, 1002) == "a2"
    assert_invariants(r, Q)


def test_fifo_inside_a_group(client: OmniqClient, r) -> None:
    for n in range(4):
        client.publish(Q, {"n": n}, job_id=f"g{n}", gid="g", group_limit=10, now_ms=n + 1)
    assert [reserved_id(client, 10 + n) for n in range(4)] == ["g0", "g1", "g2", "g3"]
    assert inflight(r, Q, "g") == 4
    assert_invariants(r, Q)


def test_group_limit_is_never_exceeded(client: OmniqClient, r) -> None:
    for n in range(5):
        client.publish(Q, {"n": n}, job_id=f"g{n}", gid="g", group_limit=2, now_ms=n + 1)
    client.publish(Q, {"n": 9}, job_id="h0", gid="h", now_ms=50)

    assert reserved_id(client, 100) == "g0"
    assert r.get("{work}:g:g:inflight") == "1"
    assert reserved_id(client, 101) == "h0"  # h was older-ready than g's re-add at 100
    assert reserved_id(client, 102) == "g1"
    assert r.get("{work}:g:g:inflight") == "2"
    assert groups_ready(r, Q) == []  # at its limit: not re-added
    assert_invariants(r, Q)

    assert client.reserve(Q, now_ms=103) == QueueEmpty(Q)
    assert r.get("{work}:g:g:inflight") == "2"
    assert_lanes(r, Q, active=["g0", "h0", "g1"], groups={"g": ["g2", "g3", "g4"]})

    client.ack_success(Q, "g0", job(r, Q, "g0")["lease_token"], now_ms=104)
    assert groups_ready(r, Q) == [("g", 104.0)]
    assert reserved_id(client, 105) == "g2"
    assert client.reserve(Q, now_ms=106) == QueueEmpty(Q)
    assert r.get("{work}:g:g:inflight") == "2"
    assert_invariants(r, Q)


def test_a_full_group_lets_ungrouped_jobs_through(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="g1", gid="g", now_ms=1)
    client.publish(Q, {"n": 2}, job_id="g2", gid="g", now_ms=2)
    client.publish(Q, {"n": 3}, job_id="u1", now_ms=3)

    assert reserved_id(client, 10) == "g1"  # rr 0: grouped
    assert reserved_id(client, 11) == "u1"  # rr 1: ungrouped
    assert client.reserve(Q, now_ms=12) == QueueEmpty(Q)  # g is full, wait is empty
    assert_invariants(r, Q)


def test_a_missing_or_non_positive_limit_means_one(client: OmniqClient, r) -> None:
    for gid, limit in (("none", None), ("zero", "0"), ("neg", "-3")):
        client.publish(Q, {"n": 1}, job_id=f"{gid}1", gid=gid, now_ms=1)
        client.publish(Q, {"n": 2}, job_id=f"{gid}2", gid=gid, now_ms=2)
        if limit is not None:
            r.set(f"{{work}}:g:{gid}:limit", limit)

    served = {reserved_id(client, 10 + n) for n in range(4)}
    assert served == {"none1", "zero1", "neg1", None}
    for gid in ("none", "zero", "neg"):
        assert inflight(r, Q, gid) == 1
    assert_invariants(r, Q)


def test_a_group_at_its_limit_in_ready_is_put_back_at_now_plus_one(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="g1", gid="g", group_limit=2, now_ms=1)
    client.publish(Q, {"n": 2}, job_id="g2", gid="g", now_ms=2)
    assert reserved_id(client, 10) == "g1"
    assert groups_ready(r, Q) == [("g", 10.0)]  # room left: re-added
    r.set("{work}:g:g:limit", "1")  # an operator lowers the limit: g is full but ready
    client.publish(Q, {"n": 3}, job_id="h1", gid="h", now_ms=20)

    assert reserved_id(client, 500) == "h1"

    assert groups_ready(r, Q) == [("g", 501.0)]
    assert inflight(r, Q, "g") == 1
    assert_stats(r, Q, groups_ready=1, active=2, group_waiting=1)
    assert_invariants(r, Q)

    # only the full group is left: EMPTY, and it stays ready at now + 1
    assert client.reserve(Q, now_ms=600) == QueueEmpty(Q)
    assert groups_ready(r, Q) == [("g", 601.0)]
    assert_stats(r, Q, groups_ready=1)


def test_stale_ready_group_without_jobs_is_dropped(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="u1", now_ms=1)
    r.zadd("{work}:groups:ready", {"ghost": 0})
    r.hincrby("{work}:stats", "groups_ready", 1)

    assert reserved_id(client, 10) == "u1"
    assert groups_ready(r, Q) == []
    assert_stats(r, Q, groups_ready=0)
    assert_invariants(r, Q)


def test_empty_after_dropping_a_stale_group_keeps_stats_right(client: OmniqClient, r) -> None:
    r.zadd("{work}:groups:ready", {"ghost": 0})
    r.hincrby("{work}:stats", "groups_ready", 1)

    assert client.reserve(Q, now_ms=10) == QueueEmpty(Q)

    assert groups_ready(r, Q) == []
    assert_stats(r, Q, groups_ready=0)
    assert r.get("{work}:lane:rr") is None


def test_a_full_group_is_not_popped_twice_in_one_reserve(client: OmniqClient, r) -> None:
    # h was made ready by a publisher whose clock runs ahead (score 5000 > now + 1):
    # the full group g, put back at now + 1, must not be popped again before h.
    client.publish(Q, {"n": 1}, job_id="g1", gid="g", group_limit=2, now_ms=1)
    client.publish(Q, {"n": 2}, job_id="g2", gid="g", now_ms=2)
    assert reserved_id(client, 10) == "g1"
    r.set("{work}:g:g:limit", "1")
    client.publish(Q, {"n": 3}, job_id="h1", gid="h", now_ms=5000)

    assert reserved_id(client, 100) == "h1"

    assert groups_ready(r, Q) == [("g", 101.0)]
    assert_stats(r, Q, groups_ready=1)
    assert_invariants(r, Q)
