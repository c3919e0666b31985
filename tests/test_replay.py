"""Calls sent twice: the batch scripts answer a repeat (same replay tag) with their
first answer, and the client reports what the first send did.

A repeat happens when a connection drops after Redis ran a call but before its
reply arrived: the transport, redis-py's retries or the worker send it again.
The first part sends the very same ARGV twice on purpose; the second part drops a
real reply in a loopback proxy (tests/drop_proxy.py) in front of the test Redis.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import pytest
import redis

from drop_proxy import DropProxy
from helpers_state import assert_invariants, job, snapshot, stats
from omniq_tasks import OmniqClient
from omniq_tasks.protocol.client import job_spec, parse_ack_fail_batch, parse_leases
from omniq_tasks.protocol.models import AckFailResult
from redis_server import RedisServer

Q = "replay"


def publish(client: OmniqClient, n: int, **options: Any) -> list[str]:
    return [client.publish(Q, {"n": i}, job_id=f"j{i}", **options).job_id for i in range(n)]


def send(client: OmniqClient, call: tuple[str, str, Any]) -> Any:
    name, anchor, args = call
    return client.scripts.call(name, anchor, args)


def test_a_repeated_reserve_batch_answers_the_same_leases_and_leases_nothing_more(
        client: OmniqClient, r: redis.Redis) -> None:
    publish(client, 5)
    call = client.reserve_batch_call(Q, 3)
    first = send(client, call)
    after_first = snapshot(r)
    again = send(client, call)
    assert again == first
    assert snapshot(r) == after_first  # nothing more leased, no counter moved
    assert r.zcard("{replay}:active") == 3
    assert r.llen("{replay}:wait") == 2
    # A new call (new tag) leases the rest.
    fresh = parse_leases(Q, send(client, client.reserve_batch_call(Q, 3)))
    assert not isinstance(fresh, type(None)) and len(fresh[0]) == 2  # type: ignore[arg-type]
    assert_invariants(r, Q)


def test_the_replay_memory_is_one_key_per_channel_with_a_ttl(client: OmniqClient, r: redis.Redis) -> None:
    publish(client, 4)
    for _ in range(4):
        send(client, client.reserve_batch_call(Q, 1))
    memory = [k for k in r.scan_iter(match="{replay}:rq:*")]
    assert len(memory) == 1 and memory[0].endswith("reserve_batch")
    assert 0 < r.pttl(memory[0]) <= 600_000


def test_a_repeat_leaves_out_a_lease_that_ended_since(client: OmniqClient, r: redis.Redis) -> None:
    publish(client, 2, timeout_ms=1000)
    call = client.reserve_batch_call(Q, 2)
    first = parse_leases(Q, send(client, call))
    assert not isinstance(first, type(None))
    jobs = first[0]  # type: ignore[index]
    client.ack_success(Q, jobs[0].job_id, jobs[0].lease_token)
    again = parse_leases(Q, send(client, call))
    assert [j.job_id for j in again[0]] == [jobs[1].job_id]  # type: ignore[index]
    assert again[0][0].lease_token == jobs[1].lease_token  # type: ignore[index]
    assert again[0][0].payload == jobs[1].payload  # type: ignore[index]


def test_a_repeated_empty_reserve_looks_again(client: OmniqClient) -> None:
    call = client.reserve_batch_call(Q, 2)
    assert parse_leases(Q, send(client, call)) == ([], [])
    publish(client, 1)
    jobs, _ = parse_leases(Q, send(client, call))  # type: ignore[misc]
    assert [j.job_id for j in jobs] == ["j0"]  # nothing was remembered for an empty answer


def test_a_repeated_ack_success_batch_answers_success_again(client: OmniqClient, r: redis.Redis) -> None:
    publish(client, 3)
    jobs = client.reserve_batch(Q, 3)
    assert isinstance(jobs, list)
    call = client.ack_success_batch_call(Q, [(j.job_id, j.lease_token) for j in jobs])
    first = send(client, call)
    assert first == [3]
    after = snapshot(r)
    assert send(client, call) == [3]
    assert snapshot(r) == after
    assert stats(r, Q)["completed_kept"] == "3"


def test_ack_fail_batch_retries_fails_and_refuses_per_lease(client: OmniqClient, r: redis.Redis) -> None:
    publish(client, 3, max_attempts=2, backoff_ms=5000)
    jobs = client.reserve_batch(Q, 3)
    assert isinstance(jobs, list)
    call = client.ack_fail_batch_call(Q, [
        (jobs[0].job_id, jobs[0].lease_token, "boom", False),
        (jobs[1].job_id, jobs[1].lease_token, "never", True),
        (jobs[2].job_id, "not-the-token", "x", False),
    ])
    first = parse_ack_fail_batch(send(client, call))
    assert isinstance(first[0], AckFailResult) and first[0].status == "RETRY"
    assert first[0].due_ms is not None and first[0].due_ms > 0
    assert first[1] == AckFailResult("FAILED")
    assert first[2] == "TOKEN_MISMATCH"
    assert job(r, Q, jobs[0].job_id)["state"] == "delayed"
    assert job(r, Q, jobs[0].job_id)["last_error"] == "boom"
    assert job(r, Q, jobs[1].job_id)["state"] == "failed"
    assert job(r, Q, jobs[2].job_id)["state"] == "active"
    after = snapshot(r)
    assert parse_ack_fail_batch(send(client, call)) == first
    assert snapshot(r) == after
    assert_invariants(r, Q)


def test_ack_fail_batch_does_what_ack_fail_does(redis_server: RedisServer, r: redis.Redis) -> None:
    """Same state as ack_fail one by one, on two DBs of one server."""
    a = OmniqClient(f"redis://127.0.0.1:{redis_server.port}/0")
    b = OmniqClient(f"redis://127.0.0.1:{redis_server.port}/1")
    other = redis.Redis(port=redis_server.port, db=1, decode_responses=True)
    other.flushdb()
    try:
        now = 1_000_000
        for c in (a, b):
            for i in range(4):
                c.publish(Q, {"i": i}, job_id=f"f{i}", max_attempts=1 + i % 2, gid="g" if i % 2 else None,
                          group_limit=2, now_ms=now)
        ja = a.reserve_batch(Q, 4, now_ms=now)
        jb = b.reserve_batch(Q, 4, now_ms=now)
        assert isinstance(ja, list) and isinstance(jb, list)
        name, anchor, args = a.ack_fail_batch_call(Q, [(j.job_id, j.lease_token, f"e{j.job_id}", j.job_id == "f3")
                                                       for j in ja])
        a.scripts.call(name, anchor, [now + 10, *args[1:]])
        for j in jb:
            b.ack_fail(Q, j.job_id, j.lease_token, error=f"e{j.job_id}", final=j.job_id == "f3", now_ms=now + 10)

        def masked(db: redis.Redis) -> dict[str, Any]:
            snap = snapshot(db)
            return {k: v for k, v in snap.items() if not k.endswith(":lease:seq")}
        assert masked(r) == masked(other)
    finally:
        a.close()
        b.close()
        other.close()


def test_a_repeated_enqueue_batch_reports_created_not_existed(client: OmniqClient, r: redis.Redis) -> None:
    specs = [job_spec(b'{"x":1}', job_id=f"b{i}") for i in range(3)]
    first = client.enqueue_many(Q, specs)
    assert [p.existed for p in first] == [False] * 3
    # The same chunk resent with the same tag: the remembered answer, not EXISTS.
    tag = client.scripts.replay_tag("enqueue_batch")
    args: list[Any] = [0, 0, 1, "c0", b'{"y":1}', "", b"3:30000:5000:0:0", *tag]
    assert client.scripts.call("enqueue_batch", "{replay}:meta", args) == [1]
    assert client.scripts.call("enqueue_batch", "{replay}:meta", args) == [1]
    assert r.llen("{replay}:wait") == 4


# -- a real dropped reply, through the proxy ------------------------------------------


@pytest.fixture()
def proxy(redis_server: RedisServer, r: redis.Redis) -> Iterator[DropProxy]:
    p = DropProxy(redis_server.port)
    yield p
    p.close()


@pytest.fixture()
def via_proxy(proxy: DropProxy) -> Iterator[OmniqClient]:
    c = OmniqClient(f"redis://127.0.0.1:{proxy.port}/0")
    yield c
    c.close()


def test_delay_whose_reply_was_dropped_reports_created(via_proxy: OmniqClient, proxy: DropProxy,
                                                      r: redis.Redis) -> None:
    via_proxy.publish(Q, {"warm": 1})  # opens the thread's script connection
    proxy.drop_next_reply()
    published = via_proxy.publish(Q, {"n": 1}, job_id="fresh")
    assert proxy.dropped == 1
    assert published.existed is False
    assert r.llen("{replay}:wait") == 2
    # A real duplicate (not a resend) still says existed.
    assert via_proxy.publish(Q, {"n": 1}, job_id="fresh").existed is True


def test_reserve_batch_whose_reply_was_dropped_returns_its_leases(via_proxy: OmniqClient, proxy: DropProxy,
                                                                  r: redis.Redis) -> None:
    publish(via_proxy, 6)
    proxy.drop_next_reply()
    jobs = via_proxy.reserve_batch(Q, 4)
    assert proxy.dropped == 1
    assert isinstance(jobs, list) and len(jobs) == 4
    assert r.zcard("{replay}:active") == 4  # no orphaned leases
    for j in jobs:
        assert job(r, Q, j.job_id)["lease_token"] == j.lease_token
    proxy.drop_next_reply()
    items = via_proxy.ack_success_batch(Q, [(j.job_id, j.lease_token) for j in jobs])
    assert proxy.dropped == 2
    assert all(item.ok for item in items)  # the resent ack answers success
    assert_invariants(r, Q)


def test_a_pipelined_batch_whose_replies_were_dropped_is_answered_once(
        via_proxy: OmniqClient, proxy: DropProxy, r: redis.Redis) -> None:
    publish(via_proxy, 4)
    jobs = via_proxy.reserve_batch(Q, 2)
    assert isinstance(jobs, list)
    calls = [via_proxy.ack_success_batch_call(Q, [(j.job_id, j.lease_token) for j in jobs]),
             via_proxy.reserve_batch_call(Q, 2)]
    proxy.drop_next_reply()
    replies = via_proxy.scripts.call_many(calls)
    assert proxy.dropped == 1
    assert replies[0] == [2]
    leased = parse_leases(Q, replies[1])
    assert len(leased[0]) == 2  # type: ignore[index]
    assert r.zcard("{replay}:active") == 2 and r.llen("{replay}:wait") == 0
    assert_invariants(r, Q)


def test_script_flush_in_a_tight_loop_never_escapes(client: OmniqClient, redis_server: RedisServer) -> None:
    flusher = redis.Redis(port=redis_server.port)
    stop = threading.Event()

    def flush() -> None:
        while not stop.is_set():
            flusher.script_flush()
            time.sleep(0.0005)

    thread = threading.Thread(target=flush, daemon=True)
    thread.start()
    try:
        for i in range(300):
            client.publish(Q, {"i": i})
            jobs = client.reserve_batch(Q, 1)
            assert isinstance(jobs, list) and len(jobs) == 1
            client.scripts.call_many([client.ack_success_batch_call(Q, [(jobs[0].job_id, jobs[0].lease_token)]),
                                      client.reserve_batch_call(Q, 1)])
    finally:
        stop.set()
        thread.join()
        flusher.close()
