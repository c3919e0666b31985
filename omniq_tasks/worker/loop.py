"""The worker loop: reserve into free slots, run, ack, renew leases, maintain.

One thread owns every Redis call of the loop; jobs run in a runner (threads,
processes, the event loop for ``async def`` tasks, or inline for tests) and
report back through an in-memory queue, so acks go out in batches and one
renewal pass serves every running job. The loop is made of parts, each testable
on its own: the round trip that acks and leases (exchange.py, resent unchanged
after a failure), lease renewal (renewal.py, scheduled by leases.py),
maintenance (maintenance.py) and the runner (runners.py, process_pool.py).
``Worker.step()`` is one pass of the loop; with ``clock`` and
``pool="inline"`` a test drives the loop in-process, pass by pass.
"""

from __future__ import annotations

import logging
import os
import queue as queue_mod
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import redis as redis_lib
from redis.cluster import RedisCluster
from redis.crc import key_slot

from ..protocol import keys
from ..errors import OmniqError
from .exchange import Exchanger, Finished
from ..outcome import Outcome
from .leases import Leases
from .maintenance import Maintenance
from ..middleware import Hooks
from ..protocol.models import ReservedJob
from .renewal import Renewal
from ..protocol.urls import redact_url
from .process_pool import ProcessRunner
from .runners import InlineRunner, Runner, RunnerFactory, ThreadRunner
from .execution import utc_clock
from .troubles import Troubles
from .flows import Flows, carries_flow
from .fanout_sweeper import FanoutSweeper
from .presence import Presence

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("omniq_tasks.worker")  # the name users configure

_WAKE = object()
# Jobs leased at once by default with the thread pool. Threads start only when
# needed, so fast tasks use a few; the slots bound how much one pass can ack and
# lease, which is what sets the throughput of short tasks.
DEFAULT_THREAD_SLOTS = 32
# How often an INFO line sums up what was processed (per-job lines are DEBUG).
SUMMARY_INTERVAL_S = 60.0
# How long to keep collecting finished jobs once one finished (see _drain_events).
LINGER_S = 0.0002
# Errors that mean Redis could not be reached; the loop backs off and retries.
UNREACHABLE = (redis_lib.ConnectionError, redis_lib.TimeoutError)
POOLS = ("threads", "processes", "inline")
# With drain: delayed jobs (retries) due within this many seconds are waited for.
DRAIN_WAIT_S = 30.0


class Worker:
    """Runs the tasks of ``app`` from ``queues`` (default: every queue of its tasks).

    ``pool``: "threads", "processes" (needs ``app_path``) or "inline" (each job
    runs inside the pass that leased it, for tests); ``drain``: exit once nothing
    is left to run, waiting for delayed jobs (retries) due within ``drain_wait_s``;
    ``runner`` makes a runner
    of your own from the ``on_done`` it must report to. ``clock`` is the
    monotonic clock (seconds) that schedules renewals and maintenance.
    """

    def __init__(
        self,
        app: App,
        queues: Sequence[str] | None = None,
        *,
        concurrency: int | None = None,
        pool: str = "threads",
        app_path: str | None = None,
        drain: bool = False,
        drain_wait_s: float = DRAIN_WAIT_S,
        grace_s: float = 30.0,
        poll_interval_s: float = 1.0,
        maintenance_interval_s: float = 1.0,
        paused_backoff_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        runner: RunnerFactory | None = None,
    ) -> None:
        self.app = app
        self.client = app.client
        self.queues = [keys.validate_queue(q) for q in (queues or app.registry.queues())]
        if not self.queues:
            raise OmniqError("no queues to work on: register a task or pass queues")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(map(repr, POOLS))}, not {pool!r}")
        self.concurrency = concurrency or (os.cpu_count() or 2 if pool == "processes" else DEFAULT_THREAD_SLOTS)
        self.drain = drain
        if not drain_wait_s >= 0:
            raise ValueError(f"drain_wait_s must be >= 0 seconds, not {drain_wait_s!r}")
        self.drain_wait_s = drain_wait_s
        self._drain_note = 0.0  # when the wait for a delayed job was last logged
        self.grace_s = grace_s
        self.poll_interval_s = poll_interval_s
        self.maintenance_interval_s = maintenance_interval_s
        self.paused_backoff_s = paused_backoff_s
        self.clock = clock
        self.hooks = Hooks(app.middleware)
        self.leases = Leases()
        self.troubles = Troubles()
        self._events: queue_mod.SimpleQueue[Any] = queue_mod.SimpleQueue()
        self._stopping = threading.Event()
        self._signals = 0
        self._idle = threading.Event()
        if runner is not None:
            self.runner: Runner = runner(self._done)
        elif pool == "processes":
            if not app_path:
                raise ValueError("pool='processes' needs app_path ('module:app') for the children")
            self.runner = ProcessRunner(app_path, self.concurrency, self._done, app.registry.get)
        elif pool == "inline":
            self.runner = InlineRunner(app, self._done)
        else:
            self.runner = ThreadRunner(app, self.concurrency, self._done, on_free=self._slot_freed)
        self.flows = Flows(app, lambda job, outcome: self._events.put((job, outcome)))
        self.sweeper = FanoutSweeper(app)
        self.presence = Presence(self, pool if runner is None else type(self.runner).__name__)
        self.renewal = Renewal(self.client, self.leases, self.troubles)
        self.maintenance = Maintenance(self.client, self.queues, maintenance_interval_s, self.troubles)
        self.exchanger = Exchanger(self.client, self.queues, self.concurrency, self.leases,
                                   self.runner.submit, self.troubles, self.hooks, paused_backoff_s,
                                   registry=app.registry)
        self._summary = (clock(), 0, 0)  # when, processed, failures at the last summary
        self._wakers: list[threading.Thread] = []
        self._outage_s = 0.0

    @property
    def running(self) -> int:
        """Jobs leased and not yet settled."""
        return len(self.leases)

    @property
    def processed(self) -> int:
        """Jobs settled (acked, failed, or found lost)."""
        return self.exchanger.processed

    @property
    def failures(self) -> int:
        """Jobs acked as failed."""
        return self.exchanger.failures

    # -- one pass ---------------------------------------------------------------------

    def _done(self, job: ReservedJob, outcome: Outcome) -> None:
        if carries_flow(job):  # a workflow's job: its step comes before its ack
            self.flows.submit(job, outcome)
        else:
            self._events.put((job, outcome))

    def _slot_freed(self) -> None:
        """A body that outlived its time limit returned (runner thread): lease into its slot."""
        self._events.put(_WAKE)

    def _slots(self) -> int:
        """Slots to lease into: ``concurrency`` less those still taken by bodies past their
        time limit (their jobs are failed already; the runner's ``held_slots``)."""
        return self.concurrency - getattr(self.runner, "held_slots", 0)

    def step(self) -> int:
        """One pass: take what finished, renew due leases, maintain when due, ack and lease.

        Returns the jobs started. Raises ConnectionError/TimeoutError when Redis
        is unreachable (what was not sent is kept and sent by the next pass).
        """
        self.exchanger.unsent += self._drain_events()
        return self._step(self.clock())

    def _step(self, now: float) -> int:
        if self.renewal.due(now):
            self.renewal.renew(now)
        if self.maintenance.due(now):
            self.maintenance.run(now)
        if self.sweeper.due(now):
            self.sweeper.run(now)
            if now - self._summary[0] >= SUMMARY_INTERVAL_S:
                self._log_summary(now)
        if self.presence.due(now):  # the worker record `omniq-tasks workers` reads (presence.py)
            self.presence.run(now)
        self.exchanger.concurrency = self._slots()
        return self.exchanger.exchange(now, not self._stopping.is_set())

    def _drain_events(self, block_s: float = 0.0) -> list[Finished]:
        """Take what finished; with ``block_s``, wait up to that long for the first event.

        After the first, keep taking events while they arrive less than LINGER_S
        apart: fast jobs leased together finish together, and one round trip then
        acks them all (and refills their slots) instead of one pass per job.
        """
        finished: list[Finished] = []
        get = self._events.get
        unsent = self.exchanger.unsent
        try:
            item = get(timeout=block_s) if block_s > 0 else get(block=False)
            while True:
                if item is not _WAKE:
                    finished.append(item)
                if len(finished) + len(unsent) >= len(self.leases):
                    item = get(block=False)
                else:
                    item = get(timeout=LINGER_S)
        except queue_mod.Empty:
            pass
        return finished

    def _log_summary(self, now: float) -> None:
        since, processed, failures = self._summary
        if self.processed > processed:
            done = self.processed - processed
            log.info("processed %d job(s) in the last %.0f s (%.0f/s), %d of them failed; %d running",
                     done, now - since, done / (now - since), self.failures - failures, len(self.leases))
        self._summary = (now, self.processed, self.failures)

    # -- the loop --------------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped (signal or ``stop()``), or until idle with ``drain``; returns an exit code."""
        self._install_signals()
        log.info("worker for app %s: queues %s, concurrency %d", self.app.name,
                 ",".join(self.queues), self.concurrency)
        started_hooks = False
        try:
            self._check_access()
            if self.hooks.on_worker_start:
                self.hooks.run_worker(self.hooks.on_worker_start, self)
            started_hooks = True
            self.presence.start(self.clock())
            exchanger = self.exchanger
            while not self._stopping.is_set():
                try:
                    started = self._step(self.clock())
                except UNREACHABLE as exc:
                    self._redis_down(exc)
                    exchanger.unsent += self._drain_events()
                    continue
                self._outage_s = 0.0
                if self.drain and self._drained(started):
                    log.info("drained: nothing left to run in %s", ",".join(self.queues))
                    break
                if started and len(self.leases) < self._slots():
                    exchanger.unsent += self._drain_events()  # more may be runnable: ask again at once
                else:
                    exchanger.unsent += self._wait()
            return self._finish()
        finally:
            self.runner.stop()
            self.flows.stop()
            self.presence.stop()
            if started_hooks and self.hooks.on_worker_stop:
                self.hooks.run_worker(self.hooks.on_worker_stop, self)

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
        if started or self.leases or self.exchanger.busy():
            return False
        return not self._delayed_soon()

    def _delayed_soon(self) -> bool:
        """A delayed job (a retry, a countdown) of our queues falls due within drain_wait_s.

        Read on the Redis server's clock, the one due times follow; such a job is
        promoted by maintenance when due and run before draining ends.
        """
        if self.drain_wait_s <= 0:
            return False
        try:
            horizon = self.client.server_now_ms() + int(self.drain_wait_s * 1000)
            found = [(queue, self.client.redis.zrangebyscore(
                keys.lane_key(queue, "delayed"), "-inf", horizon, start=0, num=1, withscores=True))
                for queue in self.queues]
        except UNREACHABLE:
            return True  # not drained yet: the next pass meets the outage and waits it out
        except redis_lib.RedisError as exc:  # e.g. an ACL without ZRANGEBYSCORE: drain as before
            log.debug("could not look for delayed jobs: %s", exc)
            return False
        for queue, soon in found:
            if soon:
                now = self.clock()
                if now - self._drain_note >= 10.0:
                    self._drain_note = now
                    log.info("draining: waiting for delayed job(s) in %s, the next due at %s",
                             queue, utc_clock(int(soon[0][1])))
                return True
        return False

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
        now = self.clock()
        until = min(self.leases.next_due, self.maintenance.next_at, now + self.poll_interval_s)
        if len(self.leases) < self._slots():
            self._ensure_waker()
            self._idle.set()
        finished = self._drain_events(block_s=max(until - now, 0.001))
        self._idle.clear()
        return finished

    def _ensure_waker(self) -> None:
        if not self._wakers:
            for n, wake_keys in enumerate(self._wake_groups()):
                waker = threading.Thread(target=self._wake_loop, args=(wake_keys,),
                                         name=f"omniq-waker-{n}", daemon=True)
                self._wakers.append(waker)
                waker.start()

    def _wake_groups(self) -> list[list[str]]:
        """The wake lists, grouped so that one BLPOP can wait on each group.

        Standalone: one group of every queue. Redis Cluster: one group per slot, since
        a BLPOP cannot span slots and each queue's keys share its own hash tag (so
        several queues share a group only when their names hash to the same slot).
        """
        wake_keys = [keys.wake_key(q) for q in self.queues]
        if not isinstance(self.client.redis, RedisCluster):
            return [wake_keys]
        by_slot: dict[int, list[str]] = {}
        for key in wake_keys:
            by_slot.setdefault(key_slot(key.encode()), []).append(key)
        return list(by_slot.values())

    def _wake_loop(self, wake_keys: list[str]) -> None:
        """Block on wake lists (pushed by our publishers) while we have free slots.

        Each waker thread blocks on its own connection (on a cluster, one to the node
        owning its slot); any of them waking sets off the same pass.
        """
        conn = self.client.redis
        while not self._stopping.is_set():
            if not self._idle.wait(timeout=1.0):
                continue
            try:
                got = conn.blpop(wake_keys, timeout=self.poll_interval_s)
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
        # The grace period is real time, whatever clock schedules the passes.
        deadline = time.monotonic() + self.grace_s
        exchanger = self.exchanger
        exchanger.unsent += self._drain_events()
        if self.leases:
            log.info("stopping: waiting up to %.0f s for %d running job(s)", self.grace_s, len(self.leases))
        while time.monotonic() < deadline and (self.leases or exchanger.pending):
            now = self.clock()
            try:
                if self.renewal.due(now):
                    self.renewal.renew(now)
                exchanger.exchange(now, leasing=False)
            except UNREACHABLE as exc:
                self._redis_down(exc, limit_s=max(deadline - time.monotonic(), 0.0))
            if self.leases:
                exchanger.unsent += self._drain_events(block_s=min(0.2, max(deadline - time.monotonic(), 0.001)))
        exchanger.unsent += self._drain_events()
        if exchanger.unsent or exchanger.pending:  # finished at the very end: ack them too
            try:
                exchanger.exchange(self.clock(), leasing=False)
            except UNREACHABLE as exc:
                log.error("could not ack %d finished job(s) before exiting (they run again after "
                          "their lease): %s", len(exchanger.unsent), exc)
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
