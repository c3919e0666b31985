"""The running workers' records (written by ``omniq_tasks/worker/presence.py``).

Read from the index ``{omniq-tasks}:workers`` and one HGETALL per entry, in one
pipelined round trip; an entry whose record is gone (its TTL ran out: the worker died
or lost Redis) is dropped from the index here.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..protocol import keys
from ..protocol.client import OmniqClient, as_text, redis_errors


class WorkerInfo(msgspec.Struct, frozen=True):
    """One running worker, as its record says (times on the worker's clock, epoch ms)."""

    id: str
    host: str
    pid: int
    app: str
    queues: list[str]
    concurrency: int
    pool: str
    running: int
    processed: int
    failures: int
    started_ms: int
    seen_ms: int
    version: str


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


def parse_record(worker_id: str, raw: dict[Any, Any]) -> WorkerInfo:
    """A WorkerInfo from a record's fields (missing or unreadable ones read as 0 or "")."""
    f = {as_text(k): as_text(v) for k, v in raw.items()}
    return WorkerInfo(
        id=worker_id, host=f.get("host", ""), pid=_int(f.get("pid", "")), app=f.get("app", ""),
        queues=[q for q in f.get("queues", "").split(",") if q],
        concurrency=_int(f.get("concurrency", "")), pool=f.get("pool", ""),
        running=_int(f.get("running", "")), processed=_int(f.get("processed", "")),
        failures=_int(f.get("failures", "")), started_ms=_int(f.get("started_ms", "")),
        seen_ms=_int(f.get("seen_ms", "")), version=f.get("version", ""))


def live_workers(client: OmniqClient) -> list[WorkerInfo]:
    """Every running worker with a record, sorted by host and pid."""
    with redis_errors(client.url):
        ids = [as_text(m) for m in client.redis.zrange(keys.WORKER_INDEX, 0, -1)]
        if not ids:
            return []
        pipe = client.redis.pipeline(transaction=False)
        for worker_id in ids:
            pipe.hgetall(keys.worker_key(worker_id))
        records = pipe.execute()
        gone = [worker_id for worker_id, raw in zip(ids, records) if not raw]
        if gone:
            client.redis.zrem(keys.WORKER_INDEX, *gone)
    found = [parse_record(worker_id, raw) for worker_id, raw in zip(ids, records) if raw]
    return sorted(found, key=lambda w: (w.host, w.pid))


def announced_queues(workers: list[WorkerInfo]) -> dict[str, int]:
    """Queue -> how many of ``workers`` serve it."""
    out: dict[str, int] = {}
    for worker in workers:
        for queue in worker.queues:
            out[queue] = out.get(queue, 0) + 1
    return out
