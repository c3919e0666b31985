"""The worker's round trip: ack what finished and lease jobs into the free slots, at once.

Every call here is safe to send twice: a round trip that fails stays pending and
is sent again with the very same arguments (the batch scripts answer a repeat
with their first answer, see docs/reliability.md), never rebuilt, so a reserve
that Redis ran before the connection dropped is not run a second time.

Queue order: with several queues, each round trip fills free slots from the
first queue first and moves to the next only while slots remain.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable, Sequence

from ..defaults import MAX_CALL_JOBS
from ..protocol.client import (
    CorruptLease, OmniqClient, StoredResult, parse_ack_batch, parse_ack_fail_batch, parse_leases)
from ..outcome import Outcome
from .leases import Leases
from ..middleware import AckResult, Hooks
from ..protocol.models import AckFailResult, QueuePaused, ReservedJob
from ..protocol.scripts import ScriptCall
from ..registry import Registry
from ..results import TOO_LARGE_MARK
from .execution import server_now_ms, utc_clock
from .troubles import Troubles

log = logging.getLogger("omniq_tasks.worker")

Finished = tuple[ReservedJob, Outcome]
Settled = list[tuple[ReservedJob, Outcome, float]]  # with the ms since it was leased
_LATE = AckResult("lost", reason="finished after its lease ended")


class Exchange:
    """One round trip: the calls, what to do with each reply, and what it settles.

    Built once and kept until Redis answered it: a failed send is repeated as it is.
    """

    __slots__ = ("calls", "handlers", "settles", "unacked", "reserve", "then", "first_sent")

    def __init__(self) -> None:
        self.calls: list[ScriptCall] = []
        self.handlers: list[Callable[[Any], None]] = []
        self.settles: list[str] = []   # job ids whose results these calls report
        self.unacked: list[Finished] = []  # settled without an ack: their lease had ended
        self.reserve: str | None = None  # queue of the last call, a reserve_batch
        self.then: list[str] = []      # queues to lease from next, while slots stay free
        # When it was first sent (monotonic): a resend's leases may date from then.
        self.first_sent: float | None = None


class Exchanger:
    """Builds, sends and settles the round trips of one worker.

    ``unsent`` (finished jobs) and ``corrupt`` (leased jobs that cannot run) go
    into the next round trip; ``pending`` is one Redis has not answered yet.
    Leased jobs are added to ``leases`` and handed to ``start``.
    """

    def __init__(self, client: OmniqClient, queues: Sequence[str], concurrency: int, leases: Leases,
                 start: Callable[[ReservedJob], None], troubles: Troubles, hooks: Hooks,
                 paused_backoff_s: float, registry: Registry | None = None) -> None:
        self.client = client
        self.queues = list(queues)
        self.concurrency = concurrency
        self.leases = leases
        self.start = start
        self.troubles = troubles
        self.hooks = hooks
        self.paused_backoff_s = paused_backoff_s
        self.unsent: list[Finished] = []
        self.corrupt: list[CorruptLease] = []
        self.pending: Exchange | None = None
        self.paused_until: dict[str, float] = {}
        self.processed = 0
        self.failures = 0
        # Results: the tasks (their store_result, result_ttl), and per task name its
        # TTL in ms, 0 when it stores none (filled on first use).
        self.registry = registry
        self.result_ttls: dict[str, int] = {}

    def busy(self) -> bool:
        """Something is still to be sent or resent."""
        return bool(self.unsent or self.corrupt or self.pending)

    def exchange(self, now: float, leasing: bool = True) -> int:
        """Ack what finished and (while ``leasing``) lease into the free slots; returns jobs started.

        A round trip that fails stays pending and is sent again, unchanged, first;
        ConnectionError/TimeoutError are raised to the loop, which backs off.
        """
        started = self._send(now) if self.pending is not None else 0
        if self.unsent or self.corrupt or leasing:
            self.pending = self._build(now, leasing)
            if self.pending is not None:
                started += self._send(now)
        return started

    def _build(self, now: float, leasing: bool) -> Exchange | None:
        ex = Exchange()
        succeeded: dict[str, Settled] = {}
        failed: dict[str, Settled] = {}
        for job, outcome in self.unsent:
            lease = self.leases.get(job.job_id)
            ex.settles.append(job.job_id)
            elapsed_ms = (now - lease.started) * 1000 if lease else 0.0
            if lease is None or lease.lost:
                log.warning("lease lost: %s job=%s queue=%s finished after its lease ended; not acked",
                            outcome.task or "?", job.job_id, job.queue)
                ex.unacked.append((job, outcome))
            else:
                (succeeded if outcome.ok else failed).setdefault(job.queue, []).append((job, outcome, elapsed_ms))
        for bad in self.corrupt:
            failed.setdefault(bad.job.queue, []).append(
                (bad.job, Outcome(False, "", f"corrupt job, not run: {bad.problem}", final=True), 0.0))
        self.unsent, self.corrupt = [], []
        for queue, done in succeeded.items():
            for i in range(0, len(done), MAX_CALL_JOBS):
                chunk = done[i:i + MAX_CALL_JOBS]
                ex.calls.append(self.client.ack_success_batch_call(
                    queue, [(job.job_id, job.lease_token) for job, _, _ in chunk],
                    results=self._results(chunk)))
                ex.handlers.append(partial(self._acked, queue, chunk))
        for queue, done in failed.items():
            for i in range(0, len(done), MAX_CALL_JOBS):
                chunk = done[i:i + MAX_CALL_JOBS]
                # retry_at_ms: when the task's policy wants the retry (0: the job's backoff_ms)
                ex.calls.append(self.client.ack_fail_batch_call(
                    queue, [(job.job_id, job.lease_token, o.error, o.final, o.retry_at_ms or 0)
                            for job, o, _ in chunk]))
                ex.handlers.append(partial(self._failed, queue, chunk))
        ready = [q for q in self.queues if self.paused_until.get(q, 0.0) <= now]
        free = min(self.concurrency - len(self.leases) + len(ex.settles), MAX_CALL_JOBS)
        if free > 0 and ready and leasing:
            ex.calls.append(self.client.reserve_batch_call(ready[0], free))
            ex.reserve, ex.then = ready[0], ready[1:]
        return ex if ex.calls or ex.settles else None

    def _results(self, chunk: Settled) -> list[StoredResult]:
        """The return values to store with a chunk's ack: (position, ttl_ms, JSON)."""
        out: list[StoredResult] = []
        for n, (job, outcome, _) in enumerate(chunk):
            if not outcome.result:  # returned None (or nothing encodable): nothing to store
                continue
            ttl = self.result_ttls.get(outcome.task)
            if ttl is None:
                ttl = self.result_ttls[outcome.task] = self._result_ttl(outcome.task)
            if not ttl:
                continue
            data = outcome.result
            limit = self.client.max_payload_bytes
            if len(data) > limit:
                log.warning("%s job=%s queue=%s returned %d bytes of JSON, over the payload limit of %d: "
                            "the result is not stored (get() raises ResultTooLargeError)",
                            outcome.task, job.job_id, job.queue, len(data), limit)
                data = TOO_LARGE_MARK + f"{len(data)}:{limit}".encode()
            out.append((n, ttl, data))
        return out

    def _result_ttl(self, name: str) -> int:
        task = self.registry.get(name) if self.registry is not None else None
        if task is None or not task.policy.store_result:
            return 0
        return max(1, int(task.policy.result_ttl * 1000))

    def _send(self, now: float) -> int:
        """Send the pending round trip; on success settle it and return the jobs started."""
        ex = self.pending
        assert ex is not None
        if ex.first_sent is None:
            ex.first_sent = now
        replies = self.client.scripts.call_many(ex.calls)  # raises (kept pending) if Redis is unreachable
        self.pending = None
        for job_id in ex.settles:
            self.leases.pop(job_id)
        self.processed += len(ex.settles)
        for handle, reply in zip(ex.handlers, replies):
            handle(reply)
        if ex.unacked and self.hooks.after_ack:
            for job, outcome in ex.unacked:
                self.hooks.run_after_ack(job, outcome, _LATE)
        if ex.reserve is None:
            return 0
        started = self._lease(ex.reserve, replies[-1], now, ex.first_sent)
        free = min(self.concurrency - len(self.leases), MAX_CALL_JOBS)
        if ex.then and free > 0:  # later queues only get what the earlier ones left
            nxt = Exchange()
            nxt.calls.append(self.client.reserve_batch_call(ex.then[0], free))
            nxt.reserve, nxt.then = ex.then[0], ex.then[1:]
            self.pending = nxt
            started += self._send(now)
        return started

    def _lease(self, queue: str, reply: Any, now: float, sent_at: float) -> int:
        if isinstance(reply, Exception):
            self.troubles.start("reserve", f"leasing jobs from queue {queue} failed (retrying in "
                                           f"{self.paused_backoff_s:.1f} s): {reply}")
            self.paused_until[queue] = now + self.paused_backoff_s
            return 0
        self.troubles.over("reserve")
        parsed = parse_leases(queue, reply, sent_at=sent_at)
        if isinstance(parsed, QueuePaused):
            self.paused_until[queue] = now + self.paused_backoff_s
            return 0
        jobs, corrupt = parsed
        for bad in corrupt:
            log.error("job=%s queue=%s cannot be run and is failed: %s", bad.job.job_id, queue, bad.problem)
        self.corrupt += corrupt
        add, start = self.leases.add, self.start
        for job in jobs:
            add(job, now)
            start(job)
        return len(jobs)

    # -- what Redis answered to the acks --------------------------------------------

    def _acked(self, queue: str, done: Settled, reply: Any) -> None:
        after_ack = self.hooks.after_ack
        if isinstance(reply, Exception):
            self._not_acked("finished", queue, done, reply)
            return
        lost = parse_ack_batch(reply)
        debug = log.isEnabledFor(logging.DEBUG)
        if lost or debug:
            for n, (job, outcome, elapsed_ms) in enumerate(done):
                if n in lost:
                    log.warning("lease lost: %s job=%s queue=%s was not acked: %s",
                                outcome.task, job.job_id, queue, lost[n])
                elif debug:
                    log.debug("done %s job=%s queue=%s attempt=%d/%d in %.1f ms", outcome.task,
                              job.job_id, job.queue, job.attempt, job.max_attempts, elapsed_ms)
        if after_ack:
            completed = AckResult("completed")
            for n, (job, outcome, _) in enumerate(done):
                self.hooks.run_after_ack(
                    job, outcome, AckResult("lost", reason=lost[n]) if n in lost else completed)

    def _not_acked(self, kind: str, queue: str, done: Settled, reply: Exception) -> None:
        """A whole ack call failed (an error reply): say so once, and tell the hooks."""
        log.error("ack of %d %s job(s) in queue %s failed (they run again after their lease): %s",
                  len(done), kind, queue, reply)
        if self.hooks.after_ack:
            error = AckResult("error", reason=str(reply))
            for job, outcome, _ in done:
                self.hooks.run_after_ack(job, outcome, error)

    def _failed(self, queue: str, done: Settled, reply: Any) -> None:
        self.failures += len(done)
        after_ack = self.hooks.after_ack
        if isinstance(reply, Exception):
            self._not_acked("failed", queue, done, reply)
            return
        for (job, outcome, elapsed_ms), result in zip(done, parse_ack_fail_batch(reply)):
            first_line = outcome.error.split("\n", 1)[0]
            if not isinstance(result, AckFailResult):
                log.warning("lease lost: %s job=%s queue=%s failed but was not acked: %s",
                            outcome.task or "?", job.job_id, queue, result)
            elif result.status == "RETRY":
                due_ms = result.due_ms or 0
                log.warning("failed %s job=%s queue=%s attempt=%d/%d in %.1f ms, retry in %.1f s at %s: %s",
                            outcome.task, job.job_id, queue, job.attempt, job.max_attempts, elapsed_ms,
                            max(due_ms - server_now_ms(job), 0) / 1000, utc_clock(due_ms), first_line)
            else:
                log.error("failed %s job=%s queue=%s attempt=%d/%d in %.1f ms, for good: %s",
                          outcome.task or "?", job.job_id, queue, job.attempt, job.max_attempts,
                          elapsed_ms, first_line)
            if after_ack:
                self.hooks.run_after_ack(job, outcome, _ack_result(result))


def _ack_result(result: AckFailResult | str) -> AckResult:
    if not isinstance(result, AckFailResult):
        return AckResult("lost", reason=result)
    if result.status == "RETRY":
        return AckResult("retry", due_ms=result.due_ms)
    return AckResult("failed")
