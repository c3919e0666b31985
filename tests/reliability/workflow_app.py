"""The app of tests/reliability/test_workflow_faults.py: fan-out children, a callback,
a parent that fans out, and chain steps. Every run is written to the ledger (the same
lines as ledger_app.py, so harness.check reads them), and every callback run also
appends what it received, as one JSON line, to ``$OMNIQ_LEDGER.callbacks``.

Queues are given per test with ``.set(queue=...)``; the tasks' own are the defaults.
Task names are explicit so the CLI worker (``workflow_app``) and the test process
(``reliability.workflow_app``) agree on them.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

from omniq_tasks import App, ChildResult
from omniq_tasks.context import JobContext

try:  # the test process imports this as reliability.workflow_app, the worker as workflow_app
    from reliability.ledger_app import LEDGER_ENV, Run
except ImportError:  # pragma: no cover - the CLI worker's import path
    from ledger_app import LEDGER_ENV, Run  # type: ignore[no-redef]

Q_CHILD = "wfa"      # the children
Q_CHILD2 = "wfb"     # a second children's queue (the cluster test)
Q_CALLBACK = "wfc"   # the callbacks: their own queue, so {wfa}:once:<key> holds the n children only
Q_PARENT = "wfp"     # the parent that fans out
Q_CHAIN = ("wc0", "wc1", "wc2")  # one queue per chain step: a fault env can then hit one step only
APP_OPTIONS: dict[str, Any] = {"max_attempts": 5, "timeout_ms": 1200, "backoff_ms": 0, "workflow_sweep": 1.0}


def child_value(i: int) -> int:
    return i * 7 + 1


def callbacks_path() -> str:
    return os.environ[LEDGER_ENV] + ".callbacks"


def build(app: App) -> dict[str, Any]:
    """Register the workflow tasks on ``app``; returns them by short name."""

    @app.task(name="wf.child", queue=Q_CHILD)
    def child(ctx: JobContext, i: int, sleep_ms: int = 0) -> int:
        with Run(ctx):
            if sleep_ms:
                time.sleep(sleep_ms / 1000)
            return child_value(i)

    @app.task(name="wf.collect", queue=Q_CALLBACK)
    def collect(ctx: JobContext, results: list[ChildResult[int]], tag: str) -> list[Optional[int]]:
        with Run(ctx):
            line = json.dumps({"job_id": ctx.job_id, "attempt": ctx.attempt, "tag": tag, "pid": os.getpid(),
                               "results": [[r.index, r.job_id, r.ok, r.value, r.error] for r in results]})
            fd = os.open(callbacks_path(), os.O_APPEND | os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)
            return [r.value for r in results]

    @app.task(name="wf.parent", queue=Q_PARENT)
    def parent(ctx: JobContext, n: int, crash_on_attempt: int = 0) -> str:
        """Fans out n children (key ``<job id>.fo0``); exits the process on that attempt."""
        with Run(ctx):
            handle = ctx.fanout([child.s(i) for i in range(n)], then=collect.s("parent"))
            if ctx.attempt == crash_on_attempt:
                os._exit(71)  # the worker dies after the fan-out started, before the ack
            return handle.key

    @app.task(name="wf.step", queue=Q_CHAIN[0])
    def step(ctx: JobContext, x: int, add: int) -> int:
        with Run(ctx):
            return x * 10 + add

    return {"child": child, "collect": collect, "parent": parent, "step": step}


# The CLI worker's app: the Redis URL comes from OMNIQ_TASKS_REDIS_URL.
app = App("wf", **APP_OPTIONS)
tasks = build(app)
