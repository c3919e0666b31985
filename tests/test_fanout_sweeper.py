"""The fan-out sweeper on a real redis-server: a publisher still at work is not taken for
one that stopped (progress_ms), and one that stopped is (its children never published
count as gone); fanout_mark's progress_ms field."""

from __future__ import annotations

import redis

from omniq_tasks import App, OmniqClient
from omniq_tasks.protocol import keys
from omniq_tasks.worker.fanout_sweeper import FanoutSweeper
from redis_server import RedisServer

KEY = "doc-sweep"


def half_published_fanout(client: OmniqClient, app: App) -> int:
    """A fan-out of 3 whose publisher published child 0 only; returns the server's now."""
    @app.task(queue="sw", name="page")
    def page(n: int) -> int:
        return n

    assert client.fanout_open(KEY, 3, 600_000, b"", b"", ["sw"]) == (True, False)
    client.publish_json("sw", '{"task":"page","kwargs":{"n":0}}', job_id=f"{KEY}.0")
    return client.server_now_ms()


def test_progress_ms_is_a_positive_integer_only(client: OmniqClient, r: redis.Redis) -> None:
    assert client.fanout_open("p", 2, 60_000, b"", b"", ["q"]) == (True, False)
    assert client.fanout_mark("p", "progress_ms", "1796000000000") is True
    assert r.hget(keys.fanout_key("p", "fo"), "progress_ms") == "1796000000000"
    for bad in ("0", "-5", "1e3", "", "x"):
        reply = client.scripts.call_many([("fanout_mark", keys.child_anchor("p"), ["progress_ms", bad])])[0]
        assert [v.decode() if isinstance(v, bytes) else v for v in reply] == ["ERR", "BAD_ARGS"], bad
    assert client.fanout_mark("gone", "progress_ms", "5") is False


def test_a_publisher_still_at_work_is_waited_for(redis_server: RedisServer, client: OmniqClient,
                                                 r: redis.Redis) -> None:
    app = App("sweep", redis_url=redis_server.url, queue="sw", workflow_sweep=1.0)
    now = half_published_fanout(client, app)
    client.fanout_mark(KEY, "progress_ms", str(now))  # it said it was still publishing, just now
    # looked at a little later (under workflow_sweep since the last sign of progress)
    FanoutSweeper(app).sweep(KEY, now + 500)
    assert r.hget(keys.fanout_key(KEY, "fo"), "state") == "open"
    assert r.get(keys.fanout_key(KEY, "count")) == "3"  # nothing counted
    app.close()


def test_a_publisher_that_stopped_leaves_its_unpublished_children_gone(
        redis_server: RedisServer, client: OmniqClient, r: redis.Redis) -> None:
    app = App("sweep", redis_url=redis_server.url, queue="sw", workflow_sweep=1.0)
    now = half_published_fanout(client, app)
    FanoutSweeper(app).sweep(KEY, now + 2_000)  # no progress for over workflow_sweep
    res = r.hgetall(keys.fanout_key(KEY, "res"))
    assert set(res) == {"1", "2"}  # child 0 is waiting: left alone
    assert all(entry.startswith("-\njob gone") for entry in res.values()), res
    assert r.get(keys.fanout_key(KEY, "count")) == "1"
    app.close()
