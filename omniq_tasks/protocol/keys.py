"""The only place Redis key strings are built, and the naming rules they rely on.

Key map (``Q`` is the queue name; every key of a queue shares the hash tag
``{Q}`` so a whole queue lives in one Redis Cluster slot)::

    {Q}:meta                  anchor: KEYS[1] of every script (never written)
    {Q}:wait                  LIST  ungrouped runnable ids
    {Q}:active                ZSET  running ids, score = lock_until_ms
    {Q}:delayed               ZSET  ids waiting for due_ms
    {Q}:failed                LIST  ids that used up their attempts (newest first)
    {Q}:completed             LIST  newest 100 finished ids
    {Q}:paused                flag  exists = paused
    {Q}:groups:ready          ZSET  gids that may dispatch, score = ready since
    {Q}:g:<gid>:wait          LIST  a group's runnable ids
    {Q}:g:<gid>:inflight      int   a group's running jobs
    {Q}:g:<gid>:limit         int   a group's concurrency limit (missing = 1)
    {Q}:has_groups            "1" once a grouped job was published
    {Q}:lane:rr               "0" grouped lane first, "1" ungrouped first
    {Q}:lease:seq             counter feeding lease tokens
    {Q}:job:<id>              HASH  the job
    {Q}:stats                 HASH  counters and times
    {Q}:idx:<lane>            ZSET  mirror of each lane, score = entered at
    {Q}:wake                  LIST  wake-up tokens our publishers push (extension)
    {Q}:rq:<channel>          replay memory of a caller's last call (extension, TTL)
    {Q}:oom-guard             never exists: heartbeat_batch's first write (extension)
    {Q}:result:<id>           a job's return value as JSON, PX = its result_ttl (extension)
    {Q}:watching              ZSET  ids a handle.get() waits on, score = until ms (extension)
    {Q}:done:<id>             LIST  wake-up token for those waiters, short TTL (extension)
    {Q}:once:<workflow id>    SET   job ids a workflow published here, TTL (extension)
    {Q}:beat:<schedule>       the last tick published for a schedule, TTL (extension)
    {cc:<key>}:meta           anchor of a fan-in counter
    {cc:<key>}:count          remaining children
    {cc:<key>}:done           SET   acked child ids
    {cc:<key>}:fo             HASH  a fan-out's record, TTL (extension, docs/workflows.md)
    {cc:<key>}:res            HASH  a fan-out's child outcomes by index, TTL (extension)
    {omniq-tasks}:fanouts     ZSET  open fan-outs, score = next sweep (extension)
    {omniq-tasks}:workers     ZSET  running workers' ids (host:pid), score = last refresh ms (extension)
    {omniq-tasks}:worker:<id> HASH  a running worker's record, PX a few refreshes (extension,
                              docs/operations.md)
"""

from __future__ import annotations

import re
from functools import lru_cache

from ..errors import InvalidNameError

QUEUE_NAME_MAX = 128
CHILD_KEY_MAX = 128
GID_MAX = 256
_QUEUE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
LANES = ("wait", "active", "delayed", "failed", "completed")


def validate_queue(queue: str) -> str:
    """Return ``queue`` if it is a legal queue name, else raise InvalidNameError."""
    if not isinstance(queue, str):
        raise InvalidNameError(f"queue name must be a str, not {type(queue).__name__}")
    if not _QUEUE_NAME.fullmatch(queue):
        if not queue:
            problem = "is empty"
        elif len(queue) > QUEUE_NAME_MAX:
            problem = f"is {len(queue)} chars long (max {QUEUE_NAME_MAX})"
        else:
            problem = "may only hold letters, digits, '.', '_' and '-'"
        raise InvalidNameError(f"queue name {queue!r} {problem}")
    return queue


def validate_gid(gid: str) -> str:
    """Return ``gid`` if it can name a group: 1-256 chars, no whitespace or control chars."""
    if not isinstance(gid, str):
        raise InvalidNameError(f"gid must be a str, not {type(gid).__name__}")
    if not gid or len(gid) > GID_MAX or any(ch.isspace() or not ch.isprintable() for ch in gid):
        raise InvalidNameError(f"gid {gid!r} must be 1-{GID_MAX} printable chars without spaces")
    return gid


def queue_base(queue: str) -> str:
    """``{Q}``: the prefix of every key of the queue."""
    return "{" + validate_queue(queue) + "}"


@lru_cache(maxsize=4096)
def _anchor(queue: str) -> str:
    return queue_base(queue) + ":meta"


def queue_anchor(queue: str) -> str:
    """``{Q}:meta``: KEYS[1] of every queue script (cached: it is on every call's path)."""
    if not isinstance(queue, str):  # unhashable names must still get the clear error
        validate_queue(queue)
    return _anchor(queue)


def fanout_key(key: str, part: str) -> str:
    """``{cc:<key>}:<part>``: a fan-out's own keys beside its counter (fo, res; docs/workflows.md)."""
    return child_anchor(key)[:-len("meta")] + part


def beat_key(queue: str, schedule: str) -> str:
    """``{Q}:beat:<name>``: the last tick published for a periodic schedule (docs/periodic.md)."""
    return f"{{{queue}}}:beat:{schedule}"


def once_key(queue: str, workflow_id: str) -> str:
    """``{Q}:once:<id>``: the job ids a workflow published to queue Q (enqueue_batch's once-set)."""
    return f"{{{queue}}}:once:{workflow_id}"


# The fan-outs whose children and callback the workers' sweeper checks (one key; docs/workflows.md).
FANOUT_INDEX = "{omniq-tasks}:fanouts"
# Running workers' records (worker/presence.py writes them, ops/workers.py reads them).
WORKER_INDEX = "{omniq-tasks}:workers"


def worker_key(worker_id: str) -> str:
    """``{omniq-tasks}:worker:<host>:<pid>``: a running worker's record (a HASH with a TTL)."""
    return "{omniq-tasks}:worker:" + worker_id


def group_key(queue: str, gid: str, part: str, *, found: bool = False) -> str:
    """``{Q}:g:<gid>:<part>``: a group's wait list, inflight counter or limit.

    ``found``: the gid was read from Redis (a scan of ``{Q}:g:*``), where another
    SDK may have written one our publisher would refuse; it is used as it is.
    """
    if part not in ("wait", "inflight", "limit"):
        raise ValueError(f"group key part must be wait, inflight or limit, got {part!r}")
    return f"{queue_base(queue)}:g:{gid if found else validate_gid(gid)}:{part}"


def group_pattern(queue: str) -> str:
    """``{Q}:g:*``: a SCAN pattern for every group key of the queue."""
    return queue_base(queue) + ":g:*"


def groups_ready_key(queue: str) -> str:
    """``{Q}:groups:ready``: the gids that may dispatch now."""
    return queue_base(queue) + ":groups:ready"


def child_anchor(key: str) -> str:
    """``{cc:<key>}:meta``: KEYS[1] of childs_init and child_ack."""
    if not isinstance(key, str) or not key.strip():
        raise InvalidNameError("child counter key must be a non-empty str")
    if "{" in key or "}" in key:
        raise InvalidNameError(f"child counter key {key!r} must not contain '{{' or '}}'")
    if len(key) > CHILD_KEY_MAX:
        raise InvalidNameError(f"child counter key is {len(key)} chars long (max {CHILD_KEY_MAX})")
    return "{cc:" + key + "}:meta"


def queue_pattern(queue: str) -> str:
    """``{Q}:*``: a SCAN pattern for every key of the queue (names hold no glob characters)."""
    return queue_base(queue) + ":*"


def lane_key(queue: str, lane: str) -> str:
    """``{Q}:<lane>``: the wait, active, delayed, failed or completed lane itself."""
    if lane not in LANES:
        raise ValueError(f"lane must be one of {LANES}, got {lane!r}")
    return f"{queue_base(queue)}:{lane}"


def job_key(queue: str, job_id: str) -> str:
    """``{Q}:job:<id>``: the job hash."""
    return f"{queue_base(queue)}:job:{job_id}"


def idx_key(queue: str, lane: str) -> str:
    """``{Q}:idx:<lane>``: the lane's mirror, score = entered at."""
    return f"{queue_base(queue)}:idx:{lane}"


def wake_key(queue: str) -> str:
    """``{Q}:wake``: the list idle omniq-tasks workers block on (BLPOP)."""
    return queue_base(queue) + ":wake"


def result_key(queue: str, job_id: str) -> str:
    """``{Q}:result:<id>``: the job's stored return value (ack_success_batch writes it)."""
    return f"{queue_base(queue)}:result:{job_id}"


def watching_key(queue: str) -> str:
    """``{Q}:watching``: ids someone waits on in ``handle.get()``, score = until when (ms)."""
    return queue_base(queue) + ":watching"


def done_key(queue: str, job_id: str) -> str:
    """``{Q}:done:<id>``: the list ``handle.get()`` blocks on; the ack pushes a token."""
    return f"{queue_base(queue)}:done:{job_id}"


def stats_key(queue: str) -> str:
    """``{Q}:stats``: the queue's counters and times."""
    return queue_base(queue) + ":stats"


def paused_key(queue: str) -> str:
    """``{Q}:paused``: exists while the queue is paused."""
    return queue_base(queue) + ":paused"


def queue_from_stats_key(key: str) -> str | None:
    """The queue name in a ``{Q}:stats`` key, or None for any other key."""
    if key.startswith("{") and key.endswith("}:stats"):
        name = key[1:-len("}:stats")]
        if _QUEUE_NAME.fullmatch(name):
            return name
    return None
