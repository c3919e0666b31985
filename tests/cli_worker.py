"""A CLI worker (``python -m omniq_tasks worker APP ...``) in its own process group, for
end-to-end tests; and ``wait_for``, which shows the worker's log when it times out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence


class CliWorker:
    """Starts ``omniq-tasks worker app_path *args`` on ``redis_url`` (via OMNIQ_TASKS_REDIS_URL)
    in ``cwd``, its output in ``log_path``; ``ready_text`` is the start line to wait for."""

    def __init__(self, cwd: Path, redis_url: str, app_path: str, args: Sequence[str], log_path: Path,
                 ready_text: str, pythonpath: Sequence[str] = ()) -> None:
        self.log_path = log_path
        self.ready_text = ready_text
        env = {**os.environ, "OMNIQ_TASKS_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join([*pythonpath, os.environ.get("PYTHONPATH", "")])
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omniq_tasks", "worker", app_path, *args],
            cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 20) -> CliWorker:
        wait_for(lambda: self.ready_text in self.log() or self.proc.poll() is not None, timeout, self)
        assert self.proc.poll() is None, f"worker exited at start:\n{self.log()}"
        return self

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker did not exit within {timeout} s:\n{self.log()[-4000:]}") from None

    def kill(self) -> None:
        """SIGKILL the worker and whatever it started (its process group)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


def gone(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` no longer exists (within ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def wait_for(predicate: Callable[[], Any], timeout: float, worker: CliWorker | None = None,
             what: str = "condition") -> Any:
    """``predicate()``'s first truthy value within ``timeout`` s, else an AssertionError with the log."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            log = worker.log()[-4000:] if worker else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\nworker log:\n{log}")
        time.sleep(0.02)
