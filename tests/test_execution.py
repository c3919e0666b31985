"""Running one job without a worker: execution.decode_job / call / call_async / describe_exception.

decode_job() decides which task a payload is for and decodes its arguments, or returns
the Outcome that fails the job (``final`` when retrying cannot help). Redis is only
used where a JobContext needs a real client.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Callable, Iterator

import msgspec
import pytest
import redis

from omniq_tasks import OmniqClient
from omniq_tasks.errors import LeaseLostError
from omniq_tasks.protocol.models import ReservedJob
from omniq_tasks.app import App
from omniq_tasks.context import JobContext
from omniq_tasks.envelope import build_envelope, read_envelope
from omniq_tasks.worker.execution import (
    MAX_ERROR_CHARS, Outcome, PreparedCall, call, call_async, decode_job, describe_exception,
)

NOWHERE = "redis://127.0.0.1:1/0"


class Address(msgspec.Struct):
    street: str
    zip: int


class Order(msgspec.Struct):
    id: int
    lines: list[str] = []


class Payload(msgspec.Struct):
    order_id: int
    items: list[str]


def no_context() -> JobContext:
    raise AssertionError("this task takes no JobContext: make_context must not be called")


@pytest.fixture()
def app() -> App:
    app = App("exec", NOWHERE, queue="jobs")

    @app.task(name="ship")
    def ship(n: int, address: Address, express: bool = False) -> tuple[int, Address, bool]:
        return n, address, express

    @app.task(name="order")
    def order(order: Order) -> Order:
        return order

    @app.task(name="ctx")
    def with_ctx(ctx: JobContext, n: int) -> None: ...

    @app.task(name="raw-demo", queue="demo", raw=True)
    def on_demo(payload: Payload) -> None: ...

    return app


def run_prepare(app: App, payload: str | bytes, queue: str = "jobs",
                make_context: Callable[[], JobContext] = no_context) -> PreparedCall | Outcome:
    return decode_job(app.registry, queue, payload, make_context)


def prepared(app: App, payload: str | bytes, queue: str = "jobs", **kw: Any) -> PreparedCall:
    result = run_prepare(app, payload, queue, **kw)
    assert isinstance(result, PreparedCall), result
    return result


def failed(app: App, payload: str | bytes, queue: str = "jobs") -> Outcome:
    result = run_prepare(app, payload, queue)
    assert isinstance(result, Outcome), result
    assert result.ok is False and result.final is True
    return result


# -- finding the task ---------------------------------------------------------------------


def test_envelope_of_a_known_task_is_decoded(app: App) -> None:
    call_ = prepared(app, '{"task":"ship","args":[],"kwargs":{"n":3,"address":{"street":"s","zip":9}}}')
    assert call_.task is app.registry.get("ship")
    assert call_.kwargs == {"n": 3, "address": Address("s", 9), "express": False}  # default filled


def test_what_our_publisher_writes_is_what_prepare_reads(app: App) -> None:
    ship = app.registry.get("ship")
    assert ship is not None
    spec = ship.encode_call((4, Address("x", 1)), {"express": True})
    call_ = prepared(app, spec.payload)
    assert call_.kwargs == {"n": 4, "address": Address("x", 1), "express": True}
    assert prepared(app, spec.payload.decode()).kwargs == call_.kwargs  # str payloads too


def test_unknown_task_fails_at_once_naming_the_known_tasks(app: App) -> None:
    outcome = failed(app, '{"task":"no.such.task","args":[],"kwargs":{}}')
    assert outcome.task == "no.such.task"
    assert "unknown task 'no.such.task'" in outcome.error
    assert "known tasks: ctx, order, raw-demo, ship" in outcome.error


def test_unknown_task_with_an_empty_registry() -> None:
    empty = App("empty", NOWHERE)
    outcome = decode_job(empty.registry, "jobs", '{"task":"x","kwargs":{}}', no_context)
    assert isinstance(outcome, Outcome) and outcome.final
    assert "known tasks: none" in outcome.error


# -- raw payloads ---------------------------------------------------------------------------


def test_raw_payload_goes_to_the_queue_raw_handler_converted_to_its_annotation(app: App) -> None:
    call_ = prepared(app, '{"order_id":7,"items":["a","b"]}', queue="demo")
    assert call_.task is app.registry.raw_handler("demo")
    assert call_.kwargs == {"payload": Payload(7, ["a", "b"])}


def test_raw_handler_with_context_and_list_annotation() -> None:
    app = App("raw", NOWHERE)
    made: list[JobContext] = []
    sentinel = JobContext(OmniqClient(NOWHERE), queue="nums", job_id="j", attempt=1, max_attempts=1,
                          gid="", lease_token="t", lock_until_ms=1, payload_raw="[1,2]")

    @app.task(queue="nums", raw=True)
    def on_nums(ctx: JobContext, values: list[int]) -> None: ...

    def make() -> JobContext:
        made.append(sentinel)
        return sentinel

    call_ = prepared(app, "[1, 2, 3]", queue="nums", make_context=make)
    assert call_.kwargs == {"values": [1, 2, 3], "ctx": sentinel}
    assert made == [sentinel]


@pytest.mark.parametrize("payload", [
    '{"order_id":1,"items":[]}',             # a plain object
    '[1,2]',                                 # an array
    '{"task":"ship"}',                       # "task" but neither args nor kwargs
    '{"task":5,"args":[]}',                  # "task" is not a string
    '{"task":"ship","kwargs":{},"meta":3}',  # meta is not an object
])
def test_payloads_that_are_not_envelopes_are_raw(app: App, payload: str) -> None:
    assert read_envelope(payload) is None
    outcome = failed(app, payload, queue="jobs")
    assert outcome.task == ""
    assert outcome.error == ("payload is not a task envelope and queue 'jobs' has no raw handler "
                             "(declare one with @app.task(queue='jobs', raw=True))")


def test_raw_payload_that_does_not_fit_the_annotation_fails_at_once(app: App) -> None:
    outcome = failed(app, '{"order_id":"seven","items":[]}', queue="demo")
    assert outcome.task == "raw-demo"
    assert outcome.error == "raw task raw-demo: payload does not fit: Expected `int`, got `str` - at `$.order_id`"
    outcome = failed(app, '{"order_id":1,"items":["a",2]}', queue="demo")
    assert "Expected `str`, got `int`" in outcome.error and "$.items[1]" in outcome.error
    outcome = failed(app, "[1]", queue="demo")
    assert "Expected `object`, got `array`" in outcome.error


def test_envelope_on_a_raw_queue_still_goes_to_its_task(app: App) -> None:
    call_ = prepared(app, '{"task":"order","kwargs":{"order":{"id":1}}}', queue="demo")
    assert call_.task is app.registry.get("order")


# -- argument validation in the worker -------------------------------------------------------


@pytest.mark.parametrize("kwargs, expected", [
    ('{"order":{"id":"x"}}', "Expected `int`, got `str` (argument order.id)"),
    ('{"order":{"id":1,"lines":["a",3]}}', "Expected `str`, got `int` (argument order.lines[1])"),
    ('{"order":{}}', "Object missing required field `id` (argument order)"),
    ('{}', "Object missing required field `order`"),
    ('{"order":{"id":1},"more":1}', "Object contains unknown field `more`"),
    ('{"order":[1]}', "Expected `object`, got `array` (argument order)"),
    ('[1]', "Expected `object`, got `array`"),
])
def test_validation_failure_fails_at_once_with_path_and_type(app: App, kwargs: str, expected: str) -> None:
    outcome = failed(app, '{"task":"order","args":[],"kwargs":' + kwargs + "}")
    assert outcome.task == "order"
    assert outcome.error == f"invalid arguments: task order: {expected}"


def test_positional_args_from_a_foreign_envelope(app: App) -> None:
    call_ = prepared(app, '{"task":"ship","args":[1,{"street":"Main","zip":12}],"kwargs":{"express":true}}')
    assert call_.kwargs == {"n": 1, "address": Address("Main", 12), "express": True}
    call_ = prepared(app, '{"task":"ship","args":[2,{"street":"B","zip":3},false]}')  # no kwargs at all
    assert call_.kwargs == {"n": 2, "address": Address("B", 3), "express": False}


def test_positional_args_skip_the_context_parameter(app: App) -> None:
    sentinel: Any = object()
    call_ = prepared(app, '{"task":"ctx","args":[5]}', make_context=lambda: sentinel)
    assert call_.kwargs == {"n": 5, "ctx": sentinel}


@pytest.mark.parametrize("envelope, expected", [
    ('{"task":"ship","args":[1,{"street":"s","zip":1},true,4]}', "takes 3 positional arguments, got 4"),
    ('{"task":"ship","args":[1],"kwargs":{"n":2,"address":{"street":"s","zip":1}}}',
     "got multiple values for argument 'n'"),
    ('{"task":"ship","args":["one",{"street":"s","zip":1}]}', "Expected `int`, got `str` (argument n)"),
    ('{"task":"ship","args":[1,{"street":"s","zip":"z"}]}', "(argument address.zip)"),
    ('{"task":"ship","args":null}', "Expected `array`, got `null`"),
    ('{"task":"ship","args":[1,{"street":"s","zip":1}],"kwargs":[]}', "Expected `object`, got `array`"),
])
def test_bad_foreign_envelopes_fail_at_once(app: App, envelope: str, expected: str) -> None:
    outcome = failed(app, envelope)
    assert outcome.task == "ship" and expected in outcome.error


def test_envelope_meta_and_unknown_top_level_members_are_ignored(app: App) -> None:
    payload = build_envelope("order", b'{"order":{"id":3}}', meta={"trace": "abc"})
    assert payload == b'{"task":"order","args":[],"kwargs":{"order":{"id":3}},"meta":{"trace":"abc"}}'
    env = read_envelope(payload)
    assert env is not None and env.meta == {"trace": "abc"}
    assert prepared(app, payload).kwargs == {"order": Order(3)}
    later = '{"task":"order","version":2,"kwargs":{"order":{"id":4}},"extra":[1]}'
    assert prepared(app, later).kwargs == {"order": Order(4)}


def test_context_is_made_only_for_tasks_that_take_one(app: App) -> None:
    made: list[int] = []

    def make() -> JobContext:
        made.append(1)
        return "ctx"  # type: ignore[return-value]

    prepared(app, '{"task":"order","kwargs":{"order":{"id":1}}}', make_context=make)
    assert made == []
    call_ = prepared(app, '{"task":"ctx","kwargs":{"n":1}}', make_context=make)
    assert made == [1] and call_.kwargs == {"n": 1, "ctx": "ctx"}


# -- calling --------------------------------------------------------------------------------


def test_call_ok(app: App) -> None:
    seen: list[Any] = []

    @app.task(name="record")
    def record(n: int, order: Order) -> int:
        seen.append((n, order))
        return n

    outcome = call(prepared(app, '{"task":"record","kwargs":{"n":1,"order":{"id":2}}}'))
    assert outcome == Outcome(True, "record", "", False)
    assert seen == [(1, Order(2))]


def _level_3(n: int) -> None:
    raise ValueError(f"bad value {n}")


def _level_2(n: int) -> None:
    _level_3(n)


def _level_1(n: int) -> None:
    _level_2(n)


def test_exception_becomes_a_retryable_outcome_with_type_message_and_traceback(app: App) -> None:
    @app.task(name="boom")
    def boom(n: int) -> None:
        _level_1(n)

    outcome = call(prepared(app, '{"task":"boom","kwargs":{"n":42}}'))
    assert outcome.ok is False and outcome.final is False and outcome.task == "boom"
    lines = outcome.error.splitlines()
    assert lines[0] == "ValueError: bad value 42"
    assert 'test_execution.py", line' in outcome.error
    for frame in ("in boom", "in _level_1", "in _level_2", "in _level_3"):
        assert frame in outcome.error
    assert 'raise ValueError(f"bad value {n}")' in outcome.error
    assert "Traceback (most recent call last)" not in outcome.error


def test_traceback_keeps_only_the_last_frames() -> None:
    def recurse(n: int, name: str) -> None:
        if n == 0:
            raise KeyError(name)
        recurse(n - 1, name)

    def outermost_frame() -> None:
        recurse(30, "deep")

    try:
        outermost_frame()
    except KeyError as exc:
        text = describe_exception(exc)
    assert text.startswith("KeyError: 'deep'\n")
    assert "outermost_frame" not in text  # only the last 5 frames
    assert text.count('File "') <= 5
    assert "in recurse" in text


def test_error_text_is_at_most_4096_chars_and_bytes() -> None:
    for message in ("x" * 10_000, "€" * 5_000, "é" * 3_000 + "x", "a\udcffb" * 2000):
        try:
            raise RuntimeError(message)
        except RuntimeError as exc:
            text = describe_exception(exc)
        assert text.startswith("RuntimeError: ")
        assert len(text) <= MAX_ERROR_CHARS
        assert len(text.encode("utf-8")) <= MAX_ERROR_CHARS  # valid UTF-8, no split character
    assert len(describe_exception(ValueError("x" * 10_000))) == MAX_ERROR_CHARS


def test_describe_exception_never_raised_and_chained() -> None:
    assert describe_exception(ValueError("plain")) == "ValueError: plain\n"
    try:
        try:
            {}["missing"]
        except KeyError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError as exc:
        text = describe_exception(exc)
    assert text.startswith("RuntimeError: outer\n")
    assert "KeyError: 'missing'" in text


def test_exception_with_a_broken_str_is_still_described() -> None:
    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    try:
        raise Weird()
    except Weird as exc:
        text = describe_exception(exc)
    assert text.splitlines()[0].endswith(".<locals>.Weird: <exception str() failed>")


def test_sys_exit_in_a_task_is_a_failed_outcome_not_a_dead_thread(app: App) -> None:
    @app.task(name="quits")
    def quits(n: int) -> None:
        sys.exit(n)

    outcome = call(prepared(app, '{"task":"quits","kwargs":{"n":3}}'))
    assert outcome.ok is False and outcome.error.startswith("SystemExit: 3\n")


def test_call_async_ok_and_failing(app: App) -> None:
    @app.task(name="a-ok")
    async def a_ok(n: int) -> int:
        await asyncio.sleep(0)
        return n

    @app.task(name="a-bad")
    async def a_bad(n: int) -> None:
        await asyncio.sleep(0)
        raise LookupError(f"nothing for {n}")

    ok = asyncio.run(call_async(prepared(app, '{"task":"a-ok","kwargs":{"n":1}}')))
    assert ok == Outcome(True, "a-ok")
    bad = asyncio.run(call_async(prepared(app, '{"task":"a-bad","kwargs":{"n":2}}')))
    assert bad.ok is False and bad.final is False
    assert bad.error.startswith("LookupError: nothing for 2\n") and "in a_bad" in bad.error


# -- JobContext with a real client ---------------------------------------------------------------


@pytest.fixture()
def reserved(client: OmniqClient) -> Iterator[ReservedJob]:
    client.publish("ctxq", {"task": "ctx", "args": [], "kwargs": {"n": 1}}, job_id="job-1",
                   gid="tenant-1", max_attempts=2, timeout_ms=5000)
    job = client.reserve("ctxq")
    assert isinstance(job, ReservedJob)
    yield job


def test_job_context_fields_and_operations(app: App, client: OmniqClient, r: redis.Redis,
                                           reserved: ReservedJob) -> None:
    def make() -> JobContext:
        return JobContext(client, queue=reserved.queue, job_id=reserved.job_id, attempt=reserved.attempt,
                          max_attempts=reserved.max_attempts, gid=reserved.gid,
                          lease_token=reserved.lease_token, lock_until_ms=reserved.lock_until_ms,
                          payload_raw=reserved.payload)

    seen: list[JobContext] = []

    @app.task(name="inspect")
    def inspect_ctx(ctx: JobContext, n: int) -> None:
        seen.append(ctx)

    assert call(prepared(app, '{"task":"inspect","kwargs":{"n":1}}', queue="ctxq", make_context=make)).ok
    ctx = seen[0]
    assert (ctx.queue, ctx.job_id, ctx.attempt, ctx.max_attempts, ctx.gid) == ("ctxq", "job-1", 1, 2, "tenant-1")
    assert ctx.lease_token == r.hget("{ctxq}:job:job-1", "lease_token") and len(ctx.lease_token) == 40
    assert ctx.payload_raw == '{"task":"ctx","args":[],"kwargs":{"n":1}}'
    assert ctx.is_last_attempt is False
    assert repr(ctx) == "JobContext(queue='ctxq', job_id='job-1', attempt=1/2, gid='tenant-1')"

    old = ctx.lock_until_ms
    new = ctx.heartbeat()
    assert new >= old and ctx.lock_until_ms == new
    assert int(r.hget("{ctxq}:job:job-1", "lock_until_ms")) == new

    published = ctx.publish("side", {"x": 1}, job_id="side-1")
    assert published.job_id == "side-1" and r.hget("{side}:job:side-1", "payload") == '{"x":1}'

    assert ctx.is_paused() is False
    ctx.pause()
    assert ctx.is_paused() and r.exists("{ctxq}:paused")
    assert ctx.resume() is True and not ctx.is_paused()
    ctx.pause("side")
    assert ctx.is_paused("side") and not ctx.is_paused()
    assert ctx.resume("side") is True

    ctx.childs_init("fan", 2)
    assert ctx.child_ack("fan") == 1
    assert ctx.child_ack("fan") == 1  # the same job counts once
    assert ctx.child_ack("fan", "other-child") == 0


def test_job_context_heartbeat_after_the_lease_is_gone(client: OmniqClient, reserved: ReservedJob) -> None:
    ctx = JobContext(client, queue="ctxq", job_id="job-1", attempt=1, max_attempts=2, gid="tenant-1",
                     lease_token="not-the-token", lock_until_ms=0, payload_raw="")
    with pytest.raises(LeaseLostError):
        ctx.heartbeat()
    last = JobContext(client, queue="ctxq", job_id="job-1", attempt=2, max_attempts=2, gid="",
                      lease_token=reserved.lease_token, lock_until_ms=0, payload_raw="")
    assert last.is_last_attempt is True


# -- nothing escapes: whatever decoding or a task raises becomes an Outcome -----------------


class Exploding(msgspec.Struct):
    n: int

    def __post_init__(self) -> None:  # msgspec lets anything but TypeError/ValueError through
        raise MemoryError("no memory left while decoding (simulated)")


def test_a_decoder_crash_fails_the_job_for_good_naming_the_error(app: App) -> None:
    @app.task(name="explodes", queue="boom", raw=True)
    def explodes(value: Exploding) -> None:
        raise AssertionError("never called")

    outcome = decode_job(app.registry, "boom", '{"n": 1}', no_context)
    assert outcome == Outcome(False, "explodes", "payload could not be decoded: MemoryError: no memory left "
                              "while decoding (simulated)", final=True)


def test_a_payload_nested_100000_deep_fails_for_good(app: App) -> None:
    deep = '{"task":"ship","args":' + "[" * 100_000 + "]" * 100_000 + "}"
    outcome = decode_job(app.registry, "jobs", deep, no_context)
    assert isinstance(outcome, Outcome) and (outcome.ok, outcome.final) == (False, True)
    assert outcome.error.startswith("payload could not be decoded: ") and len(outcome.error) < 300


def test_str_raising_a_base_exception_is_still_described() -> None:
    class Exiting(Exception):
        def __str__(self) -> str:
            raise SystemExit(1)  # `except Exception` around str() would let this through

    try:
        raise Exiting()
    except Exiting as exc:
        text = describe_exception(exc)
    assert text.splitlines()[0].endswith(".<locals>.Exiting: <exception str() failed>")


def test_a_task_raising_an_undescribable_base_exception_is_a_failed_outcome(app: App) -> None:
    class Weird(BaseException):
        def __str__(self) -> str:
            raise KeyboardInterrupt

    @app.task(name="weird")
    def weird() -> None:
        raise Weird()

    outcome = call(prepared(app, '{"task":"weird","kwargs":{}}'))
    assert (outcome.ok, outcome.task, outcome.final) == (False, "weird", False)
    assert outcome.error.splitlines()[0].endswith(".<locals>.Weird: <exception str() failed>")
