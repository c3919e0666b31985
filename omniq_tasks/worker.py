"""The worker loop: reserve into free slots, run, ack, heartbeat, maintain.

One thread owns every Redis call of the loop; jobs run in a runner (threads,
processes, or the event loop for ``async def`` tasks) and report back through
an in-memory queue, so acks go out in batches and one heartbeat pass serves
every running job. ``Worker.step()`` is one pass of the loop, for tests.

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
from .client import _text, parse_ack_batch, parse_reserved
from .errors import OmniqError
from .execution import Outcome
from .models import QueuePaused, ReservedJob
from .scripts import ScriptCall
from .runners import ProcessRunner, ThreadRunner

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


class Running:
    """A job this worker holds a lease on."""

    __slots__ = ("job", "started", "renew_at", "lost")

    def __init__(self, job: ReservedJob, now: float, renew_every: float) -> None:
        self.job = job
        self.started = now
        self.renew_at = now + renew_every
        self.lost = False


def renew_interval(timeout_ms: int) -> float:
    """Heartbeat after a third of the lease, so two beats can fail before it expires."""
    return max(timeout_ms / 3000.0, 0.05)


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
        self.running: dict[str, Running] = {}
        self.processed = 0
        self.failures = 0
        self._summary = (time.monotonic(), 0, 0)  # when, processed, failures at the last summary
        self._events: queue_mod.SimpleQueue[Any] = queue_mod.SimpleQueue()
        self._paused_until: dict[str, float] = {}
        self._next_maintenance = 0.0
        self._next_heartbeat = float("inf")
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

    # -- one pass ---------------------------------------------------------------------

    def _done(self, job: ReservedJob, outcome: Outcome) -> None:
        self._events.put((job, outcome))

    def step(self) -> int:
        """Ack what finished, heartbeat, maintain, fill free slots; returns jobs started."""
        return self._step(self._drain_events())

    def _step(self, finished: list[tuple[ReservedJob, Outcome]]) -> int:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._heartbeat(now)
        if now >= self._next_maintenance:
            self._maintain()
            self._next_maintenance = now + self.maintenance_interval_s
            if now - self._summary[0] >= SUMMARY_INTERVAL_S:
                self._log_summary(now)
        return self._exchange(finished, now)

    def _drain_events(self, block_s: float = 0.0) -> list[tuple[ReservedJob, Outcome]]:
        """Take what finished; with ``block_s``, wait up to that long for the first event.

        After the first, keep taking events while they arrive less than LINGER_S
        apart: fast jobs leased together finish together, and one round trip then
        acks them all (and refills their slots) instead of one pass per job.
        """
        finished: list[tuple[ReservedJob, Outcome]] = []
        get = self._events.get
        try:
            item = get(timeout=block_s) if block_s > 0 else get(block=False)
            while True:
                if item is not _WAKE:
                    finished.append(item)
                if len(finished) >= len(self.running):
                    item = get(block=False)
                else:
                    item = get(timeout=LINGER_S)
        except queue_mod.Empty:
            pass
        return finished

    def _exchange(self, finished: list[tuple[ReservedJob, Outcome]], now: float) -> int:
        """Ack what finished and lease jobs into the free slots, in one round trip.

        If Redis cannot be reached this raises before anything changes here, and the
        caller passes the same ``finished`` again later.
        """
        calls: list[ScriptCall] = []
        on_reply: list[Callable[[Any], None]] = []
        succeeded: dict[str, list[tuple[ReservedJob, Outcome, float]]] = {}
        for job, outcome in finished:
            entry = self.running.get(job.job_id)
            elapsed_ms = (now - entry.started) * 1000 if entry else 0.0
            if entry is not None and entry.lost:
                log.warning("lease lost: %s job=%s queue=%s finished after its lease ended; not acked",
                            outcome.task, job.job_id, job.queue)
            elif outcome.ok:
                succeeded.setdefault(job.queue, []).append((job, outcome, elapsed_ms))
            else:
                args: list[Any] = [job.job_id, 0, job.lease_token, outcome.error]
                if outcome.final:
                    args.append("1")
                calls.append(("ack_fail", keys.queue_anchor(job.queue), args))
                on_reply.append(partial(self._log_failure, job, outcome, elapsed_ms))
        for queue, done in succeeded.items():
            args = [0, len(done)]
            for job, _, _ in done:
                args += (job.job_id, job.lease_token)
            calls.append(("ack_success_batch", keys.queue_anchor(queue), args))
            on_reply.append(partial(self._log_acked, queue, done))

        ready = [q for q in self.queues if self._paused_until.get(q, 0.0) <= now]
        free = self.concurrency - len(self.running) + len(finished)
        reserving = free > 0 and bool(ready) and not self._stopping.is_set()
        if reserving:
            calls.append(("reserve_batch", keys.queue_anchor(ready[0]), (0, free)))
        if not calls:
            return 0
        replies = self.client.scripts.call_many(calls)
        for job, _ in finished:
            self.running.pop(job.job_id, None)
        self.processed += len(finished)
        for handle, reply in zip(on_reply, replies):
            handle(reply)
        if not reserving:
            return 0
        started = self._start(ready[0], replies[-1], now)
        for queue in ready[1:]:  # later queues only get what the earlier ones left
            free = self.concurrency - len(self.running)
            if free <= 0:
                break
            started += self._start(queue, self.client.scripts.call(
                "reserve_batch", keys.queue_anchor(queue), (0, free)), now)
        return started

    def _start(self, queue: str, reply: Any, now: float) -> int:
        if isinstance(reply, Exception):
            raise reply
        jobs = parse_reserved(queue, reply)
        if isinstance(jobs, QueuePaused):
            self._paused_until[queue] = now + self.paused_backoff_s
            return 0
        for job in jobs:
            renew = renew_interval(job.timeout_ms)
            self.running[job.job_id] = Running(job, now, renew)
            self._next_heartbeat = min(self._next_heartbeat, now + renew)
            self.runner.submit(job)
        return len(jobs)

    def _log_summary(self, now: float) -> None:
        since, processed, failures = self._summary
        if self.processed > processed:
            done = self.processed - processed
            log.info("processed %d job(s) in the last %.0f s (%.0f/s), %d of them failed; %d running",
                     done, now - since, done / (now - since), self.failures - failures, len(self.running))
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

    def _log_failure(self, job: ReservedJob, outcome: Outcome, elapsed_ms: float, reply: Any) -> None:
        self.failures += 1
        first_line = outcome.error.split("\n", 1)[0]
        status = _text(reply[0]) if isinstance(reply, list) and reply else ""
        if isinstance(reply, Exception) or status == "ERR":
            why = reply if isinstance(reply, Exception) else _text(reply[1])
            log.warning("lease lost: %s job=%s queue=%s failed but was not acked: %s",
                        outcome.task or "?", job.job_id, job.queue, why)
        elif status == "RETRY":
            log.warning("failed %s job=%s queue=%s attempt=%d/%d in %.1f ms, retry at %s: %s",
                        outcome.task, job.job_id, job.queue, job.attempt, job.max_attempts,
                        elapsed_ms, _text(reply[1]), first_line)
        else:
            log.error("failed %s job=%s queue=%s attempt=%d/%d in %.1f ms, for good: %s",
                      outcome.task or "?", job.job_id, job.queue, job.attempt, job.max_attempts,
                      elapsed_ms, first_line)

    def _heartbeat(self, now: float) -> None:
        """Extend every lease that is a third of the way through, in one round trip."""
        due = [r for r in self.running.values() if r.renew_at <= now and not r.lost]
        replies = self.client.scripts.call_many([
            ("heartbeat", keys.queue_anchor(r.job.queue), (r.job.job_id, 0, r.job.lease_token)) for r in due])
        for entry, reply in zip(due, replies):
            job = entry.job
            status = _text(reply[0]) if isinstance(reply, list) and reply else ""
            if status == "OK":
                entry.renew_at = now + renew_interval(job.timeout_ms)
            elif status == "ERR":
                entry.lost = True
                log.warning("lease lost: job=%s queue=%s (%s); it will not be acked",
                            job.job_id, job.queue, _text(reply[1]))
            else:  # an error reply: try again on the next pass
                log.warning("heartbeat of job=%s queue=%s failed: %r", job.job_id, job.queue, reply)
        self._next_heartbeat = min((r.renew_at for r in self.running.values() if not r.lost),
                                   default=float("inf"))

    def _maintain(self) -> None:
        """promote_delayed and reap_expired on every queue, in one round trip."""
        calls: list[ScriptCall] = []
        for queue in self.queues:
            anchor = keys.queue_anchor(queue)
            calls += [("promote_delayed", anchor, (0, 1000)), ("reap_expired", anchor, (0, 1000))]
        try:
            replies = self.client.scripts.call_many(calls)
        except redis_lib.RedisError as exc:
            log.warning("maintenance of queues %s failed: %s", ",".join(self.queues), exc)
            return
        for (name, anchor, _), reply in zip(calls, replies):
            if isinstance(reply, Exception):
                log.warning("%s on %s failed: %s", name, anchor, reply)

    # -- the loop --------------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped (signal or ``stop()``), or until idle with ``drain``; returns an exit code."""
        self._install_signals()
        log.info("worker for app %s: queues %s, concurrency %d", self.app.name,
                 ",".join(self.queues), self.concurrency)
        try:
            finished: list[tuple[ReservedJob, Outcome]] = []
            while not self._stopping.is_set():
                try:
                    started = self._step(finished)
                except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
                    self._redis_down(exc)
                    finished += self._drain_events()
                    continue
                self._outage_s = 0.0
                if self.drain and not started and not self.running:
                    log.info("drained: nothing left to run in %s", ",".join(self.queues))
                    break
                if started and len(self.running) < self.concurrency:
                    finished = self._drain_events()  # more may be runnable: ask again at once
                else:
                    finished = self._wait()
            return self._finish(finished)
        finally:
            self.runner.stop()

    def _redis_down(self, exc: Exception) -> None:
        """Back off (0.5 s doubling to 10 s) while Redis is unreachable; jobs keep running."""
        self._outage_s = min(max(self._outage_s * 2, 0.5), 10.0)
        log.error("redis unreachable (%s); retrying in %.1f s with %d job(s) running",
                  exc, self._outage_s, len(self.running))
        self._stopping.wait(self._outage_s)

    def _wait(self) -> list[tuple[ReservedJob, Outcome]]:
        """Block until a job finishes, a publisher wakes us, or a timer is due."""
        now = time.monotonic()
        until = min(self._next_heartbeat, self._next_maintenance, now + self.poll_interval_s)
        if len(self.running) < self.concurrency:
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
        wake_keys = [keys.queue_base(q) + ":wake" for q in self.queues]
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

    def _finish(self, finished: list[tuple[ReservedJob, Outcome]]) -> int:
        """Ack ``finished``, let running jobs finish within the grace period and ack them."""
        deadline = time.monotonic() + self.grace_s
        finished += self._drain_events()
        if self.running:
            log.info("stopping: waiting up to %.0f s for %d running job(s)", self.grace_s, len(self.running))
        while self.running and time.monotonic() < deadline:
            now = time.monotonic()
            try:
                if now >= self._next_heartbeat:
                    self._heartbeat(now)
                self._exchange(finished, now)
                finished = []
            except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
                self._redis_down(exc)
            finished += self._drain_events(block_s=min(0.2, max(deadline - now, 0.001)))
        if self.running:
            log.warning("grace period over: %d job(s) left unacked; they run again after their lease",
                        len(self.running))
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
                            len(self.running))
                os._exit(1)
            log.info("signal %s: finishing running jobs, then exiting (signal again to exit now)",
                     signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
