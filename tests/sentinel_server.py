"""A real Redis Sentinel group for tests: one master, one replica, and Sentinels.

``SentinelGroup()`` starts, on free ports in temp dirs, a master, a replica of it
(``--replicaof``) and ``sentinels`` Sentinels (``redis-server <conf> --sentinel``)
monitoring it as ``mymaster`` with quorum 1, a 1 s ``down-after-milliseconds`` and
a short ``failover-timeout``, so a failover takes a few seconds. It waits until
the replica is in sync and every Sentinel sees the replica and the other Sentinels.

When a server cannot start, the error says why: the tests fail, never skip. Only
the processes started here are ever stopped or killed (``stop()``).
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

import redis

from omniq_tasks.testing import stop_server_process
from redis_server import RedisServer, free_port, redis_server_binary

MASTER_NAME = "mymaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """``predicate()`` once it is truthy; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except redis.RedisError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


class SentinelProcess:
    """One ``redis-server <conf> --sentinel`` on a free port, with its own dir and log."""

    def __init__(self, master_port: int, down_after_ms: int, failover_timeout_ms: int) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="omniq-sentinel-"))
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.dir}\n"
            f"logfile {self.dir / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        self.process = subprocess.Popen([redis_server_binary(), str(self.conf), "--sentinel"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(self._answers, 10, f"sentinel on port {self.port} to answer")
        except AssertionError:
            self.stop(keep_dir=True)
            raise RuntimeError(f"sentinel on port {self.port} did not start:\n{self.log()[-2000:]}") from None

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"sentinel exited with {self.process.returncode}:\n{self.log()[-2000:]}")
        with self.client() as conn:
            return bool(conn.ping())

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)

    def log(self) -> str:
        path = self.dir / "sentinel.log"
        return path.read_text() if path.exists() else ""

    def master(self) -> dict[str, object]:
        with self.client() as conn:
            state: dict[str, object] = conn.sentinel_master(MASTER_NAME)
            return state

    def stop(self, keep_dir: bool = False) -> None:
        stop_server_process(self.process, self.dir, keep_dir=keep_dir)


class SentinelGroup:
    """A master, a replica and ``sentinels`` Sentinels, all started and stopped here."""

    def __init__(self, sentinels: int = 3, down_after_ms: int = DOWN_AFTER_MS,
                 failover_timeout_ms: int = FAILOVER_TIMEOUT_MS) -> None:
        self.servers: list[RedisServer] = []
        self.sentinels: list[SentinelProcess] = []
        try:
            master = RedisServer()
            self.servers.append(master)
            self.servers.append(RedisServer("--replicaof", "127.0.0.1", str(master.port)))
            wait_until(lambda: self._in_sync(self.servers[1]), 10, "the replica to sync with the master")
            for _ in range(sentinels):
                self.sentinels.append(SentinelProcess(master.port, down_after_ms, failover_timeout_ms))
            # every Sentinel knows the replica and the others (hello messages every 2 s)
            wait_until(self._all_see_everyone, 15, "the Sentinels to see the replica and each other")
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    def _in_sync(self, server: RedisServer) -> bool:
        with server.client(decode_responses=True, socket_timeout=2) as conn:
            return bool(conn.info("replication").get("master_link_status") == "up")

    def _all_see_everyone(self) -> bool:
        for sentinel in self.sentinels:
            state = sentinel.master()
            if int(str(state["num-slaves"])) < 1 or int(str(state["num-other-sentinels"])) < len(self.sentinels) - 1:
                return False
        return True

    def master_port(self) -> int:
        """The master's port, as the first Sentinel that answers says."""
        for sentinel in self.sentinels:
            try:
                return int(str(sentinel.master()["port"]))
            except (redis.RedisError, OSError):
                continue
        raise AssertionError("no Sentinel answers")

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def master(self) -> RedisServer:
        return self.server(self.master_port())

    def master_client(self) -> redis.Redis:
        """A decoded client straight on the current master (not through the Sentinels)."""
        return self.master().client(decode_responses=True, socket_timeout=5)

    def _role(self, server: RedisServer) -> str:
        with server.client(decode_responses=True, socket_timeout=2) as conn:
            return str(conn.info("replication")["role"])

    def wait_failover_done(self, old_port: int, timeout: float = 30) -> int:
        """Wait until every Sentinel names a new master and that server says it is master; its port."""
        def new_master() -> int | None:
            ports = {int(str(s.master()["port"])) for s in self.sentinels if s.process.poll() is None}
            if len(ports) != 1 or old_port in ports:
                return None
            port = ports.pop()
            return port if self._role(self.server(port)) == "master" else None
        port = wait_until(new_master, timeout, f"a failover away from port {old_port}", interval=0.02)
        assert port is not None
        return port

    def failover(self, timeout: float = 30) -> int:
        """``SENTINEL FAILOVER mymaster``, then wait until it is done (the old master
        answers as a replica of the new one); the new master's port."""
        old = self.master_port()
        with self.sentinels[0].client() as conn:
            conn.sentinel_failover(MASTER_NAME)
        new = self.wait_failover_done(old, timeout)
        wait_until(lambda: self._role(self.server(old)) == "slave", timeout, "the old master to become a replica")
        return new

    def kill_master(self) -> int:
        """SIGKILL the current master (no shutdown, no last sync); its port."""
        server = self.master()
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
        return server.port

    def logs(self) -> str:
        """The Sentinels' logs, for failure messages."""
        return "\n".join(f"--- sentinel {s.port}\n{s.log()[-3000:]}" for s in self.sentinels)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()
