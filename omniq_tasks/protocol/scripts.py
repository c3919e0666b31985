"""The Lua scripts shipped in ``omniq_tasks/lua/``, and how calls to them reach Redis.

Scripts run by EVALSHA; a NOSCRIPT answer (after ``SCRIPT FLUSH`` or a server
restart) loads the source again and repeats the call, as often as a flush strikes
between the load and the call, so a running client keeps working. On a plain ``redis.Redis`` each thread keeps one connection of the pool
for its script calls: redis-py's per-command bookkeeping (pool checkout, retry
wrapper, hooks) costs about 20 µs a call, as much as the script itself. Any
connection error drops that connection and the call is made again the ordinary
way, with redis-py's own retries.

On a Redis Cluster one call goes the ordinary way (redis-py routes it by its
KEYS[1], the queue's anchor: every key a script touches shares the anchor's hash
tag, so one slot). redis-py's cluster pipeline refuses EVALSHA, so several calls
(:meth:`Scripts.call_many`) are grouped by the primary owning their slot, each
group pipelined on a connection to its node, every group sent before any reply
is read: one round trip in all. A call answered MOVED, ASK, TRYAGAIN or
CLUSTERDOWN did not run, and one whose node failed mid-way may have run: both are
made again, unchanged, the ordinary way (which follows redirects and refreshes
the slot map).

A call may therefore reach Redis twice. The scripts a worker or a bulk publisher
calls take a replay channel and sequence number (:meth:`Scripts.replay_tag`) and
answer a repeat with their first answer; see docs/reliability.md.
"""

from __future__ import annotations

import itertools
import os
import threading
from functools import cache
from importlib import resources
from typing import Any, Sequence

import redis
from redis.cluster import RedisCluster
from redis.exceptions import AskError, ClusterDownError, NoScriptError, RedisClusterException, TryAgainError

# The OmniQ v1 protocol scripts, by the names every SDK uses.
PROTOCOL_SCRIPTS = (
    "enqueue", "reserve", "heartbeat", "ack_success", "ack_fail", "promote_delayed",
    "reap_expired", "pause", "resume", "retry_failed", "retry_failed_batch",
    "remove_job", "remove_jobs_batch", "childs_init", "child_ack",
)
# omniq-tasks extensions: new file names, never called by the official SDKs.
EXTENSION_SCRIPTS = (
    "enqueue_batch", "reserve_batch", "ack_success_batch", "ack_fail_batch", "heartbeat_batch",
    "reap_leases", "fanout_open", "fanout_child", "fanout_mark", "enqueue_tick", "group_limit",
)
ALL_SCRIPTS = PROTOCOL_SCRIPTS + EXTENSION_SCRIPTS

ScriptCall = tuple[str, str, Sequence[Any]]  # script name, anchor (KEYS[1]), ARGV
# Cluster replies that mean the call did not run on that node: send it again the ordinary way.
_NOT_RUN_HERE = (AskError, ClusterDownError, TryAgainError)  # MovedError is an AskError
_LINK_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


def pack_evalsha(sha: bytes, anchor: str, args: Sequence[Any]) -> bytes:
    """The RESP bytes of ``EVALSHA sha 1 anchor *args``.

    Our arguments are only bytes, str and int, so this is simpler than redis-py's
    general packer, and several times faster on bulk publishes (thousands of args).
    """
    parts = [b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n1\r\n" % (len(args) + 4, sha)]
    append = parts.append
    for arg in (anchor, *args):
        kind = type(arg)  # exact types first: the common case, and cheaper than isinstance
        if kind is bytes:
            data = arg
        elif kind is str:
            data = arg.encode()
        elif kind is int:
            data = b"%d" % arg
        elif isinstance(arg, (bytes, bytearray, memoryview)):
            data = bytes(arg)
        elif isinstance(arg, str):
            data = str(arg).encode()
        elif isinstance(arg, int) and not isinstance(arg, bool):
            data = b"%d" % int(arg)
        else:
            raise TypeError(f"script arguments are bytes, str or int, not {type(arg).__name__}")
        append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


@cache
def script_source(name: str) -> str:
    """The text of ``lua/<name>.lua`` from the installed package."""
    return resources.files("omniq_tasks").joinpath("lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


def scripts_dir() -> str:
    """The folder holding the scripts (what an official SDK's ``scripts_dir`` wants)."""
    return str(resources.files("omniq_tasks").joinpath("lua"))


class Scripts:
    """One registered Script per script, bound to one Redis client, and the calls to them."""

    def __init__(self, client: Any, names: tuple[str, ...] = ALL_SCRIPTS) -> None:
        self._client = client
        self._scripts = {name: client.register_script(script_source(name)) for name in names}
        self._shas = {name: script.sha.encode() for name, script in self._scripts.items()}
        # Only a plain redis.Redis (not a cluster, not a subclass with its own routing).
        self._direct = type(client) is redis.Redis
        self._cluster = isinstance(client, RedisCluster)
        self._local = threading.local()
        self._threads = itertools.count()

    def replay_tag(self, name: str) -> tuple[str, str]:
        """A replay channel and a fresh sequence number for one call of script ``name``.

        The channel is this process's and thread's own, so each has at most one call
        in flight on it; resending the same ARGV (same tag) gets the first answer.
        """
        local = self._local
        if getattr(local, "tag_pid", None) != os.getpid():  # a forked child is a new caller
            local.tag_pid = os.getpid()
            local.tag_prefix = f"{os.urandom(6).hex()}.{next(self._threads)}."
            local.tag_seq = itertools.count(1)
        return local.tag_prefix + name, str(next(local.tag_seq))

    def take_resent(self) -> bool:
        """True when this thread's last call was sent more than once (a connection dropped)."""
        resent = getattr(self._local, "resent", False)
        self._local.resent = False
        return resent

    def __getitem__(self, name: str) -> Any:
        return self._scripts[name]

    def call(self, name: str, anchor: str, args: Sequence[Any]) -> Any:
        """EVALSHA one script with KEYS = [anchor]; returns its reply."""
        conn = self._connection()
        self._local.resent = False
        if conn is not None:
            try:
                conn.send_packed_command([pack_evalsha(self._shas[name], anchor, args)], check_health=False)
                return conn.read_response()
            except NoScriptError:
                return self._call_loading(name, anchor, args, load_first=True)
            except redis.ResponseError:
                raise  # a whole error reply: the connection is in step
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self._drop_connection()
                self._local.resent = True  # Redis may have run it: what follows is a resend
            except BaseException:  # interrupted mid-reply: the connection is out of step
                self._drop_connection()
                raise
        return self._call_loading(name, anchor, args)

    def _call_loading(self, name: str, anchor: str, args: Sequence[Any], load_first: bool = False) -> Any:
        """EVALSHA the ordinary way (redis-py's routing and retries); on NOSCRIPT, EVAL.

        EVAL sends the source, and loads and runs it in one command, so a
        ``SCRIPT FLUSH`` cannot strike between the load and the call (it also leaves
        the script cached for the EVALSHAs that follow).
        """
        try:
            if load_first:
                return self._client.eval(script_source(name), 1, anchor, *args)
            try:
                return self._client.evalsha(self._scripts[name].sha, 1, anchor, *args)
            except NoScriptError:
                return self._client.eval(script_source(name), 1, anchor, *args)
        except (ClusterDownError, RedisClusterException) as exc:
            # The slot's master is gone or cannot be found (redis-py retried already):
            # like an unreachable server, the caller keeps the call and tries again.
            raise redis.ConnectionError(f"the Redis Cluster cannot serve {anchor}: {exc}") from exc

    def call_many(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run the calls in order in one round trip; each reply, or the exception it raised.

        A call answered NOSCRIPT is repeated alone after loading its script.
        """
        if not calls:
            return []
        if len(calls) == 1:
            name, anchor, args = calls[0]
            try:
                return [self.call(name, anchor, args)]
            except redis.ResponseError as exc:
                return [exc]
        replies = self._send_all(calls)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                name, anchor, args = calls[i]
                try:
                    replies[i] = self._call_loading(name, anchor, args, load_first=True)
                except redis.ResponseError as exc:
                    replies[i] = exc
        return replies

    def _send_all(self, calls: Sequence[ScriptCall]) -> list[Any]:
        if self._cluster:
            return self._send_cluster(calls)
        conn = self._connection()
        if conn is not None:
            try:
                conn.send_packed_command(
                    [b"".join(pack_evalsha(self._shas[name], anchor, args) for name, anchor, args in calls)],
                    check_health=False)
                replies: list[Any] = []
                for _ in calls:
                    try:
                        replies.append(conn.read_response())
                    except redis.ResponseError as exc:
                        replies.append(exc)
                return replies
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self._drop_connection()
                self._local.resent = True
            except BaseException:  # interrupted mid-reply: the connection is out of step
                self._drop_connection()
                raise
        pipe = self._client.pipeline(transaction=False)
        for name, anchor, args in calls:
            pipe.evalsha(self._scripts[name].sha, 1, anchor, *args)
        return list(pipe.execute(raise_on_error=False))

    def _send_cluster(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """The calls on a cluster: one pipeline per primary, all sent before any reply is read.

        Calls to one node keep their order (a queue's acks before its reserve); calls
        to different nodes touch different queues, so their order does not matter.
        """
        replies: list[Any] = [None] * len(calls)
        again: list[int] = []  # positions to make again the ordinary way
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for i, (_, anchor, _) in enumerate(calls):
            try:
                node = self._client.get_node_from_key(anchor)
            except RedisClusterException:  # slot not covered: the ordinary way says why
                again.append(i)
                continue
            by_node.setdefault(node.name, (node, []))[1].append(i)
        sent: list[tuple[Any, Any, list[int]]] = []  # (pool, connection, positions) awaiting replies
        resent = False
        try:
            for node, positions in by_node.values():
                pool = self._client.get_redis_connection(node).connection_pool
                try:
                    conn = pool.get_connection()
                except _LINK_ERRORS:
                    again += positions  # nothing was sent: not a resend
                    continue
                sent.append((pool, conn, positions))
                try:
                    conn.send_packed_command([b"".join(
                        pack_evalsha(self._shas[calls[i][0]], calls[i][1], calls[i][2]) for i in positions)],
                        check_health=False)
                except _LINK_ERRORS:  # part may have gone out
                    sent.pop()
                    conn.disconnect()
                    pool.release(conn)
                    again += positions
                    resent = True
            while sent:
                pool, conn, positions = sent[0]
                done = 0
                try:
                    for i in positions:
                        try:
                            replies[i] = conn.read_response()
                        except redis.ResponseError as exc:
                            replies[i] = exc
                        done += 1
                except _LINK_ERRORS:  # the calls not answered may have run
                    conn.disconnect()
                    again += positions[done:]
                    resent = True
                sent.pop(0)
                pool.release(conn)
        finally:  # interrupted mid-reply: the connections not read to the end are out of step
            for pool, conn, _ in sent:
                conn.disconnect()
                pool.release(conn)
        again += [i for i, reply in enumerate(replies) if isinstance(reply, _NOT_RUN_HERE)]
        for i in sorted(again):
            name, anchor, args = calls[i]
            try:  # raises ConnectionError/TimeoutError when redis-py cannot reach the node either
                replies[i] = self._call_loading(name, anchor, args)
            except redis.ResponseError as exc:
                replies[i] = exc
        if resent:
            self._local.resent = True
        return replies

    def _connection(self) -> Any:
        """This thread's connection for script calls (None: use the ordinary path)."""
        if not self._direct:
            return None
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():  # after a fork the socket is the parent's
            conn = local.conn = self._client.connection_pool.get_connection()
            local.pid = os.getpid()
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.disconnect()
            self._client.connection_pool.release(conn)
