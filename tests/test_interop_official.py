"""Interop with the official OmniQ Python SDK (``omniq`` 4.0.0, used here only as a test-time peer).

Two kinds of tests, all on real redis-server processes:

* Differential: one scripted scenario runs twice, on two flushed DBs, once with the
  reference scripts shipped in the SDK and once with ours (``omniq_tasks.protocol.scripts.scripts_dir()``)
  loaded into the same official client. Every call's answer and the whole Redis state
  after every call must match, once the deliberate differences listed in
  ``normalize_state`` are normalized.
* Cross-client: jobs published by one client are run by the other on the same Redis
  (also checked differentially against an official-only run), and the official
  ``consume(..., drain=True)`` loop runs jobs published by our client.

The official SDK's ``ulid`` import clashes with our python-ulid, so every job id given
to the official client is explicit (``omniq_tasks.protocol.ids.new_job_id()``). Clock values passed
as ``now_ms_override`` are never 0: the official client reads 0 as "use time.time()".
"""

from __future__ import annotations

import os
import re
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings, strategies as st
from omniq import scripts as official_scripts
from omniq.client import OmniqClient as OfficialClient
from omniq.types import BatchResultItem, JobCtx, ReserveJob, ReservePaused

import omniq_tasks
from omniq_tasks import OmniqClient, ProtocolError
from omniq_tasks.protocol.ids import new_job_id
from omniq_tasks.protocol.models import QueueEmpty, QueuePaused
from redis_server import RedisServer

Q = "interop"
T0 = 1_000_000  # scenario clock; far below any wall-clock ms value
WALL_CLOCK_MS = 10**12  # a time stored at or above this came from a real clock
REFERENCE_DIR = official_scripts.default_scripts_dir()
OUR_DIR = omniq_tasks.protocol.scripts.scripts_dir()


def t(offset_ms: int) -> int:
    return T0 + offset_ms


def official_client(conn: redis.Redis, scripts_dir: str) -> OfficialClient:
    # load_scripts caches by scripts_dir in a module-level dict and loads each SHA only
    # once; clear it so this client loads its scripts into this server.
    official_scripts._scripts_cache.clear()
    return OfficialClient(redis=conn, scripts_dir=scripts_dir)


Dbs = tuple[redis.Redis, redis.Redis]


@pytest.fixture()
def dbs(r: redis.Redis, redis_server: RedisServer) -> Iterator[Dbs]:
    """Two decoded clients on DB 1 (reference run) and DB 2 (our run), both flushed by ``r``."""
    conns = tuple(redis.Redis(port=redis_server.port, db=db, decode_responses=True) for db in (1, 2))
    yield conns  # type: ignore[misc]
    for conn in conns:
        conn.close()


# -- the whole Redis state, normalized ---------------------------------------------

def read_state(conn: redis.Redis) -> dict[str, tuple[str, Any, bool]]:
    """Every key as (type, contents, has_ttl)."""
    keys = sorted(conn.scan_iter(count=1000))
    pipe = conn.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
        pipe.pttl(key)
    meta = pipe.execute()
    kinds, ttls = meta[0::2], meta[1::2]
    readers: dict[str, Callable[[str], Any]] = {
        "string": pipe.get, "hash": pipe.hgetall, "set": pipe.smembers,
        "list": lambda k: pipe.lrange(k, 0, -1),
        "zset": lambda k: pipe.zrange(k, 0, -1, withscores=True),
    }
    for key, kind in zip(keys, kinds):
        readers[kind](key)
    values = pipe.execute()
    state = {}
    for key, kind, ttl, value in zip(keys, kinds, ttls, values):
        if kind == "set":
            value = sorted(value)
        elif kind == "zset":
            value = [tuple(pair) for pair in value]
        state[key] = (kind, value, ttl >= 0)
    return state


INFLIGHT_KEY = re.compile(r"\{[^}]+\}:g:.+:inflight")


def normalize_state(state: dict[str, tuple[str, Any, bool]], tokens: dict[str, str]) -> dict[str, Any]:
    """The state with the random and the deliberately different parts made comparable.

    1. Lease tokens are random in our scripts (digest including the server clock's
       microseconds) and deterministic in the reference: each token is replaced by the
       label of the reserve answer that handed it out (``<lease N>``).
    2. Our ``{Q}:g:<gid>:inflight`` key is DELeted when it drops to 0; the reference keeps
       "0". Missing == "0", so a "0" value is dropped.
    3. ``stats.last_activity_ms`` written by the remove scripts: the reference remove_job
       stores the server clock (TIME, whole seconds) and remove_jobs_batch stores "0"
       (the official client sends no now_ms); ours store the server clock in ms when no
       trailing now_ms is sent. Only those values ("0" or wall-clock sized; every other
       call in these scenarios uses a fixed clock near T0) are replaced.
    """
    out: dict[str, Any] = {}
    for key, (kind, value, has_ttl) in state.items():
        if kind == "string" and INFLIGHT_KEY.fullmatch(key) and value == "0":
            continue
        if kind == "hash":
            value = dict(value)
            if value.get("lease_token"):
                value["lease_token"] = tokens.get(value["lease_token"], "<token never handed out>")
            if key.endswith(":stats") and "last_activity_ms" in value:
                stamp = value["last_activity_ms"]
                if stamp == "0" or float(stamp) >= WALL_CLOCK_MS:
                    value["last_activity_ms"] = "<clock of a remove script>"
        out[key] = (kind, value, has_ttl)
    return out


def state_diff(ref: dict[str, Any], ours: dict[str, Any]) -> str:
    lines = []
    for key in sorted(set(ref) | set(ours)):
        a, b = ref.get(key, "<missing>"), ours.get(key, "<missing>")
        if a == b:
            continue
        if isinstance(a, tuple) and isinstance(b, tuple) and a[0] == b[0] == "hash":
            for field in sorted(set(a[1]) | set(b[1])):
                fa, fb = a[1].get(field, "<missing>"), b[1].get(field, "<missing>")
                if fa != fb:
                    lines.append(f"  {key} [{field}]: reference={fa!r} ours={fb!r}")
        else:
            lines.append(f"  {key}: reference={a!r} ours={b!r}")
    return "\n".join(lines)


# -- recording a scenario --------------------------------------------------------------

@dataclass(frozen=True)
class Refused:
    """An ERR reply: the official client raises RuntimeError("<OP> failed: <REASON>")."""

    message: str


@dataclass
class Step:
    call: str
    result: Any
    state: dict[str, Any] | None


class Recorder:
    """Drives a scenario through one client (official API shape) and records each step.

    ``rec.publish(queue=..., ...)`` calls the client's method of that name and records
    its normalized answer and (with ``every_step``) the normalized Redis state after it.
    ``rec.using(other)`` records into the same log through another client on the same
    Redis (cross-client scenarios).
    """

    def __init__(self, conn: redis.Redis, client: Any, *, every_step: bool = True) -> None:
        self.conn = conn
        self.client = client
        self.every_step = every_step
        self.steps: list[Step] = []
        self.tokens: dict[str, str] = {}  # lease token -> "<lease N>"
        self.leases: dict[str, str] = {}  # job id -> its latest lease token

    def using(self, client: Any) -> Recorder:
        view = object.__new__(Recorder)
        view.__dict__ = dict(self.__dict__, client=client)  # shares steps, tokens, leases
        return view

    def token(self, job_id: str) -> str:
        return self.leases.get(job_id, "<no lease recorded>")

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        method = getattr(self.client, name)

        def call(**kwargs: Any) -> Any:
            try:
                result = method(**kwargs)
            except RuntimeError as exc:
                result = Refused(str(exc))
            self.record(name, kwargs, result)
            return result

        return call

    def record(self, name: str, kwargs: dict[str, Any], result: Any) -> None:
        self.steps.append(Step(self._describe(name, kwargs), self._normalize_result(result),
                               self.state() if self.every_step else None))

    def state(self) -> dict[str, Any]:
        return normalize_state(read_state(self.conn), self.tokens)

    def raw(self, *command: str) -> None:
        """A plain Redis command (what an operator or a crash might do), recorded as a step."""
        result = self.conn.execute_command(*command)  # type: ignore[no-untyped-call]
        self.record(command[0], {"args": command[1:]}, result)

    def _label(self, token: str) -> str:
        return self.tokens.setdefault(token, f"<lease {len(self.tokens) + 1}>")

    def _describe(self, name: str, kwargs: dict[str, Any]) -> str:
        shown = {}
        for key, value in kwargs.items():
            if key == "lease_token":
                value = self.tokens.get(value, value)
            elif isinstance(value, str) and len(value) > 40:
                value = value[:37] + "..."
            shown[key] = value
        return f"{name}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def _normalize_result(self, result: Any) -> Any:
        if isinstance(result, ReserveJob):
            assert re.fullmatch(r"[0-9a-f]{40}", result.lease_token), result.lease_token
            self.leases[result.job_id] = result.lease_token
            return ("JOB", result.job_id, result.payload, result.lock_until_ms, result.attempt,
                    result.max_attempts, result.gid, self._label(result.lease_token))
        if result is None:
            return None
        if isinstance(result, ReservePaused):
            return "PAUSED"
        if isinstance(result, list) and all(isinstance(i, BatchResultItem) for i in result):
            return [(i.job_id, i.status, i.reason) for i in result]
        return result

    def results(self, prefix: str) -> list[Any]:
        return [s.result for s in self.steps if s.call.startswith(prefix + "(")]


def assert_same_runs(ref: Recorder, ours: Recorder) -> None:
    """Same calls, same answers, same state after every step (and at the end)."""
    assert [s.call for s in ref.steps] == [s.call for s in ours.steps]
    for i, (a, b) in enumerate(zip(ref.steps, ours.steps)):
        assert a.result == b.result, (
            f"step {i} {a.call}: reference answered {a.result!r}, ours {b.result!r}")
        if a.state is not None and b.state is not None and a.state != b.state:
            pytest.fail(f"step {i} {a.call}: Redis state differs\n{state_diff(a.state, b.state)}")
    final_ref, final_ours = ref.state(), ours.state()
    assert final_ref == final_ours, f"final state differs\n{state_diff(final_ref, final_ours)}"


def run_differential(dbs: Dbs, scenario: Callable[[Recorder], None],
                     *, every_step: bool = True) -> tuple[Recorder, Recorder]:
    runs = []
    for conn, scripts_dir in zip(dbs, (REFERENCE_DIR, OUR_DIR)):
        rec = Recorder(conn, official_client(conn, scripts_dir), every_step=every_step)
        scenario(rec)
        runs.append(rec)
    ref, ours = runs
    assert_same_runs(ref, ours)
    return ref, ours


# -- (a) the official client on our scripts -------------------------------------------------

def full_protocol_scenario(ids: dict[str, str]) -> Callable[[Recorder], None]:
    J = ids

    def scenario(c: Recorder) -> None:
        # publish: ungrouped, a group with a limit (2), a group with the default limit (1),
        # delayed jobs of both kinds; JSON arrays and non-ASCII text as payloads
        c.publish(queue=Q, payload={"task": "u1", "n": 1}, job_id=J["u1"], max_attempts=2,
                  timeout_ms=1_000, backoff_ms=500, now_ms_override=t(0))
        c.publish(queue=Q, payload={"task": "u2", "text": "héllo ✓"}, job_id=J["u2"],
                  max_attempts=1, timeout_ms=1_000, now_ms_override=t(1))
        c.publish(queue=Q, payload=[1, "two", {"three": 3.5}], job_id=J["u3"], max_attempts=3,
                  timeout_ms=5_000, backoff_ms=100, due_ms=t(2), now_ms_override=t(2))  # due now: waits
        for i, (name, limit) in enumerate((("a1", 2), ("a2", 9), ("a3", 0))):  # 9: limit already set
            c.publish(queue=Q, payload={"g": "a", "i": i}, job_id=J[name], gid="tenant-a",
                      group_limit=limit, max_attempts=2, timeout_ms=1_000, backoff_ms=300,
                      now_ms_override=t(10 + i))
        c.publish(queue=Q, payload={"g": "b", "i": 0}, job_id=J["b1"], gid="tenant-b",
                  max_attempts=1, timeout_ms=1_000, now_ms_override=t(13))
        c.publish(queue=Q, payload={"g": "b", "i": 1}, job_id=J["b2"], gid="tenant-b",
                  max_attempts=3, timeout_ms=1_000, backoff_ms=50, now_ms_override=t(14))
        c.publish(queue=Q, payload={"d": 1}, job_id=J["d1"], due_ms=t(5_000), now_ms_override=t(15))
        c.publish(queue=Q, payload={"d": "g"}, job_id=J["dg"], gid="tenant-b", due_ms=t(4_000),
                  now_ms_override=t(16))

        # reserve: lanes alternate (grouped first), oldest-ready group first, group limits hold
        for ms in range(100, 107):  # a1 u1 b1 u2 a2 u3, then EMPTY
            c.reserve(queue=Q, now_ms_override=t(ms))

        # heartbeat: extends from the old lock; wrong or missing token refused
        c.heartbeat(queue=Q, job_id=J["a1"], lease_token=c.token(J["a1"]), now_ms_override=t(500))
        c.heartbeat(queue=Q, job_id=J["a1"], lease_token="0" * 40, now_ms_override=t(501))
        c.heartbeat(queue=Q, job_id=J["a1"], lease_token="", now_ms_override=t(502))
        c.heartbeat(queue=Q, job_id=J["u3"], lease_token=c.token(J["u3"]), now_ms_override=t(503))

        # acks: success frees a group slot; a token is good once; RETRY and FAILED
        c.ack_success(queue=Q, job_id=J["a1"], lease_token=c.token(J["a1"]), now_ms_override=t(600))
        c.ack_success(queue=Q, job_id=J["a1"], lease_token=c.token(J["a1"]), now_ms_override=t(601))
        c.ack_fail(queue=Q, job_id=J["u1"], lease_token=c.token(J["u1"]),
                   error="boom " + "x" * 5_000, now_ms_override=t(700))  # kept: 4096 bytes
        c.ack_fail(queue=Q, job_id=J["u2"], lease_token=c.token(J["u2"]), now_ms_override=t(701))
        c.ack_success(queue=Q, job_id=J["u2"], lease_token=c.token(J["u2"]), now_ms_override=t(702))

        # pause blocks reserves only
        c.pause(queue=Q)
        c.is_paused(queue=Q)
        c.reserve(queue=Q, now_ms_override=t(800))
        c.resume(queue=Q)
        c.resume(queue=Q)
        c.is_paused(queue=Q)
        c.reserve(queue=Q, now_ms_override=t(801))  # a3

        # reap: b1 (1 attempt) fails, a2 goes to delayed; then nothing left to reap
        c.reap_expired(queue=Q, now_ms_override=t(1_200))
        c.reap_expired(queue=Q, now_ms_override=t(1_201))
        # promote the due ones (u1, a2) only
        c.promote_delayed(queue=Q, now_ms_override=t(1_600))
        c.promote_delayed(queue=Q, now_ms_override=t(1_601))

        # an operator lowers tenant-a's limit to 1 while it is ready with a3 running: a
        # reserve finds it at its limit and puts it back with score now + 1 (10 pops max)
        c.raw("SET", "{%s}:g:tenant-a:limit" % Q, "1")
        c.reserve(queue=Q, now_ms_override=t(1_700))  # u1, attempt 2
        c.reserve(queue=Q, now_ms_override=t(1_701))  # b2
        c.reserve(queue=Q, now_ms_override=t(1_702))  # tenant-a at limit -> EMPTY
        c.ack_success(queue=Q, job_id=J["a3"], lease_token=c.token(J["a3"]), now_ms_override=t(1_750))
        c.reserve(queue=Q, now_ms_override=t(1_800))  # a2, attempt 2

        # retries until failure: by ack_fail (u1) and by reap (a2); b2 reaped into delayed
        c.ack_fail(queue=Q, job_id=J["u1"], lease_token=c.token(J["u1"]), error="boom again",
                   now_ms_override=t(1_900))
        c.reap_expired(queue=Q, now_ms_override=t(2_900))
        c.ack_success(queue=Q, job_id=J["b2"], lease_token=c.token(J["b2"]), now_ms_override=t(2_901))
        c.promote_delayed(queue=Q, max_promote=2, now_ms_override=t(6_000))  # b2, dg
        c.promote_delayed(queue=Q, now_ms_override=t(6_001))  # d1

        # retry_failed and its batch
        c.retry_failed(queue=Q, job_id=J["u2"], now_ms_override=t(6_100))
        c.retry_failed(queue=Q, job_id=J["u3"], now_ms_override=t(6_101))  # active: NOT_FAILED
        c.retry_failed(queue=Q, job_id=J["nope"], now_ms_override=t(6_102))  # NO_JOB
        c.retry_failed_batch(queue=Q, job_ids=[J["u1"], J["b1"], "", J["nope"], J["a1"], J["u1"]],
                             now_ms_override=t(6_200))
        c.retry_failed_batch(queue=Q, job_ids=[], now_ms_override=t(6_201))

        # remove_job: refusals first, then one per lane
        c.remove_job(queue=Q, job_id=J["u3"], lane="wait")  # ACTIVE
        c.remove_job(queue=Q, job_id=J["a1"], lane="failed")  # LANE_MISMATCH (completed)
        c.remove_job(queue=Q, job_id=J["u2"], lane="gwait")  # LANE_MISMATCH (ungrouped)
        c.remove_job(queue=Q, job_id=J["u2"], lane="nowhere")  # LANE_MISMATCH
        c.remove_job(queue=Q, job_id=J["nope"], lane="wait")  # NO_JOB
        c.remove_job(queue=Q, job_id=J["d1"], lane="delayed")  # LANE_MISMATCH (promoted)
        c.remove_job(queue=Q, job_id=J["b2"], lane="wait")  # NOT_IN_LANE (in its group's lane)
        c.remove_job(queue=Q, job_id=J["u2"], lane="wait")
        c.remove_job(queue=Q, job_id=J["dg"], lane="gwait")  # tenant-b keeps b2, b1
        c.publish(queue=Q, payload={"d": 2}, job_id=J["d2"], due_ms=t(99_000), now_ms_override=t(6_300))
        c.remove_job(queue=Q, job_id=J["d2"], lane="delayed")
        c.remove_job(queue=Q, job_id=J["a2"], lane="failed")
        c.promote_delayed(queue=Q, now_ms_override=t(6_400))  # nothing due: no stats write

        # remove_jobs_batch
        c.remove_jobs_batch(queue=Q, lane="completed", job_ids=[J["a1"], J["a3"], J["u3"], J["nope"], ""])
        c.remove_jobs_batch(queue=Q, lane="gwait", job_ids=[J["b1"], J["u1"]])
        c.remove_jobs_batch(queue=Q, lane="delayed", job_ids=[J["u1"]])
        c.remove_jobs_batch(queue=Q, lane="wait", job_ids=[J["b2"], J["u1"]])  # NOT_IN_LANE, OK
        c.remove_jobs_batch(queue=Q, lane="nowhere", job_ids=[J["u1"]])  # BAD_LANE
        c.remove_jobs_batch(queue=Q, lane="failed", job_ids=[])
        c.remove_jobs_batch(queue=Q, lane="gwait", job_ids=[J["b2"]])  # tenant-b empty: not ready

        # drain what is left
        for ms in range(7_000, 7_003):  # d1, then EMPTY twice
            c.reserve(queue=Q, now_ms_override=t(ms))
        for name in ("u3", "d1"):
            c.ack_success(queue=Q, job_id=J[name], lease_token=c.token(J[name]), now_ms_override=t(7_100))

        # odd jobs: 0 attempts / 0 timeout (read as 1 and 60 s), a lease dropped from
        # active behind the scripts' back (NOT_ACTIVE), an active id whose hash is gone
        c.publish(queue=Q, payload={"o": 1}, job_id=J["o1"], max_attempts=0, timeout_ms=0,
                  backoff_ms=0, now_ms_override=t(7_200))
        c.publish(queue=Q, payload={"o": 2}, job_id=J["o2"], now_ms_override=t(7_201))
        c.publish(queue=Q, payload={"o": 3}, job_id=J["o3"], now_ms_override=t(7_202))
        for ms in range(7_300, 7_303):  # o1 o2 o3
            c.reserve(queue=Q, now_ms_override=t(ms))
        c.ack_fail(queue=Q, job_id=J["o1"], lease_token=c.token(J["o1"]), now_ms_override=t(7_400))
        c.raw("ZREM", "{%s}:active" % Q, J["o2"])
        c.heartbeat(queue=Q, job_id=J["o2"], lease_token=c.token(J["o2"]), now_ms_override=t(7_401))
        c.ack_success(queue=Q, job_id=J["o2"], lease_token=c.token(J["o2"]), now_ms_override=t(7_402))
        c.ack_fail(queue=Q, job_id=J["o2"], lease_token=c.token(J["o2"]), now_ms_override=t(7_403))
        c.heartbeat(queue=Q, job_id=J["o3"], lease_token=c.token(J["o3"]),
                    now_ms_override=t(40_000))  # lease ran out unreaped: extends from now
        c.raw("DEL", "{%s}:job:%s" % (Q, J["o3"]))
        c.reap_expired(queue=Q, now_ms_override=t(99_000))  # drops o3

        # fan-in counters
        c.childs_init(key="fan", expected=3)
        c.childs_init(key="fan", expected=2)  # ALREADY_INIT
        c.childs_init(key="other", expected=0)  # BAD_EXPECTED
        for child in ("c1", "c1", "c2", "c3"):  # 2, 2 (repeat), 1, 0
            c.child_ack(key="fan", child_id=child)
        c.child_ack(key="fan", child_id="c4")  # after 0: NO_COUNTER -> -1 on both
        c.child_ack(key="fan", child_id="c3")  # the last child again: NO_COUNTER as well
        c.child_ack(key="never-initialized", child_id="c1")  # NO_COUNTER -> -1 on both
        c.childs_init(key="fan", expected=1)  # a closed counter can start again
        c.child_ack(key="fan", child_id="c1")

    return scenario


def test_official_client_on_our_scripts_matches_reference(dbs: Dbs) -> None:
    names = ("u1", "u2", "u3", "a1", "a2", "a3", "b1", "b2", "d1", "dg", "d2", "o1", "o2", "o3", "nope")
    ids = {name: new_job_id() for name in names}
    ref, ours = run_differential(dbs, full_protocol_scenario(ids))

    # the scenario reached what it is meant to cover (checked on the reference run)
    reserves = ref.results("reserve")
    assert "PAUSED" in reserves and None in reserves
    assert [r[1] for r in reserves[:6]] == [ids[n] for n in ("a1", "u1", "b1", "u2", "a2", "u3")]
    fails = ref.results("ack_fail")
    assert fails == [("RETRY", t(700) + 500), ("FAILED", None), ("FAILED", None), ("FAILED", None),
                     Refused("ACK_FAIL failed: NOT_ACTIVE")]
    assert ref.results("reap_expired") == [2, 0, 2, 1]
    assert ref.results("promote_delayed") == [2, 0, 2, 1, 0]
    assert ref.results("child_ack") == [2, 2, 1, 0, -1, -1, -1, 0]
    assert Refused("HEARTBEAT failed: TOKEN_MISMATCH") in ref.results("heartbeat")
    assert Refused("REMOVE_JOBS_BATCH failed: BAD_LANE") in ref.results("remove_jobs_batch")
    assert ref.results("retry_failed_batch")[0] == [
        (ids["u1"], "OK", None), (ids["b1"], "OK", None), ("", "ERR", "BAD_JOB_ID"),
        (ids["nope"], "ERR", "NO_JOB"), (ids["a1"], "ERR", "NOT_FAILED"), (ids["u1"], "ERR", "NOT_FAILED"),
    ]
    # our scripts really were the ones running in the second run
    with open(os.path.join(OUR_DIR, "child_ack.lua"), encoding="utf-8") as f:
        assert ours.client._ops.scripts.child_ack.src == f.read()
    assert ref.client._ops.scripts.child_ack.src != ours.client._ops.scripts.child_ack.src


def test_completed_retention_matches_reference(dbs: Dbs) -> None:
    ids = [new_job_id() for _ in range(103)]

    def scenario(c: Recorder) -> None:
        for i, job_id in enumerate(ids):
            c.publish(queue=Q, payload={"i": i}, job_id=job_id, gid="g" if i % 3 == 0 else None,
                      group_limit=1_000, now_ms_override=t(i))
        for i, job_id in enumerate(ids):
            c.reserve(queue=Q, now_ms_override=t(1_000 + i))
        for i, job_id in enumerate(ids):
            c.ack_success(queue=Q, job_id=job_id, lease_token=c.token(job_id), now_ms_override=t(2_000 + i))

    ref, _ = run_differential(dbs, scenario, every_step=False)
    assert all(result is None for result in ref.results("ack_success"))
    # only the newest 100 are kept; the 3 acked first lost their hash too
    assert ref.conn.lrange("{%s}:completed" % Q, 0, -1) == ids[:2:-1]
    assert ref.conn.hget("{%s}:stats" % Q, "completed_kept") == "100"
    assert {job_id for job_id in ids if ref.conn.exists(f"{{{Q}}}:job:{job_id}")} == set(ids[3:])


def test_remove_from_group_lane_sets_readiness_like_reference(dbs: Dbs) -> None:
    """After removing a job from a group's lane, the reference makes the group ready
    (ZADD NX, score 0) when it still has waiting jobs and room, and takes it out of
    groups:ready otherwise (also when it still has waiting jobs but is at its limit)."""
    J = {name: new_job_id() for name in ("r1", "r2", "r3", "l1", "l2", "l3")}

    def scenario(c: Recorder) -> None:
        # tenant-r: limit 1 and r1 running, so not ready; an operator then raises its limit
        # to 3 without making it ready. (A delayed publish that sets the limit does not make
        # the group ready in the reference; ours does, on purpose: see
        # test_state_machine.test_regression_delayed_publish_that_sets_a_group_limit.)
        for i, name in enumerate(("r1", "r2", "r3")):
            c.publish(queue=Q, payload={"i": i}, job_id=J[name], gid="tenant-r", now_ms_override=t(i))
        c.reserve(queue=Q, now_ms_override=t(10))  # r1
        c.raw("SET", "{%s}:g:tenant-r:limit" % Q, "3")
        c.remove_job(queue=Q, job_id=J["r3"], lane="gwait")  # r2 still waits, room for 2 more
        c.reserve(queue=Q, now_ms_override=t(20))

        # tenant-l: ready with room, then an operator lowers its limit: at its limit but ready
        for i, name in enumerate(("l1", "l2", "l3")):
            c.publish(queue=Q, payload={"i": i}, job_id=J[name], gid="tenant-l", group_limit=2,
                      now_ms_override=t(30 + i))
        c.reserve(queue=Q, now_ms_override=t(40))  # l1; tenant-l ready again (room for 1)
        c.raw("SET", "{%s}:g:tenant-l:limit" % Q, "1")
        c.remove_jobs_batch(queue=Q, lane="gwait", job_ids=[J["l3"]])  # l2 waits, no room

    run_differential(dbs, scenario)


# -- (b) cross-client -------------------------------------------------------------------------

class OursAsOfficial:
    """Our OmniqClient behind the official client's method names and answer shapes, so
    one scenario can drive either. ERR replies become RuntimeError("<OP> failed: <REASON>")
    like the official client's."""

    def __init__(self, client: OmniqClient) -> None:
        self.client = client

    @staticmethod
    def _refusal(op: str, exc: ProtocolError) -> RuntimeError:
        return RuntimeError(f"{op} failed: {exc.reason}")

    def publish(self, *, queue: str, payload: Any, job_id: str, now_ms_override: int,
                gid: str | None = None, **options: Any) -> str:
        return self.client.publish(queue, payload, job_id=job_id, gid=gid, now_ms=now_ms_override,
                                   **options).job_id

    def reserve(self, *, queue: str, now_ms_override: int) -> Any:
        res = self.client.reserve(queue, now_ms=now_ms_override)
        if isinstance(res, QueueEmpty):
            return None
        if isinstance(res, QueuePaused):
            return ReservePaused()
        return ReserveJob(status="JOB", job_id=res.job_id, payload=res.payload,
                          lock_until_ms=res.lock_until_ms, attempt=res.attempt,
                          max_attempts=res.max_attempts, gid=res.gid, lease_token=res.lease_token)

    def heartbeat(self, *, queue: str, job_id: str, lease_token: str, now_ms_override: int) -> int:
        try:
            return self.client.heartbeat(queue, job_id, lease_token, now_ms=now_ms_override)
        except ProtocolError as exc:
            raise self._refusal("HEARTBEAT", exc) from None

    def ack_success(self, *, queue: str, job_id: str, lease_token: str, now_ms_override: int) -> None:
        try:
            self.client.ack_success(queue, job_id, lease_token, now_ms=now_ms_override)
        except ProtocolError as exc:
            raise self._refusal("ACK_SUCCESS", exc) from None

    def ack_fail(self, *, queue: str, job_id: str, lease_token: str, now_ms_override: int,
                 error: str | None = None) -> tuple[str, int | None]:
        try:
            res = self.client.ack_fail(queue, job_id, lease_token, error=error, now_ms=now_ms_override)
        except ProtocolError as exc:
            raise self._refusal("ACK_FAIL", exc) from None
        return (res.status, res.due_ms)

    def promote_delayed(self, *, queue: str, now_ms_override: int) -> int:
        return self.client.promote_delayed(queue, now_ms=now_ms_override)


def cross_scenario(ids: dict[str, str], publisher: Any, worker: Any) -> Callable[[Recorder], None]:
    """Publish with ``publisher``, then reserve/heartbeat/ack with ``worker`` (each an
    official client or an OursAsOfficial) on the recorder's Redis."""
    J = ids

    def scenario(c: Recorder) -> None:
        pub, work = c.using(publisher), c.using(worker)

        pub.publish(queue=Q, payload={"k": "u1", "text": "ünïcode ✓"}, job_id=J["u1"],
                    max_attempts=2, timeout_ms=1_000, backoff_ms=200, now_ms_override=t(0))
        pub.publish(queue=Q, payload=[1, 2, {"k": "u2"}], job_id=J["u2"], max_attempts=1,
                    timeout_ms=1_000, now_ms_override=t(1))
        pub.publish(queue=Q, payload={"k": "g1"}, job_id=J["g1"], gid="t-1", group_limit=2,
                    max_attempts=1, timeout_ms=1_000, now_ms_override=t(2))
        pub.publish(queue=Q, payload={"k": "g2"}, job_id=J["g2"], gid="t-1", timeout_ms=1_000,
                    max_attempts=2, backoff_ms=100, now_ms_override=t(3))
        pub.publish(queue=Q, payload={"k": "g3"}, job_id=J["g3"], gid="t-2", timeout_ms=1_000,
                    now_ms_override=t(4))
        pub.publish(queue=Q, payload={"k": "g4"}, job_id=J["g4"], gid="t-2", timeout_ms=1_000,
                    now_ms_override=t(5))

        for ms in range(100, 106):  # g1 u1 g3 u2 g2 EMPTY (t-2 at its limit of 1)
            work.reserve(queue=Q, now_ms_override=t(ms))
        work.heartbeat(queue=Q, job_id=J["g1"], lease_token=c.token(J["g1"]), now_ms_override=t(200))
        work.heartbeat(queue=Q, job_id=J["u1"], lease_token="f" * 40, now_ms_override=t(201))
        work.ack_success(queue=Q, job_id=J["g1"], lease_token=c.token(J["g1"]), now_ms_override=t(300))
        work.ack_fail(queue=Q, job_id=J["u1"], lease_token=c.token(J["u1"]), error="try again",
                      now_ms_override=t(301))  # RETRY
        work.ack_fail(queue=Q, job_id=J["u2"], lease_token=c.token(J["u2"]), error="no luck",
                      now_ms_override=t(302))  # FAILED
        work.ack_fail(queue=Q, job_id=J["g2"], lease_token=c.token(J["g2"]), now_ms_override=t(303))  # RETRY
        work.ack_success(queue=Q, job_id=J["g3"], lease_token=c.token(J["g3"]), now_ms_override=t(304))
        work.ack_success(queue=Q, job_id=J["g3"], lease_token=c.token(J["g3"]), now_ms_override=t(305))
        work.promote_delayed(queue=Q, now_ms_override=t(1_000))
        for ms in range(1_001, 1_005):  # u1 g4 g2 EMPTY
            work.reserve(queue=Q, now_ms_override=t(ms))
        for name in ("g4", "u1", "g2"):
            work.ack_success(queue=Q, job_id=J[name], lease_token=c.token(J[name]), now_ms_override=t(1_100))

    return scenario


@pytest.mark.parametrize(("publisher", "worker"), [("official", "ours"), ("ours", "official")])
def test_cross_client_runs_match_official_only_run(dbs: Dbs, publisher: str, worker: str) -> None:
    """official publish -> our reserve/heartbeat/ack, and our publish -> official reserve/ack,
    each compared step by step with an official-only run on the reference scripts."""
    ids = {name: new_job_id() for name in ("u1", "u2", "g1", "g2", "g3", "g4")}
    runs = []
    for conn, roles in zip(dbs, (("official", "official"), (publisher, worker))):
        clients = {"official": official_client(conn, REFERENCE_DIR),
                   "ours": OursAsOfficial(OmniqClient(conn))}
        rec = Recorder(conn, clients["official"])
        cross_scenario(ids, clients[roles[0]], clients[roles[1]])(rec)
        runs.append(rec)
    ref, mixed = runs
    assert_same_runs(ref, mixed)

    conn = mixed.conn
    assert [r[1] if r else None for r in mixed.results("reserve")] == [
        ids["g1"], ids["u1"], ids["g3"], ids["u2"], ids["g2"], None, ids["u1"], ids["g4"], ids["g2"], None]
    assert mixed.results("ack_fail")[1] == ("FAILED", None)
    states = {name: conn.hget(f"{{{Q}}}:job:{job_id}", "state") for name, job_id in ids.items()}
    assert states == {"u1": "completed", "u2": "failed", "g1": "completed", "g2": "completed",
                      "g3": "completed", "g4": "completed"}
    assert conn.hget(f"{{{Q}}}:job:{ids['u2']}", "last_error") == "no luck"
    assert conn.zcard(f"{{{Q}}}:active") == 0 and conn.zcard(f"{{{Q}}}:groups:ready") == 0


def consume_with_official(client: OfficialClient, queue: str, expected: int,
                          fail_ids: frozenset[str] = frozenset()) -> list[JobCtx]:
    """Run the official consume(drain=True) loop until ``expected`` jobs were handled.

    consume only stops on SIGTERM/SIGINT; with drain=True its own SIGTERM handler just sets
    a stop flag, so the handler raises SIGTERM at the last expected job and consume acks it
    and returns. A watchdog does the same if jobs never arrive.
    """
    assert threading.current_thread() is threading.main_thread(), "consume's signal handling"
    seen: list[JobCtx] = []

    def handler(ctx: JobCtx) -> None:
        seen.append(ctx)
        if len(seen) >= expected:
            signal.raise_signal(signal.SIGTERM)
        if ctx.job_id in fail_ids:
            raise ValueError(f"handler refused {ctx.job_id}")

    watchdog = threading.Timer(20, os.kill, (os.getpid(), signal.SIGTERM))
    watchdog.start()
    try:
        client.consume(queue=queue, handler=handler, poll_interval_s=0.01, drain=True,
                       logger=lambda _msg: None)
    finally:
        watchdog.cancel()
    assert len(seen) == expected, f"consume handled {len(seen)} of {expected} jobs"
    return seen


def test_official_consume_runs_jobs_published_by_our_client(r: redis.Redis, client: OmniqClient) -> None:
    jobs = []  # (job_id, gid, payload) in publish order
    for i in range(9):
        gid = ("tenant-x", "tenant-y", None)[i % 3]
        payload = {"i": i, "gid": gid, "text": "pâté ✓", "list": [i, None, True]}
        job_id = new_job_id()
        client.publish(Q, payload, job_id=job_id, gid=gid, group_limit=2 if gid == "tenant-x" else 0,
                       max_attempts=1 if i == 4 else 3, now_ms=t(i))
        jobs.append((job_id, gid or "", payload))
    failing = jobs[4][0]

    seen = consume_with_official(official_client(r, REFERENCE_DIR), Q, len(jobs), frozenset({failing}))

    assert sorted((c.job_id, c.gid) for c in seen) == sorted((j, g) for j, g, _ in jobs)
    by_id = {c.job_id: c for c in seen}
    for job_id, gid, payload in jobs:
        assert by_id[job_id].payload == payload and by_id[job_id].attempt == 1
    for gid in ("tenant-x", "tenant-y", ""):  # FIFO inside each lane
        assert [c.job_id for c in seen if c.gid == gid] == [j for j, g, _ in jobs if g == gid]

    for job_id, _, _ in jobs:
        info = client.job(Q, job_id)
        assert info is not None
        if job_id == failing:
            assert info.state == "failed" and info.last_error == f"ValueError: handler refused {failing}"
        else:
            assert info.state == "completed" and info.lease_token == "" and info.completed_ms
    stats = client.stats(Q)
    assert (stats.active, stats.waiting_total, stats.group_waiting, stats.waiting, stats.delayed,
            stats.groups_ready, stats.failed, stats.completed_kept) == (0, 0, 0, 0, 0, 0, 1, 8)
    assert r.lrange(f"{{{Q}}}:completed", 0, -1)[::-1] == [c.job_id for c in seen if c.job_id != failing]
    assert r.lrange(f"{{{Q}}}:failed", 0, -1) == [failing]
    assert r.zcard(f"{{{Q}}}:active") == r.zcard(f"{{{Q}}}:idx:active") == 0
    for gid in ("tenant-x", "tenant-y"):
        assert r.get(f"{{{Q}}}:g:{gid}:inflight") in (None, "0")
        assert r.llen(f"{{{Q}}}:g:{gid}:wait") == 0


def test_job_published_on_server_clock_is_consumed_by_official_client(
        r: redis.Redis, client: OmniqClient) -> None:
    before_ms = int(r.time()[0]) * 1000
    plain = client.publish(Q, {"clock": "server"}, job_id=new_job_id())  # now_ms=0: server clock
    grouped = client.publish(Q, {"clock": "server", "g": 1}, job_id=new_job_id(), gid="tenant-z")
    after_ms = (int(r.time()[0]) + 1) * 1000
    for pub in (plain, grouped):
        created = int(r.hget(f"{{{Q}}}:job:{pub.job_id}", "created_ms") or 0)
        assert before_ms <= created <= after_ms

    seen = consume_with_official(official_client(r, REFERENCE_DIR), Q, 2)

    assert sorted(c.job_id for c in seen) == sorted((plain.job_id, grouped.job_id))
    assert {c.job_id: c.payload for c in seen} == {
        plain.job_id: {"clock": "server"}, grouped.job_id: {"clock": "server", "g": 1}}
    for pub in (plain, grouped):
        assert client.job(Q, pub.job_id).state == "completed"  # type: ignore[union-attr]
    assert client.stats(Q).completed_kept == 2 and client.stats(Q).active == 0


# -- (c) child counters: our two scripts against the reference, raw replies ----------------
#
# Run through EVALSHA directly (not the official client, which turns every error into -1
# and strips child ids), each script set on its own counter key of the same Redis: the
# reference on {cc:ref:<key>}, ours on {cc:ours:<key>}. After every step the replies
# must be equal and so must every key of the DB once the side's prefix is taken off.

COUNTER_SCRIPTS = ("childs_init", "child_ack")
SIDES = {"ref": REFERENCE_DIR, "ours": OUR_DIR}


class CounterPair:
    """The reference's and our childs_init/child_ack, loaded with SCRIPT LOAD."""

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn
        self.sha: dict[tuple[str, str], str] = {}
        for side, folder in SIDES.items():
            for name in COUNTER_SCRIPTS:
                with open(os.path.join(folder, f"{name}.lua"), encoding="utf-8") as f:
                    self.sha[side, name] = conn.script_load(f.read())  # type: ignore[no-untyped-call]
        for name in COUNTER_SCRIPTS:  # two different scripts really run
            assert self.sha["ref", name] != self.sha["ours", name]
        self.replies: list[Any] = []

    @staticmethod
    def anchor(side: str, key: str) -> str:
        return "{cc:%s:%s}:meta" % (side, key)

    def call(self, side: str, name: str, key: str, args: tuple[str, ...]) -> Any:
        try:
            return self.conn.evalsha(self.sha[side, name], 1, self.anchor(side, key), *args)
        except redis.ResponseError as exc:  # a Redis error raised inside the script
            text = re.sub(r"f_[0-9a-f]{40}|[0-9a-f]{40}", "<script>", str(exc))
            return ("REDIS ERROR", re.sub(r"@user_script:\d+", "@user_script", text))

    def state(self) -> dict[str, dict[str, tuple[str, Any, bool]]]:
        """Every key of the DB as (type, contents, has_ttl), by side, the side's prefix
        taken off (``{cc:ref:fan}:count`` -> ``{cc:fan}:count``)."""
        by_side: dict[str, dict[str, tuple[str, Any, bool]]] = {side: {} for side in SIDES}
        for key, value in read_state(self.conn).items():
            side = next((s for s in SIDES if key.startswith("{cc:%s:" % s)), None)
            assert side is not None, f"a key outside both counter prefixes: {key}"
            by_side[side]["{cc:" + key[len("{cc:%s:" % side):]] = value
        return by_side

    def step(self, name: str, key: str, *args: str) -> Any:
        ref, ours = (self.call(side, name, key, args) for side in SIDES)
        call = f"{name}({key!r}, {', '.join(map(repr, args))})"
        assert ours == ref, f"{call}: reference answered {ref!r}, ours {ours!r}"
        state = self.state()
        assert state["ours"] == state["ref"], (
            f"after {call}: Redis state differs\n{state_diff(state['ref'], state['ours'])}")
        self.replies.append(ref)
        return ref


def test_child_counter_scripts_match_reference_reply_and_state(r: redis.Redis) -> None:
    pair = CounterPair(r)
    init, ack = (lambda key, *args: pair.step("childs_init", key, *args),
                 lambda key, *args: pair.step("child_ack", key, *args))
    ok = ["OK"]

    def left(n: int) -> list[str]:
        return ["OK", str(n)]

    no_counter = ["ERR", "NO_COUNTER"]

    # no counter yet; arguments refused
    assert ack("fan", "c1") == no_counter
    assert ack("fan", "") == ack("fan") == ["ERR", "CHILD_REQUIRED"]
    assert init("fan") == init("fan", "") == ["ERR", "NO_EXPECTED"]
    for bad in ("0", "-3", "abc", "0.5", " "):
        assert init("fan", bad) == ["ERR", "BAD_EXPECTED"], bad
    assert r.dbsize() == 0

    # two counters side by side; distinct ids count down, repeated ids do not count
    assert init("fan", "3") == ok
    assert init("fan", "3") == init("fan", "5") == ["ERR", "ALREADY_INIT"]
    assert init("other", "2.9") == ok  # floored to 2, as the reference does
    assert ack("fan", "") == ["ERR", "CHILD_REQUIRED"]  # while running, too
    assert ack("fan", "c1") == left(2)
    assert ack("fan", "c1") == ack("fan", "c1") == left(2)
    assert ack("other", "c1") == left(1)  # the same id on another counter counts there
    assert ack("fan", "c2") == left(1)
    assert ack("fan", "c2") == left(1)
    # the ack that reaches 0 answers "0" once and deletes the counter
    assert ack("fan", "c3") == left(0)
    assert sorted(r.keys("{cc:*:fan}*")) == []
    # after 0: a new id, a counted id, the last id again -> NO_COUNTER, nothing written
    assert ack("fan", "c4") == ack("fan", "c1") == ack("fan", "c3") == no_counter
    assert ack("fan", "") == ["ERR", "CHILD_REQUIRED"]
    assert ack("other", "c2") == left(0)
    assert ack("other", "c2") == no_counter
    assert r.dbsize() == 0

    # a closed counter starts again, with a fresh done set
    assert init("fan", "2") == ok
    assert ack("fan", "c1") == left(1)  # c1 counts again in the new round
    assert init("fan", "1") == ["ERR", "ALREADY_INIT"]
    assert ack("fan", "c2") == left(0)
    assert init("fan", " 1 ") == ok and ack("fan", "solo") == left(0)  # 1: the first ack closes
    assert ack("never-initialized", "x") == no_counter
    assert r.dbsize() == 0

    # done set left behind without a count (an operator's DEL): init clears it
    assert init("fan", "2") == ok and ack("fan", "a") == left(1)
    for side in SIDES:
        r.delete("{cc:%s:fan}:count" % side)
    assert ack("fan", "b") == no_counter  # the done set stays, on both sides
    assert init("fan", "2") == ok  # and init deletes it
    assert ack("fan", "a") == left(1)

    # a count that is not a number (written by hand): the same Redis error on both
    for side in SIDES:
        r.set("{cc:%s:fan}:count" % side, "many")
    assert ack("fan", "a")[0] == "OK"  # a repeated id only reads the count
    assert ack("fan", "b")[0] == "REDIS ERROR"


CHILD_OPS = st.one_of(
    st.tuples(st.just("childs_init"), st.sampled_from(("fan", "other")),
              st.one_of(st.tuples(), st.tuples(st.sampled_from(("", "0", "-1", "1", "2", "3", "abc", "2.5"))),
                        st.tuples(st.integers(-2, 6).map(str)))),
    st.tuples(st.just("child_ack"), st.sampled_from(("fan", "other")),
              st.one_of(st.tuples(), st.tuples(st.sampled_from(("", "c1", "c2", "c3", "c4"))),
                        st.tuples(st.text(st.characters(blacklist_categories=("Cs",)), max_size=4)))),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(CHILD_OPS, max_size=40))
def test_child_counter_scripts_match_reference_on_random_sequences(
        r: redis.Redis, ops: list[tuple[str, str, tuple[str, ...]]]) -> None:
    r.flushdb()
    pair = CounterPair(r)
    for name, key, args in ops:
        pair.step(name, key, *args)
    # what the protocol promises, on the replies both sides gave: "0" once per init
    zeros = sum(1 for reply in pair.replies if reply == ["OK", "0"])
    inits = sum(1 for reply in pair.replies if reply == ["OK"])
    assert zeros <= inits
