"""Tasks for tests/test_runners.py: well-behaved ones, and ones that break their runner.

Tasks that must show where they ran append "<tag> <pid>" to a file whose path they
are given, so the tests need no Redis for that. The app's Redis URL comes from
OMNIQ_TASKS_REDIS_URL (the end-to-end tests' worker); nothing here connects by itself.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import msgspec

from omniq_tasks.app import App
from omniq_tasks.context import JobContext

app = App("runners", queue="pq", max_attempts=3, timeout_ms=5000, backoff_ms=0)


def note(path: str, tag: str) -> None:
    with open(path, "a") as f:
        f.write(f"{tag} {os.getpid()}\n")


class BadStr(Exception):
    """An exception whose str() itself raises."""

    def __str__(self) -> str:
        raise ValueError("str() of BadStr fails")


class ExitingStr(Exception):
    """An exception whose str() raises SystemExit: escapes `except Exception`."""

    def __str__(self) -> str:
        raise SystemExit(7)


class Weird(BaseException):
    """A BaseException no runner expects, with a str() that raises."""

    def __str__(self) -> str:
        raise KeyboardInterrupt


@app.task(name="ok")
def ok(path: str, tag: str) -> None:
    note(path, tag)


@app.task(name="sleepy")
def sleepy(path: str, tag: str, seconds: float) -> None:
    note(path, tag + "-start")
    time.sleep(seconds)
    note(path, tag + "-end")


@app.task(name="exits")
def exits(path: str, tag: str, code: int) -> None:
    """Ends its process at once, as a C extension crash or os._exit() would."""
    note(path, tag)
    os._exit(code)


@app.task(name="killed")
def killed(path: str, tag: str) -> None:
    note(path, tag)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)


@app.task(name="attempts")
def attempts(ctx: JobContext, path: str) -> None:
    """Dies on every attempt, noting which attempt it was."""
    note(path, f"attempt-{ctx.attempt}")
    os._exit(3)


@app.task(name="raises")
def raises(kind: str) -> None:
    if kind == "system_exit":
        raise SystemExit(4)
    if kind == "keyboard_interrupt":
        raise KeyboardInterrupt
    if kind == "memory_error":
        raise MemoryError("out of memory (simulated)")
    if kind == "bad_str":
        raise BadStr()
    if kind == "exiting_str":
        raise ExitingStr()
    if kind == "weird":
        raise Weird()
    if kind == "recursion":
        def down(n: int) -> int:
            return down(n + 1) + 1
        down(0)
    raise ValueError(kind)


@app.task(name="araises")
async def araises(kind: str) -> None:
    await asyncio.sleep(0)
    if kind == "system_exit":
        raise SystemExit(5)
    if kind == "keyboard_interrupt":
        raise KeyboardInterrupt
    if kind == "cancelled":
        raise asyncio.CancelledError()
    if kind == "weird":
        raise Weird()
    if kind == "exiting_str":
        raise ExitingStr()
    raise ValueError(kind)


@app.task(name="asleepy")
async def asleepy(path: str, tag: str, seconds: float) -> None:
    note(path, tag + "-start")
    await asyncio.sleep(seconds)
    note(path, tag + "-end")


@app.task(queue="rawq", raw=True, name="raw")
def raw(value: Any) -> None:
    pass


class Explodes(msgspec.Struct):
    """Decoding it raises what a decoder out of stack or memory would."""

    n: int

    def __post_init__(self) -> None:
        raise RecursionError("maximum recursion depth exceeded (simulated)")


@app.task(queue="boomq", raw=True, name="boom")
def boom(value: Explodes) -> None:
    pass
