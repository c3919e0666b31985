"""Admin reads page through big lanes and keyspaces instead of loading them whole.

Round trips are counted from the server's own ``INFO commandstats`` (real Redis,
nothing mocked).
"""

from __future__ import annotations

import itertools

import pytest
import redis
from redis.cluster import RedisCluster

from omniq_tasks import OmniqClient
from omniq_tasks.protocol.keys import idx_key, stats_key

N = 20_000


def calls(r: redis.Redis, command: str) -> int:
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def fill_lane(r: redis.Redis, queue: str, lane: str, n: int) -> list[str]:
    ids = [f"j{i:06d}" for i in range(n)]
    pipe = r.pipeline(transaction=False)
    for start in range(0, n, 5000):
        pipe.zadd(idx_key(queue, lane), {job_id: 1000 + i for i, job_id in enumerate(ids[start:start + 5000], start)})
    pipe.execute()
    return ids


def test_iter_ids_reads_a_big_lane_in_pages_every_id_once_in_order(client: OmniqClient, r: redis.Redis) -> None:
    ids = fill_lane(r, "big", "wait", N)
    r.config_resetstat()
    assert list(client.iter_ids("big", "wait")) == ids
    # 20 full pages of 1000, then one empty read that says the lane ended.
    assert calls(r, "zrange") == N // 1000 + 1
    assert calls(r, "zrank") == N // 1000


def test_iter_ids_reads_only_the_pages_taken(client: OmniqClient, r: redis.Redis) -> None:
    ids = fill_lane(r, "big", "failed", N)
    r.config_resetstat()
    assert list(itertools.islice(client.iter_ids("big", "failed", page_size=50), 5)) == ids[:5]
    assert calls(r, "zrange") == 1
    assert list(itertools.islice(client.iter_ids("big", "failed", page_size=300), 700)) == ids[:700]
    assert calls(r, "zrange") == 1 + 3


def test_iter_ids_page_boundaries(client: OmniqClient, r: redis.Redis) -> None:
    for n in (0, 1, 99, 100, 101, 250):
        r.delete(idx_key("q", "delayed"))
        ids = fill_lane(r, "q", "delayed", n)
        assert list(client.iter_ids("q", "delayed", page_size=100)) == ids, n


def test_iter_ids_skips_nothing_when_ids_leave_the_head_meanwhile(client: OmniqClient, r: redis.Redis) -> None:
    """Workers take jobs from the front of wait while an admin pages through it."""
    ids = fill_lane(r, "busy", "wait", 5000)
    seen = []
    for n, job_id in enumerate(client.iter_ids("busy", "wait", page_size=1000)):
        seen.append(job_id)
        if n == 1500:  # mid-page: the 1,200 oldest ids leave
            r.zrem(idx_key("busy", "wait"), *ids[:1200])
    assert seen == ids


def test_iter_ids_refuses_bad_arguments(client: OmniqClient) -> None:
    with pytest.raises(ValueError):
        list(client.iter_ids("q", "gwait"))
    with pytest.raises(ValueError):
        list(client.iter_ids("q", "wait", page_size=0))


def test_iter_queues_is_lazy_and_list_queues_can_stop_early(client: OmniqClient, r: redis.Redis) -> None:
    pipe = r.pipeline(transaction=False)
    for n in range(3000):
        pipe.hset(stats_key(f"q{n:04d}"), "waiting", 0)
    pipe.execute()
    r.config_resetstat()
    first = next(client.iter_queues(page=100))
    assert first.startswith("q") and calls(r, "scan") <= 2
    r.config_resetstat()
    some = client.list_queues(limit=10)
    assert len(some) == 10 and some == sorted(some) and calls(r, "scan") <= 2
    r.config_resetstat()
    assert sorted(client.iter_queues(page=100)) == [f"q{n:04d}" for n in range(3000)]
    assert calls(r, "scan") >= 3000 // 100
    with pytest.raises(ValueError):
        client.list_queues(limit=0)


@pytest.mark.cluster
def test_paged_reads_on_a_cluster(redis_cluster) -> None:
    c = OmniqClient(redis_cluster.url, cluster=True)
    try:
        assert isinstance(c.redis, RedisCluster)
        c.redis.flushall(target_nodes=RedisCluster.PRIMARIES)
        ids = [f"j{i:04d}" for i in range(2500)]
        c.redis.zadd(idx_key("cq", "wait"), {job_id: i for i, job_id in enumerate(ids)})
        for name in ("a", "b", "c", "d"):
            c.redis.hset(stats_key(name), "waiting", 0)
        assert list(c.iter_ids("cq", "wait", page_size=1000)) == ids
        assert c.list_queues() == ["a", "b", "c", "d"]
    finally:
        c.close()
