"""Every script on a real 3-master Redis Cluster: one slot per queue, no CROSSSLOT."""

from __future__ import annotations

from typing import Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from omniq_tasks import OmniqClient
from omniq_tasks.errors import NoCounterError
from omniq_tasks.protocol.models import AckFailResult, BatchItem, QueuePaused, ReservedJob

pytestmark = pytest.mark.cluster


@pytest.fixture()
def cc(redis_cluster) -> Iterator[OmniqClient]:
    c = OmniqClient(redis_cluster.url, cluster=True)
    assert isinstance(c.redis, RedisCluster)
    c.redis.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield c
    c.close()


def queues_on_two_nodes(c: OmniqClient) -> tuple[str, str]:
    """Two queue names whose keys live on different primaries."""
    def node(name: str) -> str:
        return c.redis.get_node_from_key("{" + name + "}:meta").name

    first = "orders"
    for n in range(100):
        other = f"mail{n}"
        if node(other) != node(first):
            return first, other
    raise AssertionError("no two queue names on different nodes")


def test_full_lifecycle_on_two_queues_in_different_slots(cc: OmniqClient) -> None:
    q1, q2 = queues_on_two_nodes(cc)
    for q in (q1, q2):
        cc.publish(q, {"n": 1}, job_id="ok", now_ms=100)
        cc.publish(q, {"n": 2}, job_id="grp", gid="tenant", group_limit=2, now_ms=101)
        cc.publish(q, {"n": 3}, job_id="flaky", max_attempts=1, now_ms=102)
        cc.publish(q, {"n": 4}, job_id="slow", timeout_ms=50, backoff_ms=10, now_ms=103)
        cc.publish(q, {"n": 5}, job_id="later", due_ms=500, now_ms=104)

        leased = {}
        for now in range(200, 204):
            got = cc.reserve(q, now_ms=now)
            assert isinstance(got, ReservedJob)
            leased[got.job_id] = got
        assert sorted(leased) == ["flaky", "grp", "ok", "slow"]

        ok, grp = leased["ok"], leased["grp"]
        assert cc.heartbeat(q, "ok", ok.lease_token, now_ms=300) == ok.lock_until_ms + 30_000
        cc.ack_success(q, "ok", ok.lease_token, now_ms=301)
        cc.ack_success(q, "grp", grp.lease_token, now_ms=301)
        assert cc.ack_fail(q, "flaky", leased["flaky"].lease_token, error="x",
                           now_ms=302) == AckFailResult("FAILED")
        assert cc.reap_expired(q, now_ms=400) == 1  # slow: lock 253
        assert cc.promote_delayed(q, now_ms=500) == 2  # later (500) and slow (410)

        cc.retry_failed(q, "flaky", now_ms=501)
        assert cc.retry_failed_batch(q, ["flaky", "nope"], now_ms=502) == [
            BatchItem("flaky", False, "NOT_FAILED"), BatchItem("nope", False, "NO_JOB")]
        cc.remove_job(q, "later", "wait", now_ms=503)
        assert cc.remove_jobs_batch(q, "wait", ["slow", "flaky"], now_ms=504) == [
            BatchItem("slow", True), BatchItem("flaky", True)]
        assert cc.remove_jobs_batch(q, "completed", ["ok"], now_ms=505) == [BatchItem("ok", True)]

        cc.pause(q)
        assert cc.is_paused(q) is True
        assert cc.reserve(q, now_ms=600) == QueuePaused(q)
        assert cc.resume(q) is True

        stats = cc.stats(q)
        assert (stats.waiting, stats.active, stats.delayed, stats.failed, stats.completed_kept) == (
            0, 0, 0, 0, 1)
        assert cc.job(q, "grp").state == "completed"
        assert cc.job(q, "later") is None

    assert cc.list_queues() == sorted([q1, q2])


def test_child_counters_on_the_cluster(cc: OmniqClient) -> None:
    keys = [f"fan{n}" for n in range(6)]  # spread over the nodes
    for key in keys:
        cc.childs_init(key, 2)
    for key in keys:
        assert cc.child_ack(key, "a") == 1
        assert cc.child_ack(key, "a") == 1
        assert cc.child_ack(key, "b") == 0
        with pytest.raises(NoCounterError):  # the counter was deleted at 0
            cc.child_ack(key, "c")
    for key in keys:
        base = "{cc:" + key + "}"
        assert not cc.redis.exists(base + ":count", base + ":done")
    assert cc.list_queues() == []


def test_scripts_reload_after_flush_on_every_node(cc: OmniqClient, redis_cluster) -> None:
    q1, q2 = queues_on_two_nodes(cc)
    cc.publish(q1, {"n": 1}, job_id="a", now_ms=1)
    for node in redis_cluster.nodes:
        with redis.Redis(port=node.port) as conn:
            conn.script_flush()
    cc.publish(q2, {"n": 1}, job_id="b", now_ms=1)
    assert cc.reserve(q1, now_ms=2).job_id == "a"
    assert cc.reserve(q2, now_ms=2).job_id == "b"


def queues_on_every_node(c: OmniqClient, per_node: int = 2) -> list[str]:
    """Queue names, ``per_node`` on each primary, interleaved so that neighbours differ."""
    by_node: dict[str, list[str]] = {}
    for n in range(200):
        name = f"spread{n}"
        node = c.redis.get_node_from_key("{" + name + "}:meta").name
        if len(by_node.setdefault(node, [])) < per_node:
            by_node[node].append(name)
    assert len(by_node) == 3 and all(len(v) == per_node for v in by_node.values()), by_node
    return [q for group in zip(*by_node.values()) for q in group]


def test_call_many_spans_every_node_in_order_with_errors_in_place(cc: OmniqClient) -> None:
    queues = queues_on_every_node(cc)
    for q in queues:
        cc.publish(q, {"q": q}, job_id=f"{q}-1", now_ms=1)
    broken = "brokenq"
    cc.redis.set("{" + broken + "}:wait", "not a list")  # its script's LPOP fails: an error reply
    calls = [cc.reserve_batch_call(q, 5, now_ms=2) for q in queues]
    calls.insert(3, cc.reserve_batch_call(broken, 5, now_ms=2))
    replies = cc.scripts.call_many(calls)
    assert isinstance(replies[3], redis.ResponseError) and "WRONGTYPE" in str(replies[3])
    del replies[3]
    for q, reply in zip(queues, replies):
        assert reply[0] == b"JOBS" and reply[1] == f"{q}-1".encode()
    assert cc.scripts.take_resent() is False
    # Sent again unchanged (same replay tags): the first answers, nothing leased twice.
    del calls[3]
    again = cc.scripts.call_many(calls)
    assert again == replies
    assert all(cc.stats(q).active == 1 for q in queues)


def test_call_many_reloads_scripts_flushed_on_every_node(cc: OmniqClient, redis_cluster) -> None:
    queues = queues_on_every_node(cc, per_node=1)
    for q in queues:
        cc.publish(q, {"n": 1}, job_id="later", due_ms=5, now_ms=1)  # due long ago by the server's clock
    for node in redis_cluster.nodes:
        with redis.Redis(port=node.port) as conn:
            conn.script_flush()
    replies = cc.scripts.call_many([call for q in queues for call in cc.maintenance_calls(q)])
    assert len(replies) == 6 and not any(isinstance(r, Exception) for r in replies), replies
    assert [(cc.stats(q).waiting, cc.stats(q).delayed) for q in queues] == [(1, 0)] * 3


def test_a_call_sent_to_the_wrong_node_is_made_again_where_its_slot_lives(cc: OmniqClient) -> None:
    """A stale slot map (after a resharding) sends a call to a node that answers MOVED."""
    q1, q2 = queues_on_two_nodes(cc)
    cc.publish(q1, {"n": 1}, job_id="a", now_ms=1)
    slots = cc.redis.nodes_manager.slots_cache
    slot = cc.redis.keyslot("{" + q1 + "}:meta")
    right = slots[slot]
    slots[slot] = [cc.redis.get_node_from_key("{" + q2 + "}:meta")]  # the wrong primary
    try:
        replies = cc.scripts.call_many([cc.reserve_batch_call(q1, 1, now_ms=2), cc.reserve_batch_call(q2, 1, now_ms=2)])
    finally:
        if slots[slot][0].name != right[0].name:
            slots[slot] = right
    assert replies[0][:2] == [b"JOBS", b"a"] and replies[1][0] == b"EMPTY"
    assert cc.redis.get_node_from_key("{" + q1 + "}:meta").name == right[0].name  # redis-py learned the move


@pytest.mark.parametrize("how", ["redis+cluster URL", "cluster=True", "RedisCluster object"])
def test_an_app_publishes_maps_and_reads_on_the_cluster(redis_cluster, how: str) -> None:
    from omniq_tasks import App, JobStatus

    port = redis_cluster.nodes[1].port
    if how == "redis+cluster URL":
        app = App("cl", f"redis+cluster://127.0.0.1:{port}")
    elif how == "cluster=True":
        app = App("cl", f"redis://127.0.0.1:{port}/0", cluster=True)
    else:
        app = App("cl", redis=RedisCluster(host="127.0.0.1", port=port))
    try:
        assert isinstance(app.client.redis, RedisCluster)
        assert app.client.url.startswith("redis") and "127.0.0.1:" in app.redis_url  # no password to show
        app.client.redis.flushall(target_nodes=RedisCluster.PRIMARIES)
        q1, q2 = queues_on_two_nodes(app.client)

        @app.task(queue=q1)
        def one(n: int) -> None: ...

        handle = one.delay(1)
        handles = one.map(range(1500), queue=q2)
        assert handle.status() is JobStatus.WAITING and handle.info().queue == q1
        assert {h.status() for h in handles[::100]} == {JobStatus.WAITING}
        assert (app.client.stats(q1).waiting, app.client.stats(q2).waiting) == (1, 1500)
        assert app.client.list_queues() == sorted([q1, q2])
    finally:
        app.close()


def test_the_worker_waits_on_one_wake_list_per_slot(cc: OmniqClient, redis_cluster) -> None:
    from omniq_tasks import App
    from omniq_tasks.worker import Worker

    queues = queues_on_every_node(cc)
    app = App("wk", redis_cluster.url, cluster=True)
    try:
        groups = Worker(app, queues, pool="inline")._wake_groups()
        assert sorted(k for g in groups for k in g) == sorted("{" + q + "}:wake" for q in queues)
        assert len(groups) == len(queues)  # six names, six slots
        assert all(len({cc.redis.keyslot(k) for k in g}) == 1 for g in groups)
    finally:
        app.close()
    standalone = App("wk", "redis://127.0.0.1:1/0")
    assert Worker(standalone, queues, pool="inline")._wake_groups() == [["{" + q + "}:wake" for q in queues]]
