"""The official OmniQ SDK (``omniq`` 4.0.0) as the benchmark's peer, run in its own process.

    python -m benchmarks.peer consume PORT QUEUE JOBS OUT_JSON
        consume() with a no-op handler until JOBS jobs ran, then exit; write the
        first start / last end / count (as the omniq-tasks no-op tasks do) to OUT_JSON.
    python -m benchmarks.peer latency PORT QUEUE KEY
        consume() until SIGTERM; each job RPUSHes (its start - payload["t"]) to KEY.

Only the SDK's public API is used, with its defaults (poll_interval_s=0.05). Its
dependency ulid-py clashes with python-ulid on the import name ``ulid``, so job ids
given to it are always explicit, and the client is built on a plain redis.Redis
(``host=`` would first probe for a cluster).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import redis


def official_client(port: int) -> Any:
    from omniq.client import OmniqClient
    return OmniqClient(redis=redis.Redis(port=port, decode_responses=True))


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def consume(port: int, queue: str, jobs: int, out: str) -> None:
    client = official_client(port)
    state = {"first": 0.0, "last": 0.0, "count": 0}

    def handler(ctx: Any) -> None:
        now = time.time()
        if not state["first"]:
            state["first"] = now
        state["last"] = now
        state["count"] += 1
        if state["count"] >= jobs:
            os.kill(os.getpid(), signal.SIGTERM)  # consume() finishes this job, then returns

    client.consume(queue=queue, handler=handler)
    state["rss_kb"] = rss_kb()
    with open(out, "w") as f:
        json.dump(state, f)


def latency(port: int, queue: str, key: str) -> None:
    client = official_client(port)
    conn = redis.Redis(port=port)

    def handler(ctx: Any) -> None:
        started = time.time()
        conn.rpush(key, repr(started - float(ctx.payload["t"])))

    client.consume(queue=queue, handler=handler)


def main(argv: list[str]) -> int:
    mode, port, queue = argv[0], int(argv[1]), argv[2]
    if mode == "consume":
        consume(port, queue, int(argv[3]), argv[4])
    elif mode == "latency":
        latency(port, queue, argv[3])
    else:
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
