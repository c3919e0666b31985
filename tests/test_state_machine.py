"""Model-based test of the OmniQ v1 scripts: random operation sequences against a real Redis.

A hypothesis ``RuleBasedStateMachine`` drives every operation of :class:`OmniqClient`
(publish ungrouped / grouped / delayed / re-published, enqueue_many, reserve,
reserve_batch, heartbeat, ack_success, ack_success_batch, ack_fail (also final),
promote, reap, pause, resume, retry and remove single and batched, fan-in counters)
over two queues with a controlled clock (every call gets ``now_ms=self.now``).
Each example starts from a random seed of published and running jobs.

Two layers of checks run after every step:

* the protocol invariants, read from Redis alone (``_check_protocol``): every job id
  in exactly one lane matching its hash ``state``; no duplicates; stats counters equal
  lane sizes; idx:* mirrors equal their lanes; group inflight equals the group's
  active jobs and never exceeds the limit; a group in groups:ready has waiting jobs and
  a group with waiting jobs and room is in groups:ready; completed keeps at most 100
  ids; active/delayed scores equal the hash's lock_until_ms/due_ms; lease_token
  non-empty exactly while active; no job hash outside a lane, no unknown key;
* agreement with an exact in-memory model of the queues (``_check_model``): the same
  lists in the same order, the same job hashes, ready scores, limits, lane:rr,
  the paused flag, and no published job ever lost (a gone id was removed, or was
  trimmed from completed by the 100-id retention).

Every script reply is also predicted by the model and compared (the exact error
word, the leased job, its lock, the RETRY due time, child counters...).

Run: ``pytest -q tests/test_state_machine.py`` (add ``-s`` to see the examples count
and what the run exercised); ``OMNIQ_SM_EXAMPLES=3000`` for a deeper search.
A failure prints the shortest step sequence hypothesis found (shrinking can take a
few minutes). The ``test_regression_*`` functions replay, step by step, sequences
the machine found.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import pytest
import redis
from hypothesis import HealthCheck, event as hypothesis_event, settings, strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import (
    RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test,
)

from omniq_tasks import OmniqClient
from omniq_tasks.protocol.client import job_spec
from omniq_tasks.errors import (
    BatchTooLargeError, LeaseLostError, NotActiveError, ProtocolError, TokenMismatchError,
    TokenRequiredError,
)
from omniq_tasks.protocol.models import QueueEmpty, QueuePaused, ReservedJob
from helpers_state import snapshot
from redis_server import RedisServer

QUEUES = ("qa", "qb")
GIDS = ("g1", "g2", "g3")
CHILD_KEYS = ("k1", "k2")
CHILD_IDS = ("c1", "c2", "c3", "c4")
ID_POOL = tuple(f"j{i}" for i in range(10))
START_MS = 1_700_000_000_000
KEEP_COMPLETED = 100
MAX_GROUP_POPS = 10
MAX_ERROR_BYTES = 4096
REMOVE_LANES = ("wait", "gwait", "delayed", "failed", "completed")
BAD_LANES = ("active", "bogus")
LANE_STATE = {"wait": "wait", "gwait": "wait", "delayed": "delayed",
              "failed": "failed", "completed": "completed"}
STAT_FIELDS = ("waiting", "group_waiting", "waiting_total", "active", "delayed", "failed",
               "completed_kept", "groups_ready")
TIME_FIELDS = ("last_activity_ms", "last_enqueue_ms", "last_reserve_ms", "last_finish_ms")
QUEUE_KEY_SUFFIXES = re.compile(
    r"(wait|active|delayed|failed|completed|paused|groups:ready|has_groups|lane:rr|lease:seq|"
    r"stats|wake|idx:(wait|active|delayed|failed|completed)|job:.+|g:.+:(wait|inflight|limit)|"
    r"rq:.+)"  # rq: replay memory of the batch scripts (the resend rule checks it)
)

# The batch scripts that answer a resent call (same replay tag) with their first answer.
REPLAYABLE = ("reserve_batch", "ack_success_batch", "enqueue_batch")

EXAMPLES_RUN = 0
STEPS_RUN = 0
EVENTS: Counter[str] = Counter()  # what the run exercised (printed at the end)


def event(name: str) -> None:
    EVENTS[name] += 1
    try:
        hypothesis_event(name)
    except InvalidArgument:  # the machine driven by hand (regression replays)
        pass


QUEUE = st.sampled_from(("qa", "qa", "qa", "qb"))
# None = a fresh id ("n<k>"); pool ids collide on purpose (re-publish of live/gone ids)
JOB_ID = st.one_of(st.none(), st.none(), st.sampled_from(ID_POOL))
GID = st.sampled_from(("g1", "g1", "g1", "g2", "g3"))
# "busy" names a group that runs a job and has jobs waiting (g1 when there is none)
GID_OR_BUSY = st.sampled_from(("g1", "g1", "g2", "g3", "busy", "busy"))
# group_limit of a publish: a raw draw 0..14 read per group: g2 and g3 mostly get
# their limit with their first job, g1 mostly runs with the default limit 1 for a
# while before a publish sets one
LIMIT_RAW = st.integers(0, 14)
LIMIT_OF = {"g1": (0,) * 12 + (1, 2, 3), "g2": (0, 0, 1, 2, 3) * 3, "g3": (0, 0, 1, 2, 3) * 3}
MAX_ATTEMPTS = st.sampled_from((1, 1, 2, 3))
TIMEOUT = st.sampled_from((500, 5_000, 60_000))
BACKOFF = st.sampled_from((0, 200, 5_000))

# OMNIQ_SM_EXAMPLES=3000 for a deeper (slower) run; never fewer than MIN_EXAMPLES.
MIN_EXAMPLES = 200
SETTINGS = settings(
    max_examples=max(MIN_EXAMPLES, int(os.environ.get("OMNIQ_SM_EXAMPLES", 300))),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# The Redis the machine talks to; set by the test from the session fixture.
_SERVER: dict[str, Any] = {}


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------

@dataclass
class Job:
    id: str
    payload: str
    gid: str
    max_attempts: int
    timeout_ms: int
    backoff_ms: int
    state: str = ""
    attempt: int = 0
    due: Optional[int] = None
    lock: Optional[int] = None
    token: str = ""
    entered: int = 0          # score of the job in its lane's idx:* mirror
    first_started: Optional[int] = None


@dataclass
class QueueModel:
    name: str
    jobs: dict[str, Job] = field(default_factory=dict)       # ids whose hash exists
    wait: list[str] = field(default_factory=list)
    gwait: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    failed: list[str] = field(default_factory=list)          # newest first
    completed: list[str] = field(default_factory=list)       # newest first
    ready: dict[str, int] = field(default_factory=dict)      # groups:ready gid -> score
    limits: dict[str, int] = field(default_factory=dict)     # as first set (> 0)
    grouped_first: bool = True                               # lane:rr "0" / missing
    paused: bool = False
    has_groups: bool = False
    published: set[str] = field(default_factory=set)         # every id ever published
    gone: dict[str, str] = field(default_factory=dict)       # id -> "removed" | "trimmed"
    tokens: set[tuple[str, str]] = field(default_factory=set)  # every (id, token) leased
    acked: set[tuple[str, str]] = field(default_factory=set)   # (id, token) used for an ack
    burst_seq: int = 0
    wake: int = 0                                             # LLEN {Q}:wake (extension)

    def in_state(self, state: str) -> list[Job]:
        return [j for j in self.jobs.values() if j.state == state]

    def inflight(self, gid: str) -> int:
        return sum(1 for j in self.jobs.values() if j.state == "active" and j.gid == gid)

    def limit(self, gid: str) -> int:
        return self.limits.get(gid, 1)

    def delayed_order(self) -> list[Job]:
        return sorted(self.in_state("delayed"), key=lambda j: (j.due, j.id))

    def active_order(self) -> list[Job]:
        return sorted(self.in_state("active"), key=lambda j: (j.lock, j.id))


@dataclass
class ChildModel:
    remaining: Optional[int] = None   # None: no counter running
    done: set[str] = field(default_factory=set)
    closed: bool = False              # reached 0 since its last init (the counter is gone)
    zero_hits: int = 0                # how often an ack brought this init to 0


class OmniqMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        server: RedisServer = _SERVER["server"]
        self.r = redis.Redis(port=server.port, decode_responses=True)
        self.r.flushall()
        self.c = OmniqClient(server.url)
        self.sent: dict[str, tuple[str, Sequence[Any], Any]] = {}  # last batch call per script
        self._record_batch_calls()
        self.now = START_MS
        self.q = {name: QueueModel(name) for name in QUEUES}
        self.children_model = {key: ChildModel() for key in CHILD_KEYS}
        self.fresh = 0              # counter for fresh job ids
        self.step = 0               # invariant checks so far in this example
        self.last_heavy = -100      # step of the last burst or drain (they are rare)

    def _record_batch_calls(self) -> None:
        """Keep the last call (and answer) of each script that remembers its answers."""
        call = self.c.scripts.call

        def recording(name: str, anchor: str, args: Sequence[Any]) -> Any:
            reply = call(name, anchor, args)
            # A reserve that leased nothing is not remembered: sent again it looks
            # again, and what it leases then reaches the caller (test_replay.py).
            if name in REPLAYABLE and (name != "reserve_batch" or reply[0] == b"JOBS"):
                self.sent[name] = (anchor, args, reply)
            return reply

        self.c.scripts.call = recording  # type: ignore[method-assign]

    def teardown(self) -> None:
        global EXAMPLES_RUN
        EXAMPLES_RUN += 1
        self.c.close()
        self.r.close()

    # ----------------------------------------------------------------------------------
    # model transitions (mirroring the protocol text)
    # ----------------------------------------------------------------------------------

    def _ready_if_room(self, m: QueueModel, gid: str) -> None:
        if m.inflight(gid) < m.limit(gid) and m.gwait[gid] and gid not in m.ready:
            m.ready[gid] = self.now

    def _enter_wait(self, m: QueueModel, job: Job) -> None:
        job.state, job.entered = "wait", self.now
        if job.gid:
            m.gwait[job.gid].append(job.id)
            self._ready_if_room(m, job.gid)
        else:
            m.wait.append(job.id)

    def _enter_delayed(self, m: QueueModel, job: Job, due: int) -> None:
        job.state, job.entered, job.due = "delayed", self.now, due

    def _enter_failed(self, m: QueueModel, job: Job) -> None:
        job.state, job.entered = "failed", self.now
        m.failed.insert(0, job.id)

    def _enter_completed(self, m: QueueModel, job: Job) -> None:
        job.state, job.entered = "completed", self.now
        m.completed.insert(0, job.id)
        while len(m.completed) > KEEP_COMPLETED:
            old = m.completed.pop()
            event("completed: trimmed beyond 100")
            del m.jobs[old]
            m.gone[old] = "trimmed"

    def _left_active(self, m: QueueModel, job: Job) -> None:
        job.state, job.token, job.lock = "leaving", "", None
        if job.gid:
            self._ready_if_room(m, job.gid)

    def _retry_or_fail(self, m: QueueModel, job: Job) -> Optional[int]:
        if job.attempt >= job.max_attempts:
            self._enter_failed(m, job)
            return None
        due = self.now + job.backoff_ms
        self._enter_delayed(m, job, due)
        return due

    def _take(self, m: QueueModel) -> Optional[Job]:
        """Model of reserve's pick; marks the picked job active (lease fields set later)."""

        def take_ungrouped() -> Optional[Job]:
            if not m.wait:
                return None
            job = m.jobs[m.wait.pop(0)]
            job.state = "active"
            return job

        def take_grouped() -> Optional[Job]:
            # at most MAX_GROUP_POPS pops; a group found at its limit is put back with
            # score now + 1 (after the pops, so that the next group gets its turn)
            full, job = [], None
            for _ in range(MAX_GROUP_POPS):
                if not m.ready:
                    break
                gid = min(m.ready, key=lambda g: (m.ready[g], g))
                del m.ready[gid]
                if m.inflight(gid) >= m.limit(gid):
                    full.append(gid)
                elif m.gwait[gid]:
                    job = m.jobs[m.gwait[gid].pop(0)]
                    job.state = "active"
                    self._ready_if_room(m, gid)
                    break
            for gid in full:
                m.ready.setdefault(gid, self.now + 1)
            return job

        if m.grouped_first:
            job = take_grouped() or take_ungrouped()
        else:
            job = take_ungrouped() or take_grouped()
        if job is not None:
            m.grouped_first = not m.grouped_first
        return job

    def _lease_error(self, m: QueueModel, job_id: str, token: str) -> Optional[str]:
        if not token:
            return "TOKEN_REQUIRED"
        job = m.jobs.get(job_id)
        if job is None or job.token != token:
            return "TOKEN_MISMATCH"
        if job.state != "active":
            return "NOT_ACTIVE"
        return None

    def _remove_error(self, m: QueueModel, job_id: str, lane: str) -> Optional[str]:
        job = m.jobs.get(job_id)
        if job is None:
            return "NO_JOB"
        if job.state == "active":
            return "ACTIVE"
        if job.state != LANE_STATE.get(lane):
            return "LANE_MISMATCH"
        if lane == "gwait" and not job.gid:
            return "LANE_MISMATCH"
        if lane == "wait" and job.gid:
            return "NOT_IN_LANE"  # LREM on {Q}:wait finds nothing
        return None

    def _model_remove(self, m: QueueModel, job_id: str, lane: str) -> Optional[str]:
        reason = self._remove_error(m, job_id, lane)
        if reason:
            return reason
        job = m.jobs.pop(job_id)
        m.gone[job_id] = "removed"
        if lane == "wait":
            m.wait.remove(job_id)
        elif lane == "gwait":
            gid = job.gid
            m.gwait[gid].remove(job_id)
            # as the reference: the group stays ready exactly when it still has waiting
            # jobs and room (one made ready here gets the reference's score 0)
            if m.gwait[gid] and m.inflight(gid) < m.limit(gid):
                m.ready.setdefault(gid, 0)
            else:
                m.ready.pop(gid, None)
        elif lane == "failed":
            m.failed.remove(job_id)
        elif lane == "completed":
            m.completed.remove(job_id)
        return None

    def _model_retry(self, m: QueueModel, job_id: str) -> Optional[str]:
        job = m.jobs.get(job_id)
        if job is None:
            return "NO_JOB"
        if job.state != "failed":
            return "NOT_FAILED"
        m.failed = [i for i in m.failed if i != job_id]
        job.attempt, job.token, job.lock, job.due = 0, "", None, None
        self._enter_wait(m, job)
        return None

    # ----------------------------------------------------------------------------------
    # operations: call Redis, predict with the model, compare
    # ----------------------------------------------------------------------------------

    def _reserve(self, m: QueueModel) -> Optional[ReservedJob]:
        ready_before = self.r.zrange(f"{{{m.name}}}:groups:ready", 0, -1)
        res = self.c.reserve(m.name, now_ms=self.now)
        if m.paused:
            assert isinstance(res, QueuePaused), res
            event("reserve: PAUSED")
            return None
        job = self._take(m)
        if job is None:
            runnable = m.wait or any(m.gwait[g] and m.inflight(g) < m.limit(g) for g in GIDS)
            assert not runnable, "model bug: runnable work but no pick"
            assert isinstance(res, QueueEmpty), f"expected EMPTY, got {res}"
            event("reserve: EMPTY")
            return None
        assert isinstance(res, ReservedJob), f"expected job {job.id}, got {res}"
        assert res.job_id == job.id, f"reserve leased {res.job_id}, model expected {job.id}"
        if job.gid:
            # groups are served oldest-ready first (no group in ready is ever at its limit)
            assert ready_before and ready_before[0] == job.gid, (ready_before, job.gid)
        self._leased(m, job, res)
        return res

    def _reserve_batch(self, m: QueueModel, max_jobs: int) -> list[ReservedJob]:
        """reserve_batch (extension): exactly what max_jobs reserves in a row would lease."""
        res = self.c.reserve_batch(m.name, max_jobs, now_ms=self.now)
        if m.paused:
            assert isinstance(res, QueuePaused), res
            event("reserve_batch: PAUSED")
            return []
        assert isinstance(res, list), res
        expected = []
        for _ in range(max_jobs):
            job = self._take(m)
            if job is None:
                break
            expected.append(job)
        assert [r.job_id for r in res] == [j.id for j in expected], (
            [r.job_id for r in res], [j.id for j in expected])
        for job, r in zip(expected, res):
            self._leased(m, job, r)
            assert r.timeout_ms == job.timeout_ms, (r, job)
        event(f"reserve_batch: {min(len(res), 2)}{'+' if len(res) >= 2 else ''} leased")
        return res

    def _leased(self, m: QueueModel, job: Job, res: ReservedJob) -> None:
        job.attempt += 1
        job.lock = self.now + job.timeout_ms
        job.token = res.lease_token
        job.entered = self.now
        if job.first_started is None:
            job.first_started = self.now
        assert res.payload == job.payload
        assert res.gid == job.gid
        assert res.attempt == job.attempt
        assert res.max_attempts == job.max_attempts
        assert res.lock_until_ms == job.lock
        assert res.lease_token, "empty lease token"
        assert all(t != res.lease_token for _, t in m.tokens), "lease token reused"
        m.tokens.add((job.id, res.lease_token))
        event("reserve: grouped job" if job.gid else "reserve: ungrouped job")
        if job.gid and m.inflight(job.gid) > 1:
            event("reserve: group running > 1 job")

    def _ack_success(self, m: QueueModel, job_id: str, token: str) -> None:
        expect = self._lease_error(m, job_id, token)
        if expect:
            with pytest.raises(ProtocolError) as info:
                self.c.ack_success(m.name, job_id, token, now_ms=self.now)
            assert info.value.reason == expect, (info.value.reason, expect)
            return
        self.c.ack_success(m.name, job_id, token, now_ms=self.now)
        event("ack_success: OK")
        job = m.jobs[job_id]
        m.acked.add((job_id, token))
        self._left_active(m, job)
        self._enter_completed(m, job)

    def _ack_success_batch(self, m: QueueModel, leases: list[tuple[str, str]]) -> None:
        """ack_success_batch (extension): each lease exactly as ack_success, in order."""
        items = self.c.ack_success_batch(m.name, leases, now_ms=self.now)
        assert [i.job_id for i in items] == [job_id for job_id, _ in leases], (items, leases)
        for (job_id, token), item in zip(leases, items):
            expect = "BAD_JOB_ID" if job_id == "" else self._lease_error(m, job_id, token)
            if expect is None:
                job = m.jobs[job_id]
                m.acked.add((job_id, token))
                self._left_active(m, job)
                self._enter_completed(m, job)
            event(f"ack_success_batch: {expect or 'OK'}")
            assert item.ok is (expect is None) and item.reason == expect, (
                f"lease {job_id}/{token[:8]}: got {item}, expected {expect or 'OK'}; "
                f"all leases {leases}, items {items}")

    def _ack_fail(self, m: QueueModel, job_id: str, token: str, error: Optional[str],
                  final: bool = False) -> None:
        expect = self._lease_error(m, job_id, token)
        if expect:
            with pytest.raises(ProtocolError) as info:
                self.c.ack_fail(m.name, job_id, token, error=error, final=final, now_ms=self.now)
            assert info.value.reason == expect, (info.value.reason, expect)
            return
        res = self.c.ack_fail(m.name, job_id, token, error=error, final=final, now_ms=self.now)
        job = m.jobs[job_id]
        m.acked.add((job_id, token))
        self._left_active(m, job)
        if final:
            self._enter_failed(m, job)
            due = None
        else:
            due = self._retry_or_fail(m, job)
        event(f"ack_fail{' final' if final else ''}: {res.status}")
        if due is None:
            assert res.status == "FAILED" and res.due_ms is None, res
        else:
            assert res.status == "RETRY" and res.due_ms == due, (res, due)
        if error:
            stored = self.r.hmget(f"{{{m.name}}}:job:{job_id}", "last_error", "last_error_ms")
            kept = error.encode()[:MAX_ERROR_BYTES].decode("utf-8", "replace")
            assert stored == [kept, str(self.now)], (stored[0][-10:], kept[-10:], stored[1])

    def _drain_lane(self, m: QueueModel) -> int:
        """Reserve and ack_success until EMPTY; returns how many ran."""
        ran = 0
        while True:
            res = self._reserve(m)
            if res is None:
                return ran
            self._ack_success(m, res.job_id, res.lease_token)
            ran += 1

    # ----------------------------------------------------------------------------------
    # rules (few rules, each with weighted variants: hypothesis enables a random subset
    # of rules per example, so every rule must bring variety on its own)
    # ----------------------------------------------------------------------------------

    @rule(delta=st.one_of(st.integers(1, 50), st.integers(400, 6_000),
                          st.integers(20_000, 200_000), st.integers(1_000_000, 50_000_000)))
    def advance_clock(self, delta: int) -> None:
        self.now += delta

    def _new_id(self, job_id: Optional[str]) -> str:
        if job_id is None:
            self.fresh += 1
            return f"n{self.fresh}"
        return job_id

    def _model_enqueue(self, m: QueueModel, job_id: str, payload: str, gid: str,
                       group_limit: int, due_ms: int, max_attempts: int, timeout_ms: int,
                       backoff_ms: int) -> str:
        """What enqueue does; returns EXISTS, OK (delayed) or READY (in its wait lane)."""
        if job_id in m.jobs:
            event("publish: existing id (EXISTS)")
            return "EXISTS"
        event("publish: new " + ("delayed " if due_ms > self.now else "")
              + ("grouped" if gid else "ungrouped"))
        job = Job(job_id, payload, gid, max_attempts, timeout_ms, backoff_ms)
        m.jobs[job_id] = job
        m.published.add(job_id)
        m.gone.pop(job_id, None)
        if gid:
            m.has_groups = True
            if group_limit > 0 and gid not in m.limits:
                m.limits[gid] = group_limit
                if m.gwait[gid] and 0 < m.inflight(gid) < group_limit:
                    event("publish: gives room to a busy group"
                          + (" (delayed job)" if due_ms > self.now else ""))
            # a new limit can give the group's waiting jobs room, also when this job
            # itself is delayed: the group must then be ready
            self._ready_if_room(m, gid)
        if due_ms > self.now:
            self._enter_delayed(m, job, due_ms)
            return "OK"
        self._enter_wait(m, job)
        return "READY"

    def _publish(self, queue: str, job_id: Optional[str], *, gid: Optional[str] = None,
                 group_limit: int = 0, due_ms: int = 0, max_attempts: int = 3,
                 timeout_ms: int = 30_000, backoff_ms: int = 5_000, n: int = 0,
                 wake_cap: int = 0) -> None:
        """publish (or publish_json with a wake_cap: extension ARGV[10])."""
        m = self.q[queue]
        job_id = self._new_id(job_id)
        payload = {"n": n, "id": job_id, "text": "é" * (n % 3)}
        options: dict[str, Any] = dict(
            job_id=job_id, max_attempts=max_attempts, timeout_ms=timeout_ms,
            backoff_ms=backoff_ms, due_ms=due_ms, gid=gid, group_limit=group_limit,
            now_ms=self.now)
        if wake_cap:
            res = self.c.publish_json(queue, self.c.encode_payload(payload), wake_cap=wake_cap,
                                      **options)
        else:
            res = self.c.publish(queue, payload, **options)
        assert res.job_id == job_id
        outcome = self._model_enqueue(m, job_id, self.c.encode_payload(payload).decode(),
                                      gid or "", group_limit, due_ms, max_attempts, timeout_ms,
                                      backoff_ms)
        assert res.existed is (outcome == "EXISTS"), (
            f"{job_id}: enqueue answered existed={res.existed}, model says {outcome}")
        if outcome == "READY":
            self._wake(m, 1, wake_cap)

    @staticmethod
    def _wake(m: QueueModel, ready: int, wake_cap: int) -> None:
        """One wake-up token per ready job, keeping at most wake_cap in {Q}:wake."""
        if ready > 0 and wake_cap > 0:
            pushed = max(0, min(wake_cap - m.wake, ready))
            m.wake += pushed
            event(f"wake tokens: {'pushed' if pushed else 'list full'}")

    def _enqueue_many(self, queue: str, specs: list[tuple[Any, ...]], wake_cap: int) -> None:
        """enqueue_many (enqueue_batch extension): each job exactly as enqueue, in order,
        and one wake-up token per READY job while {Q}:wake is shorter than wake_cap."""
        m = self.q[queue]
        jobs = []
        for job_id, gid, group_limit, due_ms, n in specs:
            payload = self.c.encode_payload({"n": n, "id": job_id})
            jobs.append(job_spec(payload, job_id=job_id, gid=gid or None, group_limit=group_limit,
                                 due_ms=due_ms, max_attempts=2, timeout_ms=5_000,
                                 backoff_ms=200))
        res = self.c.enqueue_many(queue, jobs, wake_cap=wake_cap, now_ms=self.now)
        assert [r.job_id for r in res] == [j.job_id for j in jobs]
        ready = 0
        for job, r in zip(jobs, res):
            outcome = self._model_enqueue(m, job.job_id, job.payload.decode(), job.gid,
                                          job.group_limit, job.due_ms, 2, 5_000, 200)
            assert r.existed is (outcome == "EXISTS"), (r, outcome)
            ready += outcome == "READY"
        self._wake(m, ready, wake_cap)

    @initialize(actions=st.lists(st.one_of(
        st.tuples(st.sampled_from(("ungrouped", "grouped", "grouped", "grouped", "delayed",
                                   "delayed grouped")),
                  QUEUE, JOB_ID, GID_OR_BUSY, LIMIT_RAW, st.integers(1, 120_000), MAX_ATTEMPTS,
                  TIMEOUT, BACKOFF),
        st.tuples(st.just("reserve"), QUEUE)), max_size=16))
    def seed(self, actions: list[tuple[Any, ...]]) -> None:
        """Start every example with some published and some running jobs, so that every
        rule finds work: publishes (often into a group that is running and has waiting
        jobs) and reserves that keep their lease. Checked after each action."""
        for action in actions:
            if action[0] == "reserve":
                self._reserve(self.q[action[1]])
            else:
                kind, queue, job_id, gid, raw, future, attempts, timeout_ms, backoff_ms = action
                gid = self._gid(queue, gid)
                self._publish(queue, job_id, gid=gid if "grouped" in kind.split() else None,
                              group_limit=LIMIT_OF[gid][raw],
                              due_ms=self.now + future if kind.startswith("delayed") else 0,
                              max_attempts=attempts, timeout_ms=timeout_ms,
                              backoff_ms=backoff_ms)
            self._check_all()

    def _gid(self, queue: str, gid: str) -> str:
        """Resolve "busy": a group running a job with jobs waiting (g1 if none)."""
        if gid != "busy":
            return gid
        m = self.q[queue]
        busy = [g for g in GIDS if m.inflight(g) and m.gwait[g]]
        return busy[0] if busy else "g1"

    @rule(kind=st.sampled_from(("ungrouped", "grouped", "grouped", "delayed", "delayed grouped",
                                "delayed grouped", "republish", "many")),
          queue=QUEUE, data=st.data(), gid=GID_OR_BUSY, limit=LIMIT_RAW,
          past=st.one_of(st.none(), st.integers(0, 5_000)), future=st.integers(1, 120_000),
          max_attempts=MAX_ATTEMPTS, timeout_ms=TIMEOUT, backoff_ms=BACKOFF,
          n=st.integers(0, 99), wake_cap=st.sampled_from((0, 0, 0, 1, 3)))
    def publish(self, kind: str, queue: str, data: st.DataObject, gid: str, limit: int,
                past: Optional[int], future: int, max_attempts: int, timeout_ms: int,
                backoff_ms: int, n: int, wake_cap: int) -> None:
        """Publish ungrouped / grouped (due now or in the past) / delayed, re-publish an
        existing id (idempotent: nothing changes, not even a group limit), or publish
        several jobs with enqueue_many."""
        if kind == "many":
            specs = data.draw(st.lists(st.tuples(
                JOB_ID.map(self._new_id), st.one_of(st.just(""), GID), st.integers(0, 3),
                st.one_of(st.just(0), st.just(self.now), st.integers(1, 60_000).map(
                    lambda d: self.now + d)), st.integers(0, 9)), min_size=1, max_size=5),
                label="jobs")
            wake_cap = data.draw(st.sampled_from((0, 1, 3, 64)), label="wake_cap")
            self._enqueue_many(queue, specs, wake_cap)
            return
        if kind == "republish":
            pairs = sorted((q, i) for q, m in self.q.items() for i in m.jobs)
            if pairs:
                queue, job_id = data.draw(st.sampled_from(pairs), label="existing job")
            else:
                job_id = data.draw(JOB_ID, label="job_id")
        else:
            job_id = data.draw(JOB_ID, label="job_id")
        # (a republish names a group and a limit too: it must change nothing)
        grouped = kind in ("grouped", "delayed grouped", "republish")
        due_ms = self.now + future if kind.startswith("delayed") else (
            0 if past is None else self.now - past)   # due now or in the past: runnable
        gid = self._gid(queue, gid)
        self._publish(queue, job_id, gid=gid if grouped else None,
                      group_limit=LIMIT_OF[gid][limit] if grouped else 0,
                      due_ms=due_ms, max_attempts=max_attempts, timeout_ms=timeout_ms,
                      backoff_ms=backoff_ms, n=n, wake_cap=wake_cap)

    def _busy_groups(self) -> list[tuple[str, str]]:
        return [(q, g) for q, m in self.q.items() for g in GIDS if m.inflight(g) and m.gwait[g]]

    @precondition(lambda self: bool(self._busy_groups()))
    @rule(data=st.data(), delayed=st.booleans(), limit=st.integers(0, 3),
          job_id=JOB_ID, future=st.integers(1, 120_000))
    def publish_into_busy_group(self, data: st.DataObject, delayed: bool, limit: int,
                                job_id: Optional[str], future: int) -> None:
        """Publish (now or delayed, with or without a group_limit) into a group that is
        running a job and has jobs waiting (preferably one without a limit yet): a limit
        set now can give the waiting jobs room, and the group must then be ready
        whatever lane the new job goes to."""
        busy = self._busy_groups()
        # mostly one without a limit yet: the first limit is set by this publish
        unlimited = [(q, g) for q, g in busy if g not in self.q[q].limits]
        queue, gid = data.draw(st.sampled_from(unlimited or busy), label="busy group")
        self._publish(queue, job_id, gid=gid, group_limit=limit,
                      due_ms=self.now + future if delayed else 0)

    @rule(queue=QUEUE, times=st.sampled_from((1, 1, 2, 4)), batch=st.booleans(),
          then=st.lists(st.sampled_from(("keep", "keep", "heartbeat", "ack_success", "ack_fail",
                                         "ack_batch")), min_size=4, max_size=4),
          later=st.integers(0, 1_000))
    def reserve(self, queue: str, times: int, batch: bool, then: list[str], later: int) -> None:
        """Reserve 1..4 jobs (one call each, or one reserve_batch), like workers; each
        leased job is then kept running, or (a little later) heartbeated, acked (alone
        or together with ack_success_batch) or failed with its token."""
        m = self.q[queue]
        if batch:
            leased = self._reserve_batch(m, times)
        else:
            leased = [res for res in (self._reserve(m) for _ in range(times)) if res is not None]
        if leased and later:
            self.now += later
        together = []
        for res, what in zip(leased, then):
            if what == "heartbeat":
                self._heartbeat(m, res.job_id, res.lease_token)
            elif what == "ack_success":
                self._ack_success(m, res.job_id, res.lease_token)
            elif what == "ack_fail":
                self._ack_fail(m, res.job_id, res.lease_token, "boom")
            elif what == "ack_batch":
                together.append((res.job_id, res.lease_token))
        if together:
            self._ack_success_batch(m, together)

    def _active_pairs(self) -> list[tuple[str, str]]:
        return sorted((q, j.id) for q, m in self.q.items() for j in m.in_state("active"))

    def _heartbeat(self, m: QueueModel, job_id: str, token: str) -> None:
        job = m.jobs[job_id]
        lock = self.c.heartbeat(m.name, job_id, token, now_ms=self.now)
        expected = max(job.lock, self.now) + job.timeout_ms
        assert lock == expected, (lock, expected)
        job.lock = expected
        event("heartbeat: OK")

    @precondition(lambda self: bool(self._active_pairs()))
    @rule(data=st.data(), op=st.sampled_from(("ack_success", "ack_fail", "heartbeat",
                                               "ack_fail final", "ack_success_batch")),
          error=st.one_of(st.none(), st.just(""), st.text(max_size=20), st.just("LONG")))
    def finish_running(self, data: st.DataObject, op: str, error: Optional[str]) -> None:
        """A running job (possibly with an expired but not yet reaped lease) reports back
        with its current token: the call must succeed. ack_success_batch gets a mix of
        current, stale, repeated and malformed leases of one queue."""
        queue, job_id = data.draw(st.sampled_from(self._active_pairs()), label="active job")
        m = self.q[queue]
        token = m.jobs[job_id].token
        if op == "heartbeat":
            self._heartbeat(m, job_id, token)
        elif op == "ack_success":
            self._ack_success(m, job_id, token)
        elif op == "ack_success_batch":
            current = sorted((j.id, j.token) for j in m.in_state("active"))
            stale = sorted((i, t) for q, i, t in self._stale_triples() if q == queue)
            lease = st.one_of(st.sampled_from(current), st.sampled_from(current),
                              *([st.sampled_from(stale)] if stale else []),
                              st.just((job_id, token)), st.just(("", "x")),
                              st.just((job_id, "")))
            others = data.draw(st.lists(lease, max_size=4), label="more leases")
            self._ack_success_batch(m, [(job_id, token)] + others)
        else:
            if error == "LONG":  # more than the 4096 bytes kept as last_error
                error = "é" * 2100
            self._ack_fail(m, job_id, token, error, final=op == "ack_fail final")

    def _stale_triples(self) -> list[tuple[str, str, str]]:
        out = []
        for q, m in self.q.items():
            for job_id, token in m.tokens:
                job = m.jobs.get(job_id)
                if job is None or job.token != token or job.state != "active":
                    out.append((q, job_id, token))
        return sorted(out)

    @precondition(lambda self: bool(self._stale_triples()))
    @rule(data=st.data(), op=st.sampled_from(("ack_success", "ack_fail", "heartbeat")),
          kind=st.sampled_from(("acked again", "stale", "other queue", "empty")))
    def bad_token(self, data: st.DataObject, op: str, kind: str) -> None:
        """A job acked once with a token can never be acked again (TOKEN_MISMATCH or
        NOT_ACTIVE); a token of an ended lease raises LeaseLostError; no token raises
        TOKEN_REQUIRED. Nothing changes."""
        acked = sorted((q, i, t) for q, m in self.q.items() for i, t in m.acked)
        pool = acked if kind == "acked again" and acked else self._stale_triples()
        queue, job_id, token = data.draw(st.sampled_from(pool), label="old lease")
        if kind == "other queue":
            queue = QUEUES[1 - QUEUES.index(queue)]
        elif kind == "empty":
            token = ""
        m = self.q[queue]
        expected = self._lease_error(m, job_id, token)
        assert expected is not None
        errors = {"TOKEN_REQUIRED": TokenRequiredError}.get(
            expected, (TokenMismatchError, NotActiveError))
        with pytest.raises(errors) as info:
            if op == "heartbeat":
                self.c.heartbeat(queue, job_id, token, now_ms=self.now)
            elif op == "ack_success":
                self.c.ack_success(queue, job_id, token, now_ms=self.now)
            else:
                self.c.ack_fail(queue, job_id, token, error="late", now_ms=self.now)
        assert info.value.reason == expected, (info.value.reason, expected)
        assert isinstance(info.value, LeaseLostError) or expected == "TOKEN_REQUIRED"
        event(f"bad token ({kind}) {op}: {expected}")

    @rule(queue=QUEUE, op=st.sampled_from(("promote", "reap", "promote", "reap", "pause",
                                           "resume")),
          limit=st.sampled_from((1000, 1, 2)))
    def maintenance(self, queue: str, op: str, limit: int) -> None:
        """promote_delayed / reap_expired (with a small or large max) / pause / resume."""
        m = self.q[queue]
        if op == "promote":
            count = self.c.promote_delayed(queue, max_promote=limit, now_ms=self.now)
            due = [j for j in m.delayed_order() if j.due <= self.now][:limit]
            assert count == len(due), (count, [j.id for j in due])
            for job in due:
                self._enter_wait(m, job)
        elif op == "reap":
            count = self.c.reap_expired(queue, max_reap=limit, now_ms=self.now)
            expired = [j for j in m.active_order() if j.lock <= self.now][:limit]
            assert count == len(expired), (count, [j.id for j in expired])
            for job in expired:
                self._left_active(m, job)
                self._retry_or_fail(m, job)
        elif op == "pause":
            self.c.pause(queue)
            m.paused = True
            assert self.c.is_paused(queue)
            event("pause")
            return
        else:
            assert self.c.resume(queue) is m.paused, "resume must answer whether it was paused"
            event(f"resume: was paused={m.paused}")
            m.paused = False
            return
        event(f"{op}: {min(count, 2)}{'+' if count >= 2 else ''}")

    def _some_id(self, m: QueueModel) -> st.SearchStrategy[str]:
        """Mostly live jobs (failed ones first), sometimes completed, gone or unknown ids."""
        parts = []
        if m.failed:
            parts.append(st.sampled_from(m.failed))
        live = sorted(i for i, j in m.jobs.items() if j.state != "completed")
        if live:
            parts += [st.sampled_from(live)] * 2
        if m.completed:
            parts.append(st.sampled_from(m.completed))
        parts += [st.sampled_from(sorted(m.published | set(ID_POOL[:3]))), st.just("nope")]
        return st.one_of(*parts)

    @rule(queue=QUEUE, data=st.data(), batch=st.sampled_from((False, True, True)),
          oversized=st.sampled_from((False,) * 9 + (True,)))
    def retry(self, queue: str, data: st.DataObject, batch: bool, oversized: bool) -> None:
        """retry_failed or retry_failed_batch over failed, other, gone and unknown ids."""
        m = self.q[queue]
        if not batch:
            job_id = data.draw(self._some_id(m), label="job_id")
            expect = self._model_retry(m, job_id)
            event(f"retry_failed: {expect or 'OK'}")
            if expect:
                with pytest.raises(ProtocolError) as info:
                    self.c.retry_failed(queue, job_id, now_ms=self.now)
                assert info.value.reason == expect, (info.value.reason, expect)
            else:
                self.c.retry_failed(queue, job_id, now_ms=self.now)
            return
        ids = data.draw(st.lists(st.one_of(self._some_id(m), st.just("")), max_size=5),
                        label="ids")
        if oversized:
            with pytest.raises(BatchTooLargeError) as info:
                self.c.retry_failed_batch(queue, ids + ["x"] * (101 - len(ids)), now_ms=self.now)
            assert info.value.detail == "100"
            event("retry_failed_batch: BATCH_TOO_LARGE")
            return
        items = self.c.retry_failed_batch(queue, ids, now_ms=self.now)
        assert [i.job_id for i in items] == ids
        for job_id, item in zip(ids, items):
            expect = "BAD_JOB_ID" if job_id == "" else self._model_retry(m, job_id)
            event(f"retry_failed_batch: {expect or 'OK'}")
            assert item.ok is (expect is None) and item.reason == expect, (item, expect)

    @rule(queue=QUEUE, data=st.data(), batch=st.booleans(),
          oversized=st.sampled_from((False,) * 9 + (True,)))
    def remove(self, queue: str, data: st.DataObject, batch: bool, oversized: bool) -> None:
        """remove_job or remove_jobs_batch, over the right lane or a wrong/unknown one."""
        m = self.q[queue]
        if not batch:
            job_id = data.draw(self._some_id(m), label="job_id")
            job = m.jobs.get(job_id)
            right = "delayed"
            if job is not None and job.state in ("wait", "failed", "completed"):
                right = ("gwait" if job.gid else "wait") if job.state == "wait" else job.state
            lane = data.draw(st.one_of(st.just(right), st.just(right),
                                       st.sampled_from(REMOVE_LANES + BAD_LANES)), label="lane")
            expect = self._model_remove(m, job_id, lane)
            event(f"remove_job {lane}: {expect or 'OK'}")
            if expect:
                with pytest.raises(ProtocolError) as info:
                    self.c.remove_job(queue, job_id, lane, now_ms=self.now)
                assert info.value.reason == expect, (info.value.reason, expect)
            else:
                self.c.remove_job(queue, job_id, lane, now_ms=self.now)
            return
        lane = data.draw(st.sampled_from(REMOVE_LANES + BAD_LANES), label="lane")
        pool = sorted(i for i in m.jobs if m.jobs[i].state == LANE_STATE.get(lane))
        choice = st.one_of(*([st.sampled_from(pool)] * 2 if pool else []),
                           self._some_id(m), st.just(""))
        ids = data.draw(st.lists(choice, max_size=5), label="ids")
        if oversized:
            with pytest.raises(BatchTooLargeError) as info:
                self.c.remove_jobs_batch(queue, lane, ids + ["x"] * (101 - len(ids)),
                                         now_ms=self.now)
            assert info.value.detail == "100"
            event("remove_jobs_batch: BATCH_TOO_LARGE")
            return
        if ids and lane not in REMOVE_LANES:
            with pytest.raises(ProtocolError) as info:
                self.c.remove_jobs_batch(queue, lane, ids, now_ms=self.now)
            assert info.value.reason == "BAD_LANE"
            event("remove_jobs_batch: BAD_LANE")
            return
        items = self.c.remove_jobs_batch(queue, lane, ids, now_ms=self.now)
        assert [i.job_id for i in items] == ids
        for job_id, item in zip(ids, items):
            expect = "BAD_JOB_ID" if job_id == "" else self._model_remove(m, job_id, lane)
            event(f"remove_jobs_batch {lane}: {expect or 'OK'}")
            assert item.ok is (expect is None) and item.reason == expect, (item, expect)

    @rule(key=st.sampled_from(CHILD_KEYS), op=st.sampled_from(("ack", "ack", "init")),
          expected=st.integers(1, 3), child=st.sampled_from(CHILD_IDS))
    def children(self, key: str, op: str, expected: int, child: str) -> None:
        """childs_init / child_ack: a repeated child id does not count twice; the counter
        reaches 0 exactly once per init and is deleted: later acks answer NO_COUNTER."""
        cm = self.children_model[key]
        if op == "init":
            if cm.remaining is not None:
                with pytest.raises(ProtocolError) as info:
                    self.c.childs_init(key, expected)
                assert info.value.reason == "ALREADY_INIT"
                event("childs_init: ALREADY_INIT")
                return
            self.c.childs_init(key, expected)
            self.children_model[key] = ChildModel(remaining=expected)
            event("childs_init: OK")
            return
        if cm.remaining is None:
            with pytest.raises(ProtocolError) as info:
                self.c.child_ack(key, child)
            assert info.value.reason == "NO_COUNTER"
            event("child_ack: NO_COUNTER after close" if cm.closed else "child_ack: NO_COUNTER")
            return
        repeated = child in cm.done
        if not repeated:
            cm.done.add(child)
            cm.remaining -= 1
        left = self.c.child_ack(key, child)
        assert left == cm.remaining, (left, cm.remaining, "repeated" if repeated else "new")
        event("child_ack: repeated child" if repeated else "child_ack: new child")
        if cm.remaining == 0:
            cm.zero_hits += 1
            event("child_ack: counter reached 0")
            assert cm.zero_hits == 1, "child counter reached 0 twice for one init"
            cm.remaining, cm.done, cm.closed = None, set(), True

    def _heavy_ok(self) -> bool:
        return self.step >= 10 and self.step - self.last_heavy >= 10

    # late in an example only: afterwards every check reads 100+ completed job hashes
    @precondition(lambda self: self.step >= 20 and self._heavy_ok()
                  and not all(m.paused for m in self.q.values()))
    @rule(data=st.data(), n=st.one_of(st.integers(1, 10), st.integers(40, 110)))
    def burst(self, data: st.DataObject, n: int) -> None:
        """Publish n fresh jobs and run the queue empty (exercises the completed retention)."""
        event("burst")
        self.last_heavy = self.step
        queue = data.draw(st.sampled_from([q for q in QUEUES if not self.q[q].paused]),
                          label="queue")
        m = self.q[queue]
        for _ in range(n):
            m.burst_seq += 1
            job_id = f"b{m.burst_seq}"
            self.c.publish(queue, {"b": m.burst_seq}, job_id=job_id, now_ms=self.now)
            job = Job(job_id, self.c.encode_payload({"b": m.burst_seq}).decode(), "", 3,
                      30_000, 5_000)
            m.jobs[job_id] = job
            m.published.add(job_id)
            self._enter_wait(m, job)
        self._drain_lane(m)

    @precondition(_heavy_ok)
    @rule(queue=QUEUE)
    def drain(self, queue: str) -> None:
        """Liveness: run everything to its end; every live job ends completed or failed."""
        event("drain")
        self.last_heavy = self.step
        m = self.q[queue]
        if m.paused:
            assert self.c.resume(queue)
            m.paused = False
        for _ in range(20):
            if not any(j.state in ("wait", "delayed", "active") for j in m.jobs.values()):
                break
            self.now += 100_000_000
            self.maintenance(queue, "reap", 1000)
            self.maintenance(queue, "promote", 1000)
            self._drain_lane(m)
        states = {j.state for j in m.jobs.values()}
        assert states <= {"completed", "failed"}, states
        stats = self.c.stats(queue)
        assert stats.waiting_total == stats.active == stats.delayed == 0, stats

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def resend_a_batch_call(self, data: st.DataObject) -> None:
        """The connection dropped after Redis ran the last batch call of a script, and
        the caller sends the very same call again, any number of steps later: nothing
        may change (the model is not touched, so the invariant compares Redis with it),
        and acks and enqueues answer exactly what they answered the first time."""
        name = data.draw(st.sampled_from(sorted(self.sent)), label="script")
        anchor, args, first = self.sent[name]
        before = {k: v for k, v in snapshot(self.r).items() if ":rq:" not in k}
        again = self.c.scripts.call(name, anchor, args)
        assert {k: v for k, v in snapshot(self.r).items() if ":rq:" not in k} == before
        if name == "reserve_batch":
            # The leases that call made which are still held, in the same order.
            held = [again[i] for i in range(1, len(again) - 2, 3)] if again[0] == b"JOBS" else []
            firsts = [first[i] for i in range(1, len(first) - 2, 3)] if first[0] == b"JOBS" else []
            assert [j for j in firsts if j in held] == held
            event(f"resend reserve_batch: {len(held)} of {len(firsts)} still held")
        else:
            assert again == first
            event(f"resend {name}")

    # ----------------------------------------------------------------------------------
    # invariants
    # ----------------------------------------------------------------------------------

    @invariant()
    def state_is_consistent(self) -> None:
        global STEPS_RUN
        STEPS_RUN += 1
        self.step += 1
        self._check_all()

    def _check_all(self) -> None:
        """Read the whole state (KEYS, then one pipeline) and check it."""
        all_keys = set(self.r.keys("*"))
        # no MULTI/EXEC needed: nothing else writes while the machine checks
        p = self.r.pipeline(transaction=False)
        parsers = {name: self._snapshot(name, all_keys, p) for name in QUEUES}
        for key in CHILD_KEYS:
            p.get("{cc:" + key + "}:count")
            p.smembers("{cc:" + key + "}:done")
        out = iter(p.execute())
        snaps = {name: parse(out) for name, parse in parsers.items()}
        children = {key: (next(out), next(out)) for key in CHILD_KEYS}
        for name in QUEUES:
            self._check_protocol(name, snaps[name])
            self._check_model(self.q[name], snaps[name])
        self._check_children(all_keys, children)
        unknown = {k for k in all_keys
                   if not any(k.startswith(f"{{{q}}}:") for q in QUEUES)
                   and not k.startswith("{cc:")}
        assert not unknown, f"keys outside any queue or counter slot: {unknown}"

    def _snapshot(self, name: str, all_keys: set[str],
                  p: Any) -> Callable[[Iterator[Any]], dict[str, Any]]:
        """Queue the reads of one queue's state on pipeline p; returns the parser."""
        b = f"{{{name}}}"
        prefix = b + ":"
        mine = {k[len(prefix):] for k in all_keys if k.startswith(prefix)}
        odd = {k for k in mine if not QUEUE_KEY_SUFFIXES.fullmatch(k)}
        assert not odd, (f"{name}: unexpected keys {odd} (a new extension key? then add it "
                         f"to QUEUE_KEY_SUFFIXES and to the model)")
        job_ids = sorted(k[4:] for k in mine if k.startswith("job:"))
        gids = {k[2:].rsplit(":", 1)[0] for k in mine if k.startswith("g:")}
        gids |= set(GIDS)
        gids = sorted(gids)
        p.lrange(b + ":wait", 0, -1)
        p.zrange(b + ":active", 0, -1, withscores=True)
        p.zrange(b + ":delayed", 0, -1, withscores=True)
        p.lrange(b + ":failed", 0, -1)
        p.lrange(b + ":completed", 0, -1)
        p.zrange(b + ":groups:ready", 0, -1, withscores=True)
        p.hgetall(b + ":stats")
        for lane in ("wait", "active", "delayed", "failed", "completed"):
            p.zrange(f"{b}:idx:{lane}", 0, -1, withscores=True)
        for gid in gids:
            p.lrange(f"{b}:g:{gid}:wait", 0, -1)
            p.get(f"{b}:g:{gid}:inflight")
            p.get(f"{b}:g:{gid}:limit")
        p.exists(b + ":paused")
        p.get(b + ":lane:rr")
        p.get(b + ":has_groups")
        p.llen(b + ":wake")
        for job_id in job_ids:
            p.hgetall(f"{b}:job:{job_id}")
        return lambda out: self._parse_snapshot(out, gids, job_ids)

    @staticmethod
    def _parse_snapshot(out: Iterator[Any], gids: list[str], job_ids: list[str]) -> dict[str, Any]:
        snap: dict[str, Any] = {
            "wait": next(out), "active": dict(next(out)), "delayed": dict(next(out)),
            "failed": next(out), "completed": next(out), "ready": dict(next(out)),
            "stats": next(out),
            "idx": {lane: dict(next(out))
                    for lane in ("wait", "active", "delayed", "failed", "completed")},
            "gwait": {}, "inflight": {}, "limit": {},
        }
        for gid in gids:
            snap["gwait"][gid] = next(out)
            snap["inflight"][gid] = next(out)
            snap["limit"][gid] = next(out)
        snap["paused"] = bool(next(out))
        snap["rr"] = next(out)
        snap["has_groups"] = next(out)
        snap["wake"] = next(out)
        snap["jobs"] = {job_id: next(out) for job_id in job_ids}
        return snap

    def _check_protocol(self, name: str, s: dict[str, Any]) -> None:
        """The invariants of the protocol page, from the Redis state alone."""
        where: dict[str, list[str]] = defaultdict(list)   # id -> lanes holding it
        lanes = {"wait": s["wait"], "active": list(s["active"]), "delayed": list(s["delayed"]),
                 "failed": s["failed"], "completed": s["completed"]}
        lanes.update({f"g:{g}:wait": ids for g, ids in s["gwait"].items()})
        for lane, ids in lanes.items():
            assert len(ids) == len(set(ids)), f"{name}: duplicate id in {lane}: {ids}"
            for job_id in ids:
                where[job_id].append(lane)
        for job_id, held in where.items():
            assert len(held) == 1, f"{name}: {job_id} is in several lanes: {held}"
        jobs = s["jobs"]
        assert set(where) == set(jobs), (
            f"{name}: ids in lanes without a job hash: {set(where) - set(jobs)}; "
            f"job hashes in no lane: {set(jobs) - set(where)}")
        for job_id, h in jobs.items():
            lane, state, gid = where[job_id][0], h.get("state"), h.get("gid", "")
            assert h.get("id") == job_id, (job_id, h)
            if state == "wait":
                want = f"g:{gid}:wait" if gid else "wait"
            else:
                want = state
            assert lane == want, f"{name}: {job_id} state={state} gid={gid!r} but in {lane}"
            token = h.get("lease_token", "")
            assert bool(token) is (state == "active"), f"{name}: {job_id} {state} token={token!r}"
            if state == "active":
                assert float(h["lock_until_ms"]) == s["active"][job_id], (job_id, h, s["active"])
                assert 1 <= int(h["attempt"]) <= int(h["max_attempts"]), h
            else:
                assert h.get("lock_until_ms", "") == "", f"{name}: {job_id} {state} keeps a lock"
                assert 0 <= int(h["attempt"]) <= int(h["max_attempts"]), h
            if state == "delayed":
                assert float(h["due_ms"]) == s["delayed"][job_id], (job_id, h, s["delayed"])
        # stats counters equal lane sizes
        stats = {k: int(v) for k, v in s["stats"].items()}
        group_waiting = sum(len(ids) for ids in s["gwait"].values())
        expected = {
            "waiting": len(s["wait"]), "group_waiting": group_waiting,
            "waiting_total": len(s["wait"]) + group_waiting, "active": len(s["active"]),
            "delayed": len(s["delayed"]), "failed": len(s["failed"]),
            "completed_kept": len(s["completed"]), "groups_ready": len(s["ready"]),
        }
        got = {f: stats.get(f, 0) for f in STAT_FIELDS}
        assert got == expected, f"{name}: stats {got} != lane sizes {expected}"
        for f in TIME_FIELDS:
            assert stats.get(f, 0) <= self.now, (f, stats)
        # idx mirrors equal their lanes
        idx_want = {
            "wait": set(s["wait"]).union(*s["gwait"].values()), "active": set(s["active"]),
            "delayed": set(s["delayed"]), "failed": set(s["failed"]),
            "completed": set(s["completed"]),
        }
        for lane, members in idx_want.items():
            assert set(s["idx"][lane]) == members, (
                f"{name}: idx:{lane} {sorted(s['idx'][lane])} != lane {sorted(members)}")
        # groups: inflight, limit, ready
        for gid in s["gwait"]:
            raw_limit = s["limit"][gid]
            limit = int(raw_limit) if raw_limit and int(raw_limit) > 0 else 1
            inflight = int(s["inflight"][gid] or 0)
            running = sum(1 for i in s["active"] if jobs[i].get("gid", "") == gid)
            assert inflight == running, f"{name}: {gid} inflight={inflight} but {running} active"
            assert inflight <= limit, f"{name}: {gid} inflight {inflight} > limit {limit}"
            waiting = len(s["gwait"][gid])
            if gid in s["ready"]:
                assert waiting > 0, f"{name}: {gid} in groups:ready with no waiting job"
            elif waiting > 0 and inflight >= limit:
                event("invariant: a group is blocked at its limit")
            elif waiting > 0 and inflight < limit:
                raise AssertionError(
                    f"{name}: {gid} has {waiting} waiting and room ({inflight}/{limit}) "
                    f"but is not in groups:ready")
        assert set(s["ready"]) <= set(s["gwait"]), s["ready"]
        assert len(s["completed"]) <= KEEP_COMPLETED

    def _check_model(self, m: QueueModel, s: dict[str, Any]) -> None:
        """Redis equals the model: same lists in the same order, same hashes."""
        name = m.name
        assert not any(j.state == "leaving" for j in m.jobs.values())
        assert s["wait"] == m.wait, (name, s["wait"], m.wait)
        for gid, ids in s["gwait"].items():
            assert ids == m.gwait.get(gid, []), (name, gid, ids, m.gwait.get(gid))
        assert s["failed"] == m.failed, (name, s["failed"], m.failed)
        assert s["completed"] == m.completed, (name, s["completed"], m.completed)
        assert s["active"] == {j.id: float(j.lock) for j in m.in_state("active")}, name
        assert s["delayed"] == {j.id: float(j.due) for j in m.in_state("delayed")}, name
        assert s["ready"] == {g: float(v) for g, v in m.ready.items()}, (name, s["ready"], m.ready)
        assert s["paused"] is m.paused
        assert s["rr"] in ((None, "0") if m.grouped_first else ("1",)), (name, s["rr"])
        assert (s["has_groups"] == "1") is m.has_groups, (name, s["has_groups"])
        assert s["wake"] == m.wake, (name, "wake tokens", s["wake"], m.wake)
        for gid in GIDS:
            want = str(m.limits[gid]) if gid in m.limits else None
            assert s["limit"][gid] == want, (name, gid, s["limit"][gid], want)
        # no published job is ever lost: gone ids were removed or trimmed from completed
        assert set(s["jobs"]) == set(m.jobs), (name, set(s["jobs"]) ^ set(m.jobs))
        assert m.published - set(m.jobs) == set(m.gone), (name, m.published - set(m.jobs), m.gone)
        assert not (set(m.gone) & set(m.jobs))
        for job_id, job in m.jobs.items():
            h = s["jobs"][job_id]
            assert h["state"] == job.state, (name, job_id, h, job)
            assert h["payload"] == job.payload, (name, job_id, h["payload"], job.payload)
            assert h.get("gid", "") == job.gid, (name, job_id, h, job)
            assert int(h["attempt"]) == job.attempt, (name, job_id, h, job)
            assert int(h["max_attempts"]) == job.max_attempts
            assert int(h["timeout_ms"]) == job.timeout_ms
            assert int(h["backoff_ms"]) == job.backoff_ms
            assert h.get("lease_token", "") == job.token, (name, job_id, h, job)
            assert h["first_started_ms"] == ("" if job.first_started is None
                                             else str(job.first_started)), (name, job_id, h, job)
            idx_lane = job.state
            assert s["idx"][idx_lane].get(job_id) == float(job.entered), (
                name, job_id, idx_lane, s["idx"][idx_lane].get(job_id), job.entered)

    def _check_children(self, all_keys: set[str], read: dict[str, tuple[Any, Any]]) -> None:
        for key, cm in self.children_model.items():
            base = "{cc:" + key + "}"
            count, done = read[key]
            # only the two protocol keys, whether the counter runs, never ran or closed
            assert {k for k in all_keys if k.startswith(base + ":")} <= {base + ":count", base + ":done"}, key
            if cm.remaining is None:
                assert count is None and not done, (key, count, done)
            else:
                assert count == str(cm.remaining), (key, count, cm.remaining)
                assert done == cm.done, (key, done, cm.done)


def test_state_machine(redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    global EXAMPLES_RUN, STEPS_RUN
    EXAMPLES_RUN = STEPS_RUN = 0
    EVENTS.clear()
    _SERVER["server"] = redis_server
    try:
        run_state_machine_as_test(OmniqMachine, settings=SETTINGS)
    finally:
        with capsys.disabled():
            print(f"\n[omniq state machine] examples run: {EXAMPLES_RUN}, "
                  f"steps checked: {STEPS_RUN}")
            for name, count in sorted(EVENTS.items()):
                print(f"  {count:6d}  {name}")
    assert EXAMPLES_RUN >= MIN_EXAMPLES, f"only {EXAMPLES_RUN} examples ran"


def test_regression_delayed_publish_that_sets_a_group_limit(redis_server: RedisServer) -> None:
    """Found by the machine. g1 has no limit key (limit 1): a runs, b waits. A *delayed*
    publish to g1 with group_limit=3 sets the limit, so b now has room (1 of 3 running):
    g1 must be in groups:ready and the next reserve must lease b (protocol: groups:ready
    holds the gids that may dispatch now; enqueue.lua only made the group ready on the
    non-delayed path, so b stayed stuck until a finished)."""
    _SERVER["server"] = redis_server
    machine = OmniqMachine()
    try:
        q = machine.q["qa"]
        machine._publish("qa", "a", gid="g1")
        machine._publish("qa", "b", gid="g1")
        assert machine._reserve(q) is not None            # a runs: g1 at its limit (1)
        machine.state_is_consistent()
        machine._publish("qa", "c", gid="g1", group_limit=3, due_ms=machine.now + 1_000)
        machine.state_is_consistent()                     # g1 must be ready again
        res = machine._reserve(q)
        assert res is not None and res.job_id == "b"
        machine.state_is_consistent()
    finally:
        machine.teardown()


def test_regression_ack_success_batch_with_one_job_twice(redis_server: RedisServer) -> None:
    """Found by the machine (fixed in 36bf148: refusals by position). One
    ack_success_batch call with the same lease twice (or a job's current lease and a
    stale/empty token of the same job): the first is acked, the second refused - but
    the reply named refused leases by job id only, so the client reported *both* as
    not acked (ok=False) although the job was completed."""
    _SERVER["server"] = redis_server
    machine = OmniqMachine()
    try:
        q = machine.q["qa"]
        machine._publish("qa", "a")
        res = machine._reserve(q)
        assert res is not None
        machine._ack_success_batch(q, [("a", res.lease_token), ("a", res.lease_token)])
        machine.state_is_consistent()
    finally:
        machine.teardown()
