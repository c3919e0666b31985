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

import logging
import threading
import time
from typing import Any, NamedTuple, Union

import redis as redis_lib
from redis.cluster import RedisCluster
from redis.connection import SSLConnection
from redis.sentinel import Sentinel, SentinelManagedConnection

RedisClient = Union[redis_lib.Redis, RedisCluster]

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
EMBEDDED_SCHEME = "embedded"
log = logging.getLogger("omniq_tasks.client")


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


SENTINEL_PORT = 26379  # a Sentinel's default port, when a host names none
# Sentinel connections get these unless the URL says otherwise (sentinel_socket_timeout=...):
# an unreachable Sentinel must not hang a client that could ask the next one.
SENTINEL_SOCKET_TIMEOUT_S = 2.0


class SentinelSettings(NamedTuple):
    """What a ``redis+sentinel://`` URL says: see :func:`parse_sentinel_url`."""

    sentinels: list[tuple[str, int]]
    master: str
    tls: bool
    connection_kwargs: dict[str, Any]  # for the master's connections (db, password, ssl_*, ...)
    sentinel_kwargs: dict[str, Any]  # for the connections to the Sentinels


def parse_sentinel_url(url: str) -> SentinelSettings:
    """Read ``redis+sentinel://[user:password@]host[:port][,host[:port]...]/<master>[/<db>][?options]``.

    The form is the one Redis-Sentinel-Url (PyPI), redisvl and prefect-redis accept
    for redis-py (which has no URL for Sentinel; kombu/celery take
    ``sentinel://h1;sentinel://h2`` plus a ``master_name`` transport option instead,
    which a single URL setting cannot carry):

    * the hosts are the **Sentinels**, comma-separated, port 26379 when left out
      (IPv6 in brackets: ``[::1]:26379``);
    * the path is the **master name** the Sentinels monitor, then the database
      number (0 when left out);
    * ``user:password@`` authenticates to the **master** (and replicas), as in a
      ``redis://`` URL;
    * query options are redis-py's URL options (``socket_timeout``, ``ssl_ca_certs``,
      ``health_check_interval``, ...) for the master's connections, except those
      starting ``sentinel_``, which go (without the prefix) to the connections to
      the Sentinels: ``sentinel_password``, ``sentinel_username``,
      ``sentinel_socket_timeout`` (default 2 s), ...;
    * ``rediss+sentinel://`` uses TLS to the master and to the Sentinels, with the
      same ``ssl_*`` options for both.

    Raises ValueError naming what is wrong; the message shows the URL with its
    passwords masked.
    """
    from urllib.parse import parse_qsl, unquote, urlencode

    from redis.connection import parse_url

    from .urls import redact_url

    def bad(problem: str) -> ValueError:
        return ValueError(f"bad Redis Sentinel URL {redact_url(url)}: {problem}; expected "
                          "redis+sentinel://[user:password@]host[:port][,host[:port]...]/<master-name>[/<db>]")

    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise bad(f"the scheme must be one of {', '.join(SENTINEL_SCHEMES)}")
    tls = scheme.lower() == "rediss+sentinel"
    rest, _, query = rest.partition("?")
    userinfo, at, rest = rest.rpartition("@")
    hostlist, _, path = rest.partition("/")

    sentinels: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        item = item.strip()
        if not item:
            raise bad("no Sentinel host" if not hostlist.strip() else "an empty Sentinel host in the list")
        if item.startswith("["):  # [ipv6]:port
            host, close, port_text = item[1:].partition("]")
            if not close or (port_text and not port_text.startswith(":")):
                raise bad(f"bad Sentinel address {item!r}")
            port_text = port_text[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise bad(f"no host in Sentinel address {item!r}")
        if port_text == "" and ":" not in item.rpartition("]")[2]:
            port = SENTINEL_PORT
        elif port_text.isdigit() and 0 < int(port_text) < 65536:
            port = int(port_text)
        else:
            raise bad(f"bad port {port_text!r} in Sentinel address {item!r} (1-65535)")
        sentinels.append((unquote(host), port))

    parts = [unquote(p) for p in path.split("/")] if path else []
    while parts and parts[-1] == "":  # a trailing slash
        parts.pop()
    if not parts or not parts[0]:
        raise bad("no master name (the name the Sentinels monitor, e.g. /mymaster)")
    if len(parts) > 2:
        raise bad(f"the path is /<master-name>[/<db>], not /{'/'.join(parts)}")
    master = parts[0]
    db = parts[1] if len(parts) > 1 else "0"
    if not db.isdigit():
        raise bad(f"the database must be a number, not {db!r}")

    options = parse_qsl(query, keep_blank_values=True)
    for_master = [(k, v) for k, v in options if not k.startswith("sentinel_")]
    for_sentinels = [(k[len("sentinel_"):], v) for k, v in options if k.startswith("sentinel_")]
    base = "rediss" if tls else "redis"
    try:  # redis-py's own reading of the options and the credentials
        conn = parse_url(f"{base}://{userinfo + '@' if at else ''}localhost/{db}?{urlencode(for_master)}")  # type: ignore[no-untyped-call]
        sent = parse_url(f"{base}://localhost?{urlencode(for_sentinels)}")  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise bad(str(exc)) from None
    for kwargs in (conn, sent):
        for key in ("host", "port", "connection_class", "path"):
            kwargs.pop(key, None)
    if "db" in sent:
        raise bad("sentinel_db is not an option (a Sentinel has no databases)")
    if tls:  # the Sentinel pool picks its TLS connection class from ssl=True
        conn["ssl"] = True
        sent = {**{k: v for k, v in conn.items() if k.startswith("ssl")}, **sent}
    sent = {**{k: v for k, v in conn.items() if k.startswith("socket_")}, **sent}
    sent.setdefault("socket_timeout", SENTINEL_SOCKET_TIMEOUT_S)
    sent.setdefault("socket_connect_timeout", sent["socket_timeout"])
    return SentinelSettings(sentinels, master, tls, conn, sent)


# How often a connection to a Sentinel-managed master asks the Sentinels whether the
# master moved (at most; only when it is used), and after a failed check how long it
# waits before asking again.
MASTER_CHECK_S = 1.0
MASTER_CHECK_BACKOFF_S = 10.0


def _check_master(proxy: Any, conn: Any) -> None:
    """Disconnect ``conn`` when the Sentinels name another master than the one it talks to.

    A master demoted by a failover keeps answering (and accepting writes, lost later)
    until the Sentinels reconfigure it, up to ~10 s later; redis-py only asks the
    Sentinels when it opens a connection. So the pool asks again at most once a
    second (on the thread that sends then; the others go on), and every connection
    compares its address with the last answer before it sends.
    """
    now = time.monotonic()
    if now >= getattr(proxy, "omniq_next_check", 0.0):
        lock = proxy.__dict__.setdefault("omniq_check_lock", threading.Lock())
        if lock.acquire(blocking=False):
            try:
                proxy.omniq_next_check = now + MASTER_CHECK_S
                proxy.get_master_address()  # sets proxy.master_address; closes idle connections on a change
            except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
                proxy.omniq_next_check = time.monotonic() + MASTER_CHECK_BACKOFF_S
                log.warning("cannot ask the Sentinels where master %s is (%s); asking again in %.0f s",
                            proxy.service_name, exc, MASTER_CHECK_BACKOFF_S)
            finally:
                lock.release()
    address = proxy.master_address
    if address is not None and address != (conn.host, conn.port):
        log.warning("master %s moved from %s:%s to %s:%s: reconnecting",
                    proxy.service_name, conn.host, conn.port, *address)
        conn.disconnect()


class FollowingConnection(SentinelManagedConnection):
    """A connection to a Sentinel-managed master that moves when the master does (before sending)."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self._sock is not None and self.connection_pool.is_master:
            _check_master(self.connection_pool, self)
        if self._sock is None:
            # connect() asks the Sentinels; redis-py's send would reconnect to the old address
            self.connect()  # type: ignore[no-untyped-call]
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


class FollowingSSLConnection(FollowingConnection, SSLConnection):
    """:class:`FollowingConnection` over TLS."""


def sentinel_client(url: str, **kwargs: Any) -> redis_lib.Redis:
    """The master of a Sentinel group, following failovers (URL form: :func:`parse_sentinel_url`).

    A plain ``redis.Redis`` on a ``SentinelConnectionPool`` (redis-py's
    ``Sentinel(...).master_for(name)``): each new connection asks the Sentinels
    where the master is; a connection still on a demoted master is closed when it
    answers ``READONLY`` (redis-py raises ConnectionError) or, before sending, when
    the Sentinels name another master (checked at most once a second,
    :class:`FollowingConnection`), so the next command goes to the new master.
    ``kwargs`` add to or override the master's connection options. Nothing is
    contacted here: the first command asks the Sentinels.
    """
    settings = parse_sentinel_url(url)
    options = {**settings.connection_kwargs, **kwargs}
    options.setdefault("connection_class", FollowingSSLConnection if options.pop("ssl", False)
                       else FollowingConnection)
    sentinel = Sentinel(settings.sentinels, sentinel_kwargs=settings.sentinel_kwargs)  # type: ignore[no-untyped-call]
    client: redis_lib.Redis = sentinel.master_for(settings.master, **options)  # type: ignore[no-untyped-call]
    return client


def describe_redis(client: Any) -> str:
    """A password-free URL for a redis-py client, from its connection settings."""
    try:
        if isinstance(client, RedisCluster):
            node = client.get_default_node()  # type: ignore[no-untyped-call]
            return f"redis+cluster://{node.host}:{node.port}"
        pool = client.connection_pool
        settings = pool.connection_kwargs
        manager = getattr(pool, "sentinel_manager", None)
        if manager is not None:  # a SentinelConnectionPool: the Sentinels and the master's name
            scheme = "rediss" if "SSL" in pool.connection_class.__name__ else "redis"
            hosts = ",".join(_host_port(s.connection_pool.connection_kwargs) for s in manager.sentinels)
            return f"{scheme}+sentinel://{hosts}/{pool.service_name}/{settings.get('db', 0)}"
        if settings.get("path"):
            return f"unix://{settings['path']}?db={settings.get('db', 0)}"
        scheme = "rediss" if "SSL" in pool.connection_class.__name__ else "redis"
        return f"{scheme}://{settings.get('host', 'localhost')}:{settings.get('port', 6379)}/{settings.get('db', 0)}"
    except Exception:  # only a description: never fail on it
        return "<redis client>"


def _host_port(settings: dict[str, Any]) -> str:
    host = str(settings.get("host", "localhost"))
    return f"[{host}]:{settings.get('port')}" if ":" in host else f"{host}:{settings.get('port')}"
