"""What a worker does after a workflow job's run and before its ack (docs/workflows.md).

A job whose envelope carries ``meta.flow`` is handed here (its lease is still
renewed meanwhile); the others never are, at the cost of one substring test.

- A chain's step that succeeded publishes the next step (job id ``<chain>.<n+1>``,
  through the queue's once-set: a step run again publishes nothing new). When
  the next step refuses the value, this step fails for good, saying why.
- A fan-out's child that ended for good (succeeded, or failed with no retry
  left) is counted by fanout_child; whoever is answered FIRE publishes the
  callback (once) and notes it.

This is done BEFORE the ack, so a worker that dies in between leaves the job to
run again (its lease ends), and the repeat finds the count or the step already
there. If Redis fails here, a succeeded run is turned into a failure that is
retried (so it is counted later); a failed one is acked as it is and the
sweeper counts it. One thread does it for the whole worker, batching the counts
of the jobs that ended together into one round trip.
"""

from __future__ import annotations

import logging
import os
import queue as queue_mod
import threading
from typing import TYPE_CHECKING, Any, Callable

from ..errors import TaskArgumentError
from ..fanout import child_entry, fire_callback
from ..outcome import Outcome
from ..protocol.client import as_text
from ..protocol.models import ReservedJob
from ..results import result_json
from ..signature import FLOW_MARK, Flow, build_job, chain_meta, read_flow, step_job_id, workflow_ttl_ms

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("omniq_tasks.workflows")
OnDone = Callable[[ReservedJob, Outcome], None]
# Test-only fault hook (tests/reliability/test_workflow_faults.py): the worker process
# exits at once (os._exit, as a SIGKILL would end it) when it reaches the named point:
#   before_step  a workflow job ran; nothing of its step is done, nothing acked
#   before_fire  its count was answered FIRE; the callback is not published
#   after_fire   the callback is published; "fired" is not noted, the child not acked
#   before_next  a chain's step succeeded; its next step is not published
#   before_ack   every workflow step of the batch is done; nothing acked
FAULT_ENV = "OMNIQ_TASKS_FAULT"
_FAULT = os.environ.get(FAULT_ENV, "")


def fault_point(name: str) -> None:
    """Exit the process now if the test-only fault hook names this point."""
    if _FAULT == name:
        log.warning("fault hook %s=%s: exiting now", FAULT_ENV, name)
        os._exit(70)
# At most this many finished jobs share one round trip of counts.
BATCH = 500
_STOP = None


def carries_flow(job: ReservedJob) -> bool:
    """True when the job's payload may carry ``meta.flow`` (read_flow then decides)."""
    payload = job.payload
    return (FLOW_MARK in payload) if isinstance(payload, str) else (FLOW_MARK.encode() in payload)


def has_ended(job: ReservedJob, outcome: Outcome) -> bool:
    """True when this ack ends the job for good (no retry follows)."""
    return outcome.ok or outcome.final or job.attempt >= job.max_attempts


class Flows:
    """The worker's workflow steps, on their own thread; each job goes on to ``on_done``."""

    def __init__(self, app: App, on_done: OnDone) -> None:
        self.app = app
        self._on_done = on_done
        self._inbox: queue_mod.SimpleQueue[tuple[ReservedJob, Outcome] | None] = queue_mod.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: ReservedJob, outcome: Outcome) -> None:
        self._inbox.put((job, outcome))
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="omniq-flows", daemon=True)
                    self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._inbox.put(_STOP)
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            item = self._inbox.get()
            if item is _STOP:
                return
            batch: list[tuple[ReservedJob, Outcome]] = [item]
            while len(batch) < BATCH:
                try:
                    more = self._inbox.get_nowait()
                except queue_mod.Empty:
                    break
                if more is _STOP:
                    self._inbox.put(_STOP)
                    break
                batch.append(more)
            for job, outcome in self.handle(batch):
                try:
                    self._on_done(job, outcome)
                except BaseException:
                    log.exception("handing job=%s to the worker failed", job.job_id)

    def handle(self, batch: list[tuple[ReservedJob, Outcome]]) -> list[tuple[ReservedJob, Outcome]]:
        """Do the workflow steps of finished jobs; the outcomes to ack (some replaced). Never raises."""
        if _FAULT:
            fault_point("before_step")
        out: list[tuple[ReservedJob, Outcome]] = []
        counts: list[tuple[int, str, Any]] = []  # (place in out, fan-out key, script call)
        for job, outcome in batch:
            try:
                flow = read_flow(job.payload)
                if flow is not None and has_ended(job, outcome):
                    if flow.chain is not None:
                        outcome = self._chain_step(job, flow, outcome)
                    if flow.fo is not None:
                        key, index = flow.fo
                        counts.append((len(out), key, self.app.client.fanout_child_call(
                            key, job.job_id, index, _entry(outcome))))
            except BaseException as exc:  # Redis down, or a bug: see the module's docstring
                outcome = _not_recorded(job, outcome, exc)
            out.append((job, outcome))
        if counts:
            self._count(out, counts)
        if _FAULT:
            fault_point("before_ack")
        return out

    def _chain_step(self, job: ReservedJob, flow: Flow, outcome: Outcome) -> Outcome:
        step = flow.chain
        assert step is not None
        if not outcome.ok:
            log.warning("chain %s stopped at step %d (%s, job=%s): %s", step.id, step.i, outcome.task or "?",
                        job.job_id, outcome.error.split("\n", 1)[0])
            return outcome
        if not step.rest:
            return outcome
        app = self.app
        spec = step.rest[0]
        value = result_json(outcome.result) or b"null"
        try:
            next_job = build_job(spec, app.registry.get(spec.task), value if spec.first else None,
                                 step_job_id(step.id, step.i + 1), chain_meta(step.id, step.i + 1, step.rest[1:]),
                                 app.client.server_now_ms)
        except (TaskArgumentError, ValueError) as exc:
            return Outcome(False, outcome.task, f"chain {step.id}: step {step.i + 1} ({spec.task}) refuses this "
                           f"step's result: {exc}", final=True, duration_ms=outcome.duration_ms)
        if _FAULT:
            fault_point("before_next")
        app.client.enqueue_many(spec.queue, [next_job], wake_cap=app.wake_cap, once=(step.id, workflow_ttl_ms(app)))
        return outcome

    def _count(self, out: list[tuple[ReservedJob, Outcome]], counts: list[tuple[int, str, Any]]) -> None:
        app = self.app
        client = app.client
        try:
            replies = client.scripts.call_many([call for _, _, call in counts])
        except BaseException as exc:
            replies = [exc] * len(counts)
        for (place, key, _), reply in zip(counts, replies):
            job, outcome = out[place]
            try:
                if isinstance(reply, BaseException):
                    raise reply
                word = as_text(reply[0])
                if word == "ERR":
                    raise RuntimeError(f"fanout_child refused: {[as_text(x) for x in reply]}")
                if word == "FIRE":
                    if _FAULT:
                        fault_point("before_fire")
                    fire_callback(client, key, reply[1], reply[2], int(reply[3] or 0), app.registry.get,
                                  app.wake_cap, workflow_ttl_ms(app),
                                  (lambda: fault_point("after_fire")) if _FAULT else None)
                elif word == "GONE":
                    log.warning("fan-out %s is gone (its TTL passed): job=%s not counted", key, job.job_id)
            except BaseException as exc:
                out[place] = (job, _not_recorded(job, outcome, exc))


def _entry(outcome: Outcome) -> bytes:
    if not outcome.ok:
        return child_entry(False, outcome.task, outcome.error)
    # a mark: the child succeeded, its value could not be kept
    return child_entry(True, outcome.task, result_json(outcome.result))


def _not_recorded(job: ReservedJob, outcome: Outcome, exc: BaseException) -> Outcome:
    """A workflow step that could not be done: a success runs again (to be counted);
    a failure stays as it is (the sweeper counts it)."""
    log.error("workflow step of job=%s (queue %s) failed: %r", job.job_id, job.queue, exc)
    if not outcome.ok:
        return outcome
    return Outcome(False, outcome.task, f"its workflow step failed, so it runs again: {exc!r}",
                   duration_ms=outcome.duration_ms)


