"""App: the connection, the defaults and the registry; ``@app.task`` makes Tasks."""

from __future__ import annotations

import importlib
import os
import sys
import threading
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterator, Protocol, Sequence, TypeVar, overload

import redis as redis_lib
from redis.cluster import RedisCluster
from typing_extensions import Concatenate, ParamSpec, Unpack

from . import defaults
from .defaults import check_int
from .errors import InvalidOptionError
from .protocol.client import OmniqClient
from .protocol.connection import RedisClient, describe_redis
from .context import JobContext
from .protocol.keys import validate_queue
from .middleware import Middleware, add_task_callbacks
from .policy import LifeOptions, Policy
from .registry import Registry
from .results import JobHandle
from .task import GidRule, Task
from .fanout import start_fanout
from .signature import Signature, WORKFLOW_SWEEP_S, WORKFLOW_TTL_S, validate_workflow_id
from .workflow_handles import FanoutHandle
from .periodic import Schedule
from .protocol.urls import redact_url

P = ParamSpec("P")
R = TypeVar("R")
TaskT = TypeVar("TaskT", bound="Task[Any, Any]")


def _positive_seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidOptionError(f"{name} must be seconds > 0, got {value!r}")
    return float(value)


class TaskDecorator(Protocol):
    """What ``@app.task(...)`` returns: a decorator that turns a function into a Task."""

    @overload
    def __call__(self, fn: Callable[Concatenate[JobContext, P], R], /) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


class App:
    """An omniq-tasks application: where tasks are registered and published from.

    ``redis_url`` falls back to the environment variable OMNIQ_TASKS_REDIS_URL,
    then to redis://localhost:6379/0. A Redis Cluster is ``redis+cluster://host:port``
    (``rediss+cluster://`` for TLS), a ``redis://`` URL with ``cluster=True``, or
    ``redis=`` an existing ``redis.Redis`` / ``redis.cluster.RedisCluster`` to use
    instead of a URL. The keyword defaults apply to every task that does not set
    its own. No connection is opened until first use.
    """

    def __init__(
        self,
        name: str,
        redis_url: str | None = None,
        *,
        queue: str = defaults.QUEUE,
        max_attempts: int = defaults.MAX_ATTEMPTS,
        timeout_ms: int = defaults.TIMEOUT_MS,
        backoff_ms: int = defaults.BACKOFF_MS,
        max_payload_bytes: int = defaults.MAX_PAYLOAD_BYTES,
        cluster: bool = False,
        wake_cap: int = defaults.WAKE_CAP,
        middleware: Sequence[Middleware] = (),
        redis: RedisClient | None = None,
        eager: bool = False,
        workflow_ttl: float = WORKFLOW_TTL_S,
        workflow_sweep: float = WORKFLOW_SWEEP_S,
        **life: Unpack[LifeOptions],
    ) -> None:
        self.name = name
        # Eager mode (tests): publishing runs the task at once, here (omniq_tasks.eager).
        self.eager = eager
        if redis is not None and not isinstance(redis, (redis_lib.Redis, RedisCluster)):
            raise TypeError(f"redis must be a redis.Redis or redis.cluster.RedisCluster, not {type(redis).__name__}")
        self._redis = redis
        if redis is not None:  # what messages show: the client's address, never a password
            self.redis_url = describe_redis(redis)
        else:
            self.redis_url = redis_url or os.environ.get(defaults.REDIS_URL_ENV) or defaults.REDIS_URL
        self.queue = validate_queue(queue)
        self.max_attempts = check_int("max_attempts", max_attempts, 1)
        self.timeout_ms = check_int("timeout_ms", timeout_ms, 1)
        self.backoff_ms = check_int("backoff_ms", backoff_ms, 0)
        self.max_payload_bytes = check_int("max_payload_bytes", max_payload_bytes, 2)
        self.cluster = cluster
        self.wake_cap = check_int("wake_cap", wake_cap, 0)
        # Workflows (docs/workflows.md): how long their keys and once-sets live, and
        # how long after a fan-out opens (then between looks) the sweepers check it.
        self.workflow_ttl = _positive_seconds("workflow_ttl", workflow_ttl)
        self.workflow_sweep = _positive_seconds("workflow_sweep", workflow_sweep)
        # Retries, time limits, expiry, results, callbacks: every task's defaults.
        self.policy = Policy().merged(**life)
        self.registry = Registry()
        self.schedules: dict[str, Schedule] = {}  # periodic schedules by name (docs/periodic.md)
        self.middleware: list[Middleware] = []  # hooks around each job's life, in order
        for mw in middleware:
            self.add_middleware(mw)
        self._client: OmniqClient | None = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<App {self.name} tasks={len(self.registry)} redis={redact_url(self.redis_url)}>"

    def add_middleware(self, middleware: Middleware) -> None:
        """Add hooks around each job's life (docs/middleware.md); before creating a worker."""
        if not isinstance(middleware, Middleware):
            raise TypeError(f"middleware must be an omniq_tasks.middleware.Middleware, "
                            f"not {type(middleware).__name__}")
        self.middleware.append(middleware)

    @contextmanager
    def eager_mode(self, eager: bool = True) -> Iterator[None]:
        """Within the block, ``.delay()``/``.apply_async()``/``.map()`` run tasks at once, here
        (docs/testing.md); the previous mode comes back after it."""
        previous, self.eager = self.eager, eager
        try:
            yield
        finally:
            self.eager = previous

    @property
    def client(self) -> OmniqClient:
        """The low-level client, connected on first use."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = OmniqClient(
                        self._redis if self._redis is not None else self.redis_url,
                        cluster=self.cluster, max_payload_bytes=self.max_payload_bytes)
        return self._client

    def handle(self, queue: str, job_id: str, task: Task[Any, Any] | str | None = None) -> JobHandle:
        """A handle on a job published earlier (by id), e.g. in another process.

        With ``task`` (a Task, or a registered task's name) ``get()`` decodes the
        result to its return annotation; without it, to plain JSON values.
        """
        if isinstance(task, str):
            found = self.registry.get(task)
            if found is None:
                raise ValueError(f"no task named {task!r} is registered in {self.name}")
            task = found
        return JobHandle(self.client, validate_queue(queue), job_id, task=task)

    def fanout(self, children: Sequence[Signature[Any]], *, then: Signature[Any] | None = None,
               on_error: Signature[Any] | None = None, key: str | None = None) -> FanoutHandle:
        """Run ``children`` (signatures: ``task.s(...)``) in parallel, then ``then`` once
        with their outcomes (a ``list[ChildResult]`` as its first argument).

        ``on_error``: called instead of ``then`` when a child failed for good. ``key``
        names the fan-out (1..128 characters, no braces); a key started before
        starts nothing new. Left out, a fresh one. See docs/workflows.md.
        """
        return start_fanout(self, children, then, on_error, key)

    def periodic(self, *, cron: str | None = None, every: timedelta | float | None = None, tz: str | None = None,
                 args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, name: str | None = None,
                 catch_up: int = 0) -> Callable[[TaskT], TaskT]:
        """Publish a call of the decorated task periodically (put it above ``@app.task``).

        ``cron="0 3 * * *"`` in time zone ``tz`` (UTC by default), or
        ``every=timedelta(minutes=5)`` (ticks at multiples of it since the epoch). The
        call is ``task(*args, **kwargs)``, checked now. ``name`` (default: the task's
        name) identifies the schedule; ``catch_up``: missed ticks published after a
        downtime (0: at most one). Run ``omniq-tasks beat`` (or ``worker --beat``).
        """
        def decorate(task: TaskT) -> TaskT:
            if not isinstance(task, Task):
                raise TypeError("@app.periodic(...) goes above @app.task: it takes a task, not "
                                f"{type(task).__name__}")
            self.add_periodic(task.si(*args, **(kwargs or {})), cron=cron, every=every, tz=tz,
                              name=name, catch_up=catch_up)
            return task
        return decorate

    def add_periodic(self, call: Signature[Any] | Task[Any, Any], *, cron: str | None = None,
                     every: timedelta | float | None = None, tz: str | None = None, name: str | None = None,
                     catch_up: int = 0) -> Schedule:
        """Publish ``call`` (``task.si(...)``, or a task taking no arguments) periodically;
        see :meth:`periodic`. Raises InvalidOptionError for a bad or duplicate schedule."""
        signature = call.si() if isinstance(call, Task) else call
        if not isinstance(signature, Signature):
            raise TypeError(f"add_periodic takes a signature (task.si(...)) or a task, not {type(call).__name__}")
        name = signature.task.name if name is None else name
        if name in self.schedules:
            raise InvalidOptionError(f"a schedule named {name!r} exists already (give name=...)")
        schedule = Schedule(name, signature, cron=cron, every=every, tz=tz, catch_up=catch_up)
        self.schedules[name] = schedule
        return schedule

    def fanout_handle(self, key: str) -> FanoutHandle:
        """The handle of a fan-out started earlier (e.g. in another process), by its key."""
        return FanoutHandle(self, validate_workflow_id(key))

    def close(self) -> None:
        """Close the connection (it reopens on next use)."""
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    @overload
    def task(self, fn: Callable[Concatenate[JobContext, P], R], /) -> Task[P, R]: ...

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        gid: GidRule = None,
        group_limit: int = 0,
        max_attempts: int | None = None,
        timeout_ms: int | None = None,
        backoff_ms: int | None = None,
        raw: bool = False,
        **life: Unpack[LifeOptions],
    ) -> TaskDecorator: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        gid: GidRule = None,
        group_limit: int = 0,
        max_attempts: int | None = None,
        timeout_ms: int | None = None,
        backoff_ms: int | None = None,
        raw: bool = False,
        **life: Unpack[LifeOptions],
    ) -> Any:
        """Register a function as a task; usable bare (``@app.task``) or with options.

        ``gid`` puts each job in a FIFO group: a constant, a template filled from the
        call's arguments (``"company:{company_id}"``) or a callable taking the same
        arguments; ``group_limit`` caps how many of a group run at once.
        ``raw=True`` makes the task its queue's handler for plain JSON payloads from
        other OmniQ producers: its one parameter receives the decoded payload. A
        parameter annotated ``JobContext`` (first, for type checkers) gets the job's
        context. Task names default to ``module.qualname`` and must be unique.
        """

        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            task: Task[Any, Any] = Task(
                self,
                func,
                name=name or f"{func.__module__}.{func.__qualname__}",
                queue=self.queue if queue is None else queue,  # "" is refused, not the default
                gid=gid,
                group_limit=check_int("group_limit", group_limit, 0),
                max_attempts=self.max_attempts if max_attempts is None
                else check_int("max_attempts", max_attempts, 1),
                timeout_ms=self.timeout_ms if timeout_ms is None else check_int("timeout_ms", timeout_ms, 1),
                backoff_ms=self.backoff_ms if backoff_ms is None else check_int("backoff_ms", backoff_ms, 0),
                raw=raw,
                policy=self.policy.merged(**life),
            )
            self.registry.add(task)
            add_task_callbacks(self, task)  # its on_success/on_failure/on_retry, if any
            return task

        if fn is not None:
            return register(fn)
        return register


def load_app(spec: str) -> App:
    """Import ``"package.module:attr"`` and return the App there (cwd on the import path)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'module:app', e.g. 'shop.tasks:app', got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    try:
        app = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(app, App):
        raise ValueError(f"{spec} is a {type(app).__name__}, not an omniq_tasks.App")
    return app
