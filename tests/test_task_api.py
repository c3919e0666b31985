"""The publishing side of the task framework, without a worker.

App (URL resolution, defaults), @app.task (bare, with options, names, refusals at
decoration), calling in-process, and what delay / apply_at / apply_async / map
leave in Redis: the job hash with the exact envelope, the lane, the group keys.
Every refused call is checked to have written nothing (DBSIZE 0).
"""

from __future__ import annotations

import asyncio
import dataclasses
import decimal
import enum
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Optional

import msgspec
import pytest
import redis

from omniq_tasks import InvalidNameError, OmniqError
from omniq_tasks.errors import PayloadTooLargeError
from omniq_tasks.app import App
from omniq_tasks.defaults import REDIS_URL as DEFAULT_REDIS_URL, REDIS_URL_ENV
from omniq_tasks.arguments import TaskArgumentError, TaskDefinitionError
from omniq_tasks.context import JobContext
from omniq_tasks.registry import DuplicateTaskError
from omniq_tasks.results import JobHandle
from omniq_tasks.task import Task
from redis_server import RedisServer

NOWHERE = "redis://127.0.0.1:1/0"  # never connected to: App opens no connection until used


# -- helpers ---------------------------------------------------------------------------


def job_hash(r: redis.Redis, queue: str, job_id: str) -> dict[str, str]:
    return r.hgetall("{" + queue + "}:job:" + job_id)


def wait_ids(r: redis.Redis, queue: str) -> list[str]:
    return r.lrange("{" + queue + "}:wait", 0, -1)


def group_ids(r: redis.Redis, queue: str, gid: str) -> list[str]:
    return r.lrange("{" + queue + "}:g:" + gid + ":wait", 0, -1)


def envelope(task: Task[Any, Any], kwargs_json: str) -> str:
    return '{"task":"' + task.name + '","args":[],"kwargs":' + kwargs_json + "}"


def assert_nothing_written(r: redis.Redis) -> None:
    size = r.dbsize()
    assert size == 0, f"a refused call wrote {size} keys to Redis, e.g. {sorted(r.keys('*'))[:5]}"


@pytest.fixture()
def app(r: redis.Redis, redis_server: RedisServer) -> Iterator[App]:
    a = App("test", redis_server.url, queue="q")
    yield a
    a.close()


# -- types used in annotations -------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Size(enum.IntEnum):
    S = 1
    L = 3


class Address(msgspec.Struct):
    street: str
    zip: int


class Customer(msgspec.Struct):
    name: str
    address: Address
    tags: list[str] = []


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Order(msgspec.Struct):
    id: int
    company: str


# A module-level task: its default name is "<module>.<qualname>".
module_app = App("module-app", NOWHERE)


@module_app.task
def top_level(x: int) -> int:
    return x * 2


# -- App ---------------------------------------------------------------------------------


def test_app_url_argument_wins_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REDIS_URL_ENV, "redis://env-host:6380/3")
    assert App("a", "redis://arg-host:6381/4").redis_url == "redis://arg-host:6381/4"


def test_app_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIQ_TASKS_REDIS_URL", "redis://env-host:6380/3")
    assert App("a").redis_url == "redis://env-host:6380/3"
    assert App("a", None).redis_url == "redis://env-host:6380/3"


def test_app_url_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMNIQ_TASKS_REDIS_URL", raising=False)
    assert App("a").redis_url == "redis://localhost:6379/0" == DEFAULT_REDIS_URL


def test_app_env_url_is_the_one_connected_to(monkeypatch: pytest.MonkeyPatch, r: redis.Redis,
                                             redis_server: RedisServer) -> None:
    monkeypatch.setenv(REDIS_URL_ENV, redis_server.url)
    app = App("envapp")

    @app.task(queue="envq")
    def ping(n: int) -> None: ...

    handle = ping.delay(1)
    assert job_hash(r, "envq", handle.id)["state"] == "wait"
    app.close()


def test_app_defaults_and_task_overrides(r: redis.Redis, redis_server: RedisServer) -> None:
    app = App("d", redis_server.url, queue="base", max_attempts=7, timeout_ms=1234, backoff_ms=55)

    @app.task
    def inherits(n: int) -> None: ...

    @app.task(queue="own", max_attempts=2, timeout_ms=999, backoff_ms=0)
    def overrides(n: int) -> None: ...

    assert (inherits.queue, inherits.max_attempts, inherits.timeout_ms, inherits.backoff_ms) == \
        ("base", 7, 1234, 55)
    assert (overrides.queue, overrides.max_attempts, overrides.timeout_ms, overrides.backoff_ms) == \
        ("own", 2, 999, 0)

    h1, h2 = inherits.delay(1), overrides.delay(2)
    assert (h1.queue, h2.queue) == ("base", "own")
    j1, j2 = job_hash(r, "base", h1.id), job_hash(r, "own", h2.id)
    assert (j1["max_attempts"], j1["timeout_ms"], j1["backoff_ms"]) == ("7", "1234", "55")
    assert (j2["max_attempts"], j2["timeout_ms"], j2["backoff_ms"]) == ("2", "999", "0")
    app.close()


def test_app_builtin_defaults() -> None:
    app = App("plain", NOWHERE)
    assert (app.queue, app.max_attempts, app.timeout_ms, app.backoff_ms, app.max_payload_bytes) == \
        ("default", 3, 30_000, 5_000, 1024 * 1024)

    @app.task
    def t(n: int) -> None: ...

    assert (t.queue, t.max_attempts, t.timeout_ms, t.backoff_ms, t.group_limit, t.gid, t.raw) == \
        ("default", 3, 30_000, 5_000, 0, None, False)


@pytest.mark.parametrize("kwargs, error", [
    ({"max_attempts": 0}, ValueError),
    ({"timeout_ms": 0}, ValueError),
    ({"backoff_ms": -1}, ValueError),
    ({"max_attempts": "3"}, TypeError),
    ({"queue": "bad queue"}, InvalidNameError),
    ({"max_payload_bytes": 1}, ValueError),
])
def test_app_refuses_bad_defaults(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        App("bad", NOWHERE, **kwargs)


@pytest.mark.parametrize("options, error", [
    ({"max_attempts": 0}, ValueError),
    ({"timeout_ms": 0}, ValueError),
    ({"backoff_ms": -5}, ValueError),
    ({"group_limit": -1}, ValueError),
    ({"queue": "no spaces allowed"}, InvalidNameError),
])
def test_task_refuses_bad_options(options: dict[str, Any], error: type[Exception]) -> None:
    app = App("bad-opts", NOWHERE)
    with pytest.raises(error):
        @app.task(**options)
        def t(n: int) -> None: ...
    assert len(app.registry) == 0


def test_app_opens_no_connection_until_used() -> None:
    app = App("lazy", NOWHERE)

    @app.task
    def t(n: int) -> int:
        return n

    assert t(3) == 3  # in-process call: no Redis
    assert app._client is None
    with pytest.raises(redis.ConnectionError):
        t.delay(3)


# -- the decorator and the registry ----------------------------------------------------


def test_bare_decorator_makes_a_task_named_module_qualname() -> None:
    assert isinstance(top_level, Task)
    assert top_level.name == f"{__name__}.top_level"
    assert top_level.name.endswith("test_task_api.top_level")
    assert module_app.registry.get(top_level.name) is top_level
    assert top_level.__name__ == "top_level"
    assert top_level.queue == "default"


def test_parametrized_decorator(app: App) -> None:
    @app.task(name="billing.charge", queue="billing", max_attempts=9, gid="acct", group_limit=2)
    def charge(amount: int) -> str:
        """Charge an account."""
        return f"charged {amount}"

    assert isinstance(charge, Task)
    assert charge.name == "billing.charge"
    assert (charge.queue, charge.max_attempts, charge.gid, charge.group_limit) == \
        ("billing", 9, "acct", 2)
    assert charge.__doc__ == "Charge an account."
    assert app.registry.get("billing.charge") is charge
    assert app.registry.names() == ["billing.charge"]
    assert app.registry.queues() == ["billing"]


def test_decorator_with_empty_parentheses(app: App) -> None:
    @app.task()
    def nothing_special(n: int) -> None: ...

    assert nothing_special.name.endswith("test_decorator_with_empty_parentheses.<locals>.nothing_special")
    assert nothing_special.queue == "q"


def test_registry_queues_and_tasks_in_registration_order(app: App) -> None:
    @app.task(queue="b")
    def one(n: int) -> None: ...

    @app.task(queue="a")
    def two(n: int) -> None: ...

    @app.task(queue="b")
    def three(n: int) -> None: ...

    @app.task(queue="a", raw=True)
    def raw_a(payload: dict[str, Any]) -> None: ...

    assert app.registry.queues() == ["b", "a"]
    assert app.registry.tasks_for("b") == [one, three]
    assert app.registry.raw_handler("a") is raw_a
    assert app.registry.raw_handler("b") is None
    assert app.registry.names() == sorted(t.name for t in (one, two, three, raw_a))
    assert len(app.registry) == 4 and list(app.registry) == [one, two, three, raw_a]


def test_duplicate_name_is_a_clear_error(app: App) -> None:
    @app.task
    def dup(n: int) -> None: ...

    first = dup

    with pytest.raises(DuplicateTaskError) as info:
        @app.task
        def dup(n: int) -> None: ...  # noqa: F811 - same module.qualname

    message = str(info.value)
    assert first.name in message and "already registered" in message and "name=" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, OmniqError)
    assert app.registry.get(first.name) is first and len(app.registry) == 1

    # the suggested fix works
    @app.task(name="dup-2")
    def dup(n: int) -> None: ...  # noqa: F811

    assert len(app.registry) == 2


def test_duplicate_explicit_name_is_refused(app: App) -> None:
    @app.task(name="same")
    def a(n: int) -> None: ...

    with pytest.raises(DuplicateTaskError, match="'same' is already registered"):
        @app.task(name="same", queue="other")
        def b(n: int) -> None: ...

    assert app.registry.queues() == ["q"]


def test_second_raw_handler_for_a_queue_is_refused(app: App) -> None:
    @app.task(queue="demo", raw=True)
    def first(payload: dict[str, Any]) -> None: ...

    with pytest.raises(DuplicateTaskError, match="queue 'demo' already has a raw handler"):
        @app.task(queue="demo", raw=True)
        def second(payload: dict[str, Any]) -> None: ...

    assert app.registry.raw_handler("demo") is first


@pytest.mark.parametrize("source", [
    "def t(*args: int) -> None: ...",
    "def t(a: int, *rest: int) -> None: ...",
    "def t(**kwargs: int) -> None: ...",
    "def t(a: int, /, b: int) -> None: ...",
])
def test_tasks_with_var_or_positional_only_params_are_refused(source: str) -> None:
    app = App("defs", NOWHERE)
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    with pytest.raises(TaskDefinitionError, match="tasks take named parameters"):
        app.task(namespace["t"])
    assert issubclass(TaskDefinitionError, TypeError)
    assert len(app.registry) == 0


def test_gid_template_naming_an_unknown_parameter_is_refused() -> None:
    app = App("defs", NOWHERE)
    with pytest.raises(TaskDefinitionError) as info:
        @app.task(gid="company:{company}")
        def t(company_id: int) -> None: ...
    assert "'company'" in str(info.value) and "company_id" in str(info.value)
    assert len(app.registry) == 0


def test_gid_template_cannot_name_the_context_parameter() -> None:
    app = App("defs", NOWHERE)
    with pytest.raises(TaskDefinitionError, match="not a parameter"):
        @app.task(gid="job:{ctx}")
        def t(ctx: JobContext, n: int) -> None: ...


def test_raw_task_must_take_one_parameter() -> None:
    app = App("defs", NOWHERE)
    with pytest.raises(TaskDefinitionError, match="exactly one parameter"):
        @app.task(queue="demo", raw=True)
        def t(a: dict[str, Any], b: int) -> None: ...

    @app.task(queue="demo", raw=True)  # a JobContext besides the payload is fine
    def ok(ctx: JobContext, payload: list[int]) -> None: ...

    assert app.registry.raw_handler("demo") is ok


def test_unresolvable_annotation_is_refused_at_decoration() -> None:
    app = App("defs", NOWHERE)
    namespace: dict[str, Any] = {}
    exec("from __future__ import annotations\ndef t(x: NoSuchType) -> None: ...", namespace)
    with pytest.raises(TaskDefinitionError, match="cannot resolve annotations"):
        app.task(namespace["t"])


# -- calling in-process ------------------------------------------------------------------


def test_calling_a_task_runs_it_in_process(app: App, r: redis.Redis) -> None:
    calls: list[tuple[int, int]] = []

    @app.task
    def add(x: int, y: int = 10) -> int:
        calls.append((x, y))
        return x + y

    assert add(1, 2) == 3
    assert add(5) == 15
    assert add(x=1, y=1) == 2
    assert calls == [(1, 2), (5, 10), (1, 1)]
    assert_nothing_written(r)


def test_calling_a_task_with_context_gives_it_a_local_context(app: App, r: redis.Redis) -> None:
    seen: list[JobContext] = []

    @app.task(queue="local")
    def with_ctx(ctx: JobContext, n: int) -> int:
        seen.append(ctx)
        return n * 2

    assert with_ctx(5) == 10 and with_ctx(n=6) == 12
    assert [(c.job_id, c.attempt, c.queue, c.gid) for c in seen] == [("local", 1, "local", "")] * 2
    assert r.dbsize() == 0


def test_calling_an_async_task_returns_its_coroutine(app: App, r: redis.Redis) -> None:
    @app.task
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    assert double.is_async
    assert asyncio.run(double(21)) == 42
    assert_nothing_written(r)


# -- delay -----------------------------------------------------------------------------


def test_delay_writes_the_job_hash_with_the_exact_envelope(app: App, r: redis.Redis) -> None:
    @app.task
    def send(to: str, count: int, urgent: bool = False) -> None: ...

    before_ms = int(time.time() * 1000)
    handle = send.delay("a@b.c", 2)
    after_ms = int(time.time() * 1000)

    assert isinstance(handle, JobHandle)
    assert handle.queue == "q" and len(handle.id) == 26 and handle.existed is False
    h = job_hash(r, "q", handle.id)
    assert h["payload"] == envelope(send, '{"to":"a@b.c","count":2}')
    assert h["id"] == handle.id
    assert (h["state"], h["attempt"], h["max_attempts"], h["timeout_ms"], h["backoff_ms"]) == \
        ("wait", "0", "3", "30000", "5000")
    assert "gid" not in h and "due_ms" not in h
    assert before_ms - 1000 <= int(h["created_ms"]) <= after_ms + 1000
    assert wait_ids(r, "q") == [handle.id]

    assert handle.status() == "wait"
    info = handle.info()
    assert info is not None and info.id == handle.id and info.payload == h["payload"]
    assert handle == JobHandle(app.client, "q", handle.id)


def test_delay_encodes_every_argument_by_name_in_signature_order(app: App, r: redis.Redis) -> None:
    @app.task
    def f(a: int, b: str, c: float = 1.5, d: Optional[list[int]] = None) -> None: ...

    h1 = f.delay(b="x", a=1)
    h2 = f.delay(1, "x", 2.5, d=[1, 2])
    assert job_hash(r, "q", h1.id)["payload"] == envelope(f, '{"a":1,"b":"x"}')
    assert job_hash(r, "q", h2.id)["payload"] == envelope(f, '{"a":1,"b":"x","c":2.5,"d":[1,2]}')
    assert wait_ids(r, "q") == [h1.id, h2.id]


def test_delay_of_a_context_task_leaves_the_context_out(app: App, r: redis.Redis) -> None:
    @app.task
    def with_ctx(ctx: JobContext, n: int) -> None: ...

    assert with_ctx.codec.context_param == "ctx" and with_ctx.codec.params == ("n",)
    handle = with_ctx.delay(4)
    assert job_hash(r, "q", handle.id)["payload"] == envelope(with_ctx, '{"n":4}')
    with pytest.raises(TaskArgumentError):
        with_ctx.delay(None, 4)  # type: ignore[call-arg]
    assert len(wait_ids(r, "q")) == 1


def test_delay_of_a_task_without_parameters(app: App, r: redis.Redis) -> None:
    @app.task
    def tick() -> None: ...

    handle = tick.delay()
    assert job_hash(r, "q", handle.id)["payload"] == envelope(tick, "{}")


# -- apply_at / countdown / eta -------------------------------------------------------------


def test_apply_at_aware_datetime_makes_a_delayed_job(app: App, r: redis.Redis) -> None:
    @app.task
    def later(n: int) -> None: ...

    when = datetime(2040, 5, 6, 7, 8, 9, 123000, tzinfo=timezone(timedelta(hours=2)))
    handle = later.apply_at(when, 5)
    due = int(when.timestamp() * 1000)
    h = job_hash(r, "q", handle.id)
    assert h["state"] == "delayed" and h["due_ms"] == str(due)
    assert h["payload"] == envelope(later, '{"n":5}')
    assert r.zscore("{q}:delayed", handle.id) == due
    assert wait_ids(r, "q") == []


def test_apply_at_epoch_seconds(app: App, r: redis.Redis) -> None:
    @app.task
    def later(n: int) -> None: ...

    handle = later.apply_at(2_000_000_000.25, n=1)
    h = job_hash(r, "q", handle.id)
    assert h["state"] == "delayed" and h["due_ms"] == "2000000000250"
    handle2 = later.apply_at(2_000_000_001, 2)
    assert job_hash(r, "q", handle2.id)["due_ms"] == "2000000001000"


def test_parameters_named_when_or_self_do_not_collide_with_publish_methods(app: App, r: redis.Redis) -> None:
    @app.task(name="remind")
    def remind(self: str, when: datetime) -> str:
        return f"{self}@{when:%Y}"

    at = datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert remind(self="me", when=at) == "me@2024"
    h1 = remind.delay(self="me", when=at)
    h2 = remind.apply_at(2_000_000_000, self="you", when=at)
    assert job_hash(r, "q", h1.id)["payload"] == \
        '{"task":"remind","args":[],"kwargs":{"self":"me","when":"2024-01-01T00:00:00Z"}}'
    h = job_hash(r, "q", h2.id)
    assert h["payload"] == '{"task":"remind","args":[],"kwargs":{"self":"you","when":"2024-01-01T00:00:00Z"}}'
    assert h["due_ms"] == "2000000000000"


def test_apply_at_in_the_past_is_runnable_now(app: App, r: redis.Redis) -> None:
    @app.task
    def later(n: int) -> None: ...

    handle = later.apply_at(datetime.now(timezone.utc) - timedelta(hours=1), 1)
    assert job_hash(r, "q", handle.id)["state"] == "wait"
    assert wait_ids(r, "q") == [handle.id]


def test_countdown_sets_due_ms_from_now(app: App, r: redis.Redis) -> None:
    @app.task
    def later(n: int) -> None: ...

    def server_ms() -> int:
        seconds, micros = r.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # A countdown counts from the server's clock, known to within a round trip.
    before = server_ms()
    handle = later.apply_async((1,), countdown=30)
    after = server_ms()
    h = job_hash(r, "q", handle.id)
    assert h["state"] == "delayed"
    assert before + 30_000 - 5 <= int(h["due_ms"]) <= after + 30_000 + 5


def test_eta_on_apply_async(app: App, r: redis.Redis) -> None:
    @app.task
    def later(n: int) -> None: ...

    when = datetime(2041, 1, 1, tzinfo=timezone.utc)
    handle = later.apply_async(kwargs={"n": 3}, eta=when)
    assert job_hash(r, "q", handle.id)["due_ms"] == str(int(when.timestamp() * 1000))


@pytest.mark.parametrize("call, error, match", [
    (lambda t: t.apply_at(datetime(2040, 1, 1), 1), ValueError, "aware"),
    (lambda t: t.apply_async((1,), eta=datetime(2040, 1, 1)), ValueError, "aware"),
    (lambda t: t.apply_async((1,), countdown=-1), ValueError, "countdown"),
    (lambda t: t.apply_async((1,), countdown=5, eta=2_000_000_000), ValueError, "not both"),
    (lambda t: t.apply_async((1,), eta="tomorrow"), TypeError, "eta"),
    (lambda t: t.apply_async((1,), eta=True), TypeError, "eta"),
])
def test_bad_times_are_refused_and_write_nothing(app: App, r: redis.Redis, call: Any,
                                                 error: type[Exception], match: str) -> None:
    @app.task
    def later(n: int) -> None: ...

    with pytest.raises(error, match=match):
        call(later)
    assert_nothing_written(r)


# -- apply_async options ----------------------------------------------------------------------


def test_apply_async_per_call_options(app: App, r: redis.Redis) -> None:
    @app.task(queue="base", max_attempts=2, timeout_ms=100, backoff_ms=10)
    def f(n: int) -> None: ...

    handle = f.apply_async((7,), queue="elsewhere", gid="tenant-9", group_limit=4, job_id="my-id",
                           max_attempts=6, timeout_ms=4321, backoff_ms=123)
    assert (handle.id, handle.queue, handle.existed) == ("my-id", "elsewhere", False)
    h = job_hash(r, "elsewhere", "my-id")
    assert h["payload"] == envelope(f, '{"n":7}')
    assert (h["max_attempts"], h["timeout_ms"], h["backoff_ms"], h["gid"]) == ("6", "4321", "123", "tenant-9")
    assert group_ids(r, "elsewhere", "tenant-9") == ["my-id"]
    assert r.get("{elsewhere}:g:tenant-9:limit") == "4"
    assert r.exists("{base}:stats") == 0  # nothing went to the task's own queue


def test_apply_async_gid_overrides_the_task_rule(app: App, r: redis.Redis) -> None:
    @app.task(gid="co:{n}", group_limit=2)
    def f(n: int) -> None: ...

    h = f.apply_async((1,), gid="override")
    assert job_hash(r, "q", h.id)["gid"] == "override"
    assert r.get("{q}:g:override:limit") == "2"


def test_job_id_passthrough_and_idempotent_republish(app: App, r: redis.Redis) -> None:
    @app.task
    def f(n: int) -> None: ...

    first = f.apply_async((1,), job_id="order-1")
    again = f.apply_async((2,), job_id="order-1")
    assert (first.id, first.existed) == ("order-1", False)
    assert (again.id, again.existed) == ("order-1", True)
    assert job_hash(r, "q", "order-1")["payload"] == envelope(f, '{"n":1}')  # unchanged
    assert wait_ids(r, "q") == ["order-1"]


@pytest.mark.parametrize("options, error", [
    ({"job_id": ""}, ValueError),
    ({"job_id": "x" * 257}, ValueError),
    ({"max_attempts": 0}, ValueError),
    ({"timeout_ms": 0}, ValueError),
    ({"backoff_ms": -1}, ValueError),
    ({"group_limit": -1}, ValueError),
    ({"gid": "has space"}, InvalidNameError),
    ({"gid": ""}, InvalidNameError),
    ({"queue": "bad/queue"}, InvalidNameError),
    ({"max_attempts": 1.5}, TypeError),
])
def test_bad_apply_async_options_write_nothing(app: App, r: redis.Redis, options: dict[str, Any],
                                               error: type[Exception]) -> None:
    @app.task
    def f(n: int) -> None: ...

    with pytest.raises(error):
        f.apply_async((1,), **options)
    assert_nothing_written(r)


# -- gid rules ------------------------------------------------------------------------------------


def test_gid_constant(app: App, r: redis.Redis) -> None:
    @app.task(gid="all-in-one", group_limit=3)
    def f(n: int) -> None: ...

    ids = [f.delay(i).id for i in range(3)]
    assert all(job_hash(r, "q", i)["gid"] == "all-in-one" for i in ids)
    assert group_ids(r, "q", "all-in-one") == ids
    assert r.get("{q}:g:all-in-one:limit") == "3"
    assert wait_ids(r, "q") == []


def test_gid_template_from_arguments_and_defaults(app: App, r: redis.Redis) -> None:
    @app.task(gid="company:{company_id}:{region}")
    def f(company_id: int, region: str = "eu", note: str = "") -> None: ...

    h1 = f.delay(42)
    h2 = f.delay(company_id=7, region="us")
    h3 = f.apply_async((9,), {"region": "ap"})
    assert job_hash(r, "q", h1.id)["gid"] == "company:42:eu"
    assert job_hash(r, "q", h2.id)["gid"] == "company:7:us"
    assert job_hash(r, "q", h3.id)["gid"] == "company:9:ap"
    assert group_ids(r, "q", "company:42:eu") == [h1.id]
    assert not r.exists("{q}:g:company:42:eu:limit")  # group_limit 0 sets no limit


def test_gid_template_with_attribute_of_a_struct(app: App, r: redis.Redis) -> None:
    @app.task(gid="co:{order.company}")
    def f(order: Order) -> None: ...

    handle = f.delay(Order(id=1, company="acme"))
    assert job_hash(r, "q", handle.id)["gid"] == "co:acme"


def test_gid_callable_gets_the_call_arguments(app: App, r: redis.Redis) -> None:
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def rule(company_id: int, region: str = "eu") -> str:
        seen.append(((company_id,), {"region": region}))
        return f"c{company_id}-{region}"

    @app.task(gid=rule, group_limit=2)
    def f(company_id: int, region: str = "eu") -> None: ...

    h1 = f.delay(5, region="us")
    h2 = f.delay(6)
    assert job_hash(r, "q", h1.id)["gid"] == "c5-us"
    assert job_hash(r, "q", h2.id)["gid"] == "c6-eu"
    assert r.get("{q}:g:c5-us:limit") == "2"
    assert seen == [((5,), {"region": "us"}), ((6,), {"region": "eu"})]


def test_gid_callable_returning_a_non_string_is_refused(app: App, r: redis.Redis) -> None:
    @app.task(gid=lambda n: n)
    def f(n: int) -> None: ...

    with pytest.raises(TaskArgumentError, match="gid must be a str"):
        f.delay(1)
    assert_nothing_written(r)


def test_gid_template_filling_an_invalid_gid_is_refused(app: App, r: redis.Redis) -> None:
    @app.task(gid="t:{name}")
    def f(name: str) -> None: ...

    with pytest.raises(InvalidNameError):
        f.delay("has a space")
    assert_nothing_written(r)


def test_gid_is_not_computed_from_refused_arguments(app: App, r: redis.Redis) -> None:
    calls: list[Any] = []

    @app.task(gid=lambda n: calls.append(n) or "g")
    def f(n: int) -> None: ...

    with pytest.raises(TaskArgumentError):
        f.delay("not an int")  # type: ignore[arg-type]
    assert calls == []
    assert_nothing_written(r)


# -- map ----------------------------------------------------------------------------------------------


def test_map_publishes_tuples_dicts_and_single_values(app: App, r: redis.Redis) -> None:
    @app.task
    def one(n: int) -> None: ...

    @app.task
    def two(a: int, b: str = "x") -> None: ...

    singles = one.map([1, 2, 3])
    mixed = two.map([(1, "a"), {"a": 2}, (3,)])
    assert [h.queue for h in singles + mixed] == ["q"] * 6
    assert [job_hash(r, "q", h.id)["payload"] for h in singles] == \
        [envelope(one, '{"n":%d}' % n) for n in (1, 2, 3)]
    assert [job_hash(r, "q", h.id)["payload"] for h in mixed] == [
        envelope(two, '{"a":1,"b":"a"}'), envelope(two, '{"a":2}'), envelope(two, '{"a":3}')]
    assert wait_ids(r, "q") == [h.id for h in singles + mixed]  # FIFO in call order


def test_map_to_another_queue_with_gid_template(app: App, r: redis.Redis) -> None:
    @app.task(gid="u:{user}", group_limit=1)
    def f(user: str, n: int) -> None: ...

    handles = f.map([("a", 1), ("b", 2), ("a", 3)], queue="bulk")
    assert all(h.queue == "bulk" for h in handles)
    assert group_ids(r, "bulk", "u:a") == [handles[0].id, handles[2].id]
    assert group_ids(r, "bulk", "u:b") == [handles[1].id]
    assert r.exists("{q}:stats") == 0


def test_map_of_nothing(app: App, r: redis.Redis) -> None:
    @app.task
    def f(n: int) -> None: ...

    assert f.map([]) == []
    assert f.map(iter(())) == []
    assert_nothing_written(r)


def test_map_with_one_bad_item_publishes_nothing(app: App, r: redis.Redis) -> None:
    @app.task
    def f(n: int) -> None: ...

    with pytest.raises(TaskArgumentError, match="Expected `int`, got `str`"):
        f.map([1, 2, "three", 4])
    assert_nothing_written(r)


def test_map_is_published_in_chunks_of_1000(app: App, r: redis.Redis) -> None:
    @app.task
    def f(n: int) -> None: ...

    handles = f.map(range(2500))
    assert len(handles) == 2500 and len({h.id for h in handles}) == 2500
    assert r.llen("{q}:wait") == 2500
    assert job_hash(r, "q", handles[2499].id)["payload"] == envelope(f, '{"n":2499}')


def test_map_with_a_too_large_item_after_the_first_chunk_publishes_nothing(
        r: redis.Redis, redis_server: RedisServer) -> None:
    app = App("small", redis_server.url, max_payload_bytes=200)

    @app.task(queue="q")
    def f(s: str) -> None: ...

    with pytest.raises(PayloadTooLargeError):
        f.map(["a"] * 1200 + ["x" * 300])
    assert_nothing_written(r)
    app.close()


# -- argument validation at publish -------------------------------------------------------------


@pytest.fixture()
def typed(app: App) -> Task[Any, Any]:
    @app.task(name="typed")
    def typed(customer: Customer, point: Point, when: datetime, ref: uuid.UUID,
              amount: decimal.Decimal, color: Color, customers: list[Customer],
              prices: dict[str, decimal.Decimal], size: Size = Size.S,
              note: Optional[str] = None) -> None: ...

    return typed


GOOD: dict[str, Any] = dict(
    customer=Customer("Ann", Address("Main St", 12345), ["vip"]),
    point=Point(1, 2),
    when=datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    ref=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    amount=decimal.Decimal("10.50"),
    color=Color.BLUE,
    customers=[Customer("Bob", Address("Side St", 1))],
    prices={"apple": decimal.Decimal("0.30"), "pear": decimal.Decimal("1")},
)


def test_every_supported_type_is_encoded(typed: Task[Any, Any], r: redis.Redis) -> None:
    handle = typed.delay(**GOOD, size=Size.L, note="hi")
    assert job_hash(r, "q", handle.id)["payload"] == (
        '{"task":"typed","args":[],"kwargs":{'
        '"customer":{"name":"Ann","address":{"street":"Main St","zip":12345},"tags":["vip"]},'
        '"point":{"x":1,"y":2},'
        '"when":"2024-01-02T03:04:05Z",'
        '"ref":"12345678-1234-5678-1234-567812345678",'
        '"amount":"10.50",'
        '"color":"blue",'
        '"customers":[{"name":"Bob","address":{"street":"Side St","zip":1},"tags":[]}],'
        '"prices":{"apple":"0.30","pear":"1"},'
        '"size":3,"note":"hi"}}')


def test_json_equivalent_values_are_accepted(typed: Task[Any, Any], r: redis.Redis) -> None:
    # what the worker will decode is what counts: a dict for a Struct, a str for a UUID...
    handle = typed.delay(**{**GOOD, "customer": {"name": "Ann", "address": {"street": "s", "zip": 1}},
                            "ref": "12345678-1234-5678-1234-567812345678", "color": "red"})
    assert job_hash(r, "q", handle.id)["state"] == "wait"


@pytest.mark.parametrize("field, value, expected", [
    ("customer", Customer("Ann", {"street": "x", "zip": "nope"}), "Expected `int`, got `str` (argument customer.address.zip)"),  # type: ignore[arg-type]
    ("customer", {"name": "Ann"}, "Object missing required field `address` (argument customer)"),
    ("point", {"x": 1, "y": "2"}, "Expected `int`, got `str` (argument point.y)"),
    ("point", [1, 2], "Expected `object`, got `array` (argument point)"),
    ("when", "yesterday", "Invalid RFC3339 encoded datetime (argument when)"),
    ("when", 5, "Expected `datetime`, got `int` (argument when)"),
    ("ref", "not-a-uuid", "Invalid UUID (argument ref)"),
    ("amount", "ten", "Invalid decimal string (argument amount)"),
    ("amount", [1], "Expected `decimal`, got `array` (argument amount)"),
    ("color", "green", "Invalid enum value 'green' (argument color)"),
    ("color", Size.L, "Expected `str`, got `int` (argument color)"),
    ("customers", [Customer("x", Address("s", 1)), {"name": 2}], "Expected `str`, got `int` (argument customers[1].name)"),
    ("customers", [Customer("x", Address("s", 1)), Customer("y", Address(3, 1))], "(argument customers[1].address.street)"),  # type: ignore[arg-type]
    ("customers", {"not": "a list"}, "Expected `array`, got `object` (argument customers)"),
    ("prices", {"apple": "cheap"}, "Invalid decimal string (argument prices[...])"),
    ("prices", [1], "Expected `object`, got `array` (argument prices)"),
    ("size", 2, "Invalid enum value 2 (argument size)"),
    ("note", 3, "Expected `str | null`, got `int` (argument note)"),
])
def test_wrong_arguments_are_refused_with_path_and_write_nothing(
        typed: Task[Any, Any], r: redis.Redis, field: str, value: Any, expected: str) -> None:
    with pytest.raises(TaskArgumentError) as info:
        typed.delay(**{**GOOD, field: value})
    assert expected in str(info.value)
    assert str(info.value).startswith("task typed: ")
    assert isinstance(info.value, TypeError)
    assert_nothing_written(r)


@pytest.mark.parametrize("call, expected", [
    (lambda t: t.delay(), "missing a required argument: 'customer'"),
    (lambda t: t.delay(**GOOD, unknown=1), "unexpected keyword argument 'unknown'"),
    (lambda t: t.delay(*GOOD.values(), Size.S, None, "one too many"), "too many positional arguments"),
    (lambda t: t.delay(**{**GOOD, "point": object()}), "cannot encode arguments"),
    (lambda t: t.apply_async((), {**GOOD, "when": "x"}, queue="other"), "(argument when)"),
    (lambda t: t.apply_at(2_000_000_000, **{**GOOD, "amount": "x"}), "(argument amount)"),
    (lambda t: t.map([GOOD, {**GOOD, "ref": 1}]), "(argument ref)"),
])
def test_wrong_calls_are_refused_on_every_publish_path(typed: Task[Any, Any], r: redis.Redis,
                                                       call: Any, expected: str) -> None:
    with pytest.raises(TaskArgumentError) as info:
        call(typed)
    assert expected in str(info.value)
    assert_nothing_written(r)


def test_bool_is_not_an_int(app: App, r: redis.Redis) -> None:
    @app.task
    def f(n: int) -> None: ...

    with pytest.raises(TaskArgumentError, match="Expected `int`, got `bool`"):
        f.delay(True)
    assert_nothing_written(r)


def test_validation_runs_before_redis_is_reached() -> None:
    app = App("offline", NOWHERE)  # nothing listens there

    @app.task
    def f(n: int) -> None: ...

    with pytest.raises(TaskArgumentError):
        f.delay("x")  # type: ignore[arg-type]
    assert app._client is None


# -- payload size -------------------------------------------------------------------------------------


def test_payload_too_large_is_refused_with_the_limit(r: redis.Redis, redis_server: RedisServer) -> None:
    app = App("small", redis_server.url, queue="q", max_payload_bytes=100)

    @app.task(name="f")
    def f(text: str) -> None: ...

    ok = f.delay("x" * 40)
    assert len(job_hash(r, "q", ok.id)["payload"]) <= 100
    r.flushall()
    with pytest.raises(PayloadTooLargeError) as info:
        f.delay("x" * 100)
    assert "the limit is 100" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert_nothing_written(r)
    app.close()


def test_default_payload_limit_is_one_mib(app: App, r: redis.Redis) -> None:
    @app.task
    def f(text: str) -> None: ...

    overhead = len(envelope(f, '{"text":""}'))
    handle = f.delay("x" * (1024 * 1024 - overhead))  # exactly 1 MiB: accepted
    assert len(job_hash(r, "q", handle.id)["payload"]) == 1024 * 1024
    r.flushall()
    with pytest.raises(PayloadTooLargeError, match="1048576"):
        f.delay("x" * (1024 * 1024 - overhead + 1))
    assert_nothing_written(r)


# -- raw tasks ------------------------------------------------------------------------------------------


class RawOrder(msgspec.Struct):
    order_id: int
    items: list[str] = []


def test_raw_task_publishes_the_payload_itself(app: App, r: redis.Redis) -> None:
    @app.task(queue="demo", raw=True)
    def on_demo(payload: Any) -> None: ...

    h1 = on_demo.delay({"hello": "world", "n": [1, 2]})
    h2 = on_demo.delay(payload=[1, 2, 3])
    assert job_hash(r, "demo", h1.id)["payload"] == '{"hello":"world","n":[1,2]}'
    assert job_hash(r, "demo", h2.id)["payload"] == "[1,2,3]"
    assert h1.queue == "demo"


def test_raw_task_publishes_a_struct_payload(app: App, r: redis.Redis) -> None:
    @app.task(queue="demo", raw=True)
    def on_demo(ctx: JobContext, order: RawOrder) -> None: ...

    handle = on_demo.delay(RawOrder(7, ["a"]))
    assert job_hash(r, "demo", handle.id)["payload"] == '{"order_id":7,"items":["a"]}'


@pytest.mark.parametrize("call, match", [
    (lambda t: t.delay("just a string"), "JSON object or array"),
    (lambda t: t.delay(5), "JSON object or array"),
    (lambda t: t.delay({"a": 1}, {"b": 2}), "exactly one argument"),
    (lambda t: t.delay(), "exactly one argument"),
    (lambda t: t.delay({"a": object()}), "cannot encode payload"),
])
def test_raw_task_refuses_what_is_not_a_json_object_or_array(app: App, r: redis.Redis,
                                                              call: Any, match: str) -> None:
    @app.task(queue="demo", raw=True)
    def on_demo(payload: Any) -> None: ...

    with pytest.raises(TaskArgumentError, match=match):
        call(on_demo)
    assert_nothing_written(r)


def test_raw_task_payload_is_checked_against_its_annotation(app: App, r: redis.Redis) -> None:
    @app.task(queue="demo", raw=True)
    def on_demo(order: RawOrder) -> None: ...

    with pytest.raises(TaskArgumentError, match="Expected `int`, got `str`"):
        on_demo.delay({"order_id": "seven"})
    assert_nothing_written(r)


def test_raw_task_gid_template_uses_the_payload(app: App, r: redis.Redis) -> None:
    @app.task(queue="demo", raw=True, gid="tenant:{payload[tenant]}")
    def on_demo(payload: dict[str, str]) -> None: ...

    handle = on_demo.delay({"tenant": "acme"})
    assert job_hash(r, "demo", handle.id)["gid"] == "tenant:acme"
