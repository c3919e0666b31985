"""``omniq-tasks demo --redis-url`` on a user's Redis leaves the user's data alone.

A real ``emails`` queue with waiting, delayed, grouped and failed jobs is on the
server; after a demo run every key of the DB is exactly as before: the demo wrote
only under its own queue name and removed all of it.
"""

from __future__ import annotations

import redis

from helpers_state import snapshot
from omniq_tasks import App, OmniqClient
from omniq_tasks.cli.main import main
from redis_server import RedisServer


def test_demo_leaves_a_real_emails_queue_untouched(r: redis.Redis, redis_server: RedisServer,
                                                  client: OmniqClient) -> None:
    app = App("real", redis_server.url, queue="emails")

    @app.task(name="demo.send_email", gid="company:{company_id}", group_limit=1)
    def send_email(company_id: int, to: str) -> None: ...

    for n in range(3):
        send_email.delay(1, f"user{n}@example.com")  # a group: one waits in gwait
    send_email.apply_async((2, "later@example.com"), countdown=3600)
    client.publish("emails", {"plain": True}, job_id="plain-1")
    leased = client.reserve("emails")
    client.publish("other", {"x": 1})
    r.set("emails", "a key named like the queue")
    assert leased is not None
    before = snapshot(r)
    assert any(key.startswith("{emails}:") for key in before)

    assert main(["demo", "--redis-url", redis_server.url]) == 0

    assert snapshot(r) == before
    app.close()
