"""Fixtures for the fault suite: a fresh redis-server per test, a ledger file, workers
that are always SIGKILLed at teardown, and the summary table printed at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from reliability.harness import REPORT_ENV, RedisProc, Result, Workers, report_path

_rows_written: list[bool] = []


@pytest.fixture(scope="session", autouse=True)
def _summary_file() -> Iterator[None]:
    # One file per pytest session unless OMNIQ_RELIABILITY_REPORT names one:
    # several sessions may run at once on this machine.
    os.environ.setdefault(REPORT_ENV, tempfile.mkstemp(prefix="omniq-reliability-summary-", suffix=".md")[1])
    path = report_path()
    path.write_text(f"<!-- omniq-tasks fault suite, {time.strftime('%Y-%m-%d %H:%M:%S')} -->\n"
                    + Result.HEADER + "\n")
    _rows_written.append(True)
    yield


def pytest_terminal_summary(terminalreporter: Any) -> None:
    path = report_path()
    if _rows_written and path.exists() and len(path.read_text().splitlines()) > 3:  # rows past the header
        terminalreporter.write_sep("=", f"fault suite summary ({path})")
        terminalreporter.write_line(path.read_text())


@pytest.fixture()
def workdir() -> Iterator[Path]:
    """The test's ledger, worker logs and Redis dirs. Not pytest's tmp_path: other pytest
    sessions on this machine prune old basetemp dirs, which must not happen mid-test.
    OMNIQ_RELIABILITY_KEEP=1 keeps it (the path is printed)."""
    path = Path(tempfile.mkdtemp(prefix="omniq-reliability-"))
    print(f"\nworkdir: {path}")
    yield path
    if not os.environ.get("OMNIQ_RELIABILITY_KEEP"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def ledger(workdir: Path) -> Path:
    return workdir / "ledger.txt"


@pytest.fixture()
def workers(workdir: Path, ledger: Path) -> Iterator[Workers]:
    started = Workers(workdir, ledger)
    yield started
    started.kill_all()


@pytest.fixture()
def redis_proc(workdir: Path) -> Iterator[Callable[..., RedisProc]]:
    """``redis_proc(*args, appendfsync=None)``: a redis-server of this test's own."""
    servers: list[RedisProc] = []

    def start(*args: str, **kwargs: Any) -> RedisProc:
        server = RedisProc(workdir / f"redis-{len(servers)}", *args, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
