"""The fault suite's harness: real redis-server and CLI worker processes, a reply-
dropping proxy, the ledger reader and the one checker every test uses.

Nothing here fakes Redis or the worker: servers are ``redis-server`` processes on
free ports, workers are ``python -m omniq_tasks worker ledger_app:app`` processes
in their own process groups, and what ran is read back from the ledger file the
tasks append to (see ledger_app.py).
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import redis

from omniq_tasks.protocol.client import JobSpec, OmniqClient
from omniq_tasks.testing import free_port, redis_server_binary

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SOAK = os.environ.get("OMNIQ_SOAK", "") not in ("", "0")
# The summary table is appended here (one row per test) and printed at the session's end.
REPORT_ENV = "OMNIQ_RELIABILITY_REPORT"


def report_path() -> Path:
    return Path(os.environ.get(REPORT_ENV) or Path(tempfile.gettempdir()) / "omniq-reliability-summary.md")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- redis-server -----------------------------------------------------------------------------


class RedisProc:
    """A redis-server in ``directory`` on ``port`` that can be SIGKILLed and started again.

    With ``appendfsync`` set, AOF is on in that mode and a restart replays it.
    """

    def __init__(self, directory: Path, *extra: str, appendfsync: str | None = None,
                 port: int | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        persistence = (["--appendonly", "yes", "--appendfsync", appendfsync] if appendfsync
                       else ["--appendonly", "no"])
        self.args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                     "--dir", str(self.dir), "--save", "", *persistence,
                     "--enable-debug-command", "yes", *extra]
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, **kwargs)

    def start(self) -> None:
        self.starts += 1
        log = self.dir / f"redis-{self.starts}.log"
        self.process = subprocess.Popen([*self.args, "--logfile", str(log)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: "
                                   f"{log.read_text()[-2000:] if log.exists() else ''}")
            try:
                # While an AOF loads the server answers LOADING: wait until it serves.
                redis.Redis(port=self.port, socket_timeout=1).get("x")
                return
            except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on {self.port} did not serve within 20 s") from None
                time.sleep(0.02)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# -- worker processes -----------------------------------------------------------------------


class WorkerProc:
    """``python -m omniq_tasks worker ledger_app:app`` in its own process group."""

    def __init__(self, redis_url: str, ledger: Path, log_path: Path, args: Sequence[str],
                 env: dict[str, str] | None = None, direct_url: str | None = None,
                 pythonpath: Sequence[str] = ()) -> None:
        self.log_path = log_path
        path = os.pathsep.join([*pythonpath, str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        full_env = {**os.environ, "OMNIQ_TASKS_REDIS_URL": redis_url, "OMNIQ_LEDGER": str(ledger),
                    "OMNIQ_LEDGER_REDIS_URL": direct_url or redis_url, "PYTHONPATH": path,
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omniq_tasks", "worker", "ledger_app:app", "--poll-interval", "0.2",
             *args], cwd=HERE, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = 20) -> WorkerProc:
        wait_for(lambda: "worker for app ledger" in self.log() or not self.alive(), timeout,
                 f"worker {self.pid} to start")
        assert self.alive(), f"worker exited at start:\n{self.log()[-3000:]}"
        return self

    def signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the worker and its children (the process pool) together."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


class Workers:
    """Starts workers for one test and kills every one of them at teardown."""

    def __init__(self, tmp: Path, ledger: Path) -> None:
        self.tmp = tmp
        self.ledger = ledger
        self.all: list[WorkerProc] = []

    def start(self, redis_url: str, *args: str, ready: bool = True, **kwargs: Any) -> WorkerProc:
        worker = WorkerProc(redis_url, self.ledger, self.tmp / f"worker-{len(self.all)}.log", args, **kwargs)
        self.all.append(worker)
        return worker.wait_ready() if ready else worker

    def logs(self) -> str:
        return "\n".join(f"--- worker {w.pid} (rc={w.proc.poll()}) ---\n{w.log()[-2500:]}" for w in self.all)

    def grep(self, text: str) -> int:
        return sum(w.log().count(text) for w in self.all)

    def kill_all(self) -> None:
        for worker in self.all:
            worker.kill()


# -- a proxy that drops replies ---------------------------------------------------------------


class ReplyDropProxy:
    """Loopback TCP proxy to Redis that, every ``every_s`` seconds, takes the next reply
    Redis sends on any connection and closes that client connection instead of
    forwarding it: the client sees a dropped connection after Redis ran its call.
    """

    def __init__(self, upstream_port: int, every_s: float) -> None:
        self.upstream_port = upstream_port
        self.every_s = every_s
        self.port = free_port()
        self.dropped = 0
        self._armed = threading.Event()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._threads = [threading.Thread(target=self._accept, daemon=True),
                         threading.Thread(target=self._arm, daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _arm(self) -> None:
        while not self._stop.wait(self.every_s):
            self._armed.set()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([client, server], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is server:
                        if self._armed.is_set():
                            self._armed.clear()
                            self.dropped += 1
                            return  # Redis ran the call; its reply never arrives
                        client.sendall(data)
                    else:
                        server.sendall(data)
        except OSError:
            return
        finally:
            for sock in (client, server):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()


# -- fault loops ------------------------------------------------------------------------------


class Loop:
    """Calls ``action`` every ``interval()`` seconds in a thread until stopped; counts
    the calls and the errors (a fault loop must not die of the fault it causes)."""

    def __init__(self, action: Callable[[], Any], interval: Callable[[], float]) -> None:
        self.action = action
        self.interval = interval
        self.count = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval()):
            try:
                self.action()
                self.count += 1
            except Exception:
                self.errors += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def jitter(low: float, high: float) -> Callable[[], float]:
    return lambda: random.uniform(low, high)


# -- publishing -------------------------------------------------------------------------------


@dataclass
class Published:
    """What the producer was told: ``ids`` published (with when), ``maybe`` unknown outcome."""

    queue_of: dict[str, str] = field(default_factory=dict)
    told_ms: dict[str, float] = field(default_factory=dict)
    maybe: set[str] = field(default_factory=set)
    bad: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def add(self, queue: str, ids: Iterable[str], bad: bool = False) -> None:
        now = time.time() * 1000
        for job_id in ids:
            self.queue_of[job_id] = queue
            self.told_ms[job_id] = now
            self.maybe.discard(job_id)
            if bad:
                self.bad.add(job_id)

    def __len__(self) -> int:
        return len(self.queue_of)


def specs(task: Any, calls: Iterable[Any], **options: Any) -> list[JobSpec]:
    """One JobSpec (with its own id) per call: tuples are positional, dicts named."""
    out = []
    for call in calls:
        args, kwargs = (call, {}) if isinstance(call, tuple) else ((), call)
        out.append(task.encode_call(args, kwargs, **options))
    return out


def publish(client: OmniqClient, queue: str, jobs: Sequence[JobSpec], pub: Published, *,
            chunk: int = 500, retry_for_s: float = 30.0) -> None:
    """Publish in chunks; a chunk whose call failed is sent again (same ids, so a replay
    is refused as EXISTS). Gives up (raises) once calls have failed for ``retry_for_s``
    in all: a server that is gone must fail the test, not hang it."""
    deadline = time.monotonic() + retry_for_s
    for start in range(0, len(jobs), chunk):
        part = jobs[start:start + chunk]
        while True:
            try:
                client.enqueue_many(queue, part)
                pub.add(queue, (s.job_id for s in part))
                break
            except redis.RedisError as exc:
                pub.maybe.update(s.job_id for s in part if s.job_id not in pub.queue_of)
                pub.errors.append(f"{type(exc).__name__}: {exc}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"publishing to {queue} kept failing for {retry_for_s:.0f} s: "
                                         f"{pub.errors[-1]}") from exc
                time.sleep(0.05)


# -- the ledger -------------------------------------------------------------------------------


@dataclass
class RunRec:
    job_id: str
    attempt: int
    start: float
    end: float | None
    pid: int
    ok: bool | None
    gid: str
    prior: str


def read_ledger(path: Path) -> dict[str, list[RunRec]]:
    """Runs per job: start lines paired with their end line (end None: never returned)."""
    starts: dict[tuple[str, int, str, int], RunRec] = {}
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 8:
            continue  # a write cut short by SIGKILL
        job_id, attempt, start, end, pid, status, gid, prior = parts
        key = (job_id, int(attempt), start, int(pid))
        if status == "S":
            starts[key] = RunRec(job_id, int(attempt), float(start), None, int(pid), None, gid, prior)
        else:
            rec = starts.setdefault(key, RunRec(job_id, int(attempt), float(start), None, int(pid), None, gid, "-"))
            rec.end = float(end)
            rec.ok = status == "ok"
    runs: dict[str, list[RunRec]] = {}
    for rec in starts.values():
        runs.setdefault(rec.job_id, []).append(rec)
    for recs in runs.values():
        recs.sort(key=lambda r: r.start)
    return runs


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """How many [start, end) intervals overlap at the busiest instant (an end at the same
    instant as a start does not overlap it)."""
    events = sorted([ev for s, e in intervals for ev in ((s, 1), (e, -1))], key=lambda ev: (ev[0], ev[1]))
    busiest = current = 0
    for _, delta in events:
        current += delta
        busiest = max(busiest, current)
    return busiest


# -- the checker ------------------------------------------------------------------------------

# Invariants a test may declare its fault legitimately breaks (at-least-once after a
# lease expired while the body still ran): checked, reported, not asserted.
JOB_OVERLAP = "job_overlap"            # two runs of one job at the same time
GROUP_OVER_LIMIT = "group_over_limit"  # a group ran more than its limit at once
RERUN_AFTER_ACK = "rerun_after_ack"    # a body ran again after its ack


@dataclass
class Result:
    fault: str
    published: int = 0
    maybe: int = 0
    completed: int = 0
    failed: int = 0
    failed_without_running: int = 0
    run_after_ack: int = 0
    max_group: str = "-"
    lost: int = 0
    unfinished: int = 0
    ended_twice: int = 0
    job_overlaps: int = 0
    rerun_after_ok: int = 0
    leases_without_run: int = 0
    notes: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    tolerated: list[str] = field(default_factory=list)

    HEADER = ("| fault | published | completed | failed | failed without running | run again after ack "
              "| max group concurrency (limit) | lost | unfinished | notes |\n"
              "|---|---:|---:|---:|---:|---:|---|---:|---:|---|")

    def row(self) -> str:
        published = f"{self.published}" + (f" (+{self.maybe} unconfirmed)" if self.maybe else "")
        return (f"| {self.fault} | {published} | {self.completed} | {self.failed} | "
                f"{self.failed_without_running} | {self.run_after_ack} | {self.max_group} | {self.lost} | "
                f"{self.unfinished} | {'; '.join(self.notes)} |")

    def record(self) -> None:
        path = report_path()
        with open(path, "a") as f:
            f.write(self.row() + "\n")
        print("\n" + self.HEADER + "\n" + self.row())
        for v in self.violations:
            print("  VIOLATION:", v)
        for v in self.tolerated:
            print("  tolerated:", v)

    def assert_ok(self, context: str = "") -> None:
        if self.violations:
            shown = "\n".join(self.violations[:40])
            raise AssertionError(f"{self.fault}: {len(self.violations)} invariant violation(s)\n"
                                 f"{self.row()}\n{shown}\n{context[-6000:]}")


def lanes_busy(r: redis.Redis, queues: Iterable[str]) -> int:
    """Jobs still waiting, running or delayed in ``queues`` (read from the lanes themselves)."""
    pipe = r.pipeline(transaction=False)
    for q in queues:
        base = "{" + q + "}"
        pipe.zcard(base + ":idx:wait")
        pipe.llen(base + ":wait")
        pipe.zcard(base + ":active")
        pipe.zcard(base + ":delayed")
        pipe.zcard(base + ":groups:ready")
    return sum(int(x) for x in pipe.execute())


def wait_settled(r: redis.Redis, queues: Iterable[str], timeout: float,
                 expected: int | None = None, pub: Published | None = None) -> bool:
    """True once nothing is waiting, running or delayed (twice in a row, 0.3 s apart)."""
    queues = list(queues)
    deadline = time.monotonic() + timeout
    calm = 0
    while time.monotonic() < deadline:
        try:
            busy = lanes_busy(r, queues)
        except redis.RedisError:
            busy = -1
        calm = calm + 1 if busy == 0 else 0
        if calm >= 2:
            return True
        time.sleep(0.3)
    return False


def check(r: redis.Redis, fault: str, pub: Published, ledger: Path, *,
          group_limits: dict[str, int] | None = None, tolerate: Iterable[str] = (),
          notes: Iterable[str] = (), frozen: Sequence[tuple[int, float]] = ()) -> Result:
    """The one checker: reads the ledger and Redis and checks every invariant.

    * every published job ended exactly once, in completed or failed, and nothing is
      left waiting, running or delayed;
    * none failed without a run having started, unless its payload was bad;
    * no body ran again after its ack: no run started when the hash already said
      completed (``prior`` C/F in the ledger), none started after the ``completed_ms``
      the hash keeps, and no lease (job, attempt) ran twice;
    * no two runs of one job overlapped, and no group ran more than its limit at once;
    * the failed counter in ``{Q}:stats`` equals the failed lane.

    ``frozen`` lists (pid, SIGSTOP time in ms): a run of that pid that had started
    before the stop and ended after it is frozen mid-body, so finding the job
    completed when its start line was written is not a run after the ack.

    ``tolerate`` names invariants the fault legitimately breaks: they are reported
    in the row's notes, not counted as violations. Completed job hashes beyond the
    newest 100 are deleted by the protocol: a published job without a hash counts
    as completed when the ledger has a run that returned, else as lost.
    """
    tolerated = set(tolerate)
    res = Result(fault, published=len(pub), maybe=len(pub.maybe - set(pub.queue_of)), notes=list(notes))
    runs = read_ledger(ledger)
    queues = sorted(set(pub.queue_of.values()))
    all_ids = list(pub.queue_of) + sorted(pub.maybe - set(pub.queue_of))
    queue_of = dict(pub.queue_of)
    for job_id in pub.maybe:
        queue_of.setdefault(job_id, next(iter(queues), "rel"))

    def violate(kind: str, text: str) -> None:
        (res.tolerated if kind in tolerated else res.violations).append(f"[{kind}] {text}")

    # Lanes and counters per queue.
    failed_lane: dict[str, int] = {}
    completed_lane: dict[str, int] = {}
    for q in queues:
        base = "{" + q + "}"
        failed_ids = r.lrange(base + ":failed", 0, -1)
        completed_ids = r.lrange(base + ":completed", 0, -1)
        for job_id in failed_ids:
            failed_lane[job_id] = failed_lane.get(job_id, 0) + 1
        for job_id in completed_ids:
            completed_lane[job_id] = completed_lane.get(job_id, 0) + 1
        left = {"wait": r.llen(base + ":wait"), "active": r.zcard(base + ":active"),
                "delayed": r.zcard(base + ":delayed"), "idx:wait": r.zcard(base + ":idx:wait"),
                "idx:active": r.zcard(base + ":idx:active"), "idx:delayed": r.zcard(base + ":idx:delayed")}
        group_waits = sum(r.llen(k) for k in r.scan_iter(match=base + ":g:*:wait", count=1000))
        if group_waits:
            left["group wait lists"] = group_waits
        busy = {k: v for k, v in left.items() if v}
        if busy:
            violate("unfinished", f"queue {q}: still in lanes {busy}")
        stats = r.hgetall(base + ":stats")
        if int(stats.get("failed", 0)) != len(failed_ids):
            violate("stats", f"queue {q}: stats failed={stats.get('failed')} but the failed lane holds {len(failed_ids)}")
        for counter in ("active", "waiting", "group_waiting", "delayed"):
            if int(stats.get(counter, 0)) != 0:
                violate("stats", f"queue {q}: stats {counter}={stats.get(counter)} after everything ended")

    # Job hashes.
    hashes: dict[str, list[Any]] = {}
    fields = ("state", "attempt", "completed_ms", "failed_ms", "last_error")
    for start in range(0, len(all_ids), 1000):
        pipe = r.pipeline(transaction=False)
        chunk = all_ids[start:start + 1000]
        for job_id in chunk:
            pipe.hmget("{" + queue_of[job_id] + "}:job:" + job_id, *fields)
        for job_id, values in zip(chunk, pipe.execute()):
            hashes[job_id] = values

    for job_id in all_ids:
        state, attempt, completed_ms, _failed_ms, last_error = hashes[job_id]
        job_runs = runs.get(job_id, [])
        told = job_id in pub.queue_of
        returned_ok = any(run.ok for run in job_runs)
        if state is None:
            if returned_ok:
                res.completed += 1  # trimmed from the newest 100: its hash is gone
            elif told:
                res.lost += 1
                violate("lost", f"{job_id}: published, never completed, and its hash is gone "
                                f"(runs: {len(job_runs)})")
            continue
        if state == "completed":
            res.completed += 1
        elif state == "failed":
            res.failed += 1
            if not job_runs and job_id not in pub.bad:
                res.failed_without_running += 1
                violate("failed_without_running", f"{job_id}: failed without a run ever starting "
                        f"(attempt {attempt}, last_error {str(last_error or '')[:160]!r})")
        else:
            res.unfinished += 1
            violate("unfinished", f"{job_id}: state {state} (attempt {attempt})")
        ends = completed_lane.get(job_id, 0) + failed_lane.get(job_id, 0)
        if state in ("completed", "failed") and ends != 1 and not (state == "completed" and ends == 0):
            # ends == 0 for a completed job: it may have been trimmed from the list
            res.ended_twice += 1
            violate("ended_twice", f"{job_id}: state {state} but {completed_lane.get(job_id, 0)} time(s) "
                                   f"in completed and {failed_lane.get(job_id, 0)} in failed")
        if state == "completed" and completed_ms:
            late = [run for run in job_runs if run.start > float(completed_ms) + 2]
            if late:
                res.run_after_ack += len(late)
                violate(RERUN_AFTER_ACK, f"{job_id}: {len(late)} run(s) started after its ack at {completed_ms}")

    # Runs: after an ack, twice on one lease, overlapping.
    group_intervals: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for job_id, job_runs in runs.items():
        if job_id not in queue_of:
            violate("unknown", f"{job_id}: ran but was never published")
            continue
        after_ack = [run for run in job_runs if run.prior in ("C", "F")
                     and not any(pid == run.pid and run.start < stop_ms and (run.end or 0) > stop_ms
                                 for pid, stop_ms in frozen)]
        if after_ack:
            res.run_after_ack += len(after_ack)
            shown = ", ".join(f"attempt {run.attempt} pid {run.pid} at {run.start:.0f}" for run in after_ack)
            history = "; ".join(f"attempt {run.attempt} pid {run.pid} {run.start:.0f}-"
                                f"{run.end if run.end is None else round(run.end)} {run.ok}" for run in job_runs)
            violate(RERUN_AFTER_ACK, f"{job_id}: run(s) started after it had "
                                     f"{'completed' if after_ack[0].prior == 'C' else 'failed'}: {shown} "
                                     f"(all runs: {history}; hash: {hashes.get(job_id)})")
        attempts = [run.attempt for run in job_runs]
        final_attempt = int(hashes.get(job_id, [None, None])[1] or 0)
        res.leases_without_run += max(max(attempts), final_attempt) - len(set(attempts))
        if len(attempts) != len(set(attempts)):
            res.run_after_ack += len(attempts) - len(set(attempts))
            violate(RERUN_AFTER_ACK, f"{job_id}: one lease ran twice (attempts {attempts})")
        for earlier, later in zip(job_runs, job_runs[1:]):
            if earlier.ok and earlier.end is not None and later.start >= earlier.end:
                res.rerun_after_ok += 1
            if earlier.end is None or later.start < earlier.end:
                if earlier.end is not None:
                    res.job_overlaps += 1
                    violate(JOB_OVERLAP, f"{job_id}: attempt {later.attempt} started "
                            f"{earlier.end - later.start:.0f} ms before attempt {earlier.attempt} ended")
        for run in job_runs:
            if run.gid != "-" and run.end is not None:
                group_intervals.setdefault((queue_of[job_id], run.gid), []).append((run.start, run.end))

    limits = group_limits or {}
    busiest: tuple[int, str] = (0, "")
    for (q, gid), intervals in group_intervals.items():
        peak = max_overlap(intervals)
        if peak > busiest[0]:
            busiest = (peak, f"{q}/{gid}")
        limit = limits.get(q)
        if limit is not None and peak > limit:
            violate(GROUP_OVER_LIMIT, f"group {gid} of {q} ran {peak} jobs at once (limit {limit})")
    if group_intervals:
        limit_text = "/".join(str(limits[q]) for q in sorted(limits) if q in queues) or "?"
        res.max_group = f"{busiest[0]} ({limit_text})"
    for job_id in all_ids:  # jobs with no run at all: every attempt was a lease without a run
        if job_id not in runs and job_id not in pub.bad:
            res.leases_without_run += int(hashes[job_id][1] or 0)
    if res.leases_without_run:
        res.notes.append(f"{res.leases_without_run} lease(s) that never started a body")
    if res.rerun_after_ok:
        res.notes.append(f"{res.rerun_after_ok} rerun(s) of a body that had returned ok (ack not applied)")
    if res.job_overlaps:
        res.notes.append(f"{res.job_overlaps} overlapping run(s) of one job")
    if pub.maybe - set(pub.queue_of):
        res.notes.append(f"{res.maybe} publish call(s) with unknown outcome")
    for kind in sorted({v.split("]")[0][1:] for v in res.tolerated}):
        res.notes.append(f"tolerated: {kind}")
    return res


def finish(r: redis.Redis, fault: str, pub: Published, ledger: Path, workers: Workers, *,
           settle_s: float = 60.0, record: bool = True, **kwargs: Any) -> Result:
    """Wait until the queues are settled, stop the workers, check, record the row."""
    queues = sorted(set(pub.queue_of.values()))
    settled = wait_settled(r, queues, settle_s)
    time.sleep(0.3)  # a last run still writing its end line
    workers.kill_all()
    notes = list(kwargs.pop("notes", ()))
    if not settled:
        notes.append(f"not settled within {settle_s:.0f} s")
    res = check(r, fault, pub, ledger, notes=notes, **kwargs)
    if record:
        res.record()
    return res


def clean_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
