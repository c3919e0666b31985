"""childs_init and child_ack: the fan-in counter under {cc:<key>}."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from omniq_tasks import InvalidNameError, OmniqClient, ProtocolError
from omniq_tasks.errors import (
    AlreadyInitializedError, BadExpectedError, ChildRequiredError, NoCounterError, NoExpectedError,
)
from omniq_tasks.errors import protocol_error

ANCHOR = "{cc:batch-1}:meta"
COUNT = "{cc:batch-1}:count"
DONE = "{cc:batch-1}:done"


def test_childs_init_sets_the_counter(client: OmniqClient, r) -> None:
    assert client.childs_init("batch-1", 3) is None
    assert r.get(COUNT) == "3"
    assert not r.exists(DONE)
    assert sorted(r.keys("*")) == [COUNT]


def test_childs_init_twice_is_already_init(client: OmniqClient, r) -> None:
    client.childs_init("batch-1", 3)
    client.child_ack("batch-1", "a")
    with pytest.raises(AlreadyInitializedError) as info:
        client.childs_init("batch-1", 5)
    assert info.value.reason == "ALREADY_INIT"
    assert r.get(COUNT) == "2" and r.smembers(DONE) == {"a"}


def test_childs_init_script_argument_errors(client: OmniqClient, r) -> None:
    script = client.scripts["childs_init"]
    assert script(keys=[ANCHOR], args=[""]) == [b"ERR", b"NO_EXPECTED"]
    assert script(keys=[ANCHOR], args=[]) == [b"ERR", b"NO_EXPECTED"]
    for bad in ("0", "-2", "abc"):
        assert script(keys=[ANCHOR], args=[bad]) == [b"ERR", b"BAD_EXPECTED"], bad
    assert r.dbsize() == 0


def test_childs_init_client_refuses_bad_counts_before_redis(client: OmniqClient, r) -> None:
    with pytest.raises(ValueError):
        client.childs_init("batch-1", 0)
    with pytest.raises(TypeError):
        client.childs_init("batch-1", True)
    assert r.dbsize() == 0


def test_reason_words_only_the_script_can_give_map_to_their_errors() -> None:
    # the client refuses these inputs itself, so the words are checked on the mapping
    for reason, cls in (("NO_EXPECTED", NoExpectedError), ("BAD_EXPECTED", BadExpectedError),
                        ("CHILD_REQUIRED", ChildRequiredError)):
        err = protocol_error(reason)
        assert type(err) is cls and err.reason == reason and isinstance(err, ProtocolError)


def test_child_ack_counts_down_to_zero_and_deletes_the_keys(client: OmniqClient, r) -> None:
    client.childs_init("batch-1", 3)

    assert client.child_ack("batch-1", "a") == 2
    assert r.get(COUNT) == "2" and r.smembers(DONE) == {"a"}
    assert client.child_ack("batch-1", "b") == 1
    assert client.child_ack("batch-1", "c") == 0

    assert r.dbsize() == 0  # count and done deleted, and no other key left behind


def test_after_zero_every_ack_is_no_counter(client: OmniqClient, r) -> None:
    """0 is answered once per counter: the counter is gone after it, so a new child, a
    child already counted and the last child again (a retried job) all get NO_COUNTER."""
    client.childs_init("batch-1", 2)
    assert client.child_ack("batch-1", "a") == 1
    assert client.child_ack("batch-1", "b") == 0
    for child in ("c", "a", "b"):
        with pytest.raises(NoCounterError) as info:
            client.child_ack("batch-1", child)
        assert info.value.reason == "NO_COUNTER"
    assert client.scripts["child_ack"](keys=[ANCHOR], args=["b"]) == [b"ERR", b"NO_COUNTER"]
    assert r.dbsize() == 0


def test_child_ack_is_idempotent_per_child(client: OmniqClient, r) -> None:
    client.childs_init("batch-1", 2)
    assert client.child_ack("batch-1", "a") == 1
    assert client.child_ack("batch-1", "a") == 1
    assert client.child_ack("batch-1", "a") == 1
    assert r.get(COUNT) == "1" and r.smembers(DONE) == {"a"}
    assert client.child_ack("batch-1", "b") == 0


def test_a_finished_counter_can_start_again(client: OmniqClient, r) -> None:
    client.childs_init("batch-1", 1)
    assert client.child_ack("batch-1", "a") == 0
    client.childs_init("batch-1", 2)
    assert r.get(COUNT) == "2" and sorted(r.keys("*")) == [COUNT]
    assert client.child_ack("batch-1", "a") == 1  # a new round: "a" counts again


def test_zero_is_reached_exactly_once_under_concurrency(client: OmniqClient, r) -> None:
    n = 40
    client.childs_init("batch-1", n)

    with ThreadPoolExecutor(max_workers=8) as pool:
        remaining = list(pool.map(lambda i: client.child_ack("batch-1", f"c{i}"), range(n)))

    assert sorted(remaining) == list(range(n))  # every value once: 0 exactly once
    assert r.dbsize() == 0


def test_duplicate_acks_racing_never_count_twice(client: OmniqClient, r) -> None:
    n = 20
    client.childs_init("batch-1", n + 1)  # one child never acks: the counter stays open

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: client.child_ack("batch-1", f"c{i % n}"), range(4 * n)))

    assert r.get(COUNT) == "1"
    assert r.scard(DONE) == n
    assert client.child_ack("batch-1", "last") == 0


def test_unknown_counter_is_no_counter(client: OmniqClient, r) -> None:
    with pytest.raises(NoCounterError) as info:
        client.child_ack("never-started", "a")
    assert info.value.reason == "NO_COUNTER"
    assert isinstance(info.value, ProtocolError)
    assert r.dbsize() == 0


def test_child_id_is_required(client: OmniqClient, r) -> None:
    client.childs_init("batch-1", 2)
    with pytest.raises(ValueError):
        client.child_ack("batch-1", "")
    assert client.scripts["child_ack"](keys=[ANCHOR], args=[""]) == [b"ERR", b"CHILD_REQUIRED"]
    assert client.scripts["child_ack"](keys=[ANCHOR], args=[]) == [b"ERR", b"CHILD_REQUIRED"]
    assert r.get(COUNT) == "2"


@pytest.mark.parametrize("key", ["", "   ", "a{b", "a}b", "{x}", "k" * 129, 12, None])
def test_bad_counter_keys_are_refused_before_redis(client: OmniqClient, r, key) -> None:
    with pytest.raises(InvalidNameError):
        client.childs_init(key, 1)
    with pytest.raises(InvalidNameError):
        client.child_ack(key, "a")
    assert r.dbsize() == 0


def test_longest_key_and_keys_hashing_apart(client: OmniqClient, r) -> None:
    client.childs_init("k" * 128, 1)
    assert r.get("{cc:" + "k" * 128 + "}:count") == "1"
    client.childs_init("other", 1)
    assert client.child_ack("k" * 128, "x") == 0
    assert r.get("{cc:other}:count") == "1"
