"""The fan-out sweeper: finishes what a crash left of a fan-out (docs/workflows.md).

Every worker looks, every few seconds, at the fan-outs in ``{omniq-tasks}:fanouts``
that are due (the first look ``App(workflow_sweep=...)`` after one opened, then at
growing intervals). For each one:

- gone (its TTL passed) or fired: it leaves the index;
- closed but not fired (the worker that counted the last child died before it
  published the callback, and the child will not run again): the callback is
  published (once-set: never twice) and noted;
- open: each child not counted yet is looked up in the fan-out's queues. One
  that failed for good without being counted (failed by the reaper after its
  worker died, or by another SDK) is counted as failed with its last error; one
  completed (acked by another SDK) as done with its kept result; one whose job is
  gone (removed, or never published because its publisher stopped half-way: no
  progress noted for ``workflow_sweep``) as failed. Running and waiting children are left alone.

Two workers sweeping the same fan-out at once count nothing twice (the counter
keeps child ids) and publish the callback once.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from ..envelope import read_envelope
from ..fanout import MAX_SWEEP_MS, child_entry, fire_callback
from ..defaults import MAX_CALL_JOBS
from ..protocol import keys
from ..protocol.client import as_text
from ..results import result_json
from ..signature import step_job_id, workflow_ttl_ms

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("omniq_tasks.workflows")
# Seconds between two looks at the index, and fan-outs swept per look.
SWEEP_INTERVAL_S = 5.0
SWEEP_LIMIT = 20


class FanoutSweeper:
    """Run by the worker's loop when due; each pass reads the index once."""

    def __init__(self, app: App, interval_s: float = SWEEP_INTERVAL_S) -> None:
        self.app = app
        self.interval_s = min(interval_s, app.workflow_sweep)
        self.next_at = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def run(self, now: float) -> None:
        """Sweep the fan-outs due now; a failure is logged and tried again next time."""
        self.next_at = now + self.interval_s
        client = self.app.client
        try:
            now_ms = client.server_now_ms()
            due = client.redis.zrangebyscore(keys.FANOUT_INDEX, "-inf", now_ms, start=0, num=SWEEP_LIMIT)
        except Exception as exc:
            log.debug("fan-out sweep skipped: %r", exc)
            return
        for raw in due:
            key = as_text(raw)
            try:
                self.sweep(key, now_ms)
            except Exception as exc:
                log.warning("sweeping fan-out %s failed (tried again later): %r", key, exc)

    def sweep(self, key: str, now_ms: int) -> None:
        app = self.app
        client = app.client
        info = client.fanout_info(key)
        state = info.get("state")
        if state is None or state == "fired":
            client.redis.zrem(keys.FANOUT_INDEX, key)
            return
        ttl_ms = workflow_ttl_ms(app)
        if state == "open":
            reply = self._count_ended(key, info, now_ms)
            if reply is None:  # children still running: look again later
                created = int(info.get("created_ms") or now_ms)
                wait = min(MAX_SWEEP_MS, max(int(app.workflow_sweep * 1000), (now_ms - created) // 2))
                client.redis.zadd(keys.FANOUT_INDEX, {key: now_ms + wait})
                return
            then_json, error_json, failed = reply
        else:  # closed: the callback is not published yet
            then_json, error_json, failed = info.get("then", ""), info.get("on_error", ""), int(info.get("failed") or 0)
        log.info("fan-out %s: publishing its callback, which a stopped worker left unpublished", key)
        fire_callback(client, key, then_json, error_json, failed, app.registry.get, app.wake_cap, ttl_ms)

    def _count_ended(self, key: str, info: dict[str, str], now_ms: int) -> tuple[Any, Any, int] | None:
        """Count the children that ended without being counted; (then, on_error, failed)
        once the last one is counted, else None."""
        client = self.app.client
        n = int(info.get("n") or 0)
        queues = json.loads(info.get("queues") or "[]")
        # A publisher that stopped half-way will not publish the rest: after workflow_sweep
        # without a sign of progress (it notes progress_ms every 1,000 children).
        last_sign = max(int(info.get("created_ms") or now_ms), int(info.get("progress_ms") or 0))
        published = info.get("published") == "1" or now_ms - last_sign > self.app.workflow_sweep * 1000
        done_key = keys.fanout_key(key, "done")
        calls = []
        for start in range(0, n, MAX_CALL_JOBS):
            ids = [step_job_id(key, i) for i in range(start, min(n, start + MAX_CALL_JOBS))]
            counted = client.redis.smismember(done_key, ids)
            pending = [(start + j, job_id) for j, (job_id, seen) in enumerate(zip(ids, counted)) if not seen]
            if not pending:
                continue
            pipe = client.redis.pipeline(transaction=False)
            for _, job_id in pending:
                for queue in queues:
                    pipe.hmget(keys.job_key(queue, job_id), "state", "last_error", "payload")
                    pipe.get(keys.result_key(queue, job_id))
            found = pipe.execute()
            for p, (index, job_id) in enumerate(pending):
                entry = None
                for q in range(len(queues)):
                    (state, error, payload), result = found[2 * (p * len(queues) + q)], found[2 * (p * len(queues) + q) + 1]
                    if state is not None:
                        entry = _entry_for(state, error, payload, result)
                        break
                else:
                    if published:
                        entry = child_entry(False, "", "job gone: removed, or never published "
                                                       "(its publisher stopped before it)")
                if entry is not None:
                    calls.append(client.fanout_child_call(key, job_id, index, entry))
        fire = None
        for reply in (client.scripts.call_many(calls) if calls else []):
            if isinstance(reply, BaseException):
                raise reply
            if as_text(reply[0]) == "FIRE":
                fire = (reply[1], reply[2], int(reply[3] or 0))
        if calls:
            log.info("fan-out %s: counted %d child(ren) that ended without being counted", key, len(calls))
        return fire


def _entry_for(state: Any, error: Any, payload: Any, result: Any) -> bytes | None:
    """The entry of a child found in ``state`` (None: it has not ended)."""
    state = as_text(state)
    if state not in ("failed", "completed"):
        return None
    task = ""
    try:
        envelope = read_envelope(payload) if payload else None
        task = envelope.task if envelope is not None else ""
    except Exception:
        pass
    if state == "failed":
        return child_entry(False, task, as_text(error or "") or "failed (no error kept)")
    data = result if isinstance(result, bytes) else (result or "").encode()
    return child_entry(True, task, result_json(data))


