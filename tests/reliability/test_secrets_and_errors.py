"""Secrets stay out of reprs and messages; Redis failures raise errors of our family.

A password or token in a Redis URL never shows in ``repr(app)``, an error message
or the CLI's output. Redis unreachable, a wrong password or a full Redis
(``maxmemory`` reached, noeviction) raise OmniqError subclasses that are still the
redis-py errors code used to catch, and a refused publish leaves nothing behind.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import redis

from helpers_state import snapshot
from omniq_tasks import (
    App, OmniqClient, OmniqConnectionError, OmniqError, RedisFullError,
)
from omniq_tasks.cli.main import main
from omniq_tasks.protocol.client import JobSpec
from omniq_tasks.testing import free_port
from omniq_tasks.protocol.urls import redact_text, redact_url
from redis_server import RedisServer

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize("url, shown", [
    (f"redis://user:{SECRET}@127.0.0.1:6379/0", "redis://user:***@127.0.0.1:6379/0"),
    (f"redis://:{SECRET}@host", "redis://:***@host"),
    (f"rediss://default:{SECRET}@host:6380/2", "rediss://default:***@host:6380/2"),
    (f"redis://u:a@b:{SECRET}@host/1", "redis://u:***@host/1"),  # "@" inside the password
    (f"unix:///run/redis.sock?db=1&password={SECRET}", "unix:///run/redis.sock?db=1&password=***"),
    (f"rediss://h?ssl_password={SECRET}&ssl_cert_reqs=none", "rediss://h?ssl_password=***&ssl_cert_reqs=none"),
    ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    (SECRET, "<not a URL>"),
    # every other scheme we accept
    (f"redis+sentinel://u:{SECRET}@h1:26379,h2:26380/mymaster/2?sentinel_password={SECRET}&socket_timeout=1",
     "redis+sentinel://u:***@h1:26379,h2:26380/mymaster/2?sentinel_password=***&socket_timeout=1"),
    (f"rediss+sentinel://:{SECRET}@[::1]:26379,h2/mymaster?sentinel_username=s&sentinel_password={SECRET}",
     "rediss+sentinel://:***@[::1]:26379,h2/mymaster?sentinel_username=s&sentinel_password=***"),
    ("redis+sentinel://h1,h2/mymaster", "redis+sentinel://h1,h2/mymaster"),
    (f"REDIS+SENTINEL://:{SECRET}@h1/m", "REDIS+SENTINEL://:***@h1/m"),
    (f"redis+cluster://default:{SECRET}@10.0.0.1:7000/0", "redis+cluster://default:***@10.0.0.1:7000/0"),
    (f"rediss+cluster://:{SECRET}@node:7000?ssl_ca_certs=/etc/ca.pem",
     "rediss+cluster://:***@node:7000?ssl_ca_certs=/etc/ca.pem"),
    (f"unix://u:{SECRET}@/run/redis.sock?db=0", "unix://u:***@/run/redis.sock?db=0"),
    (f"embedded://./data?password={SECRET}", "embedded://./data?password=***"),
    (f"embedded://u:{SECRET}@./data", "embedded://u:***@./data"),
    # a password holding "/", "?" or "#" (not percent-encoded) still never shows
    (f"redis://u:{SECRET}/x@host/0", "redis://u:***@host/0"),
    (f"redis://u:{SECRET}?x@host/0", "redis://u:***@host/0"),
    (f"redis://u:{SECRET}#x@host/0", "redis://u:***@host/0"),
    # an "@" in a query value is not a password's end
    ("rediss://h/0?ssl_ca_certs=/a@b/ca.pem", "rediss://h/0?ssl_ca_certs=/a@b/ca.pem"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    if "://" in url:  # and inside a message
        assert redact_text(f"failed on {url} because") == f"failed on {shown} because"


def test_app_repr_hides_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    app = App("shop", f"redis://user:{SECRET}@127.0.0.1:1/0")
    assert SECRET not in repr(app) and "redis://user:***@127.0.0.1:1/0" in repr(app)
    monkeypatch.setenv("OMNIQ_TASKS_REDIS_URL", f"unix:///tmp/x.sock?password={SECRET}")
    assert SECRET not in repr(App("env"))


def _server_with_password(password: str) -> RedisServer:
    # set after start: RedisServer's readiness check connects without a password
    server = RedisServer()
    redis.Redis(port=server.port).config_set("requirepass", password)
    return server


def _no_secret(exc: BaseException) -> None:
    for text in (str(exc), repr(exc), getattr(exc, "url", "")):
        assert SECRET not in text


def test_redis_down_raises_our_connection_error_without_the_password() -> None:
    port = free_port()  # nothing listens there
    app = App("down", f"redis://user:{SECRET}@127.0.0.1:{port}/0", queue="q")

    @app.task
    def ping(n: int) -> None: ...

    calls = [
        lambda: ping.delay(1),
        lambda: ping.map([1, 2]),
        lambda: app.client.publish("q", {"a": 1}),
        lambda: app.client.reserve("q"),
        lambda: app.client.stats("q"),
        lambda: app.client.job("q", "x"),
        lambda: app.client.list_queues(),
        lambda: app.client.is_paused("q"),
        lambda: list(app.client.iter_ids("q", "wait")),
    ]
    for call in calls:
        with pytest.raises(OmniqConnectionError) as info:
            call()
        exc = info.value
        # one family, and still what redis-py users and the builtins call a connection error
        assert isinstance(exc, OmniqError)
        assert isinstance(exc, redis.exceptions.ConnectionError) and isinstance(exc, ConnectionError)
        assert exc.url == f"redis://user:***@127.0.0.1:{port}/0"
        assert exc.url in str(exc)
        _no_secret(exc)
    app.close()


def test_wrong_password_is_our_error_and_hides_both_passwords() -> None:
    server = _server_with_password("the-right-one")
    try:
        client = OmniqClient(f"redis://default:{SECRET}@127.0.0.1:{server.port}/0")
        with pytest.raises(OmniqConnectionError) as info:
            client.publish("q", {"a": 1})
        _no_secret(info.value)
        assert "the-right-one" not in str(info.value)
        client.close()
    finally:
        server.stop()


def test_cli_demo_on_an_unreachable_redis_prints_no_password(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--redis-url", f"redis://user:{SECRET}@127.0.0.1:{free_port()}/0"])
    out, err = capsys.readouterr()
    assert code == 1
    assert SECRET not in out + err
    assert "user:***@" in err


def test_demo_prints_the_url_without_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    server = _server_with_password(SECRET)
    try:
        assert main(["demo", "--redis-url", f"redis://default:{SECRET}@127.0.0.1:{server.port}/0"]) == 0
    finally:
        server.stop()
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert "redis://default:***@" in out


# -- a full Redis ---------------------------------------------------------------------------


@pytest.fixture()
def full_redis() -> Iterator[tuple[RedisServer, redis.Redis]]:
    server = RedisServer("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    conn = redis.Redis(port=server.port, decode_responses=True)
    yield server, conn
    conn.close()
    server.stop()


def _fill(conn: redis.Redis) -> None:
    """Write until Redis says OOM: from then on every write is refused."""
    for i in range(10_000):
        try:
            conn.set(f"fill:{i}", "x" * 20_000)
        except redis.exceptions.OutOfMemoryError:
            return
    raise AssertionError("maxmemory never reached")


def test_publish_on_a_full_redis_is_refused_and_writes_nothing(
        full_redis: tuple[RedisServer, redis.Redis]) -> None:
    server, conn = full_redis
    app = App("full", server.url, queue="q")

    @app.task(gid="tenant:{n}", group_limit=2)
    def grouped(n: int) -> None: ...

    @app.task
    def plain(n: int) -> None: ...

    # queues and groups already in use, so a half-write would show in existing keys too
    grouped.delay(1)
    plain.delay(1)
    _fill(conn)
    before = snapshot(conn)
    stats_before = app.client.stats("q")
    attempts: list[Any] = [
        lambda: plain.delay(2),
        lambda: grouped.delay(1),
        lambda: grouped.delay(7),
        lambda: plain.apply_async((3,), countdown=60),
        lambda: plain.map([4, 5, 6]),
        lambda: app.client.publish("q", {"a": 1}),
        lambda: app.client.enqueue_many("q", [JobSpec("bulk-1", b'{"a":1}')]),
    ]
    for attempt in attempts:
        with pytest.raises(RedisFullError) as info:
            attempt()
        exc = info.value
        assert isinstance(exc, OmniqError) and isinstance(exc, redis.exceptions.ResponseError)
        assert "full" in str(exc) and "maxmemory" in str(exc)
        assert snapshot(conn) == before
    assert app.client.stats("q") == stats_before
    app.close()
