"""Throwaway real redis-server processes: for tests, benchmarks and the demo.

``RedisServer()`` starts a standalone server on a free port in a temp dir (nothing
persisted) and ``RedisClusterNodes()`` a real 3-master Redis Cluster. No fakes:
when redis-server cannot start, the error says why (tests fail, never skip).

``RedisServer(tls=True)`` serves TLS only, with a throwaway CA and server certificate
made by the ``openssl`` command (:func:`make_ca`, :func:`make_server_cert`); its
``url`` is a ``rediss://`` URL that trusts that CA.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import redis


def free_port(maximum: int = 65535) -> int:
    """A free TCP port no higher than ``maximum``."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port <= maximum:
            return port


class CertFiles(NamedTuple):
    """A PEM certificate and its private key."""

    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("openssl is not on PATH: needed to make test TLS certificates "
                           "(apt-get install -y openssl)")
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()[-2000:]}")


_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def make_ca(directory: Path, name: str = "ca") -> CertFiles:
    """A throwaway self-signed CA (1 day): ``<name>.pem`` and ``<name>.key`` in ``directory``."""
    ca = CertFiles(directory / f"{name}.pem", directory / f"{name}.key")
    _openssl("req", "-x509", *_EC_KEY, "-keyout", str(ca.key), "-out", str(ca.cert), "-days", "1",
             "-subj", f"/CN=omniq-tasks test CA {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return ca


def make_server_cert(directory: Path, ca: CertFiles, name: str = "server",
                     hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> CertFiles:
    """A server certificate signed by ``ca``, valid for ``hosts`` (IPs or DNS names), 1 day."""
    out = CertFiles(directory / f"{name}.pem", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    sans = ",".join(("IP:" if h.replace(".", "").isdigit() or ":" in h else "DNS:") + h for h in hosts)
    ext.write_text(
        f"subjectAltName={sans}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        "subjectKeyIdentifier=hash\n"
    )
    _openssl("req", *_EC_KEY, "-keyout", str(out.key), "-out", str(csr), "-subj", f"/CN={hosts[0]}",
             cwd=directory)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
             "-CAcreateserial", "-out", str(out.cert), "-days", "1", "-extfile", str(ext), cwd=directory)
    return out


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


def stop_server_process(process: subprocess.Popen[bytes], directory: Path, *, keep_dir: bool = False) -> None:
    """SIGTERM a server we started (SIGKILL after 10 s), then remove its dir unless ``keep_dir``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if not keep_dir:
        shutil.rmtree(directory, ignore_errors=True)


class RedisServer:
    """One redis-server on a free port in its own temp dir, nothing persisted.

    ``tls=True``: the port speaks TLS only (no plain-text port); a throwaway CA
    (``self.ca``) signs the server's certificate (``self.server_cert``), clients are
    not asked for certificates, and ``url`` is ``rediss://...?ssl_ca_certs=<ca.pem>``.
    """

    def __init__(self, *extra_args: str, port: int | None = None, tls: bool = False,
                 binary: str | None = None) -> None:
        self.port = port or free_port()
        self.binary = binary or redis_server_binary()
        self.extra_args = extra_args
        self.tls = tls
        self.dir = Path(tempfile.mkdtemp(prefix="omniq-redis-"))
        self.ca: CertFiles | None = None
        self.server_cert: CertFiles | None = None
        listen = ["--port", str(self.port)]
        if tls:
            self.ca = make_ca(self.dir)
            self.server_cert = make_server_cert(self.dir, self.ca)
            listen = ["--port", "0", "--tls-port", str(self.port),
                      "--tls-cert-file", str(self.server_cert.cert),
                      "--tls-key-file", str(self.server_cert.key),
                      "--tls-ca-cert-file", str(self.ca.cert), "--tls-auth-clients", "no"]
        cmd = [
            self.binary, *listen, "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--save", "", "--appendonly", "no",
            "--logfile", str(self.dir / "redis.log"), *extra_args,
        ]
        self._cmd = cmd
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready()

    @property
    def url(self) -> str:
        if self.ca is not None:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={quote(str(self.ca.cert))}"
        return f"redis://127.0.0.1:{self.port}/0"

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.Redis(...)`` that reach this server (TLS included)."""
        kwargs: dict[str, Any] = {"host": "127.0.0.1", "port": self.port}
        if self.ca is not None:
            kwargs.update(ssl=True, ssl_ca_certs=str(self.ca.cert))
        return kwargs

    def client(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client on this server; ``kwargs`` add to or override :meth:`connection_kwargs`."""
        return redis.Redis(**{**self.connection_kwargs(), **kwargs})

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.dir / "redis.log").read_text() if (self.dir / "redis.log").exists() else ""
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log[-2000:]}")
            try:
                with self.client(socket_timeout=1) as conn:
                    conn.ping()
                return
            except (redis.AuthenticationError, redis.exceptions.NoPermissionError):
                return  # a server with a password (--requirepass) answers: it is up
            except redis.ConnectionError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within 10 s")

    def restart(self) -> None:
        """Stop and start again on the same port (same options): all data and loaded scripts are gone."""
        self.stop()
        self.__init__(*self.extra_args, port=self.port, tls=self.tls)  # type: ignore[misc]

    def kill(self) -> None:
        """SIGKILL the server (a crash): its dir and files stay for :meth:`start_again`."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def start_again(self) -> None:
        """Start the same command again, same port and dir (what it persisted comes back)."""
        if self.process.poll() is None:
            raise RuntimeError(f"redis-server on port {self.port} is still running")
        self.process = subprocess.Popen(self._cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready()

    def stop(self, keep_dir: bool = False) -> None:
        stop_server_process(self.process, self.dir, keep_dir=keep_dir)


class RedisClusterNodes:
    """A real 3-master Redis Cluster on free ports (no replicas).

    ``persist=True`` gives each node an append-only file synced on every write, so a
    node killed with :meth:`kill_node` comes back from :meth:`restart_node` with its
    data as well as its slots (``nodes.conf``).
    """

    def __init__(self, masters: int = 3, *, persist: bool = False) -> None:
        durable = ("--appendonly", "yes", "--appendfsync", "always") if persist else ()
        self.nodes = [
            # a node's cluster bus listens on port + 10000, so the port must be <= 55535
            RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "2000", *durable, port=free_port(55535))
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
        self.wait_ok()

    def wait_ok(self, timeout: float = 20) -> None:
        """Wait until every node says cluster_state:ok (after a start or a restart)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                infos = [redis.Redis(port=n.port, socket_timeout=1).cluster("info") for n in self.nodes]
            except redis.ConnectionError:
                infos = []
            if infos and all(i.get("cluster_state") == "ok" for i in infos):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"test cluster did not reach cluster_state:ok within {timeout} s")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    @property
    def cluster_url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def node_of(self, key: str) -> int:
        """The index in ``nodes`` of the master serving ``key``'s slot (asked of a live node)."""
        for node in self.nodes:
            if node.process.poll() is None:
                with redis.Redis(port=node.port) as conn:
                    slot = int(conn.cluster("keyslot", key))
                    ranges = conn.cluster("slots")
                break
        else:
            raise RuntimeError("no node of the test cluster is running")
        ports = [n.port for n in self.nodes]
        for start, end, master, *_ in ranges:
            if int(start) <= slot <= int(end):
                return ports.index(int(master[1]))
        raise RuntimeError(f"no master serves slot {slot}")

    def kill_node(self, i: int) -> None:
        """SIGKILL master ``i`` (a crash); :meth:`restart_node` brings it back."""
        self.nodes[i].kill()

    def restart_node(self, i: int, timeout: float = 20) -> None:
        """Start master ``i`` again on its port with its nodes.conf (and data, with ``persist``)."""
        self.nodes[i].start_again()
        self.wait_ok(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
