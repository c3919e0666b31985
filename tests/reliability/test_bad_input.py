"""Bad input is refused at publish, with our own errors, and nothing reaches Redis.

NaN and infinities (msgspec writes them as null), bytes where text is expected
(base64), JSON text that is not JSON or not UTF-8, structures nested too deep,
an empty queue name, an eta at infinity. Every refusal is an OmniqError naming the
argument, and the DB is compared key by key before and after. Two hypothesis
suites fuzz the envelope decoder and the arguments of a typed task's .delay().
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional

import msgspec
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers_state import snapshot
from omniq_tasks import App, InvalidNameError, OmniqClient, OmniqError, PayloadError
from omniq_tasks.arguments import TaskArgumentError
from omniq_tasks.envelope import MAX_NESTING, Envelope, build_envelope, read_envelope
from omniq_tasks.errors import InvalidOptionError
from omniq_tasks.task import Task
from redis_server import RedisServer


class Point(msgspec.Struct):
    x: float
    label: str


@pytest.fixture()
def app(r: redis.Redis, redis_server: RedisServer) -> Iterator[App]:
    application = App("bad-input", redis_server.url, queue="q")
    yield application
    application.close()


@pytest.fixture()
def seeded(app: App, r: redis.Redis) -> dict[str, Any]:
    """A queue with one job already (so stats exist), and the DB as it is then."""
    app.client.publish("q", {"seed": 1}, job_id="seed")
    return snapshot(r)


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def refused(call: Any, error: type[OmniqError], *words: str) -> OmniqError:
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, OmniqError)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    return info.value


# -- NaN and infinities ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nonfinite_float_argument_is_refused(app: App, r: redis.Redis, seeded: dict[str, Any],
                                             value: float) -> None:
    @app.task(name="maybe")
    def maybe(ratio: Optional[float]) -> None: ...

    @app.task(name="plain")
    def plain(ratio: float) -> None: ...

    @app.task(name="deep")
    def deep(points: list[Point]) -> None: ...

    refused(lambda: maybe.delay(value), TaskArgumentError, "argument ratio", "NaN or Infinity")
    refused(lambda: plain.delay(value), TaskArgumentError, "argument ratio", "NaN or Infinity")
    refused(lambda: deep.delay([Point(1.0, "a"), Point(value, "b")]), TaskArgumentError,
            "argument points[1].x", "NaN or Infinity")
    refused(lambda: maybe.map([(1.0,), (value,)]), TaskArgumentError, "argument ratio")
    assert snapshot(r) == seeded


def test_nonfinite_float_in_a_raw_or_plain_payload_is_refused(app: App, r: redis.Redis,
                                                              seeded: dict[str, Any]) -> None:
    @app.task(queue="raw", raw=True)
    def on_raw(payload: dict[str, Any]) -> None: ...

    refused(lambda: on_raw.delay({"a": [1, math.nan]}), TaskArgumentError, "a[1]", "NaN")
    refused(lambda: app.client.publish("q", {"a": {"b": math.inf}}), PayloadError, "payload.a.b", "inf")
    assert snapshot(r) == seeded


def test_none_and_finite_floats_still_pass(app: App, r: redis.Redis) -> None:
    @app.task(name="maybe")
    def maybe(ratio: Optional[float]) -> None: ...

    for value in (None, 0.0, -0.0, 1e308, 5):
        handle = maybe.delay(value)
        assert handle.info() is not None
    assert app.client.publish("q", {"a": None, "b": [1.5, None]}).existed is False


# -- bytes where text is expected -------------------------------------------------------------


def test_bytes_for_a_str_parameter_is_refused(app: App, r: redis.Redis, seeded: dict[str, Any]) -> None:
    @app.task(name="text")
    def text(name: str, tags: list[str], point: Point) -> None: ...

    refused(lambda: text.delay(b"ann", [], Point(1, "a")), TaskArgumentError, "argument name", "base64")
    refused(lambda: text.delay("ann", ["x", bytearray(b"y")], Point(1, "a")), TaskArgumentError,
            "argument tags[1]", "base64")
    refused(lambda: text.delay("ann", [], Point(1, b"a")),  # type: ignore[arg-type]
            TaskArgumentError, "argument point.label", "base64")
    assert snapshot(r) == seeded


def test_bytes_for_a_bytes_parameter_and_text_for_others_still_pass(app: App, r: redis.Redis) -> None:
    @app.task(name="blob")
    def blob(data: bytes, ref: str) -> None: ...

    handle = blob.delay(b"\x00\xff", "r")
    info = handle.info()
    assert info is not None
    decoded = blob.codec.decode(msgspec.json.decode(info.payload.encode(), type=Envelope).kwargs)
    assert decoded.data == b"\x00\xff"


def test_a_big_int_for_a_float_parameter_is_refused(app: App, r: redis.Redis, seeded: dict[str, Any]) -> None:
    @app.task(name="ratio")
    def ratio(value: float) -> None: ...

    refused(lambda: ratio.delay(2**53 + 1), TaskArgumentError, "argument value", "would arrive as float")
    assert snapshot(r) == seeded


# -- publish_json ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    b"{not json}", b'{"a": 1} trailing', b'["\xff\xfe"]', b'{"a": "\xc3"}', b"[1, 2", b"[NaN]",
    '{"a": "\ud800"}', b"{}" + b"\x00",
])
def test_publish_json_refuses_text_that_is_not_json(client: OmniqClient, r: redis.Redis,
                                                   text: bytes | str) -> None:
    client.publish("q", {"seed": 1}, job_id="seed")
    before = snapshot(r)
    refused(lambda: client.publish_json("q", text), PayloadError, "payload_json")
    assert snapshot(r) == before


def test_publish_json_still_takes_json(client: OmniqClient, r: redis.Redis) -> None:
    for text in (b' {"a": [1, "\xc3\xa9"]}', '["x"]', b"[]"):
        published = client.publish_json("q", text)
        assert r.hget("{q}:job:" + published.job_id, "payload") is not None


# -- too deep ------------------------------------------------------------------------------------


def test_deep_structures_are_refused_cleanly(app: App, r: redis.Redis, client: OmniqClient,
                                             seeded: dict[str, Any]) -> None:
    @app.task(name="tree")
    def tree(node: Any) -> None: ...

    @app.task(queue="raw", raw=True)
    def on_raw(payload: list[Any]) -> None: ...

    for depth in (MAX_NESTING + 1, 100_000):
        refused(lambda: tree.delay(nested(depth)), TaskArgumentError, "nest deeper")
        refused(lambda: on_raw.delay(nested(depth)), TaskArgumentError, "nest deeper")
        refused(lambda: client.publish("q", nested(depth)), PayloadError, "nest")
        refused(lambda: client.publish_json("q", b"[" * depth + b"]" * depth), PayloadError, "nest")
    assert snapshot(r) == seeded
    # up to the limit is fine
    assert tree.delay(nested(MAX_NESTING - 2)).info() is not None


def test_read_envelope_refuses_deep_payloads_with_our_error() -> None:
    for depth in (MAX_NESTING + 1, 100_000):
        deep = b'{"task":"t","args":' + b"[" * depth + b"]" * depth + b"}"
        with pytest.raises(PayloadError):
            read_envelope(deep)
    assert read_envelope(build_envelope("t", b'{"a":' + b"[" * 100 + b"]" * 100 + b"}")) is not None


# -- options ---------------------------------------------------------------------------------------


def test_empty_queue_name_is_refused_at_decoration(app: App, r: redis.Redis, seeded: dict[str, Any]) -> None:
    with pytest.raises(InvalidNameError) as info:
        @app.task(queue="")
        def nowhere() -> None: ...
    assert "queue name" in str(info.value) and "empty" in str(info.value)
    assert len(app.registry) == 0
    assert snapshot(r) == seeded


@pytest.mark.parametrize("options, word", [
    ({"eta": math.inf}, "eta"), ({"eta": -math.inf}, "eta"), ({"eta": math.nan}, "eta"),
    ({"eta": 1e300}, "eta"), ({"eta": -1}, "eta"), ({"countdown": math.inf}, "countdown"),
    ({"countdown": math.nan}, "countdown"), ({"countdown": 1e300}, "countdown"),
    ({"countdown": "5"}, "countdown"),
])
def test_due_times_out_of_range_are_refused(app: App, r: redis.Redis, seeded: dict[str, Any],
                                            options: dict[str, Any], word: str) -> None:
    @app.task(name="later")
    def later(n: int) -> None: ...

    error = refused(lambda: later.apply_async((1,), **options), InvalidOptionError, word)
    assert isinstance(error, ValueError) and isinstance(error, TypeError)
    assert snapshot(r) == seeded


# -- fuzz: the envelope decoder ----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: msgspec.json.encode(v)),
    st.fixed_dictionaries({"task": st.text() | st.integers(), "args": json_values, "kwargs": json_values,
                           "meta": json_values}).map(lambda v: msgspec.json.encode(v)),
    st.integers(0, 3000).map(lambda d: b'{"task":"t","kwargs":' + b"{\"a\":" * d + b"1" + b"}" * d + b"}"),
))
def test_read_envelope_never_raises_a_raw_exception(data: bytes) -> None:
    try:
        envelope = read_envelope(data)
    except OmniqError:
        return
    if envelope is not None:
        assert isinstance(envelope.task, str)
        assert bytes(envelope.args) or bytes(envelope.kwargs)
    try:
        text_envelope = read_envelope(data.decode("utf-8", "surrogateescape"))
    except OmniqError:
        return
    assert (text_envelope is None) == (envelope is None) or not data.isascii()


# -- fuzz: arguments of a typed task ---------------------------------------------------------------

junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(max_size=8)
    | st.sampled_from([math.nan, math.inf, -math.inf, 2**53 + 1, 2**70, "\ud800"]),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12)


def same(sent: Any, got: Any) -> bool:
    """Did ``got`` arrive as ``sent`` was given? Tuples may come back as lists, and text
    may be parsed into the annotated type (base64 text into bytes) as JSON allows."""
    if isinstance(sent, (list, tuple)) and isinstance(got, list):
        return len(sent) == len(got) and all(same(s, g) for s, g in zip(sent, got))
    if isinstance(sent, dict) and isinstance(got, dict):
        return sent.keys() == got.keys() and all(same(v, got[k]) for k, v in sent.items())
    if isinstance(sent, Point) and isinstance(got, Point):
        return same(sent.x, got.x) and same(sent.label, got.label)
    if type(sent) is type(got) or {type(sent), type(got)} <= {int, float}:
        return bool(sent == got)
    return isinstance(sent, str) and msgspec.json.encode(got) == msgspec.json.encode(sent)


@pytest.fixture(scope="module")
def fuzz_app() -> Iterator[tuple[App, Task[Any, Any], redis.Redis]]:
    server = RedisServer()
    application = App("fuzz", server.url, queue="fuzz")

    @application.task(name="typed")
    def typed(a: int, b: str, c: list[float], d: dict[str, bytes], e: Optional[Point], f: Any) -> None: ...

    yield application, typed, redis.Redis(port=server.port)
    application.close()
    server.stop()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    a=st.integers(-2**63, 2**63 - 1) | junk,
    b=st.text() | junk,
    c=st.lists(st.floats() | st.integers(), max_size=4) | junk,
    d=st.dictionaries(st.text(max_size=4), st.binary(max_size=6), max_size=3) | junk,
    e=st.none() | st.builds(Point, st.floats(), st.text(max_size=4)) | junk,
    f=junk,
)
def test_delay_publishes_exactly_what_was_given_or_refuses(
        fuzz_app: tuple[App, Task[Any, Any], redis.Redis], a: Any, b: Any, c: Any, d: Any, e: Any, f: Any) -> None:
    application, typed, conn = fuzz_app
    before = conn.dbsize()
    sent = {"a": a, "b": b, "c": c, "d": d, "e": e, "f": f}
    try:
        handle = typed.delay(**sent)
    except OmniqError:
        assert conn.dbsize() == before
        return
    payload = conn.hget("{fuzz}:job:" + handle.id, "payload")
    assert payload is not None
    decoded = typed.codec.decode(bytes(read_envelope(payload).kwargs))  # type: ignore[union-attr]
    for name, value in sent.items():
        got = getattr(decoded, name)
        assert same(value, got), (name, value, got)
