"""Signatures and chains: task calls written down to run later (docs/workflows.md).

``task.s(*args, **kwargs)`` checks the arguments given against the annotations
when it is made; the first parameter may be left out, and is then filled by what
comes before: the previous step's return value in a chain, the children's
outcomes in a fan-out's callback. ``task.si(...)`` takes every argument itself.

A signature travels as a SigSpec (JSON, in the envelope's ``meta.flow`` of the job
before it), so a worker can publish the next step without the calling code. Each
step's job id is derived from the workflow's id (``<id>.<step>``) and published
through the queue's once-set (``{Q}:once:<id>``): a step whose worker died and
ran again publishes its successor once, even after the successor's job hash is
trimmed from the completed lane.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Generic, Optional, Sequence, TypeVar, Union

import msgspec

from .envelope import build_envelope
from .errors import InvalidOptionError, TaskArgumentError
from .middleware import run_before_publish
from .protocol.client import JobSpec, job_spec
from .protocol.ids import new_job_id
from .protocol.keys import validate_gid, validate_queue

if TYPE_CHECKING:
    from .app import App
    from .task import Task
    from .workflow_handles import ChainHandle

R = TypeVar("R")
_encode = msgspec.json.Encoder().encode

# How long a workflow's once-sets and a fan-out's keys live (seconds): longer than
# any step may wait for its predecessor (retries included). App(workflow_ttl=...).
WORKFLOW_TTL_S = 7 * 24 * 3600.0
# When the workers' sweepers first look at an open fan-out (seconds after it opened;
# then at growing intervals): what a crash left undone is finished then. App(workflow_sweep=...).
WORKFLOW_SWEEP_S = 30.0
# Workflow ids (a fan-out's key, a chain's id): the protocol's counter key rules.
MAX_WORKFLOW_ID = 128


class SigSpec(msgspec.Struct, frozen=True, omit_defaults=True):
    """A signature as it travels: the task, its queue, the arguments given (a JSON
    object), the parameter the previous value fills ("": none) and the job options
    (0 / "": the protocol's defaults; backoff_ms and group_limit 0: none)."""

    task: str
    queue: str
    kwargs: msgspec.Raw
    first: str = ""
    gid: str = ""
    group_limit: int = 0
    max_attempts: int = 0
    timeout_ms: int = 0
    backoff_ms: int = 0
    countdown_ms: int = 0


class ChainStep(msgspec.Struct, frozen=True):
    """``meta.flow.chain`` of a chain's step: the chain's id, this step's number, the steps after it."""

    id: str
    i: int
    rest: list[SigSpec]


class Flow(msgspec.Struct, frozen=True, omit_defaults=True):
    """``meta.flow`` of a workflow's job: what the worker does after its run."""

    chain: Optional[ChainStep] = None
    fo: Optional[tuple[str, int]] = None  # a fan-out child: the fan-out's key, its index
    fanin: str = ""  # a fan-out's callback: the fan-out's key
    arg: str = ""  # ... and the parameter that receives the children's outcomes


class _Meta(msgspec.Struct):
    flow: Optional[Flow] = None


class _Carrier(msgspec.Struct):
    meta: _Meta = msgspec.field(default_factory=_Meta)


_read_carrier = msgspec.json.Decoder(_Carrier).decode
# What a payload holds when it carries a Flow (a cheap test before decoding it).
FLOW_MARK = '"flow":{'


def read_flow(payload: str | bytes) -> Flow | None:
    """The Flow in a job's payload, or None (not a workflow's job, or unreadable)."""
    try:
        return _read_carrier(payload).meta.flow
    except (msgspec.DecodeError, RecursionError):
        return None


def validate_workflow_id(value: str, what: str = "key") -> str:
    """A fan-out key or chain id: 1..128 characters, no braces (it names a Redis slot)."""
    if not isinstance(value, str) or not value or len(value) > MAX_WORKFLOW_ID or "{" in value or "}" in value:
        raise InvalidOptionError(
            f"workflow {what} must be 1..{MAX_WORKFLOW_ID} characters without '{{' or '}}', got {value!r}")
    return value


class Signature(Generic[R]):
    """A call of ``task`` to run later; made by ``task.s()`` / ``task.si()``."""

    __slots__ = ("task", "spec")

    def __init__(self, task: Task[Any, R], spec: SigSpec) -> None:
        self.task = task
        self.spec = spec

    @classmethod
    def make(cls, task: Task[Any, R], args: tuple[Any, ...], kwargs: dict[str, Any],
             immutable: bool) -> Signature[R]:
        """Check the arguments (the first may be left open unless ``immutable``)."""
        if task.raw:
            raise TaskArgumentError(f"raw task {task.name}: signatures need a task envelope")
        first, data = task.codec.encode_partial(args, kwargs, first_open=not immutable)
        gid = ""
        if task.gid is not None and not first:  # a rule that needs the open value: resolved on publish
            gid = task.gid_of(args, kwargs) or ""
        return cls(task, SigSpec(task.name, task.queue, msgspec.Raw(data), first, gid, task.group_limit,
                                 task.max_attempts, task.timeout_ms, task.backoff_ms))

    def set(self, *, queue: str | None = None, gid: str | None = None, group_limit: int | None = None,
            countdown: float | None = None, max_attempts: int | None = None, timeout_ms: int | None = None,
            backoff_ms: int | None = None) -> Signature[R]:
        """This signature with other job options (each left out keeps its value)."""
        changes: dict[str, Any] = {}
        if queue is not None:
            changes["queue"] = validate_queue(queue)
        if gid is not None:
            changes["gid"] = validate_gid(gid)
        if countdown is not None:
            if isinstance(countdown, bool) or not isinstance(countdown, (int, float)) or not countdown >= 0:
                raise InvalidOptionError(f"countdown must be seconds >= 0, got {countdown!r}")
            changes["countdown_ms"] = int(countdown * 1000)
        for name, value, least in (("group_limit", group_limit, 0), ("max_attempts", max_attempts, 1),
                                   ("timeout_ms", timeout_ms, 1), ("backoff_ms", backoff_ms, 0)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < least:
                    raise InvalidOptionError(f"{name} must be an int >= {least}, got {value!r}")
                changes[name] = value
        return Signature(self.task, msgspec.structs.replace(self.spec, **changes))

    @property
    def takes_previous(self) -> bool:
        """True when the first parameter is left open (filled by what runs before)."""
        return bool(self.spec.first)

    def __or__(self, other: Signature[Any] | Chain[Any]) -> Chain[Any]:
        return chain(self, other)

    def delay(self) -> Any:
        """Publish this call alone; returns its JobHandle."""
        if self.spec.first:
            raise TaskArgumentError(f"task {self.task.name}: missing argument {self.spec.first!r} "
                                    "(left open for a previous step; give it, or use .si())")
        app = self.task.app
        if app.eager:
            from .eager import run_eager

            job = build_job(self.spec, self.task, None, new_job_id(), None, local_ms)
            return run_eager(self.task, self.spec.queue, job.job_id, job.payload)
        return self.task._publish(self.spec.queue, build_job(self.spec, self.task, None, new_job_id(), None,
                                                             app.client.server_now_ms))

    def __repr__(self) -> str:
        given = bytes(self.spec.kwargs).decode()
        return f"{self.task.name}.s({given}{', first open' if self.spec.first else ''})"


class Chain(Generic[R]):
    """Steps run one after another; each step's return value is the next one's first argument."""

    __slots__ = ("steps",)

    def __init__(self, steps: Sequence[Signature[Any]]) -> None:
        self.steps = tuple(steps)

    def __or__(self, other: Signature[Any] | Chain[Any]) -> Chain[Any]:
        return chain(self, other)

    def delay(self) -> ChainHandle:
        """Publish the first step; returns the chain's handle."""
        return self.apply_async()

    def apply_async(self, *, id: str | None = None, countdown: float | None = None) -> ChainHandle:
        """Publish the first step (``countdown``: seconds before it is due).

        ``id`` names the chain (its steps' job ids are ``<id>.<n>``): publishing a
        chain of the same id again publishes nothing (docs/workflows.md). Left
        out, a fresh one.
        """
        from .workflow_handles import ChainHandle

        first = self.steps[0]
        app = first.task.app
        chain_id = validate_workflow_id(id, "chain id") if id is not None else "ch-" + new_job_id()
        if app.eager:
            from .eager import run_eager_chain

            return run_eager_chain(self, chain_id)
        meta = chain_meta(chain_id, 0, [step.spec for step in self.steps[1:]])
        spec = first.spec if countdown is None else first.set(countdown=countdown).spec
        job = build_job(spec, first.task, None, step_job_id(chain_id, 0), meta, app.client.server_now_ms)
        if app.middleware:
            run_before_publish(app, first.task, job)
        app.client.enqueue_many(spec.queue, [job], wake_cap=app.wake_cap, once=(chain_id, workflow_ttl_ms(app)))
        return ChainHandle(app.client, chain_id, [(step.spec.queue, step.task) for step in self.steps])

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.steps))


def chain(*steps: Signature[Any] | Chain[Any]) -> Chain[Any]:
    """``chain(a.s(x), b.s(), c.s())``: a's result is b's first argument, b's is c's."""
    flat: list[Signature[Any]] = []
    for step in steps:
        if isinstance(step, Chain):
            flat.extend(step.steps)
        elif isinstance(step, Signature):
            flat.append(step)
        else:
            raise TypeError(f"chain() takes signatures (task.s(...)) or chains, not {type(step).__name__}")
    if not flat:
        raise ValueError("chain() needs at least one step")
    if flat[0].spec.first:
        raise TaskArgumentError(f"task {flat[0].task.name}: the first step of a chain needs all its "
                                f"arguments (missing {flat[0].spec.first!r})")
    return Chain(flat)


def step_job_id(workflow_id: str, step: Union[int, str]) -> str:
    """The job id of a workflow's step: ``<id>.<step>``."""
    return f"{workflow_id}.{step}"


def chain_meta(chain_id: str, index: int, rest: list[SigSpec]) -> dict[str, Any]:
    """The envelope meta of a chain's step ``index``."""
    return {"flow": Flow(chain=ChainStep(chain_id, index, rest))}


def local_ms() -> int:
    """This machine's clock in epoch ms (eager mode: no Redis to ask)."""
    return int(time.time() * 1000)


def workflow_ttl_ms(app: App) -> int:
    """How long a workflow's keys and once-sets live, in ms (``App(workflow_ttl=...)``)."""
    return int(app.workflow_ttl * 1000)


def splice_first(kwargs: bytes, first: str, value: bytes) -> bytes:
    """The JSON object ``kwargs`` with ``first`` set to the JSON ``value`` (put first)."""
    head = b"{" + _encode(first) + b":" + value
    return head + b"}" if kwargs.strip() == b"{}" else head + b"," + kwargs.lstrip()[1:]


def build_job(spec: SigSpec, task: Task[Any, Any] | None, first_value: bytes | None, job_id: str,
              meta: dict[str, Any] | None, now_ms: Any) -> JobSpec:
    """The JobSpec of a signature, with its open first parameter set to ``first_value`` (JSON).

    ``task`` (None when this process does not know it) checks the arguments as the
    worker will decode them and resolves a gid rule that needs the first value.
    ``now_ms``: a callable giving the server's clock, asked only for a countdown.
    Raises TaskArgumentError when the arguments do not fit.
    """
    kwargs = bytes(spec.kwargs)
    if spec.first:
        kwargs = splice_first(kwargs, spec.first, first_value if first_value is not None else b"null")
    gid = spec.gid
    if task is not None:
        decoded = task.codec.decode(kwargs)
        if not gid and task.gid is not None:
            gid = task.gid_of((), task.codec.call_kwargs(decoded)) or ""
    payload = build_envelope(spec.task, kwargs, meta)
    options = {name: value for name, value in (("max_attempts", spec.max_attempts), ("timeout_ms", spec.timeout_ms))
               if value}
    # backoff_ms 0 is a task's own choice (retry at once), not "the protocol's default"
    return job_spec(payload, job_id=job_id, due_ms=now_ms() + spec.countdown_ms if spec.countdown_ms else 0,
                    gid=gid or None, backoff_ms=spec.backoff_ms, group_limit=spec.group_limit, **options)
