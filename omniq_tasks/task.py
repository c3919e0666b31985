"""Task[P, R]: a function bound to a queue, callable in-process or published as a job."""

from __future__ import annotations

import inspect
import time
import typing
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, TypedDict, TypeVar, Union

import msgspec
from typing_extensions import ParamSpec, Unpack

from .defaults import MAX_DUE_MS
from .arguments import ArgumentCodec, check_same, describe_decode_error, encode_checked
from .protocol.client import JobSpec, job_spec
from .context import JobContext
from .errors import InvalidOptionError, PayloadTooLargeError, TaskArgumentError, TaskDefinitionError
from .envelope import build_envelope
from .protocol.ids import new_job_id, new_job_ids
from .protocol.keys import validate_gid, validate_queue
from .middleware import run_before_publish
from .policy import Policy
from .results import JobHandle
from .signature import Signature
from .eager import run_eager

if TYPE_CHECKING:
    from .app import App

P = ParamSpec("P")
R = TypeVar("R")

GidRule = Union[str, Callable[..., str], None]


class CallOptions(TypedDict, total=False):
    """Per-call options of ``apply_async`` and ``encode_call``; left out or None, the task's own."""

    gid: str | None
    group_limit: int | None
    job_id: str | None
    max_attempts: int | None
    timeout_ms: int | None
    backoff_ms: int | None


def _due_ms(countdown: float | None, eta: datetime | float | None, server_now_ms: Callable[[], int]) -> int:
    """Epoch ms for countdown (seconds from now) or eta (aware datetime or epoch seconds).

    A countdown counts from the Redis server's clock, which also decides when the job
    is due: a producer whose own clock is minutes off still gets the delay it asked for.
    """
    if countdown is not None and eta is not None:
        raise InvalidOptionError("pass countdown or eta, not both")
    if countdown is not None:
        if isinstance(countdown, bool) or not isinstance(countdown, (int, float)):
            raise InvalidOptionError(f"countdown must be seconds (int or float), not {type(countdown).__name__}")
        if not countdown >= 0:  # NaN fails this too
            raise InvalidOptionError(f"countdown must be >= 0 seconds, got {countdown}")
        if not countdown <= MAX_DUE_MS / 1000:  # refused before Redis is asked the time
            raise InvalidOptionError(f"countdown={countdown!r} is not a time between 1970 and year 9999")
        return _checked_due("countdown", countdown, server_now_ms() / 1000 + countdown)
    if eta is None:
        return 0
    if isinstance(eta, datetime):
        if eta.tzinfo is None:
            raise InvalidOptionError("eta must be an aware datetime (with tzinfo); naive times are ambiguous")
        return _checked_due("eta", eta, eta.timestamp())
    if isinstance(eta, (int, float)) and not isinstance(eta, bool):
        return _checked_due("eta", eta, eta)
    raise InvalidOptionError(f"eta must be an aware datetime or epoch seconds, not {type(eta).__name__}")


def _expires_ms(expires: datetime | float | None, default_s: float | None,
                now_ms: Callable[[], int]) -> int:
    """The deadline (epoch ms, 0: none) of ``expires``: seconds from now, or an aware datetime.

    Left out, the task's ``policy.expires`` (seconds after publish). Now is the
    Redis server's clock, which the worker's start check follows too.
    """
    if expires is None:
        expires = default_s
        if expires is None:
            return 0
    if isinstance(expires, datetime):
        if expires.tzinfo is None:
            raise InvalidOptionError("expires must be an aware datetime (with tzinfo) or seconds")
        return _checked_due("expires", expires, expires.timestamp())
    if isinstance(expires, bool) or not isinstance(expires, (int, float)):
        raise InvalidOptionError(f"expires must be seconds (int or float) or an aware datetime, "
                                 f"not {type(expires).__name__}")
    if not 0 < expires <= MAX_DUE_MS / 1000:  # NaN fails this too
        raise InvalidOptionError(f"expires must be a number of seconds above 0, got {expires!r}")
    return _checked_due("expires", expires, now_ms() / 1000 + expires)


def _checked_due(name: str, given: object, epoch_s: float) -> int:
    if not 0 <= epoch_s <= MAX_DUE_MS / 1000:  # also refuses NaN and infinities
        raise InvalidOptionError(f"{name}={given!r} is not a time between 1970 and year 9999")
    return int(epoch_s * 1000)


class Task(Generic[P, R]):
    """A registered task. Call it to run the function here; ``.delay()`` to queue it.

    Options (queue, gid, group_limit, max_attempts, timeout_ms, backoff_ms) come
    from ``@app.task(...)``, falling back to the App's defaults.
    """

    def __init__(
        self,
        app: App,
        fn: Callable[P, R],
        *,
        name: str,
        queue: str,
        gid: GidRule = None,
        group_limit: int = 0,
        max_attempts: int,
        timeout_ms: int,
        backoff_ms: int,
        raw: bool = False,
        policy: Policy | None = None,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = validate_queue(queue)
        self.gid = gid
        self.group_limit = group_limit
        self.max_attempts = max_attempts
        self.timeout_ms = timeout_ms
        self.backoff_ms = backoff_ms
        self.raw = raw
        # Retries, time limits, expiry, results, callbacks (omniq_tasks.policy).
        self.policy = policy if policy is not None else app.policy
        self.is_async = inspect.iscoroutinefunction(fn)
        self.codec = ArgumentCodec(fn, name)
        if raw and len(self.codec.params) != 1:
            raise TaskDefinitionError(
                f"raw task {name} must take exactly one parameter for the payload "
                f"(besides a JobContext), not {len(self.codec.params)}")
        if raw:
            annotation = typing.get_type_hints(fn).get(self.codec.params[0], Any)
            self.raw_decoder: msgspec.json.Decoder[Any] | None = msgspec.json.Decoder(annotation)
        else:
            self.raw_decoder = None
        if isinstance(gid, str):
            if "{" in gid:
                self._check_gid_template(gid)
            else:
                validate_gid(gid)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__wrapped__ = fn

    def _check_gid_template(self, template: str) -> None:
        import string
        for _, field, _, _ in string.Formatter().parse(template):
            if field is not None and field.split(".")[0].split("[")[0] not in self.codec.params:
                raise TaskDefinitionError(
                    f"task {self.name}: gid template {template!r} names {field!r}, "
                    f"which is not a parameter ({', '.join(self.codec.params) or 'none'})")

    def __call__(self, /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function in this process, now (no queue involved).

        A JobContext parameter gets a local context: ``job_id`` "local", attempt 1,
        and the App's client for the operations it offers.
        """
        context = self.codec.context_param
        if context is None:
            return self.fn(*args, **kwargs)
        bound = self.codec.call_signature.bind(*args, **kwargs)
        local = JobContext(self.app.client, queue=self.queue, job_id="local", attempt=1,
                           max_attempts=self.max_attempts, gid="", lease_token="",
                           lock_until_ms=0, payload_raw="")
        call: Callable[..., R] = self.fn
        return call(**bound.arguments, **{context: local})

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue}>"

    # -- publishing -------------------------------------------------------------

    # ``/``: a task parameter named ``self`` or ``when`` must not collide with ours.
    def delay(self, /, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        """Queue a run with these arguments; returns its handle."""
        payload, gid = self._encode(args, kwargs, self._policy_expires_ms())
        if self.app.eager:  # run here, now (docs/testing.md)
            return run_eager(self, self.queue, new_job_id(), payload)
        return self._publish(self.queue, self._own_spec(new_job_id(), payload, gid))

    def apply_at(self, when: datetime | float, /, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        """Queue a run due at ``when`` (an aware datetime, or epoch seconds)."""
        return self.apply_async(args, kwargs, eta=when)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | float | None = None,
        queue: str | None = None,
        expires: datetime | float | None = None,
        **options: Unpack[CallOptions],
    ) -> JobHandle:
        """Queue a run with per-call options; arguments are checked before Redis is touched.

        ``expires``: seconds from now, or an aware datetime, after which the job is not
        started (it fails with last_error "expired ..."); left out, the task's own.
        """
        target = validate_queue(queue) if queue is not None else self.queue
        if expires is not None and self.raw:
            raise InvalidOptionError(f"raw task {self.name}: expires needs a task envelope (a raw payload has no meta)")
        spec = self.encode_call(
            tuple(args), kwargs or {}, due_ms=_due_ms(countdown, eta, self._now_ms),
            expires_ms=_expires_ms(expires, None if self.raw else self.policy.expires, self._now_ms),
            **options)
        if self.app.eager:  # run here, now (docs/testing.md)
            return run_eager(self, target, spec.job_id, spec.payload)
        return self._publish(target, spec)

    def _policy_expires_ms(self) -> int:
        """The deadline ``policy.expires`` gives a job published now (0: none, or a raw task)."""
        if self.policy.expires is None or self.raw:
            return 0
        return _expires_ms(None, self.policy.expires, self._now_ms)

    def _now_ms(self) -> int:
        """Now on the Redis server's clock (this machine's in eager mode: no Redis)."""
        return int(time.time() * 1000) if self.app.eager else self.app.client.server_now_ms()

    def _publish(self, queue: str, spec: JobSpec) -> JobHandle:
        if self.app.middleware:
            run_before_publish(self.app, self, spec)
        client = self.app.client
        published = client.publish_spec(queue, spec, wake_cap=self.app.wake_cap)
        return JobHandle(client, queue, published.job_id, published.existed, task=self)

    def _own_spec(self, job_id: str, payload: bytes, gid: str | None) -> JobSpec:
        """A JobSpec with our own fresh id and the task's own options (checked when it was defined)."""
        if gid is None or gid is self.gid:
            return JobSpec(job_id, payload, self.max_attempts, self.timeout_ms, self.backoff_ms, 0, gid or "",
                           self.group_limit)
        # a gid made from the arguments still needs its check
        return job_spec(payload, job_id=job_id, max_attempts=self.max_attempts, timeout_ms=self.timeout_ms,
                        backoff_ms=self.backoff_ms, gid=gid, group_limit=self.group_limit)

    def map(self, calls: Iterable[Any], *, queue: str | None = None) -> list[JobHandle]:
        """Queue one run per item, in bulk (one script call per 1000 jobs).

        Each item is a tuple of positional arguments, a dict of named ones, or a
        single non-tuple value for a one-parameter task. All items are checked
        before anything is published.
        """
        target = validate_queue(queue) if queue is not None else self.queue
        items = calls if isinstance(calls, (list, tuple)) else list(calls)
        ids = new_job_ids(len(items))
        specs: list[JobSpec] = []
        expires_ms = self._policy_expires_ms()
        for item, job_id in zip(items, ids):
            if isinstance(item, tuple):
                payload, gid = self._encode(item, {}, expires_ms)
            elif isinstance(item, dict):
                payload, gid = self._encode((), item, expires_ms)
            else:
                payload, gid = self._encode((item,), {}, expires_ms)
            specs.append(self._own_spec(job_id, payload, gid))
        if self.app.eager:  # run each here, now, in order (docs/testing.md)
            return [run_eager(self, target, spec.job_id, spec.payload) for spec in specs]
        if self.app.middleware:  # after every item is checked: a refused item publishes nothing
            for spec in specs:
                run_before_publish(self.app, self, spec)
        client = self.app.client
        published = client.enqueue_many(target, specs, wake_cap=self.app.wake_cap)
        return [JobHandle(client, target, p.job_id, p.existed, task=self) for p in published]

    def encode_call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], *, due_ms: int = 0, expires_ms: int = 0,
        **options: Unpack[CallOptions],
    ) -> JobSpec:
        """Encode and check one call as the JobSpec ``apply_async`` publishes, without publishing it.

        ``expires_ms``: the deadline (epoch ms) put in the envelope's meta; 0: none.
        """
        payload, resolved = self._encode(args, kwargs, expires_ms)
        gid, group_limit = options.get("gid"), options.get("group_limit")
        max_attempts, timeout_ms, backoff_ms = (
            options.get("max_attempts"), options.get("timeout_ms"), options.get("backoff_ms"))
        return job_spec(
            payload,
            job_id=options.get("job_id"),
            max_attempts=self.max_attempts if max_attempts is None else max_attempts,
            timeout_ms=self.timeout_ms if timeout_ms is None else timeout_ms,
            backoff_ms=self.backoff_ms if backoff_ms is None else backoff_ms,
            due_ms=due_ms,
            gid=gid if gid is not None else resolved,
            group_limit=self.group_limit if group_limit is None else group_limit,
        )

    def _encode(self, args: tuple[Any, ...], kwargs: dict[str, Any],
                expires_ms: int = 0) -> tuple[bytes, str | None]:
        """The checked payload of a call (with its deadline in meta), and the gid the task's rule gives it."""
        if self.raw:
            call_args, payload = self._raw_payload(args, kwargs)
        else:
            call_args, kwargs_json = self.codec.encode_call(args, kwargs)
            payload = build_envelope(self.name, kwargs_json, {"expires_ms": expires_ms} if expires_ms else None)
        # Checked here, per job, so a bulk publish fails before its first chunk is written.
        if len(payload) > self.app.max_payload_bytes:
            raise PayloadTooLargeError(
                f"task {self.name}: payload is {len(payload)} bytes; the limit is "
                f"{self.app.max_payload_bytes} (App(max_payload_bytes=...))")
        return payload, self._resolve_gid(args, kwargs, call_args)

    def _raw_payload(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """The call by name and the payload JSON, checked against the parameter's annotation."""
        values = list(args) + list(kwargs.values())
        if len(values) != 1:
            raise TaskArgumentError(f"raw task {self.name} takes exactly one argument (the payload)")
        context = f"raw task {self.name}: "
        data = encode_checked(values[0], context, "payload")
        if data[:1] not in (b"{", b"["):
            raise TaskArgumentError(f"{context}the payload must be a JSON object or array")
        if self.raw_decoder is not None:  # what the worker's raw decoder would refuse or change
            try:
                got = self.raw_decoder.decode(data)
            except msgspec.DecodeError as exc:
                raise TaskArgumentError(f"{context}{describe_decode_error(exc)}") from None
            except RecursionError:
                raise TaskArgumentError(f"{context}the payload nests too deep") from None
            if got is not values[0] and got != values[0]:
                check_same(values[0], got, self.codec.params[0], context)
        return {self.codec.params[0]: values[0]}, data

    def gid_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """The gid this task's rule gives a call (None: the task has no rule)."""
        if self.gid is None:
            return None
        try:
            call_args = self.codec.call_signature.bind_partial(*args, **kwargs).arguments
            gid = self._resolve_gid(args, kwargs, call_args)
        except (KeyError, IndexError, AttributeError, TypeError) as exc:
            raise TaskArgumentError(f"task {self.name}: its gid rule fails on these arguments: {exc!r}") from None
        return validate_gid(gid) if gid is not None else None

    # -- signatures (docs/workflows.md) ---------------------------------------------

    def s(self, /, *args: Any, **kwargs: Any) -> Signature[R]:
        """A call to run later as a chain step or fan-out child/callback; the first
        parameter may be left out (the previous step's result fills it)."""
        return Signature.make(self, args, kwargs, immutable=False)

    def si(self, /, *args: P.args, **kwargs: P.kwargs) -> Signature[R]:
        """A call with every argument given: it takes nothing from the step before."""
        return Signature.make(self, args, kwargs, immutable=True)

    def _resolve_gid(self, args: tuple[Any, ...], kwargs: dict[str, Any],
                     call_args: dict[str, Any]) -> str | None:
        rule = self.gid
        if rule is None:
            return None
        if callable(rule):
            value = rule(*args, **kwargs)
        elif "{" in rule:
            defaults = {n: p.default for n, p in self.codec.call_signature.parameters.items()
                        if p.default is not inspect.Parameter.empty}
            value = rule.format(**{**defaults, **call_args})
        else:
            value = rule
        if not isinstance(value, str):
            raise TaskArgumentError(f"task {self.name}: gid must be a str, got {type(value).__name__}")
        return value
