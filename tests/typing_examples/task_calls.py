"""Type-checked by tests/test_typing.py with ``mypy --strict``; never imported or run.

Every line that must be an error ends with ``# E: <error-code>``; every other line
must type-check. One bad call per kind of task: plain, JobContext first, async.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import msgspec

from omniq_tasks.app import App
from omniq_tasks.context import JobContext
from omniq_tasks.results import JobHandle
from omniq_tasks.task import Task

app = App("typing-examples", "redis://127.0.0.1:6379/0")


class Order(msgspec.Struct):
    id: int
    company: str


@app.task
def add(x: int, y: int = 0) -> int:
    return x + y


@app.task(queue="orders", gid="company:{order.company}", group_limit=2)
def handle_order(ctx: JobContext, order: Order, note: str | None = None) -> None:
    print(ctx.job_id, ctx.attempt, order.id, note)


@app.task
async def fetch(url: str, retries: int = 1) -> str:
    await asyncio.sleep(0)
    return url * retries


@app.task(queue="events", raw=True)
def on_event(ctx: JobContext, payload: dict[str, int]) -> None:
    print(ctx.queue, payload)


def good_calls(ctx: JobContext) -> None:
    # plain task: in-process call keeps the return type; publishing returns handles
    total: int = add(1, 2)
    h: JobHandle = add.delay(1, y=2)
    job_id: str = h.id
    queue: str = h.queue
    add.apply_at(datetime.now(timezone.utc), 1)
    add.apply_at(1_700_000_000.5, x=1, y=3)
    add.apply_async((1,), {"y": 2}, countdown=5, queue="other", job_id="j-1")
    handles: list[JobHandle] = add.map([1, (2, 3), {"x": 4}])

    # JobContext first: the context is stripped from the publishing signature
    handle_order.delay(Order(1, "acme"))
    handle_order.delay(order=Order(2, "acme"), note="rush")
    handle_order.apply_at(datetime.now(timezone.utc), Order(3, "x"), None)
    typed_ctx_task: Task[[Order, str | None], None] = handle_order

    # async task: publishing is the same; calling in-process gives the coroutine
    fetch.delay("https://example.com")
    fetch.apply_at(1_700_000_000, url="u", retries=2)
    coro = fetch("u")
    text: str = asyncio.run(coro)

    on_event.delay({"clicks": 3})
    print(total, job_id, queue, handles, typed_ctx_task, text)


def bad_calls(ctx: JobContext) -> None:
    add.delay("one")  # E: arg-type
    handle_order.delay(ctx, Order(1, "acme"))  # E: arg-type  (the context is not a parameter of delay)
    fetch.apply_at(1_700_000_000, url=42)  # E: arg-type
