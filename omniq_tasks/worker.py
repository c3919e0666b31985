"""The worker loop: reserve into free slots, run, ack, heartbeat, maintain.

One thread owns every Redis call of the loop; jobs run in a runner (threads,
processes, or the event loop for ``async def`` tasks) and report back through
an in-memory queue, so acks go out in batches and one heartbeat pass serves
every running job. ``Worker.step()`` is one pass of the loop, for tests.

Every call the loop makes is safe to send twice: a round trip that fails is sent
again with the very same arguments (the batch scripts answer a repeat with their
first answer, see docs/reliability.md), never rebuilt, so a reserve that Redis
ran before the connection dropped is not run a second time.

Queue order: with several queues, each pass fills free slots from the first
queue first and moves to the next only while slots remain.
"""

from __future__ import annotations

import logging
import os
import queue as queue_mod
import signal
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Sequence

import redis as redis_lib

from . import keys
from .client import (
    CorruptLease, parse_ack_batch, parse_ack_fail_batch, parse_heartbeat_batch, parse_leases,
)
from .errors import OmniqError
from .execution import Outcome
from .leases import Lease, Leases
from .models import AckFailResult, QueuePaused, ReservedJob
from .scripts import ScriptCall
from .urls import redact_url
from .process_pool import ProcessRunner
from .runners import ThreadRunner

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger(__name__)

_WAKE = object()
# Jobs leased at once by default with the thread pool. Threads start only when
# needed, so fast tasks use a few; the slots bound how much one pass can ack and
# lease, which is what sets the throughput of short tasks.
DEFAULT_THREAD_SLOTS = 32
# How often an INFO line sums up what was processed (per-job lines are DEBUG).
SUMMARY_INTERVAL_S = 60.0
# How long to keep collecting finished jobs once one finished (see _drain_events).
LINGER_S = 0.0002
# Leases and acks per script call (the batch scripts take at most 1000).
BATCH_MAX = 1000
# After a renewal or a maintenance pass that Redis refused (full, busy), try again
# this much later, not on every pass.
TROUBLE_RETRY_S = 0.5
# Errors that mean Redis could not be reached; the loop backs off and retries.
UNREACHABLE = (redis_lib.ConnectionError, redis_lib.TimeoutError)
Finished = tuple[ReservedJob, Outcome]


class Exchange:
    """One round trip: the calls, what to do with each reply, and what it settles.

    Built once and kept until Redis answered it: a failed send is repeated as it is.
    """

    __slots__ = ("calls", "handlers", "settles", "reserve", "then")

    def __init__(self) -> None:
        self.calls: list[ScriptCall] = []
        self.handlers: list[Callable[[Any], None]] = []
        self.settles: list[str] = []   # job ids whose results these calls report
        self.reserve: str | None = None  # queue of the last call, a reserve_batch
        self.then: list[str] = []      # queues to lease from next, while slots stay free


class Worker:
    """Runs the tasks of ``app`` from ``queues`` (default: every queue of its tasks)."""

    def __init__(
        self,
        app: App,
        queues: Sequence[str] | None = None,
        *,
        concurrency: int | None = None,
        pool: str = "threads",
        app_path: str | None = None,
        drain: bool = False,
        grace_s: float = 30.0,
        poll_interval_s: float = 1.0,
        maintenance_interval_s: float = 1.0,
        paused_backoff_s: float = 1.0,
    ) -> None:
        self.app = app
        self.client = app.client
        self.queues = [keys.validate_queue(q) for q in (queues or app.registry.queues())]
        if not self.queues:
            raise OmniqError("no queues to work on: register a task or pass queues")
        if pool not in ("threads", "processes"):
            raise ValueError(f"pool must be 'threads' or 'processes', not {pool!r}")
        self.concurrency = concurrency or (os.cpu_count() or 2 if pool == "processes" else DEFAULT_THREAD_SLOTS)
        self.drain = drain
        self.grace_s = grace_s
        self.poll_interval_s = poll_interval_s
        self.maintenance_interval_s = maintenance_interval_s
        self.paused_backoff_s = paused_backoff_s
        self.leases = Leases()
        self.processed = 0
        self.failures = 0
        self._summary = (time.monotonic(), 0, 0)  # when, processed, failures at the last summary
        self._events: queue_mod.SimpleQueue[Any] = queue_mod.SimpleQueue()
        self._unsent: list[Finished] = []          # results not yet in a round trip
        self._corrupt: list[CorruptLease] = []     # leased jobs that cannot run: to fail
        self._pending: Exchange | None = None      # a round trip Redis has not answered
        self._paused_until: dict[str, float] = {}
        self._next_maintenance = 0.0
        self._troubles: set[str] = set()           # what Redis refuses now (one warning each)
        self._stopping = threading.Event()
        self._signals = 0
        self._idle = threading.Event()
        if pool == "processes":
            if not app_path:
                raise ValueError("pool='processes' needs app_path ('module:app') for the children")
            self.runner: ThreadRunner | ProcessRunner = ProcessRunner(app_path, self.concurrency, self._done)
        else:
            self.runner = ThreadRunner(app, self.concurrency, self._done)
        self._waker: threading.Thread | None = None
        self._outage_s = 0.0

    @property
    def running(self) -> int:
        """Jobs leased and not yet settled."""
        return len(self.leases)

    # -- one pass ---------------------------------------------------------------------

    def _done(self, job: ReservedJob, outcome: Outcome) -> None:
        self._events.put((job, outcome))

    def step(self) -> int:
        """Ack what finished, heartbeat, maintain, fill free slots; returns jobs started."""
        self._unsent += self._drain_events()
        return self._step(time.monotonic())

    def _step(self, now: float) -> int:
        if now >= self.leases.next_due:
            self._heartbeat(now)
        if now >= self._next_maintenance:
            self._maintain()
            self._next_maintenance = now + self.maintenance_interval_s
            if now - self._summary[0] >= SUMMARY_INTERVAL_S:
                self._log_summary(now)
        return self._exchange(now)

    def _drain_events(self, block_s: float = 0.0) -> list[Finished]:
        """Take what finished; with ``block_s``, wait up to that long for the first event.

        After the first, keep taking events while they arrive less than LINGER_S
        apart: fast jobs leased together finish together, and one round trip then
        acks them all (and refills their slots) instead of one pass per job.
        """
        finished: list[Finished] = []
        get = self._events.get
        try:
            item = get(timeout=block_s) if block_s > 0 else get(block=False)
            while True:
                if item is not _WAKE:
                    finished.append(item)
                if len(finished) + len(self._unsent) >= len(self.leases):
                    item = get(block=False)
                else:
                    item = get(timeout=LINGER_S)
        except queue_mod.Empty:
            pass
        return finished

    def _exchange(self, now: float) -> int:
        """Ack what finished and lease jobs into the free slots, in one round trip.

        A round trip that fails stays pending and is sent again, unchanged, first.
        """
        started = self._send(now) if self._pending is not None else 0
        if self._unsent or self._corrupt or not self._stopping.is_set():
            self._pending = self._build(now)
            if self._pending is not None:
                started += self._send(now)
        return started

    def _build(self, now: float) -> Exchange | None:
        ex = Exchange()
        succeeded: dict[str, list[tuple[ReservedJob, Outcome, float]]] = {}
        failed: dict[str, list[tuple[ReservedJob, Outcome, float]]] = {}
        for job, outcome in self._unsent:
            lease = self.leases.get(job.job_id)
            ex.settles.append(job.job_id)
            elapsed_ms = (now - lease.started) * 1000 if lease else 0.0
            if lease is None or lease.lost:
                log.warning("lease lost: %s job=%s queue=%s finished after its lease ended; not acked",
                            outcome.task or "?", job.job_id, job.queue)
            else:
                (succeeded if outcome.ok else failed).setdefault(job.queue, []).append((job, outcome, elapsed_ms))
        for bad in self._corrupt:
            failed.setdefault(bad.job.queue, []).append(
                (bad.job, Outcome(False, "", f"corrupt job, not run: {bad.problem}", final=True), 0.0))
        self._unsent, self._corrupt = [], []
        for queue, done in succeeded.items():
            for i in range(0, len(done), BATCH_MAX):
                chunk = done[i:i + BATCH_MAX]
                ex.calls.append(self.client.ack_success_batch_call(
                    queue, [(job.job_id, job.lease_token) for job, _, _ in chunk]))
                ex.handlers.append(partial(self._log_acked, queue, chunk))
        for queue, done in failed.items():
            for i in range(0, len(done), BATCH_MAX):
                chunk = done[i:i + BATCH_MAX]
                ex.calls.append(self.client.ack_fail_batch_call(
                    queue, [(job.job_id, job.lease_token, o.error, o.final) for job, o, _ in chunk]))
                ex.handlers.append(partial(self._log_failures, queue, chunk))
        ready = [q for q in self.queues if self._paused_until.get(q, 0.0) <= now]
        free = min(self.concurrency - len(self.leases) + len(ex.settles), BATCH_MAX)
        if free > 0 and ready and not self._stopping.is_set():
            ex.calls.append(self.client.reserve_batch_call(ready[0], free))
            ex.reserve, ex.then = ready[0], ready[1:]
        return ex if ex.calls or ex.settles else None

    def _send(self, now: float) -> int:
        """Send the pending round trip; on success settle it and return the jobs started."""
        ex = self._pending
        assert ex is not None
        replies = self.client.scripts.call_many(ex.calls)  # raises (kept pending) if Redis is unreachable
        self._pending = None
        for job_id in ex.settles:
            self.leases.pop(job_id)
        self.processed += len(ex.settles)
        for handle, reply in zip(ex.handlers, replies):
            handle(reply)
        if ex.reserve is None:
            return 0
        started = self._start(ex.reserve, replies[-1], now)
        free = min(self.concurrency - len(self.leases), BATCH_MAX)
        if ex.then and free > 0:  # later queues only get what the earlier ones left
            nxt = Exchange()
            nxt.calls.append(self.client.reserve_batch_call(ex.then[0], free))
            nxt.reserve, nxt.then = ex.then[0], ex.then[1:]
            self._pending = nxt
            started += self._send(now)
        return started

    def _start(self, queue: str, reply: Any, now: float) -> int:
        if isinstance(reply, Exception):
            self._trouble("reserve", f"leasing jobs from queue {queue} failed (retrying in "
                                     f"{self.paused_backoff_s:.1f} s): {reply}")
            self._paused_until[queue] = now + self.paused_backoff_s
            return 0
        self._trouble_over("reserve")
        parsed = parse_leases(queue, reply)
        if isinstance(parsed, QueuePaused):
            self._paused_until[queue] = now + self.paused_backoff_s
            return 0
        jobs, corrupt = parsed
        for bad in corrupt:
            log.error("job=%s queue=%s cannot be run and is failed: %s", bad.job.job_id, queue, bad.problem)
        self._corrupt += corrupt
        for job in jobs:
            self.leases.add(job, now)
            self.runner.submit(job)
        return len(jobs)

    # -- what Redis answered ------------------------------------------------------

    def _trouble(self, kind: str, message: str) -> None:
        """Warn once per episode of trouble of one kind, not on every pass."""
        if kind not in self._troubles:
            self._troubles.add(kind)
            log.warning("%s", message)

    def _trouble_over(self, kind: str) -> None:
        if kind in self._troubles:
            self._troubles.discard(kind)
            log.info("%s works again", kind)

    def _log_summary(self, now: float) -> None:
        since, processed, failures = self._summary
        if self.processed > processed:
            done = self.processed - processed
            log.info("processed %d job(s) in the last %.0f s (%.0f/s), %d of them failed; %d running",
                     done, now - since, done / (now - since), self.failures - failures, len(self.leases))
        self._summary = (now, self.processed, self.failures)

    def _log_acked(self, queue: str, done: list[tuple[ReservedJob, Outcome, float]], reply: Any) -> None:
        if isinstance(reply, Exception):
            log.error("ack of %d finished job(s) in queue %s failed (they run again after their lease): %s",
                      len(done), queue, reply)
            return
        lost = parse_ack_batch(reply)
        for n, (job, outcome, elapsed_ms) in enumerate(done):
            if n in lost:
                log.warning("lease lost: %s job=%s queue=%s was not acked: %s",
                            outcome.task, job.job_id, queue, lost[n])
            elif log.isEnabledFor(logging.DEBUG):
                log.debug("done %s job=%s queue=%s attempt=%d/%d in %.1f ms", outcome.task,
                          job.job_id, job.queue, job.attempt, job.max_attempts, elapsed_ms)

    def _log_failures(self, queue: str, done: list[tuple[ReservedJob, Outcome, float]], reply: Any) -> None:
        self.failures += len(done)
        if isinstance(reply, Exception):
            log.error("ack of %d failed job(s) in queue %s failed (they run again after their lease): %s",
                      len(done), queue, reply)
            return
        for (job, outcome, elapsed_ms), result in zip(done, parse_ack_fail_batch(reply)):
            first_line = outcome.error.split("\n", 1)[0]
            if not isinstance(result, AckFailResult):
                log.warning("lease lost: %s job=%s queue=%s failed but was not acked: %s",
                            outcome.task or "?", job.job_id, queue, result)
            elif result.status == "RETRY":
                log.warning("failed %s job=%s queue=%s attempt=%d/%d in %.1f ms, retry at %s: %s",
                            outcome.task, job.job_id, queue, job.attempt, job.max_attempts,
                            elapsed_ms, result.due_ms, first_line)
            else:
                log.error("failed %s job=%s queue=%s attempt=%d/%d in %.1f ms, for good: %s",
                          outcome.task or "?", job.job_id, queue, job.attempt, job.max_attempts,
                          elapsed_ms, first_line)

    # -- leases and maintenance --------------------------------------------------------

    def _heartbeat(self, now: float) -> None:
        """Renew every lease that is a third of the way through, in one round trip."""
        due = self.leases.due(now)
        groups: list[list[Lease]] = []
        by_queue: dict[str, list[Lease]] = {}
        for lease in due:
            by_queue.setdefault(lease.job.queue, []).append(lease)
        for held in by_queue.values():
            groups += [held[i:i + BATCH_MAX] for i in range(0, len(held), BATCH_MAX)]
        try:
            replies = self.client.scripts.call_many([
                self.client.heartbeat_batch_call(g[0].job.queue, [(x.job.job_id, x.job.lease_token) for x in g])
                for g in groups])
        except UNREACHABLE:
            self.leases.retry_later(due, now, TROUBLE_RETRY_S)
            self.leases.reschedule()
            raise
        for group, reply in zip(groups, replies):
            if isinstance(reply, Exception):  # e.g. Redis busy: try again soon, say so once
                self._trouble("heartbeat", f"renewing {len(group)} lease(s) failed, retrying every "
                                           f"{TROUBLE_RETRY_S} s: {reply}")
                self.leases.retry_later(group, now, TROUBLE_RETRY_S)
                continue
            self._trouble_over("heartbeat")
            server_now, locks = parse_heartbeat_batch(reply)
            for lease, lock in zip(group, locks):
                if isinstance(lock, int):
                    self.leases.renewed(lease, now, lock, server_now)
                else:
                    lease.lost = True
                    log.warning("lease lost: job=%s queue=%s (%s); it will not be acked",
                                lease.job.job_id, lease.job.queue, lock)
        self.leases.reschedule()

    def _maintain(self) -> None:
        """promote_delayed and reap_leases on every queue, in one round trip."""
        calls: list[ScriptCall] = []
        for queue in self.queues:
            calls += self.client.maintenance_calls(queue)
        try:
            replies = self.client.scripts.call_many(calls)
        except redis_lib.RedisError as exc:
            self._trouble("maintenance", f"maintenance of queues {','.join(self.queues)} failed: {exc}")
            return
        errors = [f"{name} on {anchor}: {reply}" for (name, anchor, _), reply in zip(calls, replies)
                  if isinstance(reply, Exception)]
        if errors:
            self._trouble("maintenance", "maintenance failed: " + "; ".join(errors))
        else:
            self._trouble_over("maintenance")

    # -- the loop --------------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped (signal or ``stop()``), or until idle with ``drain``; returns an exit code."""
        self._install_signals()
        log.info("worker for app %s: queues %s, concurrency %d", self.app.name,
                 ",".join(self.queues), self.concurrency)
        try:
            self._check_access()
            while not self._stopping.is_set():
                try:
                    started = self._step(time.monotonic())
                except UNREACHABLE as exc:
                    self._redis_down(exc)
                    self._unsent += self._drain_events()
                    continue
                self._outage_s = 0.0
                if self.drain and self._drained(started):
                    log.info("drained: nothing left to run in %s", ",".join(self.queues))
                    break
                if started and len(self.leases) < self.concurrency:
                    self._unsent += self._drain_events()  # more may be runnable: ask again at once
                else:
                    self._unsent += self._wait()
            return self._finish()
        finally:
            self.runner.stop()

    def _check_access(self) -> None:
        """Fail at start on what waiting cannot fix: a wrong password or user, a certificate
        that does not verify. A Redis that is not up yet is waited for, as in an outage."""
        try:
            self.client.redis.ping()
        except (redis_lib.AuthenticationError, redis_lib.exceptions.AuthorizationError) as exc:
            raise OmniqError(f"redis at {redact_url(self.app.redis_url)} refused this worker: {exc}") from None
        except redis_lib.ConnectionError as exc:
            if "certificate verify failed" in str(exc):
                raise OmniqError(f"cannot use redis at {redact_url(self.app.redis_url)}: {exc}") from None
        except redis_lib.RedisError:  # e.g. an ACL without PING: the loop shows what else fails
            pass
        self._check_eviction()

    def _check_eviction(self) -> None:
        """Say loudly when Redis may evict keys: eviction deletes jobs without a trace."""
        try:
            info = self.client.redis.info("memory")
        except redis_lib.RedisError as exc:  # an ACL without INFO, a server away: not our call to make
            log.debug("could not read the server's maxmemory-policy: %s", exc)
            return
        policies = {str(v.get("maxmemory_policy")) for v in info.values() if isinstance(v, dict)} \
            if "maxmemory_policy" not in info else {str(info["maxmemory_policy"])}
        for policy in sorted(policies - {"noeviction", "None"}):
            if policy.startswith("volatile-"):
                log.warning("redis maxmemory-policy is %s: when full, Redis deletes keys that have a TTL "
                            "(replay memory, fan-in markers); use noeviction", policy)
            else:
                log.error("redis maxmemory-policy is %s: when full, Redis DELETES JOBS without a trace; "
                          "set maxmemory-policy noeviction on any Redis that holds queues", policy)

    def _drained(self, started: int) -> bool:
        return not (started or self.leases or self._unsent or self._corrupt or self._pending)

    def _redis_down(self, exc: Exception, limit_s: float = 10.0) -> None:
        """Back off (0.5 s doubling to 10 s) while Redis is unreachable; jobs keep running."""
        self._outage_s = min(max(self._outage_s * 2, 0.5), 10.0, limit_s)
        log.error("redis unreachable (%s); retrying in %.1f s with %d job(s) running",
                  exc, self._outage_s, len(self.leases))
        if self._stopping.is_set():  # stopping already: wait() would return at once
            time.sleep(self._outage_s)
        else:
            self._stopping.wait(self._outage_s)

    def _wait(self) -> list[Finished]:
        """Block until a job finishes, a publisher wakes us, or a timer is due."""
        now = time.monotonic()
        until = min(self.leases.next_due, self._next_maintenance, now + self.poll_interval_s)
        if len(self.leases) < self.concurrency:
            self._ensure_waker()
            self._idle.set()
        finished = self._drain_events(block_s=max(until - now, 0.001))
        self._idle.clear()
        return finished

    def _ensure_waker(self) -> None:
        if self._waker is None:
            self._waker = threading.Thread(target=self._wake_loop, name="omniq-waker", daemon=True)
            self._waker.start()

    def _wake_loop(self) -> None:
        """Block on the queues' wake lists (pushed by our publishers) while we have free slots."""
        conn = self.client.redis
        wake_keys = [keys.wake_key(q) for q in self.queues]
        single_slot = len(wake_keys) == 1 or not self.app.cluster
        while not self._stopping.is_set():
            if not self._idle.wait(timeout=1.0):
                continue
            try:
                if single_slot:
                    got = conn.blpop(wake_keys, timeout=self.poll_interval_s)
                else:  # cluster: one slot per queue, BLPOP cannot span them
                    got = conn.blpop(wake_keys[:1], timeout=self.poll_interval_s)
            except Exception as exc:  # a lost connection, or the pool closed at shutdown
                if self._stopping.is_set():
                    return
                log.debug("wake wait failed: %s", exc)
                self._stopping.wait(self.poll_interval_s)
                continue
            if got:
                self._events.put(_WAKE)

    def _finish(self) -> int:
        """Let running jobs finish within the grace period, acking each as it ends.

        Whatever finished before the process exits is acked; a job still running
        when the grace period is over is left to its lease (it runs again elsewhere).
        """
        deadline = time.monotonic() + self.grace_s
        self._unsent += self._drain_events()
        if self.leases:
            log.info("stopping: waiting up to %.0f s for %d running job(s)", self.grace_s, len(self.leases))
        while time.monotonic() < deadline and (self.leases or self._pending):
            now = time.monotonic()
            try:
                if now >= self.leases.next_due:
                    self._heartbeat(now)
                self._exchange(now)
            except UNREACHABLE as exc:
                self._redis_down(exc, limit_s=max(deadline - time.monotonic(), 0.0))
            if self.leases:
                self._unsent += self._drain_events(block_s=min(0.2, max(deadline - time.monotonic(), 0.001)))
        self._unsent += self._drain_events()
        if self._unsent or self._pending:  # finished at the very end: ack them too
            try:
                self._exchange(time.monotonic())
            except UNREACHABLE as exc:
                log.error("could not ack %d finished job(s) before exiting (they run again after "
                          "their lease): %s", len(self._unsent), exc)
        if self.leases:
            log.warning("grace period over: %d job(s) left unacked; they run again after their lease",
                        len(self.leases))
        return 0

    def stop(self) -> None:
        """Stop reserving; running jobs finish within the grace period."""
        self._stopping.set()
        self._events.put(_WAKE)

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handle(signum: int, frame: Any) -> None:
            self._signals += 1
            if self._signals > 1:
                log.warning("second signal: exiting now; %d unacked job(s) run again after their lease",
                            len(self.leases))
                os._exit(1)
            log.info("signal %s: finishing running jobs, then exiting (signal again to exit now)",
                     signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
