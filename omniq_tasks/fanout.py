"""Fan-out/fan-in: children run in parallel, a callback gets their outcomes once (docs/workflows.md).

``app.fanout(children, then=..., key=...)`` (or ``ctx.fanout`` inside a task):

1. the fan-out is put in the sweepers' index (``{omniq-tasks}:fanouts``), then opened
   once per key by fanout_open, beside the protocol's counter ``{cc:<key>}``
   (a key opened before, by a retried parent, changes nothing);
2. the children are published in bulk, each with job id ``<key>.<index>``, through
   their queues' once-sets, so none is published twice; then "published" is noted;
3. a worker counts each child that ends for good (fanout_child) before it acks it;
   whoever sees FIRE publishes the callback (job id ``<key>.then``, once-set again)
   and notes "fired". The sweeper (worker/fanout_sweeper.py) finishes what a crash
   left: children failed or gone without being counted, a callback not published.

Every step is in one slot: the counter's, or one queue's. Nothing needs both.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, Sequence, TypeVar

import msgspec

from .defaults import MAX_CALL_JOBS
from .errors import TaskArgumentError
from .middleware import run_before_publish
from .protocol import keys
from .protocol.client import JobSpec
from .protocol.ids import new_job_id
from .results import decode_result
from .signature import (Flow, SigSpec, Signature, local_ms, build_job, splice_first, step_job_id, validate_workflow_id,
                        workflow_ttl_ms)

if TYPE_CHECKING:
    from .app import App
    from .protocol.client import OmniqClient
    from .task import Task
    from .workflow_handles import FanoutHandle

T = TypeVar("T")
log = logging.getLogger("omniq_tasks.workflows")
_encode = msgspec.json.Encoder().encode
_read_spec = msgspec.json.Decoder(SigSpec).decode
# The most the sweepers wait between two looks at a fan-out still running (ms).
MAX_SWEEP_MS = 600_000
CALLBACK_STEP = "then"


class ChildResult(msgspec.Struct, Generic[T], frozen=True):
    """How one child of a fan-out ended, as its callback gets it (in the order given).

    ``ok``: it returned ``value`` (decoded to the child task's return annotation);
    else it failed for good, and ``error`` is its last error ("Type: message" and
    the traceback's last frames).
    """

    index: int
    job_id: str
    task: str
    ok: bool
    value: Optional[T] = None
    error: str = ""

    @property
    def error_type(self) -> str:
        """The remote exception's type name ("" when it succeeded or failed without one)."""
        head = self.error.split("\n", 1)[0]
        name, sep, _ = head.partition(": ")
        return name if sep and name.replace(".", "").replace("_", "").isalnum() else ""


def child_entry(ok: bool, task: str, body: bytes | str) -> bytes:
    """What fanout_child keeps for a child: "+task\\nJSON" or "-task\\nerror"."""
    data = body.encode("utf-8", "replace") if isinstance(body, str) else body
    return (b"+" if ok else b"-") + task.encode() + b"\n" + data


def read_entry(index: int, job_id: str, entry: bytes | None, find_task: Callable[[str], Any]) -> ChildResult[Any]:
    """The ChildResult of a kept entry (None: never counted)."""
    if entry is None:
        return ChildResult(index, job_id, "", False, None, "not counted (its fan-out's keys expired?)")
    task_name, _, body = entry[1:].partition(b"\n")
    name = task_name.decode()
    if entry[:1] != b"+":
        return ChildResult(index, job_id, name, False, None, body.decode("utf-8", "replace"))
    value = decode_result(find_task(name), body, job_id) if body else None
    return ChildResult(index, job_id, name, True, value)


def load_child_results(client: OmniqClient, key: str, find_task: Callable[[str], Any]) -> list[ChildResult[Any]]:
    """Every child's outcome of fan-out ``key``, in order (read 1000 per call)."""
    info = client.fanout_info(key)
    if not info:
        raise LookupError(f"fan-out {key!r} is gone (its TTL passed, or it never opened)")
    n = int(info.get("n", "0"))
    entries = client.fanout_entries(key, n)
    return [read_entry(i, step_job_id(key, i), entry, find_task) for i, entry in enumerate(entries)]


def _check_callback(sig: Signature[Any] | None, what: str) -> bytes:
    if sig is None:
        return b""
    if not isinstance(sig, Signature):
        raise TypeError(f"{what} must be a signature (task.s(...)), not {type(sig).__name__}")
    if sig.spec.first:  # it gets the children's outcomes: its annotation must take a list
        try:
            sig.task.codec.decode(splice_first(bytes(sig.spec.kwargs), sig.spec.first, b"[]"))
        except TaskArgumentError as exc:
            raise TaskArgumentError(f"{what} {sig.task.name}: its first parameter {sig.spec.first!r} gets the "
                                    f"children's outcomes (list[ChildResult[...]]): {exc}") from None
    return _encode(sig.spec)


def start_fanout(app: App, children: Sequence[Signature[Any]], then: Signature[Any] | None = None,
                 on_error: Signature[Any] | None = None, key: str | None = None) -> FanoutHandle:
    """Publish ``children`` once for ``key``; see the module's docstring and docs/workflows.md."""
    from .workflow_handles import FanoutHandle

    key = validate_workflow_id(key) if key is not None else "fo-" + new_job_id()
    then_json, error_json = _check_callback(then, "then"), _check_callback(on_error, "on_error")
    # the server's clock, asked only for a child with a countdown (never in eager mode)
    now_ms = local_ms if app.eager else app.client.server_now_ms
    by_queue: dict[str, list[JobSpec]] = {}
    jobs: list[JobSpec] = []
    for index, child in enumerate(children):
        if not isinstance(child, Signature):
            raise TypeError(f"fan-out child {index} must be a signature (task.s(...)), not {type(child).__name__}")
        if child.spec.first:
            raise TaskArgumentError(f"fan-out child {index} ({child.task.name}): missing argument "
                                    f"{child.spec.first!r} (a child takes nothing from before)")
        job = build_job(child.spec, child.task, None, step_job_id(key, index), {"flow": Flow(fo=(key, index))}, now_ms)
        by_queue.setdefault(child.spec.queue, []).append(job)
        jobs.append(job)
    if app.eager:
        from .eager import run_eager_fanout

        return run_eager_fanout(app, key, children, then, on_error)
    if app.middleware:  # after every child is checked: a refused one publishes nothing
        for child, job in zip(children, jobs):
            run_before_publish(app, child.task, job)
    client = app.client
    ttl_ms = workflow_ttl_ms(app)
    # Indexed first: whatever stops us below, a sweeper finds the fan-out (and drops it if it never opened).
    client.redis.zadd(keys.FANOUT_INDEX, {key: now_ms() + int(app.workflow_sweep * 1000)})
    opened, published = client.fanout_open(key, len(children), ttl_ms, then_json, error_json, list(by_queue))
    if not opened and client.redis.hget(keys.fanout_key(key, "fo"), "state") in (b"fired", "fired"):
        # A repeat (a retried parent) after the callback: the index entry just added is not to stay.
        client.redis.zrem(keys.FANOUT_INDEX, key)
    if not published:
        for queue, queued in by_queue.items():
            for start in range(0, len(queued), MAX_CALL_JOBS):
                if start:  # a long publish: tell the sweepers it is still going
                    client.fanout_mark(key, "progress_ms", str(now_ms()))
                client.enqueue_many(queue, queued[start:start + MAX_CALL_JOBS], wake_cap=app.wake_cap,
                                    once=(key, ttl_ms))
        client.fanout_mark(key, "published", "1")
    if opened and not children:  # nothing to wait for
        fire_callback(client, key, then_json, error_json, 0, app.registry.get, app.wake_cap, ttl_ms)
    log.debug("fan-out %s: %d children in %s%s", key, len(children), ", ".join(by_queue) or "no queue",
              "" if opened else " (opened before: nothing new published)")
    return FanoutHandle(app, key)


def fire_callback(client: OmniqClient, key: str, then_json: bytes | str, error_json: bytes | str, failed: int,
                  find_task: Callable[[str], Task[Any, Any] | None], wake_cap: int, ttl_ms: int,
                  after_publish: Callable[[], None] | None = None) -> None:
    """Publish the fan-out's callback (``on_error`` when a child failed and there is one), once;
    then note it fired and take the fan-out off the sweepers' index."""
    chosen = error_json if failed and error_json else then_json
    if chosen:
        spec = _read_spec(chosen)
        meta = {"flow": Flow(fanin=key, arg=spec.first)}
        try:
            job = build_job(spec, find_task(spec.task), b"[]" if spec.first else None,
                            step_job_id(key, CALLBACK_STEP), meta, client.server_now_ms)
        except (TaskArgumentError, ValueError) as exc:  # checked when made: only a changed task gets here
            log.error("fan-out %s: its callback %s cannot be published (%s); the fan-out ends without it",
                      key, spec.task, exc)
        else:
            client.enqueue_many(spec.queue, [job], wake_cap=wake_cap, once=(key, ttl_ms))
    if after_publish is not None:
        after_publish()
    client.fanout_mark(key, "state", "fired")
    client.redis.zrem(keys.FANOUT_INDEX, key)
