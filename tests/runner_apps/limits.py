"""Tasks for tests/test_time_limits.py: bodies that outlive their time limits.

The App's own ``time_limit`` (1 s) is the default of every task here; some set
their own. Tasks note "<tag> <pid>" lines in the file at ``path`` (see poison.note).
The Redis URL comes from OMNIQ_TASKS_REDIS_URL (the end-to-end tests' worker).
"""

from __future__ import annotations

import asyncio
import time

from omniq_tasks.app import App
from omniq_tasks.errors import SoftTimeLimitExceeded, TimeLimitExceeded
from runner_apps.poison import note

app = App("limits", queue="tq", max_attempts=1, timeout_ms=5000, backoff_ms=0, time_limit=1.0)


@app.task(name="ok")
def ok(path: str, tag: str) -> None:
    note(path, tag)


@app.task(name="hang")
def hang(path: str, tag: str, seconds: float) -> str:
    """Outlives the App's time limit of 1 s (blocked in C: nothing can interrupt it in a thread)."""
    note(path, tag + "-start")
    time.sleep(seconds)
    note(path, tag + "-end")
    return "late"


@app.task(name="hang_final", dont_retry_for=(TimeLimitExceeded,))
def hang_final(path: str, tag: str, seconds: float) -> str:
    """hang, whose time-outs are not retried."""
    return hang(path, tag, seconds)


@app.task(name="hang_later", retry_backoff=60, retry_jitter=False)
def hang_later(path: str, tag: str, seconds: float) -> str:
    """hang, whose time-outs retry after an exponential backoff starting at 60 s."""
    return hang(path, tag, seconds)


@app.task(name="soft", soft_time_limit=0.5, time_limit=3.0)
def soft(path: str, tag: str, seconds: float, catch: bool) -> str:
    """Works in short steps (Python bytecode between them) until the soft limit; cleans up."""
    note(path, tag + "-start")
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        note(path, tag + "-soft")
        if not catch:
            raise
        return "cleaned up"
    return "not interrupted"


@app.task(name="soft_blocked", soft_time_limit=0.5, time_limit=3.0)
def soft_blocked(path: str, tag: str, seconds: float) -> str:
    """Blocked in one sleep: a process's SIGALRM interrupts it, a thread's async exception waits."""
    note(path, tag + "-start")
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        note(path, tag + "-soft")
        return "cleaned up"
    note(path, tag + "-end")
    return "slept"


@app.task(name="ahang")
async def ahang(path: str, tag: str, seconds: float) -> str:
    note(path, tag + "-start")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        note(path, tag + "-cancelled")
        raise
    note(path, tag + "-end")
    return "late"


@app.task(name="asoft", soft_time_limit=0.5, time_limit=3.0)
async def asoft(path: str, tag: str, seconds: float, catch: bool) -> str:
    note(path, tag + "-start")
    try:
        await asyncio.sleep(seconds)
    except SoftTimeLimitExceeded:
        note(path, tag + "-soft")
        if not catch:
            raise
        await asyncio.sleep(0.05)  # the cancellation was withdrawn: the body may still await
        return "cleaned up"
    return "not interrupted"
