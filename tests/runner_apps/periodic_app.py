"""An app with periodic schedules, for tests/test_periodic.py (``omniq-tasks beat``,
``worker --beat``, ``schedules`` on the test Redis).

- ``every-sec``: ``sec_tick(label="sec", n=7)`` every second (queue ``pq``);
- ``nightly``: ``nightly(kind="sales")`` at 03:00 Europe/Berlin (never due during a test).

Task bodies append "<task> <job_id> <kwargs as JSON>" lines to the file named by
PERIODIC_RECORD (when set). The Redis URL comes from OMNIQ_TASKS_REDIS_URL. A process
started with the clock-skew shim (OMNIQ_TEST_CLOCK_SKEW_S) prints its wall clock at
import, so a test can check that the shim is active.
"""

from __future__ import annotations

import json
import os
import sys
import time

from omniq_tasks import App, JobContext

app = App("periodic", queue="pq", max_attempts=1, backoff_ms=0)

if os.environ.get("OMNIQ_TEST_CLOCK_SKEW_S"):
    print(f"periodic_app wall clock {time.time():.3f}", file=sys.stderr, flush=True)


def _record(task: str, ctx: JobContext, kwargs: dict[str, object]) -> None:
    path = os.environ.get("PERIODIC_RECORD")
    if path:
        with open(path, "a") as f:
            f.write(f"{task} {ctx.job_id} {json.dumps(kwargs, sort_keys=True)}\n")


@app.periodic(every=1, kwargs={"label": "sec", "n": 7}, name="every-sec")
@app.task(name="sec_tick")
def sec_tick(ctx: JobContext, label: str, n: int) -> None:
    _record("sec_tick", ctx, {"label": label, "n": n})


@app.periodic(cron="0 3 * * *", tz="Europe/Berlin", kwargs={"kind": "sales"})
@app.task(name="nightly")
def nightly(ctx: JobContext, kind: str) -> None:
    _record("nightly", ctx, {"kind": kind})
