"""A lane's jobs page by page, and one job in full.

Pages come from the lane's idx mirror (``{Q}:idx:<lane>``, score = when the job
entered the lane): ZCARD and one ZRANGE of ``limit`` ids from ``offset`` in one round
trip, then the page's job hashes (HMGET) in one more. The wait lane's mirror holds
grouped and ungrouped waiting jobs alike.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import msgspec

from ..envelope import read_envelope
from ..errors import OmniqError
from ..protocol import keys
from ..protocol.client import OmniqClient, as_text, redis_errors
from .formatting import duration, utc

# Newest first by default where the newest matter most (what just failed or finished).
NEWEST_FIRST = {"failed": True, "completed": True, "wait": False, "active": False, "delayed": False}
MAX_PAGE = 1000
_ROW_FIELDS = ("state", "gid", "attempt", "max_attempts", "payload", "last_error", "due_ms", "lock_until_ms")
TIME_FIELDS = ("created_ms", "updated_ms", "queued_ms", "first_started_ms", "last_started_ms",
               "completed_ms", "failed_ms", "due_ms", "lock_until_ms", "last_error_ms")


def read_int(value: Any) -> Optional[int]:
    """A number field as another client may have written it ("12", "12.0", b"12"); None when
    missing, empty or unreadable."""
    if value is None:
        return None
    try:
        return int(float(as_text(value)))
    except (ValueError, OverflowError):
        return None


def task_name(payload: str) -> str:
    """The task an envelope payload calls; "" for a raw payload (another SDK's, a raw handler's)."""
    try:
        envelope = read_envelope(payload)
    except OmniqError:
        return ""
    return envelope.task if envelope is not None else ""


class JobRow(msgspec.Struct, frozen=True):
    """One job of a lane page; ``state`` "" when its hash is gone (the mirror is ahead of it)."""

    id: str
    entered_ms: int
    state: str
    gid: str
    attempt: int
    max_attempts: int
    task: str
    last_error: str  # its last line (a traceback's exception line), at most 200 chars
    due_ms: Optional[int] = None
    lock_until_ms: Optional[int] = None


class LanePage(msgspec.Struct, frozen=True):
    queue: str
    lane: str
    total: int
    offset: int
    limit: int
    newest_first: bool
    jobs: list[JobRow]


def check_lane(lane: str) -> str:
    if lane not in keys.LANES:
        raise ValueError(f"lane must be one of {', '.join(keys.LANES)}, not {lane!r}")
    return lane


def check_page(limit: int, offset: int) -> None:
    if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be 1..{MAX_PAGE}, not {limit!r}")
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be >= 0, not {offset!r}")


def lane_page(client: OmniqClient, queue: str, lane: str, *, limit: int = 20, offset: int = 0,
              newest_first: bool | None = None) -> LanePage:
    """Jobs ``offset`` .. ``offset + limit - 1`` of the lane, oldest or newest first."""
    keys.validate_queue(queue)
    check_lane(lane)
    check_page(limit, offset)
    newest = NEWEST_FIRST[lane] if newest_first is None else newest_first
    idx = keys.idx_key(queue, lane)
    with redis_errors(client.url):
        pipe = client.redis.pipeline(transaction=False)
        pipe.zcard(idx)
        pipe.zrange(idx, offset, offset + limit - 1, desc=newest, withscores=True)
        total, members = pipe.execute()
        ids = [(as_text(member), int(score)) for member, score in members]
        pipe = client.redis.pipeline(transaction=False)
        for job_id, _ in ids:
            pipe.hmget(keys.job_key(queue, job_id), *_ROW_FIELDS)
        hashes = pipe.execute() if ids else []
    rows = []
    for (job_id, entered), values in zip(ids, hashes):
        f = dict(zip(_ROW_FIELDS, (as_text(v) for v in values)))
        error = f["last_error"].strip().splitlines()
        rows.append(JobRow(id=job_id, entered_ms=entered, state=f["state"], gid=f["gid"],
                           attempt=read_int(f["attempt"]) or 0, max_attempts=read_int(f["max_attempts"]) or 0,
                           task=task_name(f["payload"]) if f["payload"] else "",
                           last_error=error[-1][:200] if error else "",
                           due_ms=read_int(f["due_ms"]), lock_until_ms=read_int(f["lock_until_ms"])))
    return LanePage(queue=queue, lane=lane, total=int(total), offset=offset, limit=limit,
                    newest_first=newest, jobs=rows)


class TimeRow(msgspec.Struct, frozen=True):
    field: str
    ms: int
    utc: str


class DurationRow(msgspec.Struct, frozen=True):
    name: str
    ms: int
    text: str


class JobDetail(msgspec.Struct, frozen=True):
    """Everything about one job: every field of its hash as stored (other SDKs' extra
    fields too), the payload decoded (None when it is not JSON), times and durations."""

    queue: str
    id: str
    state: str
    task: str
    fields: dict[str, str]
    payload: Any
    payload_pretty: str
    last_error: str
    times: list[TimeRow]
    durations: list[DurationRow]
    now_ms: int
    result: Optional[str] = None  # the stored return value (JSON text), when kept


def job_detail(client: OmniqClient, queue: str, job_id: str) -> JobDetail | None:
    """The job in full, or None when it does not exist."""
    with redis_errors(client.url):
        pipe = client.redis.pipeline(transaction=False)
        pipe.hgetall(keys.job_key(queue, job_id))
        pipe.get(keys.result_key(queue, job_id))
        raw, result = pipe.execute()
    if not raw:
        return None
    now = client.server_now_ms()
    fields = {as_text(k): as_text(v) for k, v in sorted(raw.items(), key=lambda kv: as_text(kv[0]))}
    payload_text = fields.get("payload", "")
    try:
        payload: Any = json.loads(payload_text)
        pretty = json.dumps(payload, indent=2, ensure_ascii=False)
    except ValueError:
        payload, pretty = None, payload_text
    times = [TimeRow(name, ms, utc(ms)) for name in TIME_FIELDS if (ms := read_int(fields.get(name, "")))]
    t = {row.field: row.ms for row in times}
    spans: list[tuple[str, str, str]] = [
        ("waited before first start", "queued_ms", "first_started_ms"),
        ("waited before first start", "created_ms", "first_started_ms"),
        ("last run took", "last_started_ms", "completed_ms"),
        ("last run took", "last_started_ms", "failed_ms"),
        ("created to finished", "created_ms", "completed_ms"),
        ("created to finished", "created_ms", "failed_ms"),
    ]
    durations: list[DurationRow] = []
    for name, start, end in spans:
        if start in t and end in t and t[end] >= t[start] and not any(d.name == name for d in durations):
            durations.append(DurationRow(name, t[end] - t[start], duration(t[end] - t[start])))
    state = fields.get("state", "")
    if state == "active" and "last_started_ms" in t:
        durations.append(DurationRow("running for", now - t["last_started_ms"],
                                     duration(now - t["last_started_ms"])))
    if state == "active" and "lock_until_ms" in t:
        durations.append(DurationRow("lease left", t["lock_until_ms"] - now, duration(t["lock_until_ms"] - now)))
    if state == "delayed" and "due_ms" in t:
        durations.append(DurationRow("due in", t["due_ms"] - now, duration(t["due_ms"] - now)))
    if state in ("wait", "delayed") and "created_ms" in t:
        durations.append(DurationRow("age", now - t["created_ms"], duration(now - t["created_ms"])))
    return JobDetail(queue=queue, id=fields.get("id", job_id), state=state,
                     task=task_name(payload_text) if payload_text else "", fields=fields,
                     payload=payload, payload_pretty=pretty, last_error=fields.get("last_error", ""),
                     times=times, durations=durations, now_ms=now,
                     result=as_text(result) if result is not None else None)
