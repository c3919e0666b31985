"""Shared assertions about a queue's Redis state, read with a decoded redis-py client.

Each per-script test asserts the reply of the call and then the keys it leaves:
:func:`assert_lanes` (exact lane contents), :func:`assert_stats` (named counters),
:func:`assert_idx` (index members and scores) and, after every transition,
:func:`assert_invariants`, the contract's "what tests should assert after any
sequence of operations" in one place.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import redis

LANE_STATES = {"wait", "delayed", "active", "completed", "failed"}
STAT_COUNTERS = ("waiting", "group_waiting", "waiting_total", "active", "delayed", "failed",
                 "completed_kept", "groups_ready")


def base(queue: str) -> str:
    return "{" + queue + "}"


def job(r: redis.Redis, queue: str, job_id: str) -> dict[str, str]:
    """The job hash ({} when it does not exist)."""
    return r.hgetall(f"{base(queue)}:job:{job_id}")


def stats(r: redis.Redis, queue: str) -> dict[str, str]:
    return r.hgetall(f"{base(queue)}:stats")


def group_wait(r: redis.Redis, queue: str, gid: str) -> list[str]:
    return r.lrange(f"{base(queue)}:g:{gid}:wait", 0, -1)


def inflight(r: redis.Redis, queue: str, gid: str) -> int:
    """A group's inflight counter (a missing key counts as 0)."""
    return int(r.get(f"{base(queue)}:g:{gid}:inflight") or 0)


def groups_ready(r: redis.Redis, queue: str) -> list[tuple[str, float]]:
    return r.zrange(f"{base(queue)}:groups:ready", 0, -1, withscores=True)


def group_ids(r: redis.Redis, queue: str) -> set[str]:
    """Every gid that has a wait list, an inflight counter or a limit key."""
    prefix = f"{base(queue)}:g:"
    found = set()
    for key in r.scan_iter(match=f"{prefix}*"):
        gid, _, _part = key[len(prefix):].rpartition(":")
        found.add(gid)
    return found


def job_ids(r: redis.Redis, queue: str) -> set[str]:
    prefix = f"{base(queue)}:job:"
    return {key[len(prefix):] for key in r.scan_iter(match=f"{prefix}*")}


def snapshot(r: redis.Redis) -> dict[str, Any]:
    """Every key of the DB with its type and full value: compare two to prove nothing changed.

    The batch scripts' replay memory (``{Q}:rq:<channel>``, one caller's last answer)
    is left out: it is bookkeeping of the caller, not job state; test_replay.py
    checks it on its own.
    """
    out: dict[str, Any] = {}
    for key in r.scan_iter(match="*"):
        if ":rq:" in key:
            continue
        kind = r.type(key)
        if kind == "string":
            value: Any = r.get(key)
        elif kind == "hash":
            value = r.hgetall(key)
        elif kind == "list":
            value = r.lrange(key, 0, -1)
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = sorted(r.smembers(key))
        else:  # pragma: no cover - the protocol uses no other types
            value = r.dump(key)
        out[key] = (kind, value, r.pttl(key) > 0)
    return out


def assert_lanes(
    r: redis.Redis,
    queue: str,
    *,
    wait: Sequence[str] = (),
    active: Sequence[str] = (),
    delayed: Sequence[str] = (),
    failed: Sequence[str] = (),
    completed: Sequence[str] = (),
    groups: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """The lanes hold exactly these ids: lists in order, zsets as sets.

    ``groups`` maps gid to its wait list; every group wait list not named must be empty.
    """
    b = base(queue)
    assert r.lrange(f"{b}:wait", 0, -1) == list(wait)
    assert set(r.zrange(f"{b}:active", 0, -1)) == set(active)
    assert set(r.zrange(f"{b}:delayed", 0, -1)) == set(delayed)
    assert r.lrange(f"{b}:failed", 0, -1) == list(failed)
    assert r.lrange(f"{b}:completed", 0, -1) == list(completed)
    groups = dict(groups or {})
    for gid in group_ids(r, queue) | set(groups):
        assert group_wait(r, queue, gid) == list(groups.get(gid, ())), f"group {gid}"


def assert_stats(r: redis.Redis, queue: str, **expected: int | str) -> None:
    """Each named stats field has this value (a missing field reads as 0)."""
    got = stats(r, queue)
    for field, value in expected.items():
        assert got.get(field, "0") == str(value), f"stats {field}: {got.get(field)!r} != {value!r}"


def assert_idx(r: redis.Redis, queue: str, lane: str, expected: Mapping[str, int]) -> None:
    """``{Q}:idx:<lane>`` holds exactly these ids with these scores (entered-at ms)."""
    got = dict(r.zrange(f"{base(queue)}:idx:{lane}", 0, -1, withscores=True))
    assert got == {k: float(v) for k, v in expected.items()}, f"idx:{lane}"


def assert_invariants(r: redis.Redis, queue: str) -> None:
    """The contract's invariants for one queue.

    Every job id is in exactly one lane matching its state; stats counters equal the
    sizes of their lanes; idx:* equal their lanes' members; each group's inflight
    equals its active jobs and never exceeds its limit; a ready group has waiting
    jobs; a lease token and lock exist exactly while the job is active.
    """
    b = base(queue)
    wait = r.lrange(f"{b}:wait", 0, -1)
    active = dict(r.zrange(f"{b}:active", 0, -1, withscores=True))
    delayed = dict(r.zrange(f"{b}:delayed", 0, -1, withscores=True))
    failed = r.lrange(f"{b}:failed", 0, -1)
    completed = r.lrange(f"{b}:completed", 0, -1)
    gids = group_ids(r, queue)
    gwait = {gid: group_wait(r, queue, gid) for gid in gids}

    places: dict[str, list[str]] = {}
    for lane, members in (("wait", wait), ("active", active), ("delayed", delayed),
                          ("failed", failed), ("completed", completed)):
        for job_id in members:
            places.setdefault(job_id, []).append(lane)
    for gid, members in gwait.items():
        for job_id in members:
            places.setdefault(job_id, []).append(f"gwait:{gid}")

    jobs = job_ids(r, queue)
    assert set(places) == jobs, f"ids in lanes {sorted(places)} != job hashes {sorted(jobs)}"
    active_per_group: dict[str, int] = {}
    for job_id in jobs:
        h = job(r, queue, job_id)
        state, gid = h.get("state"), h.get("gid", "")
        assert state in LANE_STATES, (job_id, state)
        lane = f"gwait:{gid}" if state == "wait" and gid else state
        assert places[job_id] == [lane], f"{job_id} (state {state}) is in {places[job_id]}"
        if state == "active":
            assert h["lease_token"] != "" and int(h["lock_until_ms"]) == active[job_id]
            if gid:
                active_per_group[gid] = active_per_group.get(gid, 0) + 1
        else:
            assert h.get("lease_token", "") == "" and h.get("lock_until_ms", "") == "", job_id
        if state == "delayed":
            assert int(h["due_ms"]) == delayed[job_id]

    group_waiting = sum(len(m) for m in gwait.values())
    ready = dict(groups_ready(r, queue))
    assert_stats(
        r, queue, waiting=len(wait), group_waiting=group_waiting,
        waiting_total=len(wait) + group_waiting, active=len(active), delayed=len(delayed),
        failed=len(failed), completed_kept=len(completed), groups_ready=len(ready),
    )

    def idx(lane: str) -> set[str]:
        return set(r.zrange(f"{b}:idx:{lane}", 0, -1))

    assert idx("wait") == set(wait) | {j for m in gwait.values() for j in m}
    assert idx("active") == set(active)
    assert idx("delayed") == set(delayed)
    assert idx("failed") == set(failed)
    assert idx("completed") == set(completed)

    for gid in gids | set(ready):
        limit = int(r.get(f"{b}:g:{gid}:limit") or 0)
        limit = limit if limit > 0 else 1
        assert inflight(r, queue, gid) == active_per_group.get(gid, 0), f"inflight of {gid}"
        assert inflight(r, queue, gid) <= limit, f"group {gid} over its limit"
    for gid in ready:
        assert gwait.get(gid), f"group {gid} is ready without waiting jobs"
