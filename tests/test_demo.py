"""``omniq-tasks demo``: the command a new user runs first shows the framework working.

Run as a user runs it (a subprocess, stdout not a terminal), on a test server: the
summary table comes out as plain text and says 301 completed, 1 failed, retries,
at most two mails of a company at once, FIFO kept; exit code 0; and no key of the
demo is left on the server. The checks behind the table's "ok" column are tested
on spans that break them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import redis

from omniq_tasks.cli.demo import Span, default_target, embedded_folder, fifo_kept, most_at_once
from redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent


def run_demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "omniq_tasks", "demo", *args], cwd=ROOT,
                          env={**os.environ, "COLUMNS": "100", **(env or {})},
                          capture_output=True, text=True, timeout=60)


def summary_rows(stdout: str) -> dict[str, list[str]]:
    """The table rows as name -> the other cells (box lines or ASCII bars alike)."""
    rows: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│|┃]", line)]
        if len(cells) >= 4 and cells[1] and cells[1] not in rows:
            rows[cells[1]] = cells[2:-1]
    return rows


def assert_everything_behaved(result: subprocess.CompletedProcess[str]) -> None:
    out = result.stdout
    assert result.returncode == 0, f"stdout:\n{out}\nstderr:\n{result.stderr}"

    # not a terminal: no live animation (no cursor movement), and no colour codes
    assert "\x1b[" not in out
    assert out.count("omniq-tasks demo: summary") == 1
    assert re.search(r"queues: demo-emails-[0-9a-f]{8}, demo-billing-[0-9a-f]{8}", out)

    rows = summary_rows(out)
    assert rows["completed"][0] == "301"                         # 300 emails + the invoice on its retry
    assert rows["failed"][0] == "1"                              # charge_card, for good
    retried = re.fullmatch(r"(\d+) jobs, (\d+) retries", rows["retried"][0])
    assert retried is not None and int(retried[1]) >= 1 and int(retried[2]) >= 1
    peak = re.fullmatch(r"(\d+) \(of any company\)", rows["most at once"][0])
    assert peak is not None and int(peak[1]) <= 2
    assert rows["FIFO per company"][0] == "6/6 companies"
    assert re.fullmatch(r"\d+ jobs/s", rows["throughput"][0])
    assert re.fullmatch(r"\d+\.\d\d s", rows["elapsed"][0])
    assert all(rows[name][-1] == "ok" for name in
               ("completed", "failed", "retried", "most at once", "FIFO per company", "queues idle"))
    for company in "123456":
        assert rows[company][-1] == "yes"                        # per company: in order
        assert int(rows[company][2]) <= 2                        # per company: most at once
    # the failed job's traceback was kept, and shown
    assert "CardDeclined: card declined for company 2" in out
    assert "in charge_card" in out
    assert out.rstrip().endswith("demo: OK")


def test_demo_on_a_given_redis_reports_and_cleans_up(r: redis.Redis, redis_server: RedisServer) -> None:
    started = time.monotonic()
    result = run_demo("--redis-url", redis_server.url)
    took = time.monotonic() - started
    assert_everything_behaved(result)
    assert took < 15, f"the demo took {took:.1f} s"
    # nothing of the demo is left: the test DB was empty before, and is again
    assert r.keys("*") == []


def processes_naming(text: str) -> list[str]:
    """Command lines of running processes that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(cmdline)
    return found


def test_demo_with_no_arguments_runs_on_a_throwaway_embedded_server(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    result = run_demo(env={"TMPDIR": str(temp)})
    assert_everything_behaved(result)
    where = re.search(r"^redis: a throwaway embedded server \((redis-server|valkey-server)\) in (\S+)$",
                      result.stdout, re.M)
    assert where is not None, result.stdout
    folder = Path(where[2])
    assert folder.parent == temp
    # the server stopped and its folder went with it
    assert list(temp.iterdir()) == []
    assert processes_naming(str(folder)) == []


def test_demo_exit_code_1_when_redis_is_unreachable() -> None:
    result = run_demo("--redis-url", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    assert result.returncode == 1
    assert "omniq-tasks demo:" in result.stderr


def test_default_target_is_embedded_in_a_fresh_folder() -> None:
    first, second = default_target(), default_target()
    folders = [embedded_folder(first), embedded_folder(second)]
    try:
        assert first.startswith("embedded:///") and second.startswith("embedded:///")
        assert first != second  # a fresh folder each time
        for folder in folders:
            assert folder is not None and folder.is_dir() and not any(folder.iterdir())
    finally:
        for folder in folders:
            if folder is not None:
                folder.rmdir()
    assert embedded_folder("redis://localhost:6379/0") is None


def span(number: int, lease_ms: int, start: float, end: float) -> Span:
    return Span(number, lease_ms, start, end)


def test_fifo_check_sees_mails_leased_out_of_order() -> None:
    assert fifo_kept([span(0, 10, 0.0, 1.0), span(1, 10, 0.1, 1.2), span(2, 11, 1.0, 2.0), span(3, 12, 1.2, 2.5)])
    # two mails leased together may begin in either order (threads): still FIFO
    assert fifo_kept([span(0, 10, 0.1, 1.0), span(1, 10, 0.0, 1.2)])
    # mail 2 leased before mail 1, whatever the order they are listed in
    assert not fifo_kept([span(2, 11, 0.5, 1.5), span(0, 10, 0.0, 1.0), span(1, 12, 1.0, 2.0)])


def test_most_at_once_counts_overlaps() -> None:
    assert most_at_once([]) == 0
    assert most_at_once([(0, 1), (1, 2), (2, 3)]) == 1  # one ends as the next starts
    assert most_at_once([(0, 3), (1, 2), (1.5, 4)]) == 3
