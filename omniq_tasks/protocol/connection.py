"""Opening a redis-py client from a URL: every scheme omniq-tasks accepts, in one place.

=========================  ====================================================
``redis://``, ``rediss://``  one server (TLS with ``rediss``), as redis-py reads it
``unix:///path/to.sock``   one server on a unix socket
``redis+cluster://h:p``    a Redis Cluster; any node (``rediss+cluster`` for TLS)
``redis+sentinel://...``   the master a Sentinel group names (see :func:`sentinel_client`)
``embedded://./folder``    a server this machine runs for us (see :mod:`.embedded`)
=========================  ====================================================
"""

from __future__ import annotations

from typing import Any, Union

import redis as redis_lib
from redis.cluster import RedisCluster

RedisClient = Union[redis_lib.Redis, RedisCluster]

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
EMBEDDED_SCHEME = "embedded"


def scheme_of(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else ""


def is_cluster_url(url: str) -> bool:
    return scheme_of(url) in CLUSTER_SCHEMES


def connect(url: str, *, cluster: bool = False, **kwargs: Any) -> RedisClient:
    """A redis-py client for ``url`` (any scheme in the module docstring).

    ``cluster=True`` reads a plain ``redis://`` URL as any node of a Redis Cluster
    (the same as ``redis+cluster://``).
    """
    scheme = scheme_of(url)
    if scheme == EMBEDDED_SCHEME:
        from .embedded import attach

        return redis_lib.Redis.from_url(attach(url).url, **kwargs)
    if scheme in CLUSTER_SCHEMES:
        return RedisCluster.from_url(CLUSTER_SCHEMES[scheme] + url[len(scheme):], **kwargs)
    if scheme in SENTINEL_SCHEMES:
        return sentinel_client(url, **kwargs)
    if cluster:
        return RedisCluster.from_url(url, **kwargs)
    return redis_lib.Redis.from_url(url, **kwargs)


def sentinel_client(url: str, **kwargs: Any) -> redis_lib.Redis:
    """The master of a Sentinel group, following failovers; see docs/deployment.md."""
    raise NotImplementedError("redis+sentinel:// URLs are not supported yet")


def describe_redis(client: Any) -> str:
    """A password-free URL for a redis-py client, from its connection settings."""
    try:
        if isinstance(client, RedisCluster):
            node = client.get_default_node()  # type: ignore[no-untyped-call]
            return f"redis+cluster://{node.host}:{node.port}"
        pool = client.connection_pool
        settings = pool.connection_kwargs
        if settings.get("path"):
            return f"unix://{settings['path']}?db={settings.get('db', 0)}"
        scheme = "rediss" if "SSL" in pool.connection_class.__name__ else "redis"
        return f"{scheme}://{settings.get('host', 'localhost')}:{settings.get('port', 6379)}/{settings.get('db', 0)}"
    except Exception:  # only a description: never fail on it
        return "<redis client>"
