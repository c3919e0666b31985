"""The omniq-tasks extension scripts: each batch does exactly what its single-job
counterpart does in sequence (compared key by key on two DBs), plus its own replies.

Extensions: enqueue_batch, reserve_batch, ack_success_batch, the wake-up tokens of
enqueue (trailing ARGV) and enqueue_batch, and ack_fail's trailing "final" ARGV.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers_state import assert_invariants, snapshot
from omniq_tasks import OmniqClient
from omniq_tasks.protocol.models import QueuePaused, ReservedJob
from omniq_tasks.protocol.client import JobSpec, job_spec
from redis_server import RedisServer

Q = "ext"
NOW = 1_000_000


@pytest.fixture()
def pair(redis_server: RedisServer, r: redis.Redis) -> Iterator[tuple[OmniqClient, OmniqClient, redis.Redis]]:
    """Two clients on DB 0 and DB 1 of one server: one runs batches, the other singles."""
    batch = OmniqClient(f"redis://127.0.0.1:{redis_server.port}/0")
    single = OmniqClient(f"redis://127.0.0.1:{redis_server.port}/1")
    other = redis.Redis(port=redis_server.port, db=1, decode_responses=True)
    other.flushdb()
    yield batch, single, other
    batch.close()
    single.close()
    other.close()


def without(snap: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in snap.items() if not any(k.endswith(n) for n in names)}


def tokens_replaced(snap: dict[str, Any]) -> dict[str, Any]:
    """Lease tokens are random: compare everything else."""
    out = {}
    for key, (kind, value, ttl) in snap.items():
        if kind == "hash" and value.get("lease_token"):
            value = {**value, "lease_token": "<token>"}
        out[key] = (kind, value, ttl)
    return out


job_strategy = st.tuples(
    st.sampled_from(["a", "b", "c", "d", "e"]),            # job id (repeats: idempotent publish)
    st.sampled_from(["", "", "g1", "g2"]),                 # gid
    st.integers(0, 3),                                     # group_limit
    st.sampled_from([0, 0, NOW + 500]),                    # due_ms
    st.integers(1, 3),                                     # max_attempts
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(jobs=st.lists(job_strategy, max_size=12))
def test_enqueue_batch_equals_enqueue_in_sequence(pair: tuple[OmniqClient, OmniqClient, redis.Redis],
                                                  r: redis.Redis, jobs: list[tuple[Any, ...]]) -> None:
    batch, single, other = pair
    r.flushdb()
    other.flushdb()
    specs = [job_spec(b'{"n":%d}' % n, job_id=job_id, gid=gid or None, group_limit=limit, due_ms=due,
                      max_attempts=attempts)
             for n, (job_id, gid, limit, due, attempts) in enumerate(jobs)]
    published = batch.enqueue_many(Q, specs, wake_cap=0, now_ms=NOW)
    expected = [single.publish_json(Q, s.payload, job_id=s.job_id, gid=s.gid or None,
                                    group_limit=s.group_limit, due_ms=s.due_ms,
                                    max_attempts=s.max_attempts, now_ms=NOW) for s in specs]
    assert published == expected
    assert snapshot(r) == snapshot(other)
    assert_invariants(r, Q)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(jobs=st.lists(job_strategy, max_size=12), take=st.integers(1, 15))
def test_reserve_batch_equals_reserve_in_sequence(pair: tuple[OmniqClient, OmniqClient, redis.Redis],
                                                  r: redis.Redis, jobs: list[tuple[Any, ...]],
                                                  take: int) -> None:
    batch, single, other = pair
    r.flushdb()
    other.flushdb()
    for client in (batch, single):
        for n, (job_id, gid, limit, due, attempts) in enumerate(jobs):
            client.publish(Q, {"n": n}, job_id=job_id, gid=gid or None, group_limit=limit,
                           due_ms=due, max_attempts=attempts, timeout_ms=1000 + n, now_ms=NOW)
    got = batch.reserve_batch(Q, take, now_ms=NOW + 1)
    want = []
    for _ in range(take):
        one = single.reserve(Q, now_ms=NOW + 1)
        if not isinstance(one, ReservedJob):
            break
        want.append(one)
    assert isinstance(got, list)
    assert [(j.job_id, j.payload, j.lock_until_ms, j.attempt, j.max_attempts, j.gid) for j in got] == \
        [(j.job_id, j.payload, j.lock_until_ms, j.attempt, j.max_attempts, j.gid) for j in want]
    for j in got:  # the batch reply also carries each lease length, and the token in the hash
        assert j.timeout_ms == j.lock_until_ms - (NOW + 1)
        assert r.hget(f"{{{Q}}}:job:{j.job_id}", "lease_token") == j.lease_token
    assert tokens_replaced(without(snapshot(r), ":lease:seq")) == \
        tokens_replaced(without(snapshot(other), ":lease:seq"))
    assert_invariants(r, Q)


def test_ack_success_batch_equals_acks_in_sequence(pair: tuple[OmniqClient, OmniqClient, redis.Redis],
                                                   r: redis.Redis) -> None:
    batch, single, other = pair
    leased: dict[str, list[ReservedJob]] = {}
    for name, client in (("batch", batch), ("single", single)):
        for n in range(110):  # past the completed retention of 100
            client.publish(Q, {"n": n}, job_id=f"j{n}", gid="g" if n % 3 == 0 else None,
                           group_limit=2, now_ms=NOW)
        leased[name] = []
        while True:
            jobs = client.reserve_batch(Q, 50, now_ms=NOW + 1)
            assert isinstance(jobs, list)
            if not jobs:
                break
            leased[name] += jobs
            if name == "batch":
                items = client.ack_success_batch(Q, [(j.job_id, j.lease_token) for j in jobs], now_ms=NOW + 2)
                assert all(item.ok for item in items) and [i.job_id for i in items] == [j.job_id for j in jobs]
            else:
                for j in jobs:
                    client.ack_success(Q, j.job_id, j.lease_token, now_ms=NOW + 2)
    assert [j.job_id for j in leased["batch"]] == [j.job_id for j in leased["single"]]
    assert without(snapshot(r), ":lease:seq") == without(snapshot(other), ":lease:seq")
    assert r.llen(f"{{{Q}}}:completed") == 100 and r.hget(f"{{{Q}}}:stats", "completed_kept") == "100"
    assert_invariants(r, Q)


def test_ack_success_batch_reports_each_lease_it_refused(client: OmniqClient, r: redis.Redis) -> None:
    for n in range(3):
        client.publish(Q, {"n": n}, job_id=f"j{n}", now_ms=NOW)
    jobs = client.reserve_batch(Q, 3, now_ms=NOW)
    assert isinstance(jobs, list) and len(jobs) == 3
    items = client.ack_success_batch(Q, [(jobs[0].job_id, jobs[0].lease_token), (jobs[1].job_id, "wrong"),
                                         ("nope", "x"), (jobs[2].job_id, "")], now_ms=NOW + 1)
    assert [(i.job_id, i.ok, i.reason) for i in items] == [
        ("j0", True, None), ("j1", False, "TOKEN_MISMATCH"), ("nope", False, "TOKEN_MISMATCH"),
        ("j2", False, "TOKEN_REQUIRED")]
    assert r.lrange(f"{{{Q}}}:completed", 0, -1) == ["j0"]
    assert set(r.zrange(f"{{{Q}}}:active", 0, -1)) == {"j1", "j2"}
    # the same lease twice in one batch: acked once, the repeat refused (by position)
    client.publish(Q, {"n": 9}, job_id="j9", now_ms=NOW)
    nine = client.reserve_batch(Q, 1, now_ms=NOW)
    assert isinstance(nine, list) and [j.job_id for j in nine] == ["j9"]
    lease = (nine[0].job_id, nine[0].lease_token)
    assert [(i.ok, i.reason) for i in client.ack_success_batch(Q, [lease, lease], now_ms=NOW + 2)] == [
        (True, None), (False, "TOKEN_MISMATCH")]
    assert_invariants(r, Q)


def test_reserve_batch_paused_and_empty(client: OmniqClient, r: redis.Redis) -> None:
    assert client.reserve_batch(Q, 5, now_ms=NOW) == []
    client.publish(Q, {"n": 1}, job_id="j1", now_ms=NOW)
    client.pause(Q)
    assert client.reserve_batch(Q, 5, now_ms=NOW) == QueuePaused(Q)
    assert r.lrange(f"{{{Q}}}:wait", 0, -1) == ["j1"]
    client.resume(Q)
    assert [j.job_id for j in client.reserve_batch(Q, 5, now_ms=NOW)] == ["j1"]  # type: ignore[union-attr]


def test_enqueue_batch_replies_and_errors(client: OmniqClient, r: redis.Redis) -> None:
    specs = [JobSpec("a", b'{"n":1}'), JobSpec("a", b'{"n":2}'), JobSpec("b", b"[]", gid="g", group_limit=3)]
    published = client.enqueue_many(Q, specs, wake_cap=0, now_ms=NOW)
    assert [(p.job_id, p.existed) for p in published] == [("a", False), ("a", True), ("b", False)]
    assert r.hget(f"{{{Q}}}:job:a", "payload") == '{"n":1}'  # the repeat changed nothing
    assert r.get(f"{{{Q}}}:g:g:limit") == "3"
    script = client.scripts["enqueue_batch"]
    anchor = f"{{{Q}}}:meta"
    assert script(keys=[anchor], args=(NOW, 0, 1001)) == [b"ERR", b"BATCH_TOO_LARGE", b"1000"]
    assert script(keys=[anchor], args=(NOW, 0, 2, "x", "{}", "", "3:1:1:0:0")) == [b"ERR", b"BAD_ARGS"]
    before = snapshot(r)
    assert script(keys=[anchor], args=(NOW, 0, 2, "x", "{}", "", "3:1:1:0:0",
                                       "y", "{}", "", "nope")) == [b"ERR", b"BAD_ARGS"]
    assert script(keys=[anchor], args=(NOW, 0, 1, "", "{}", "", "3:1:1:0:0")) == [0, 1, b"BAD_JOB_ID"]
    assert snapshot(r) == before  # a bad options string writes nothing, not even earlier jobs


def test_wake_tokens_are_capped_and_only_for_ready_jobs(client: OmniqClient, r: redis.Redis) -> None:
    wake = f"{{{Q}}}:wake"
    client.publish_json(Q, b"{}", job_id="later", due_ms=NOW + 1000, now_ms=NOW, wake_cap=5)
    assert r.llen(wake) == 0  # a delayed job wakes nobody
    client.publish_json(Q, b"{}", job_id="now1", now_ms=NOW, wake_cap=5)
    assert r.lrange(wake, 0, -1) == ["1"]
    client.publish_json(Q, b"{}", job_id="now2", now_ms=NOW)  # no wake_cap: the protocol's enqueue
    assert r.llen(wake) == 1
    client.enqueue_many(Q, [JobSpec(f"b{n}", b"{}") for n in range(10)], wake_cap=5, now_ms=NOW)
    assert r.llen(wake) == 5
    client.enqueue_many(Q, [JobSpec("b0", b"{}")], wake_cap=5, now_ms=NOW)  # exists: no token
    assert r.llen(wake) == 5
    assert_invariants(r, Q)


def test_ack_fail_final_fails_at_once(client: OmniqClient, r: redis.Redis) -> None:
    client.publish(Q, {"n": 1}, job_id="j1", max_attempts=5, now_ms=NOW)
    job = client.reserve(Q, now_ms=NOW)
    assert isinstance(job, ReservedJob)
    result = client.ack_fail(Q, "j1", job.lease_token, error="unknown task", final=True, now_ms=NOW + 1)
    assert result.status == "FAILED" and result.due_ms is None
    h = r.hgetall(f"{{{Q}}}:job:j1")
    assert (h["state"], h["attempt"], h["last_error"], h["failed_ms"]) == ("failed", "1", "unknown task", str(NOW + 1))
    assert r.lrange(f"{{{Q}}}:failed", 0, -1) == ["j1"]
    assert_invariants(r, Q)


def test_ack_batch_limits(client: OmniqClient, r: redis.Redis) -> None:
    script = client.scripts["ack_success_batch"]
    assert script(keys=[f"{{{Q}}}:meta"], args=(NOW, 1001)) == [b"ERR", b"BATCH_TOO_LARGE", b"1000"]
    assert script(keys=[f"{{{Q}}}:meta"], args=(NOW, 2, "a", "t")) == [b"ERR", b"BAD_ARGS"]
    assert client.ack_success_batch(Q, []) == []
    assert r.dbsize() == 0


def test_job_ids_are_ulids_and_monotonic_also_after_fork() -> None:
    import os
    import random

    from ulid import ULID

    from omniq_tasks.protocol.ids import new_job_id, new_job_ids, ulid_text

    for _ in range(2000):
        value = random.getrandbits(128)
        assert ulid_text(value) == str(ULID.from_int(value))
    ids = [new_job_id() for _ in range(50)] + new_job_ids(100) + [new_job_id()]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(ULID.from_str(i).milliseconds > 0 for i in ids)
    run = new_job_ids(3000)  # crosses 1024-id blocks: each id is the ULID text of start + n
    start = int(ULID.from_str(run[0]))
    assert run == [str(ULID.from_int(start + n)) for n in range(3000)]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's next id must not repeat the parent's next one
        os.write(write, new_job_id().encode())
        os._exit(0)
    mine = new_job_id()
    os.waitpid(pid, 0)
    assert os.read(read, 64).decode() != mine
