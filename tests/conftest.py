"""Shared fixtures: one real redis-server per test session, a clean DB per test."""

from __future__ import annotations

from typing import Iterator

import pytest
import redis

from omniq_tasks import OmniqClient
from redis_server import RedisClusterNodes, RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
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
