"""Every script on a real 3-master Redis Cluster: one slot per queue, no CROSSSLOT."""

from __future__ import annotations

from typing import Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from omniq_tasks import OmniqClient
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
        assert cc.child_ack(key, "c") == 0
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
