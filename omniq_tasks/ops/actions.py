"""What operators do to a queue: pause/resume, retry, remove, purge, publish a raw job.

Every change goes through the protocol's scripts (pause, resume, retry_failed_batch,
remove_jobs_batch, enqueue), so the lanes, idx mirrors, stats and groups stay in step.
The batch scripts take at most MAX_BATCH (100) ids per call: retrying or purging any
number of jobs is a loop of such calls, each reading the next ids from the lane's
idx mirror.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import msgspec

from ..defaults import MAX_BATCH, WAKE_CAP
from ..protocol import keys
from ..protocol.client import OmniqClient, as_text, redis_errors
from ..protocol.models import BatchItem, Published

# CLI lanes a job can be removed from (a running job cannot: its lease must end first).
REMOVABLE = ("wait", "delayed", "failed", "completed")
# The longest delay: its due time (ms) stays below 2**53, an exact integer in the scripts'
# Lua numbers; a larger one was stored as "1e+303", which no SDK reads back as a time.
MAX_DELAY_S = 1e12


class BulkResult(msgspec.Struct, frozen=True):
    """How a retry/remove/purge of many ids went: done, and the ids refused with their reason."""

    done: int
    refused: dict[str, str]
    calls: int


def _chunks(ids: Sequence[str], size: int = MAX_BATCH) -> Iterable[list[str]]:
    for start in range(0, len(ids), size):
        yield list(ids[start:start + size])


def pause(client: OmniqClient, queue: str) -> None:
    client.pause(queue)


def resume(client: OmniqClient, queue: str) -> bool:
    """True when the queue was paused."""
    return client.resume(queue)


def retry(client: OmniqClient, queue: str, job_ids: Sequence[str]) -> BulkResult:
    """Retry failed jobs by id (attempt reset to 0, back to their wait lane), 100 per call."""
    done, calls = 0, 0
    refused: dict[str, str] = {}
    for chunk in _chunks(_unique(job_ids)):
        items = client.retry_failed_batch(queue, chunk)
        calls += 1
        done += _tally(items, refused)
    return BulkResult(done, refused, calls)


def retry_all_failed(client: OmniqClient, queue: str) -> BulkResult:
    """Retry every job of the failed lane, 100 per call, however many there are.

    Ids are read from ``{Q}:idx:failed`` oldest first; an id the script refuses (its
    hash is gone: NO_JOB) stays there and is stepped over. Jobs that fail again while
    this runs come back to the lane and are left for next time (at most as many calls
    as the lane held at the start, plus one).
    """
    return _drain(client, queue, "failed", lambda ids: client.retry_failed_batch(queue, ids))


def remove(client: OmniqClient, queue: str, lane: str, job_ids: Sequence[str]) -> BulkResult:
    """Delete jobs (and their hashes) from a lane, 100 per call; a running job is refused (ACTIVE)."""
    check_removable(lane)
    done, calls = 0, 0
    refused: dict[str, str] = {}
    for chunk in _chunks(_unique(job_ids)):
        for script_lane, ids in _by_script_lane(client, queue, lane, chunk):
            calls += 1
            done += _tally(client.remove_jobs_batch(queue, script_lane, ids), refused)
    return BulkResult(done, refused, calls)


def purge(client: OmniqClient, queue: str, lane: str) -> BulkResult:
    """Delete every job of a lane, 100 per call (remove_jobs_batch), however many there are."""
    check_removable(lane)

    def remove_page(ids: list[str]) -> list[BatchItem]:
        items: list[BatchItem] = []
        for script_lane, part in _by_script_lane(client, queue, lane, ids):
            items += client.remove_jobs_batch(queue, script_lane, part)
        return items

    return _drain(client, queue, lane, remove_page)


def publish(client: OmniqClient, queue: str, payload_json: str | bytes, *, gid: str | None = None,
            group_limit: int = 0, delay_s: float = 0.0, job_id: str | None = None,
            max_attempts: int | None = None, timeout_ms: int | None = None) -> Published:
    """Publish a raw JSON job (an object or array) as any OmniQ producer would; idle
    omniq-tasks workers are woken. ``delay_s`` counts on the Redis server's clock."""
    if not 0 <= delay_s < MAX_DELAY_S:  # NaN and inf too (int(inf) raised OverflowError)
        raise ValueError(f"delay must be >= 0 and < {MAX_DELAY_S:.0e} seconds, not {delay_s!r}")
    due_ms = client.server_now_ms() + int(delay_s * 1000) if delay_s > 0 else 0
    options: dict[str, Any] = {"gid": gid, "group_limit": group_limit, "due_ms": due_ms, "job_id": job_id}
    if max_attempts is not None:
        options["max_attempts"] = max_attempts
    if timeout_ms is not None:
        options["timeout_ms"] = timeout_ms
    return client.publish_json(queue, payload_json, wake_cap=WAKE_CAP, **options)


# -- the shared parts ----------------------------------------------------------------

def check_removable(lane: str) -> None:
    """Raise ValueError unless jobs can be removed from ``lane`` (saying why not for active)."""
    if lane == "active":
        raise ValueError("running jobs cannot be removed (lane active): pause the queue and let them "
                         "finish, or wait for their lease to end")
    if lane not in REMOVABLE:
        raise ValueError(f"lane must be one of {', '.join(REMOVABLE)}, not {lane!r}")


def _unique(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _tally(items: list[BatchItem], refused: dict[str, str]) -> int:
    done = 0
    for item in items:
        if item.ok:
            done += 1
        else:
            refused[item.job_id] = item.reason or "ERR"
    return done


def _by_script_lane(client: OmniqClient, queue: str, lane: str, ids: list[str]) -> list[tuple[str, list[str]]]:
    """The remove script's lane for each id: a waiting job of a group is in "gwait"."""
    if lane != "wait":
        return [(lane, ids)]
    with redis_errors(client.url):
        pipe = client.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(keys.job_key(queue, job_id), "gid")
        gids = pipe.execute()
    plain = [job_id for job_id, gid in zip(ids, gids) if not gid]
    grouped = [job_id for job_id, gid in zip(ids, gids) if gid]
    return [(name, part) for name, part in (("wait", plain), ("gwait", grouped)) if part]


def _drain(client: OmniqClient, queue: str, lane: str, act: Any) -> BulkResult:
    """Act on the lane's ids page by page (oldest first) until the lane holds only refused ids.

    Each page is read from the start of the mirror, ``len(refused) + MAX_BATCH`` ids wide,
    and the refused ids are skipped: a refused id may have left the lane meanwhile (a
    worker leased it: ACTIVE, LANE_MISMATCH), so counting the refused ids to skip them by
    offset would pass over live ones and leave them behind.
    """
    keys.validate_queue(queue)
    idx = keys.idx_key(queue, lane)
    with redis_errors(client.url):
        # every page removes ids or steps over refused ones: twice the pages the lane holds
        # now is enough, and keeps jobs published meanwhile from making it endless
        budget = 2 * (int(client.redis.zcard(idx)) // MAX_BATCH + 1)
    done, calls = 0, 0
    refused: dict[str, str] = {}
    while calls < budget:
        with redis_errors(client.url):
            window = [as_text(m) for m in client.redis.zrange(idx, 0, len(refused) + MAX_BATCH - 1)]
        page = [job_id for job_id in window if job_id not in refused][:MAX_BATCH]
        if not page:
            break
        calls += 1
        done += _tally(act(page), refused)
    return BulkResult(done, refused, calls)
