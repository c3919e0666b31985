"""enqueue: the job hash, the lane, the idx mirror and the stats of a publish."""

from __future__ import annotations

import dataclasses
import json

import msgspec
import pytest

from helpers_state import (
    assert_idx, assert_invariants, assert_lanes, assert_stats, group_wait, groups_ready, job,
    snapshot, stats,
)
from omniq_tasks import InvalidNameError, OmniqClient, OmniqError, PayloadError
from omniq_tasks.errors import PayloadTooLargeError
from omniq_tasks.protocol.models import Published

Q = "emails"


def test_ungrouped_publish_writes_job_wait_idx_and_stats(client: OmniqClient, r) -> None:
    pub = client.publish(Q, {"to": "a@b.c"}, job_id="j1", max_attempts=4, timeout_ms=7000,
                         backoff_ms=250, now_ms=1000)

    assert pub == Published(queue=Q, job_id="j1", existed=False)
    assert job(r, Q, "j1") == {
        "id": "j1", "payload": '{"to":"a@b.c"}', "state": "wait", "attempt": "0",
        "max_attempts": "4", "timeout_ms": "7000", "backoff_ms": "250",
        "created_ms": "1000", "updated_ms": "1000", "queued_ms": "1000",
        "first_started_ms": "", "last_started_ms": "", "completed_ms": "", "failed_ms": "",
    }
    assert_lanes(r, Q, wait=["j1"])
    assert_idx(r, Q, "wait", {"j1": 1000})
    assert_stats(r, Q, waiting=1, group_waiting=0, waiting_total=1, last_enqueue_ms=1000,
                 last_activity_ms=1000)
    assert not r.exists("{emails}:has_groups")
    assert_invariants(r, Q)


def test_publish_keeps_fifo_order_and_default_job_ids_are_ulids(client: OmniqClient, r) -> None:
    ids = [client.publish(Q, {"n": n}, now_ms=1000 + n).job_id for n in range(3)]

    assert all(len(i) == 26 for i in ids) and len(set(ids)) == 3
    assert_lanes(r, Q, wait=ids)
    assert_idx(r, Q, "wait", {ids[0]: 1000, ids[1]: 1001, ids[2]: 1002})
    assert_stats(r, Q, waiting=3, waiting_total=3, last_enqueue_ms=1002)
    assert_invariants(r, Q)


def test_grouped_publish_uses_group_lane_and_makes_group_ready(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="g1", gid="tenant-a", now_ms=500)
    client.publish(Q, {"n": 2}, job_id="g2", gid="tenant-a", now_ms=600)

    h = job(r, Q, "g1")
    assert h["gid"] == "tenant-a" and h["state"] == "wait" and h["queued_ms"] == "500"
    assert_lanes(r, Q, groups={"tenant-a": ["g1", "g2"]})
    # ready since the first publish: ZADD NX keeps the older score
    assert groups_ready(r, Q) == [("tenant-a", 500.0)]
    assert r.get("{emails}:has_groups") == "1"
    assert not r.exists("{emails}:g:tenant-a:limit")
    assert not r.exists("{emails}:g:tenant-a:inflight")
    assert_idx(r, Q, "wait", {"g1": 500, "g2": 600})
    assert_stats(r, Q, waiting=0, group_waiting=2, waiting_total=2, groups_ready=1,
                 last_enqueue_ms=600)
    assert_invariants(r, Q)


def test_delayed_publish_goes_to_delayed_zset(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="d1", due_ms=5000, now_ms=1000)

    h = job(r, Q, "d1")
    assert h["state"] == "delayed" and h["due_ms"] == "5000" and h["updated_ms"] == "1000"
    assert r.zrange("{emails}:delayed", 0, -1, withscores=True) == [("d1", 5000.0)]
    assert_lanes(r, Q, delayed=["d1"])
    assert_idx(r, Q, "delayed", {"d1": 1000})
    assert_idx(r, Q, "wait", {})
    assert_stats(r, Q, delayed=1, waiting=0, waiting_total=0, last_enqueue_ms=1000)
    assert_invariants(r, Q)


def test_due_not_later_than_now_is_runnable_at_once(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="now", due_ms=1000, now_ms=1000)
    client.publish(Q, {"n": 2}, job_id="past", due_ms=10, now_ms=1000)

    assert_lanes(r, Q, wait=["now", "past"])
    assert "due_ms" not in job(r, Q, "now")
    assert_invariants(r, Q)


def test_delayed_grouped_publish_does_not_make_the_group_ready(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 1}, job_id="dg", gid="g", group_limit=3, due_ms=9000, now_ms=1000)

    assert job(r, Q, "dg")["gid"] == "g"
    assert_lanes(r, Q, delayed=["dg"])
    assert groups_ready(r, Q) == []
    assert r.get("{emails}:has_groups") == "1"
    assert r.get("{emails}:g:g:limit") == "3"
    assert_invariants(r, Q)


def test_group_limit_is_set_only_when_missing(client: OmniqClient, r) -> None:
    client.publish(Q, {"n": 0}, job_id="z", gid="g", group_limit=0, now_ms=1)
    assert not r.exists("{emails}:g:g:limit")

    client.publish(Q, {"n": 1}, job_id="a", gid="g", group_limit=2, now_ms=2)
    assert r.get("{emails}:g:g:limit") == "2"

    client.publish(Q, {"n": 2}, job_id="b", gid="g", group_limit=5, now_ms=3)
    client.publish(Q, {"n": 3}, job_id="c", gid="g", group_limit=0, now_ms=4)
    assert r.get("{emails}:g:g:limit") == "2"
    assert group_wait(r, Q, "g") == ["z", "a", "b", "c"]
    assert_invariants(r, Q)


@pytest.mark.parametrize("lane_setup", ["wait", "grouped", "delayed", "completed"])
def test_publishing_an_existing_id_changes_nothing(client: OmniqClient, r, lane_setup: str) -> None:
    if lane_setup == "wait":
        client.publish(Q, {"v": 1}, job_id="same", now_ms=100)
    elif lane_setup == "grouped":
        client.publish(Q, {"v": 1}, job_id="same", gid="g", group_limit=2, now_ms=100)
    elif lane_setup == "delayed":
        client.publish(Q, {"v": 1}, job_id="same", due_ms=900, now_ms=100)
    else:
        client.publish(Q, {"v": 1}, job_id="same", now_ms=100)
        leased = client.reserve(Q, now_ms=110)
        client.ack_success(Q, "same", leased.lease_token, now_ms=120)
    before = snapshot(r)

    again = client.publish(Q, {"v": 2}, job_id="same", max_attempts=9, timeout_ms=1,
                           backoff_ms=1, gid="other", group_limit=7, now_ms=5000)

    assert again == Published(queue=Q, job_id="same", existed=True)
    assert snapshot(r) == before
    assert_invariants(r, Q)


def test_enqueue_script_answers_exists_and_bad_job_id(client: OmniqClient, r) -> None:
    call = client.scripts["enqueue"]
    args = ["x", "{}", "1", "1000", "0", "10", "0", "", "0"]
    assert call(keys=["{emails}:meta"], args=args) == [b"OK", b"x"]
    assert call(keys=["{emails}:meta"], args=args) == [b"OK", b"x", b"EXISTS"]
    assert call(keys=["{emails}:meta"], args=[""] + args[1:]) == [b"ERR", b"BAD_JOB_ID"]
    assert r.llen("{emails}:wait") == 1


def test_now_ms_zero_uses_the_redis_server_clock(client: OmniqClient, r) -> None:
    seconds, micros = r.time()
    before = seconds * 1000 + micros // 1000
    client.publish(Q, {"n": 1}, job_id="clock")
    seconds, micros = r.time()
    after = seconds * 1000 + micros // 1000

    created = int(job(r, Q, "clock")["created_ms"])
    assert before <= created <= after
    assert int(stats(r, Q)["last_enqueue_ms"]) == created
    assert_idx(r, Q, "wait", {"clock": created})


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Order(msgspec.Struct):
    id: int
    items: list[str]


@pytest.mark.parametrize(("payload", "stored"), [
    ({"a": [1, 2]}, {"a": [1, 2]}),
    ([1, "two", None], [1, "two", None]),
    ({}, {}),
    (Order(7, ["x"]), {"id": 7, "items": ["x"]}),
    (Point(1, 2), {"x": 1, "y": 2}),
])
def test_payloads_that_encode_to_an_object_or_array(client: OmniqClient, r, payload, stored) -> None:
    client.publish(Q, payload, job_id="p", now_ms=1)
    assert json.loads(job(r, Q, "p")["payload"]) == stored


@pytest.mark.parametrize("payload", ["text", 42, 1.5, None, True, b"{}", object()])
def test_other_payloads_are_refused_before_redis(client: OmniqClient, r, payload) -> None:
    with pytest.raises(PayloadError) as info:
        client.publish(Q, payload, now_ms=1)
    assert isinstance(info.value, TypeError) and isinstance(info.value, OmniqError)
    assert r.dbsize() == 0


@pytest.mark.parametrize("text", ['"a string"', "42", "", "   ", b"null"])
def test_publish_json_refuses_non_object_text(client: OmniqClient, r, text) -> None:
    with pytest.raises(PayloadError):
        client.publish_json(Q, text, now_ms=1)
    assert r.dbsize() == 0


def test_publish_json_stores_the_text_unchanged(client: OmniqClient, r) -> None:
    client.publish_json(Q, '{"b": 1,  "a": 2}', job_id="raw", now_ms=1)
    client.publish_json(Q, b"[1]", job_id="raw2", now_ms=1)
    assert job(r, Q, "raw")["payload"] == '{"b": 1,  "a": 2}'
    assert job(r, Q, "raw2")["payload"] == "[1]"


def test_payload_size_limit(redis_server, r) -> None:
    with OmniqClient(redis_server.url, max_payload_bytes=20) as small:
        small.publish(Q, {"k": "x" * 12}, job_id="fits", now_ms=1)  # exactly 20 bytes
        with pytest.raises(PayloadTooLargeError) as info:
            small.publish(Q, {"k": "x" * 13}, job_id="big", now_ms=1)
        with pytest.raises(PayloadTooLargeError):
            small.publish_json(Q, "[" + "1," * 20 + "1]", job_id="big2", now_ms=1)
    assert isinstance(info.value, ValueError) and isinstance(info.value, OmniqError)
    assert "21" in str(info.value) and "20" in str(info.value)
    assert_lanes(r, Q, wait=["fits"])
    assert not job(r, Q, "big")


def test_default_payload_limit_is_one_mib(client: OmniqClient, r) -> None:
    client.publish_json(Q, "[" + " " * (1024 * 1024 - 2) + "]", job_id="max", now_ms=1)
    with pytest.raises(PayloadTooLargeError):
        client.publish_json(Q, "[" + " " * (1024 * 1024 - 1) + "]", job_id="over", now_ms=1)
    assert_lanes(r, Q, wait=["max"])


@pytest.mark.parametrize(("field", "value", "error"), [
    ("max_attempts", 0, ValueError),
    ("max_attempts", True, TypeError),
    ("max_attempts", 2.0, TypeError),
    ("max_attempts", "3", TypeError),
    ("timeout_ms", 0, ValueError),
    ("timeout_ms", False, TypeError),
    ("backoff_ms", -1, ValueError),
    ("due_ms", -5, ValueError),
    ("group_limit", -1, ValueError),
    ("now_ms", -1, ValueError),
    ("now_ms", True, TypeError),
    ("job_id", "", ValueError),
    ("job_id", "x" * 257, ValueError),
    ("job_id", 5, ValueError),
    ("gid", "", InvalidNameError),
    ("gid", "has space", InvalidNameError),
    ("gid", 7, InvalidNameError),
])
def test_bad_arguments_are_refused_and_nothing_is_written(
    client: OmniqClient, r, field: str, value, error: type[Exception]
) -> None:
    r.script_flush()
    with pytest.raises(error):
        client.publish(Q, {"n": 1}, **{field: value})
    assert r.dbsize() == 0
    sha = client.scripts["enqueue"].sha
    assert r.script_exists(sha) == [False]
