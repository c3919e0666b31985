"""The Lua scripts shipped in ``omniq_tasks/lua/``, and how calls to them reach Redis.

Scripts run by EVALSHA; a NOSCRIPT answer (after ``SCRIPT FLUSH`` or a server
restart) loads the source again and repeats the call, so a running client keeps
working. On a plain ``redis.Redis`` each thread keeps one connection of the pool
for its script calls: redis-py's per-command bookkeeping (pool checkout, retry
wrapper, hooks) costs about 20 µs a call, as much as the script itself. Any
connection error drops that connection and the call is made again the ordinary
way, with redis-py's own retries. A Redis Cluster always goes the ordinary way.
"""

from __future__ import annotations

import os
import threading
from functools import cache
from importlib import resources
from typing import Any, Sequence

import redis
from redis.exceptions import NoScriptError

# The OmniQ v1 protocol scripts, by the names every SDK uses.
PROTOCOL_SCRIPTS = (
    "enqueue", "reserve", "heartbeat", "ack_success", "ack_fail", "promote_delayed",
    "reap_expired", "pause", "resume", "retry_failed", "retry_failed_batch",
    "remove_job", "remove_jobs_batch", "childs_init", "child_ack",
)
# omniq-tasks extensions: new file names, never called by the official SDKs.
EXTENSION_SCRIPTS = ("enqueue_batch", "reserve_batch", "ack_success_batch")
ALL_SCRIPTS = PROTOCOL_SCRIPTS + EXTENSION_SCRIPTS

ScriptCall = tuple[str, str, Sequence[Any]]  # script name, anchor (KEYS[1]), ARGV


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
        self._local = threading.local()

    def __getitem__(self, name: str) -> Any:
        return self._scripts[name]

    def call(self, name: str, anchor: str, args: Sequence[Any]) -> Any:
        """EVALSHA one script with KEYS = [anchor]; returns its reply."""
        script = self._scripts[name]
        conn = self._connection()
        if conn is not None:
            try:
                conn.send_packed_command([pack_evalsha(self._shas[name], anchor, args)], check_health=False)
                return conn.read_response()
            except NoScriptError:
                pass  # loaded and repeated below
            except redis.ResponseError:
                raise  # a whole error reply: the connection is in step
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self._drop_connection()
            except BaseException:  # interrupted mid-reply: the connection is out of step
                self._drop_connection()
                raise
        return script(keys=[anchor], args=args)

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
                replies[i] = self._scripts[name](keys=[anchor], args=args)  # loads, then EVALSHA
        return replies

    def _send_all(self, calls: Sequence[ScriptCall]) -> list[Any]:
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
            except BaseException:  # interrupted mid-reply: the connection is out of step
                self._drop_connection()
                raise
        pipe = self._client.pipeline(transaction=False)
        for name, anchor, args in calls:
            pipe.evalsha(self._scripts[name].sha, 1, anchor, *args)
        return list(pipe.execute(raise_on_error=False))

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
