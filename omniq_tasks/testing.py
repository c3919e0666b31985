"""Throwaway real redis-server processes: for tests, benchmarks and the demo.

``RedisServer()`` starts a standalone server on a free port in a temp dir (nothing
persisted) and ``RedisClusterNodes()`` a real 3-master Redis Cluster. No fakes:
when redis-server cannot start, the error says why (tests fail, never skip).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def free_port(maximum: int = 65535) -> int:
    """A free TCP port no higher than ``maximum``."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port <= maximum:
            return port


# Run against another server build (an older Redis, Valkey) by naming its binary.
SERVER_ENV = "OMNIQ_TEST_REDIS_SERVER"


def redis_server_binary() -> str:
    """``$OMNIQ_TEST_REDIS_SERVER`` if set, else ``redis-server`` on PATH."""
    path = os.environ.get(SERVER_ENV) or shutil.which("redis-server")
    if path is None:
        raise RuntimeError(
            "redis-server is not on PATH: install it (apt-get install -y redis-server); "
            "the tests need a real Redis and never skip"
        )
    return path


class RedisServer:
    """One redis-server on a free port in its own temp dir, nothing persisted."""

    def __init__(self, *extra_args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="omniq-redis-"))
        cmd = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--save", "", "--appendonly", "no",
            "--logfile", str(self.dir / "redis.log"), *extra_args,
        ]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.dir / "redis.log").read_text() if (self.dir / "redis.log").exists() else ""
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log[-2000:]}")
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within 10 s")

    def restart(self) -> None:
        """Stop and start again on the same port: all data and loaded scripts are gone."""
        self.stop(keep_dir=True)
        self.__init__(port=self.port)  # type: ignore[misc]

    def stop(self, keep_dir: bool = False) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterNodes:
    """A real 3-master Redis Cluster on free ports (no replicas)."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [
            # a node's cluster bus listens on port + 10000, so the port must be <= 55535
            RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "2000", port=free_port(55535))
            for _ in range(masters)
        ]
        cli = shutil.which("redis-cli")
        if cli is None:
            self.stop()
            raise RuntimeError("redis-cli is not on PATH: needed to create the test cluster")
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        result = subprocess.run([cli, "--cluster", "create", *addresses, "--cluster-yes"],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {result.stdout}{result.stderr}")
        self._wait_ok()

    def _wait_ok(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            infos = [redis.Redis(port=n.port).cluster("info") for n in self.nodes]
            if all(i.get("cluster_state") == "ok" for i in infos):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("test cluster did not reach cluster_state:ok within 20 s")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
