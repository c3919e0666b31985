"""The fan-out extension scripts (fanout_open, fanout_child, fanout_mark) and
enqueue_batch's once-set, against a real server (docs/workflows.md).

* Example tests per script: every reply word, n = 0, the TTL of every key, the
  first entry kept (HSETNX), the failed counter, ``:count``/``:done`` deleted at
  the close exactly like the protocol's child_ack, and what the protocol's own
  child_ack does on a fan-out's counter (it shares ``:count``/``:done``).
* A hypothesis RuleBasedStateMachine over two fan-outs (n in 0..6): open (again),
  children (ok / err, repeated), mark published / fired, and bad marks; every reply
  is predicted by a model, and the keys are checked after every step.
* The once-set of enqueue_batch (``enqueue_many(..., once=(name, ttl_ms))``).

Like the protocol modules (conftest.MATRIX_MODULES) this module runs on every
server of the compatibility matrix; its own ``pytest_generate_tests`` does the
parametrization (add it to MATRIX_MODULES instead and drop the hook here).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest
import redis
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from conftest import MATRIX_MODULES, matrix_servers
from omniq_tasks import OmniqClient
from omniq_tasks.errors import AlreadyInitializedError, BadArgsError, NoCounterError
from omniq_tasks.protocol.client import job_spec
from redis_server import RedisServer

TTL = 600_000   # long enough that nothing expires during a test, unless a test wants it


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run on every server of the compatibility matrix (as conftest does for MATRIX_MODULES)."""
    if "redis_server" in metafunc.fixturenames and metafunc.module.__name__ not in MATRIX_MODULES:
        servers = matrix_servers()
        metafunc.parametrize("redis_server", [binary for _, binary in servers],
                             ids=[name for name, _ in servers], indirect=True, scope="session")


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [text(v) for v in value]
    return value


def run(client: OmniqClient, script: str, key: str, *args: Any) -> Any:
    """One script call on the anchor ``{cc:<key>}:meta``, its raw reply as text."""
    return text(client.scripts.call(script, "{cc:%s}:meta" % key, args))


def open_fo(client: OmniqClient, key: str, n: Any, ttl: Any = TTL, then: str = "T", on_error: str = "E",
            queues: str = '["q"]', now_ms: Any = 0) -> Any:
    return run(client, "fanout_open", key, n, ttl, then, on_error, queues, now_ms)


def child(client: OmniqClient, key: str, child_id: str, index: Any, entry: str) -> Any:
    """fanout_child the way the worker sends it: through scripts.call_many."""
    call = OmniqClient.fanout_child_call(key, child_id, index, entry.encode())  # type: ignore[arg-type]
    (reply,) = client.scripts.call_many([call])
    assert not isinstance(reply, Exception), reply
    return text(reply)


def mark(client: OmniqClient, key: str, *args: Any) -> Any:
    return run(client, "fanout_mark", key, *args)


def k(key: str, part: str) -> str:
    return "{cc:%s}:%s" % (key, part)


def fo_keys(r: redis.Redis, key: str) -> set[str]:
    return set(r.keys("{cc:%s}:*" % key))


def everything(r: redis.Redis) -> dict[str, Any]:
    """Every key with its type and value (to show a call wrote nothing)."""
    out: dict[str, Any] = {}
    raw = redis.Redis(port=r.connection_pool.connection_kwargs["port"])   # a replay memory is msgpack
    for name in r.keys("*"):
        kind = r.type(name)
        value = {"string": raw.get, "hash": r.hgetall, "set": r.smembers, "list": lambda n: r.lrange(n, 0, -1),
                 "zset": lambda n: r.zrange(n, 0, -1, withscores=True)}[kind](name)
        out[name] = (kind, value, r.pttl(name) > 0)
    raw.close()
    return out


def assert_ttls(r: redis.Redis, key: str) -> None:
    """Every key of the fan-out dies: a TTL > 0, never more than the :fo hash's."""
    names = fo_keys(r, key)
    assert names, key
    fo_ttl = r.pttl(k(key, "fo"))
    for name in names:
        ttl = r.pttl(name)
        assert 0 < ttl <= TTL, (name, ttl)
        if fo_ttl > 0:
            assert ttl <= fo_ttl + 50, (name, ttl, fo_ttl)


# --------------------------------------------------------------------------------------
# fanout_open
# --------------------------------------------------------------------------------------

def test_open_writes_the_record_and_the_counter(client: OmniqClient, r: redis.Redis) -> None:
    assert open_fo(client, "a", 3, then='{"t":1}', on_error="", queues='["q1","q2"]', now_ms=1234) == ["OK"]
    assert r.hgetall(k("a", "fo")) == {
        "n": "3", "state": "open", "then": '{"t":1}', "on_error": "", "queues": '["q1","q2"]',
        "created_ms": "1234", "published": "0", "failed": "0"}
    assert r.get(k("a", "count")) == "3"
    assert fo_keys(r, "a") == {k("a", "fo"), k("a", "count")}
    assert_ttls(r, "a")
    assert client.fanout_info("a")["state"] == "open"


def test_open_now_ms_zero_is_the_server_clock(client: OmniqClient, r: redis.Redis) -> None:
    seconds, micros = r.time()
    assert open_fo(client, "a", 1, now_ms=0) == ["OK"]
    created = int(r.hget(k("a", "fo"), "created_ms"))
    assert 0 <= created - (seconds * 1000 + micros // 1000) < 5_000


def test_open_with_n_zero_is_closed_at_once(client: OmniqClient, r: redis.Redis) -> None:
    assert open_fo(client, "z", 0) == ["OK"]
    assert r.hget(k("z", "fo"), "state") == "closed"
    assert fo_keys(r, "z") == {k("z", "fo")}        # nothing to count: no :count
    assert_ttls(r, "z")
    # Documented: a child reported to an n = 0 fan-out is not counted (no :done, no
    # :res); it answers FIRE like any call on a closed fan-out, until marked fired.
    assert child(client, "z", "c0", 0, "+t\n1") == ["FIRE", "T", "E", "0"]
    assert fo_keys(r, "z") == {k("z", "fo")}
    assert mark(client, "z", "state", "fired") == ["OK"]
    assert child(client, "z", "c0", 0, "+t\n1") == ["FIRED"]
    # the protocol's child_ack sees no counter
    with pytest.raises(NoCounterError):
        client.child_ack("z", "c0")


def test_open_again_answers_exists_and_changes_nothing(client: OmniqClient, r: redis.Redis) -> None:
    assert client.fanout_open("a", 2, TTL, b"T", b"E", ["q"]) == (True, False)
    assert child(client, "a", "c0", 0, "+t\n1") == ["COUNTED", "1"]
    before = everything(r)
    assert open_fo(client, "a", 5, then="X", on_error="Y") == ["EXISTS", "0", "2"]
    assert client.fanout_open("a", 7, TTL, b"X", b"Y", ["other"]) == (False, False)
    assert everything(r) == before
    assert mark(client, "a", "published", "1") == ["OK"]
    assert open_fo(client, "a", 5) == ["EXISTS", "1", "2"]
    assert client.fanout_open("a", 2, TTL, b"T", b"E", ["q"]) == (False, True)
    # closed, then fired: still EXISTS, never a second open
    assert child(client, "a", "c1", 1, "+t\n1")[0] == "FIRE"
    assert mark(client, "a", "state", "fired") == ["OK"]
    assert open_fo(client, "a", 2) == ["EXISTS", "1", "2"]
    assert r.hget(k("a", "fo"), "state") == "fired"


def test_open_refuses_a_running_protocol_counter(client: OmniqClient, r: redis.Redis) -> None:
    client.childs_init("p", 2)
    before = everything(r)
    assert open_fo(client, "p", 2) == ["ERR", "ALREADY_INIT"]
    with pytest.raises(AlreadyInitializedError):
        client.fanout_open("p", 2, TTL, b"T", b"E", ["q"])
    assert everything(r) == before                     # no :fo, the counter untouched
    # once the protocol counter is over (its 0 deletes it) the key can be opened
    assert client.child_ack("p", "x") == 1
    assert client.child_ack("p", "y") == 0
    assert fo_keys(r, "p") == set()
    assert open_fo(client, "p", 1) == ["OK"]


def test_open_deletes_leftover_done_and_res(client: OmniqClient, r: redis.Redis) -> None:
    r.sadd(k("a", "done"), "old")
    r.hset(k("a", "res"), "0", "+old\n1")
    assert open_fo(client, "a", 2) == ["OK"]
    assert fo_keys(r, "a") == {k("a", "fo"), k("a", "count")}
    assert child(client, "a", "old", 0, "+t\nnew") == ["COUNTED", "1"]
    assert r.hgetall(k("a", "res")) == {"0": "+t\nnew"}


@pytest.mark.parametrize(("n", "ttl"), [
    ("-1", TTL), ("1.5", TTL), ("abc", TTL), ("", TTL),
    ("2", "0"), ("2", "-5"), ("2", "abc"), ("2", ""),
    # not decimal digits, or too big: stored as "1e+300"/"inf" every fanout_child was a
    # script error (DECR refuses it); from 1e14 on remaining counts print as "1e+14"
    ("1e300", TTL), ("inf", TTL), ("nan", TTL), ("1e3", TTL), ("0x10", TTL), (" 3", TTL), ("3 ", TTL),
    ("1" + "0" * 14, TTL), ("1" + "0" * 20, TTL),
])
def test_open_bad_args_write_nothing(client: OmniqClient, r: redis.Redis, n: str, ttl: Any) -> None:
    assert open_fo(client, "a", n, ttl) == ["ERR", "BAD_ARGS"]
    assert r.keys("*") == []


def test_open_largest_n(client: OmniqClient, r: redis.Redis) -> None:
    assert open_fo(client, "a", "9" * 14) == ["OK"]
    assert child(client, "a", "c0", 0, "+t\n1") == ["COUNTED", "9" * 13 + "8"]
    with pytest.raises(BadArgsError):
        client.fanout_open("b", 10**14, TTL, b"", b"", [])
    assert fo_keys(r, "b") == set()


def test_open_client_checks(client: OmniqClient, r: redis.Redis) -> None:
    with pytest.raises(ValueError):
        client.fanout_open("a", -1, TTL, b"", b"", [])
    with pytest.raises(ValueError):
        client.fanout_open("a", 1, 0, b"", b"", [])
    assert r.keys("*") == []


# --------------------------------------------------------------------------------------
# fanout_child
# --------------------------------------------------------------------------------------

def test_child_counted_dup_fire_fired(client: OmniqClient, r: redis.Redis) -> None:
    assert open_fo(client, "a", 3, then="THEN", on_error="ERRCB") == ["OK"]
    assert child(client, "a", "c0", 0, "+t\nfirst") == ["COUNTED", "2"]
    assert_ttls(r, "a")
    assert fo_keys(r, "a") == {k("a", s) for s in ("fo", "count", "done", "res")}
    # a repeat (a retried child, even with another outcome) is DUP, its first entry kept
    assert child(client, "a", "c0", 0, "-t\nlater") == ["DUP", "2"]
    assert child(client, "a", "c1", 1, "-t\nboom") == ["COUNTED", "1"]
    assert r.hget(k("a", "fo"), "failed") == "1"
    assert child(client, "a", "c1", 1, "-t\nboom") == ["DUP", "1"]
    assert r.hget(k("a", "fo"), "failed") == "1"
    assert r.smembers(k("a", "done")) == {"c0", "c1"}
    assert r.get(k("a", "count")) == "1"
    # the last one: FIRE with the callbacks and the failed count; :count/:done deleted
    assert child(client, "a", "c2", 2, "+t\n3") == ["FIRE", "THEN", "ERRCB", "1"]
    assert fo_keys(r, "a") == {k("a", "fo"), k("a", "res")}
    assert r.hget(k("a", "fo"), "state") == "closed"
    assert_ttls(r, "a")
    assert client.fanout_entries("a", 3) == [b"+t\nfirst", b"-t\nboom", b"+t\n3"]
    # until marked fired every call answers FIRE (repeats, and ids never seen)
    assert child(client, "a", "c2", 2, "+t\n3") == ["FIRE", "THEN", "ERRCB", "1"]
    assert child(client, "a", "c0", 0, "+t\n1") == ["FIRE", "THEN", "ERRCB", "1"]
    assert child(client, "a", "c9", 9, "-t\nx") == ["FIRE", "THEN", "ERRCB", "1"]
    assert r.hget(k("a", "fo"), "failed") == "1"       # nothing counted after the close
    assert fo_keys(r, "a") == {k("a", "fo"), k("a", "res")}
    assert client.fanout_mark("a", "state", "fired") is True
    assert child(client, "a", "c0", 0, "+t\n1") == ["FIRED"]
    assert child(client, "a", "c9", 9, "+t\n1") == ["FIRED"]
    assert client.fanout_entries("a", 3) == [b"+t\nfirst", b"-t\nboom", b"+t\n3"]


def test_child_of_no_fanout_is_gone(client: OmniqClient, r: redis.Redis) -> None:
    assert child(client, "nope", "c0", 0, "+t\n1") == ["GONE"]
    assert r.keys("*") == []
    # a fan-out whose TTL passed: every key is gone, the child too
    assert open_fo(client, "short", 2, ttl=40) == ["OK"]
    assert child(client, "short", "c0", 0, "+t\n1") == ["COUNTED", "1"]
    time.sleep(0.12)
    assert r.keys("*") == []
    assert child(client, "short", "c1", 1, "+t\n1") == ["GONE"]
    assert r.keys("*") == []
    assert client.fanout_info("short") == {}
    assert client.fanout_entries("short", 2) == [None, None]


@pytest.mark.parametrize(("child_id", "index", "entry"), [
    ("", "0", "+t\n1"), ("c0", "-1", "+t\n1"), ("c0", "1.5", "+t\n1"), ("c0", "x", "+t\n1"),
    ("c0", "", "+t\n1"), ("c0", " 1", "+t\n1"), ("c0", "0", ""),
])
def test_child_bad_args_change_nothing(client: OmniqClient, r: redis.Redis, child_id: str, index: str,
                                       entry: str) -> None:
    assert open_fo(client, "a", 2) == ["OK"]
    before = everything(r)
    assert run(client, "fanout_child", "a", child_id, index, entry) == ["ERR", "BAD_ARGS"]
    assert everything(r) == before
    # refused before the fan-out is looked at: a missing one answers BAD_ARGS too
    assert run(client, "fanout_child", "nope", child_id, index, entry) == ["ERR", "BAD_ARGS"]


def test_child_first_entry_of_an_index_is_kept(client: OmniqClient, r: redis.Redis) -> None:
    """HSETNX: an index's first entry stays. Documented: two different child ids with the
    same index both count (the id is what counts once), the second entry is dropped."""
    assert open_fo(client, "a", 3) == ["OK"]
    assert child(client, "a", "c0", 0, "+t\nfirst") == ["COUNTED", "2"]
    assert child(client, "a", "other", 0, "-t\nsecond") == ["COUNTED", "1"]
    assert r.hgetall(k("a", "res")) == {"0": "+t\nfirst"}
    assert r.hget(k("a", "fo"), "failed") == "1"       # counted as a failed child all the same


def test_child_failed_counter(client: OmniqClient, r: redis.Redis) -> None:
    assert open_fo(client, "a", 5) == ["OK"]
    for i, ok in enumerate([False, True, False, False]):
        child(client, "a", f"c{i}", i, ("+t\n1" if ok else "-t\nerr"))
        child(client, "a", f"c{i}", i, "-t\nagain")   # a repeat never counts again
    assert r.hget(k("a", "fo"), "failed") == "3"
    assert child(client, "a", "c4", 4, "-t\nlast") == ["FIRE", "T", "E", "4"]


def test_child_ttls_follow_the_fanout(client: OmniqClient, r: redis.Redis) -> None:
    assert open_fo(client, "a", 3, ttl=5_000) == ["OK"]
    r.pexpire(k("a", "fo"), 3_000)                     # the fan-out's TTL is the one on :fo
    child(client, "a", "c0", 0, "+t\n1")
    for part in ("done", "res"):
        assert 2_000 < r.pttl(k("a", part)) <= 3_000, part
    assert 3_000 < r.pttl(k("a", "count")) <= 5_000   # :count keeps the TTL it was opened with
    # keys that have a TTL keep it
    r.pexpire(k("a", "res"), 1_000)
    child(client, "a", "c1", 1, "+t\n1")
    assert r.pttl(k("a", "res")) <= 1_000


def test_close_deletes_count_and_done_exactly_like_child_ack(client: OmniqClient, r: redis.Redis) -> None:
    """The protocol's child_ack deletes {cc:<key>}:count and :done at its 0; fanout_child
    does the same at its last count, keeping only :fo and :res."""
    client.childs_init("p", 2)
    client.child_ack("p", "c0")
    assert fo_keys(r, "p") == {k("p", "count"), k("p", "done")}
    assert client.child_ack("p", "c1") == 0
    assert fo_keys(r, "p") == set()

    open_fo(client, "f", 2)
    child(client, "f", "c0", 0, "+t\n1")
    assert {k("f", "count"), k("f", "done")} <= fo_keys(r, "f")
    assert child(client, "f", "c1", 1, "+t\n1")[0] == "FIRE"
    assert fo_keys(r, "f") - {k("f", "fo"), k("f", "res")} == set()
    # and, like after the protocol's 0, child_ack finds no counter
    with pytest.raises(NoCounterError):
        client.child_ack("f", "c2")
    # and childs_init may start a protocol counter there (the fan-out record stays)
    client.childs_init("f", 1)
    assert r.get(k("f", "count")) == "1"


def test_protocol_child_ack_on_a_fanout_counter(client: OmniqClient, r: redis.Redis) -> None:
    """Documents what the reference child_ack does on a fan-out's counter (it shares
    :count and :done): it counts children (no entry, no failed count, no FIRE); the
    :done set it creates has no TTL until a fanout_child gives it one; its 0 deletes
    :count/:done but leaves the fan-out "open". The next fanout_child of a new id then
    DECRs a missing :count (to -1), closes the fan-out and answers FIRE; a repeat of an
    id child_ack counted is not seen as DUP (its :done is gone)."""
    assert open_fo(client, "a", 3) == ["OK"]
    assert client.child_ack("a", "c0") == 2
    assert r.pttl(k("a", "done")) == -1                # child_ack's SADD: no TTL
    assert child(client, "a", "c0", 0, "+t\n1") == ["DUP", "2"]   # it shares :done
    assert r.hlen(k("a", "res")) == 0                  # a DUP writes no entry
    assert child(client, "a", "c1", 1, "+t\n1") == ["COUNTED", "1"]
    assert 0 < r.pttl(k("a", "done")) <= TTL           # now it has the fan-out's TTL
    assert client.child_ack("a", "c1") == 1            # a repeat: counted once
    assert client.child_ack("a", "c2") == 0            # its 0: deletes :count/:done
    assert fo_keys(r, "a") == {k("a", "fo"), k("a", "res")}
    assert r.hget(k("a", "fo"), "state") == "open"     # the fan-out does not know
    with pytest.raises(NoCounterError):
        client.child_ack("a", "c3")
    assert child(client, "a", "c2", 2, "+t\n3") == ["FIRE", "T", "E", "0"]
    assert r.hget(k("a", "fo"), "state") == "closed"
    assert fo_keys(r, "a") == {k("a", "fo"), k("a", "res")}
    assert r.hgetall(k("a", "res")) == {"1": "+t\n1", "2": "+t\n3"}
    assert_ttls(r, "a")


def test_mark_fired_while_open_stops_the_counting(client: OmniqClient, r: redis.Redis) -> None:
    """Documented: "fired" may be marked before every child is counted (the script does
    not check): from then on every child answers FIRED and is not counted; :count and
    :done stay until the fan-out's TTL."""
    assert open_fo(client, "a", 2) == ["OK"]
    assert child(client, "a", "c0", 0, "+t\n1") == ["COUNTED", "1"]
    assert mark(client, "a", "state", "fired") == ["OK"]
    assert child(client, "a", "c1", 1, "+t\n1") == ["FIRED"]
    assert r.get(k("a", "count")) == "1"
    assert r.smembers(k("a", "done")) == {"c0"}
    assert_ttls(r, "a")


# --------------------------------------------------------------------------------------
# fanout_mark
# --------------------------------------------------------------------------------------

def test_mark_ok_and_gone(client: OmniqClient, r: redis.Redis) -> None:
    assert mark(client, "nope", "published", "1") == ["GONE"]
    assert client.fanout_mark("nope", "state", "fired") is False
    assert r.keys("*") == []
    open_fo(client, "a", 2)
    assert mark(client, "a", "published", "1") == ["OK"]
    assert r.hget(k("a", "fo"), "published") == "1"
    assert mark(client, "a", "published", "1") == ["OK"]   # idempotent
    assert client.fanout_mark("a", "state", "fired") is True
    assert r.hget(k("a", "fo"), "state") == "fired"
    assert fo_keys(r, "a") == {k("a", "fo"), k("a", "count")}
    assert_ttls(r, "a")


@pytest.mark.parametrize("args", [
    ("published", "0"), ("published", "2"), ("published", ""), ("state", "open"), ("state", "closed"),
    ("state", "FIRED"), ("n", "5"), ("failed", "1"), ("then", "x"), ("", ""), ("published",), (),
])
def test_mark_bad_args_change_nothing(client: OmniqClient, r: redis.Redis, args: tuple[str, ...]) -> None:
    open_fo(client, "a", 2)
    before = everything(r)
    assert mark(client, "a", *args) == ["ERR", "BAD_ARGS"]
    assert mark(client, "nope", *args) == ["ERR", "BAD_ARGS"]
    assert everything(r) == before
    if len(args) == 2:
        with pytest.raises(BadArgsError):
            client.fanout_mark("a", *args)


# --------------------------------------------------------------------------------------
# the state machine
# --------------------------------------------------------------------------------------

FANOUT_KEYS = ("f1", "f2")
_SERVER: dict[str, Any] = {}
SEEN: Counter[str] = Counter()    # reply words the machine got (each must show up)


@dataclass
class FanModel:
    n: int
    then: str
    on_error: str
    state: str = "open"                                      # open | closed | fired
    published: str = "0"
    counting: bool = True                                    # :count/:done alive
    done: set[str] = field(default_factory=set)              # ids counted
    entries: dict[int, str] = field(default_factory=dict)    # index -> first entry
    failed: set[str] = field(default_factory=set)            # ids counted with "-" entries

    @property
    def remaining(self) -> int:
        return self.n - len(self.done)


class FanoutMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.r: redis.Redis = _SERVER["r"]
        self.c: OmniqClient = _SERVER["client"]
        self.r.flushall()
        self.model: dict[str, Optional[FanModel]] = {key: None for key in FANOUT_KEYS}

    @rule(key=st.sampled_from(FANOUT_KEYS), n=st.integers(0, 6), cb=st.integers(0, 3))
    def open(self, key: str, n: int, cb: int) -> None:
        then, on_error = f"then{cb}", ("" if cb == 0 else f"err{cb}")
        reply = open_fo(self.c, key, n, then=then, on_error=on_error)
        m = self.model[key]
        if m is None:
            assert reply == ["OK"]
            SEEN["open OK" if n else "open OK n=0"] += 1
            m = self.model[key] = FanModel(n, then, on_error)
            if n == 0:
                m.state, m.counting = "closed", False
        else:
            assert reply == ["EXISTS", m.published, str(m.n)]
            SEEN[f"open EXISTS published={m.published}"] += 1

    @rule(key=st.sampled_from(FANOUT_KEYS), i=st.integers(0, 5), ok=st.booleans(), tag=st.integers(0, 2),
          repeats=st.integers(1, 3), prefix=st.sampled_from("cccx"))
    def child(self, key: str, i: int, ok: bool, tag: int, repeats: int, prefix: str) -> None:
        """Child ``index`` (id c<index>) ended, reported 1-3 times; now and then a second
        id x<index> for the same index (it counts too, but the index keeps its first entry)."""
        m = self.model[key]
        index = i % m.n if m is not None and m.n else i
        entry = f"+t\nok{tag}" if ok else f"-t\nerr{tag}"
        for _ in range(repeats):
            reply = child(self.c, key, f"{prefix}{index}", index, entry)
            assert reply == self._child_model(key, f"{prefix}{index}", index, entry), (reply, m)
            SEEN[f"child {reply[0]}"] += 1

    def _child_model(self, key: str, child_id: str, index: int, entry: str) -> list[str]:
        m = self.model[key]
        if m is None:
            return ["GONE"]
        if m.state == "open":
            if child_id in m.done:
                return ["DUP", str(m.remaining)]
            m.done.add(child_id)
            m.entries.setdefault(index, entry)
            if entry.startswith("-"):
                m.failed.add(child_id)
            if m.remaining > 0:
                return ["COUNTED", str(m.remaining)]
            m.state, m.counting = "closed", False
        if m.state == "closed":
            return ["FIRE", m.then, m.on_error, str(len(m.failed))]
        return ["FIRED"]

    @rule(key=st.sampled_from(FANOUT_KEYS))
    def mark_published(self, key: str) -> None:
        m = self.model[key]
        assert mark(self.c, key, "published", "1") == (["GONE"] if m is None else ["OK"])
        if m is not None:
            m.published = "1"

    @rule(key=st.sampled_from(FANOUT_KEYS))
    def mark_fired(self, key: str) -> None:
        m = self.model[key]
        assert mark(self.c, key, "state", "fired") == (["GONE"] if m is None else ["OK"])
        if m is not None:
            m.state = "fired"

    @rule(key=st.sampled_from(FANOUT_KEYS),
          args=st.sampled_from([("published", "0"), ("state", "closed"), ("state", "open"), ("failed", "9")]))
    def mark_bad(self, key: str, args: tuple[str, str]) -> None:
        assert mark(self.c, key, *args) == ["ERR", "BAD_ARGS"]

    @invariant()
    def redis_matches_the_model(self) -> None:
        allowed = {k(key, part) for key, m in self.model.items() if m is not None
                   for part in ("fo", "count", "done", "res")}
        names = set(self.r.keys("*"))
        assert names <= allowed, names - allowed            # nothing outside {cc:<key>}:*
        for key, m in self.model.items():
            if m is None:
                assert fo_keys(self.r, key) == set()
                continue
            fo = self.r.hgetall(k(key, "fo"))
            assert fo["n"] == str(m.n) and fo["state"] == m.state and fo["published"] == m.published
            assert (fo["then"], fo["on_error"]) == (m.then, m.on_error)
            assert fo["failed"] == str(len(m.failed))          # distinct failed children counted
            assert len(m.failed) <= len(m.done) <= m.n
            if m.counting:
                assert self.r.get(k(key, "count")) == str(m.remaining)   # remaining == n - counted
                assert self.r.smembers(k(key, "done")) == m.done
            else:
                assert k(key, "count") not in names and k(key, "done") not in names
            res = self.r.hgetall(k(key, "res"))
            assert res == {str(i): e for i, e in m.entries.items()}       # each index once, FIRST entry
            assert self.c.fanout_entries(key, m.n) == [
                m.entries[i].encode() if i in m.entries else None for i in range(m.n)]
            for name in fo_keys(self.r, key):
                assert 0 < self.r.pttl(name) <= TTL, name


def test_state_machine(redis_server: RedisServer) -> None:
    SEEN.clear()
    r = redis.Redis(port=redis_server.port, decode_responses=True)
    client = OmniqClient(redis_server.url)
    _SERVER.update(r=r, client=client)
    try:
        run_state_machine_as_test(FanoutMachine, settings=settings(
            max_examples=150, stateful_step_count=30, deadline=None,
            suppress_health_check=[HealthCheck.too_slow]))
    finally:
        client.close()
        r.close()
    words = {"open OK", "open OK n=0", "open EXISTS published=0", "open EXISTS published=1", "child COUNTED",
             "child DUP", "child FIRE", "child FIRED", "child GONE"}
    assert words <= set(SEEN), words - set(SEEN)


# --------------------------------------------------------------------------------------
# enqueue_batch's once-set
# --------------------------------------------------------------------------------------

def specs(ids: list[str]) -> list[Any]:
    return [job_spec(b'{"i":"%s"}' % i.encode(), job_id=i) for i in ids]


def test_once_second_publish_exists_even_without_the_job_hash(client: OmniqClient, r: redis.Redis) -> None:
    ids = ["a", "b", "c"]
    out = client.enqueue_many("q", specs(ids), once=("wf1", 60_000))
    assert [p.existed for p in out] == [False] * 3
    assert r.smembers("{q}:once:wf1") == set(ids)
    assert 0 < r.pttl("{q}:once:wf1") <= 60_000
    r.delete("{q}:job:b")                               # as if trimmed from the completed lane
    out = client.enqueue_many("q", specs(ids), once=("wf1", 60_000))
    assert [(p.job_id, p.existed) for p in out] == [("a", True), ("b", True), ("c", True)]
    assert not r.exists("{q}:job:b")                    # not published again
    assert r.hget("{q}:stats", "waiting") == "3"
    # without the once-set (or with another name) the protocol's EXISTS is by job hash only
    assert client.enqueue_many("q", specs(["b"]), once=("wf2", 60_000))[0].existed is False
    assert r.exists("{q}:job:b")


def test_once_ttl_is_set_again_by_every_call(client: OmniqClient, r: redis.Redis) -> None:
    client.enqueue_many("q", specs(["a"]), once=("wf", 60_000))
    client.enqueue_many("q", specs(["a"]), once=("wf", 5_000))   # all EXISTS: the TTL still moves
    assert 0 < r.pttl("{q}:once:wf") <= 5_000


@pytest.mark.parametrize("once", [("", 60_000), ("wf", 0), ("wf", -1), ("wf", "x")])
def test_once_bad_args_write_nothing(client: OmniqClient, r: redis.Redis, once: tuple[Any, Any]) -> None:
    with pytest.raises(BadArgsError):
        client.enqueue_many("q", specs(["a", "b"]), once=once)
    assert r.keys("*") == []


def test_once_replayed_call_gets_the_first_answer(client: OmniqClient, r: redis.Redis) -> None:
    def args(seq: str) -> list[Any]:
        return [0, 0, 2, "a", b"{}", "", b"1:1000:0:0:0", "b", b"{}", "", b"1:1000:0:0:0",
                "chan", seq, "wf", 60_000]

    first = text(client.scripts.call("enqueue_batch", "{q}:meta", args("1")))
    assert first == [2]
    before = everything(r)
    assert text(client.scripts.call("enqueue_batch", "{q}:meta", args("1"))) == first   # a resend
    assert everything(r) == before
    # the next sequence number is a new call: both already published
    assert text(client.scripts.call("enqueue_batch", "{q}:meta", args("2"))) == [0, 1, "EXISTS", 2, "EXISTS"]


def test_once_chunks_of_more_than_1000(client: OmniqClient, r: redis.Redis) -> None:
    ids = [f"j{i}" for i in range(2_345)]
    out = client.enqueue_many("q", specs(ids), wake_cap=0, once=("big", 60_000))
    assert len(out) == len(ids) and not any(p.existed for p in out)
    assert r.scard("{q}:once:big") == len(ids)
    assert 0 < r.pttl("{q}:once:big") <= 60_000
    r.delete("{q}:job:j5", "{q}:job:j1500", "{q}:job:j2344")   # one per chunk
    out = client.enqueue_many("q", specs(ids), wake_cap=0, once=("big", 60_000))
    assert [p.job_id for p in out] == ids and all(p.existed for p in out)
    assert r.hget("{q}:stats", "waiting") == str(len(ids))
    assert not r.exists("{q}:job:j1500")
