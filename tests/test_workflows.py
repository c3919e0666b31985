"""Workflows end to end (docs/workflows.md): signatures, chains and fan-outs on a real
Redis and a REAL worker process (``python -m omniq_tasks worker``), asserting what
each one did AND what it left in Redis.

One CLI worker runs for the whole module (threads, ``-c 16``, every queue below);
each test uses its own chain ids, fan-out keys and counters (``tag``), so the tests
do not see each other. The app (WF_APP) is written into a temp dir, the worker's
cwd, and imported by this process too to publish and read. Bodies count their runs
in Redis (``INCR``), so "exactly once" is checked on what really ran. Eager mode
(in process) is tested at the end.

Queues: ``wf`` (chains, callbacks), ``wfpages`` (children), ``wfgrp`` (children in a
group with a limit), ``wfbig`` (the 10,000 children), ``wfidle`` (no worker: jobs stay
where they are published).
"""

from __future__ import annotations

import importlib
import itertools
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import msgspec
import pytest
import redis

from omniq_tasks import ChildResult, JobStatus, chain
from omniq_tasks.errors import InvalidOptionError, OmniqError, TaskArgumentError, TaskFailed
from omniq_tasks.protocol import keys
from omniq_tasks.signature import Chain, Signature
from cli_worker import CliWorker, wait_for
from redis_server import RedisServer

WF_APP = r'''
"""Tasks for tests/test_workflows.py."""

from __future__ import annotations

import os
import time

import msgspec
import redis

from omniq_tasks import App, ChildResult, JobContext

app = App("wftest", queue="wf", max_attempts=1, timeout_ms=20000, backoff_ms=0, workflow_sweep=1.0)
_conn = None


def conn() -> redis.Redis:
    global _conn
    if _conn is None:
        _conn = redis.Redis.from_url(os.environ["OMNIQ_TASKS_REDIS_URL"], decode_responses=True)
    return _conn


class Point(msgspec.Struct):
    x: int
    y: int


# -- chain steps --------------------------------------------------------------------------

@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task
def double(x: int) -> int:
    return 2 * x


@app.task
def make_point(x: int) -> Point:
    return Point(x, -x)


@app.task
def shift(p: Point, dx: int) -> Point:
    assert type(p) is Point, type(p)  # a Struct in
    return Point(p.x + dx, p.y)


@app.task
def describe(p: Point) -> str:
    assert type(p) is Point, type(p)
    return f"{p.x},{p.y}"


@app.task
def fixed(word: str) -> str:
    return word


@app.task
def shout(word: str) -> str:
    return word.upper() + "!"


@app.task
def boom(x: int) -> int:
    raise ValueError(f"boom at {x}")


@app.task
def flaky(x: int, tag: str) -> int:
    if conn().incr(f"runs:{tag}") == 1:
        raise RuntimeError("first attempt fails")
    return x + 1


@app.task
def tick(x: int, tag: str) -> int:
    conn().incr(f"runs:{tag}")
    return x


@app.task
def to_text(x: int) -> str:
    return f"number {x}"


@app.task(gid="doc:{doc}")
def tagged(doc: str, n: int) -> str:
    return f"{doc}/{n}"


@app.task
def merge(pages: list[ChildResult[Point]], doc: str) -> str:
    return f"{doc}: {len(pages)}"


# -- fan-out children and callbacks -------------------------------------------------------

@app.task(queue="wfpages")
def child(n: int, tag: str) -> int:
    r = conn()
    r.incr(f"runs:{tag}")
    r.hincrby(f"each:{tag}", str(n), 1)
    return n


@app.task(queue="wfpages")
def maybe_fail(n: int, bad: int) -> int:
    if n == bad:
        raise ValueError(f"child {n} is torn")
    return n * 10


@app.task(queue="wfpages")
def gated_child(gate: str) -> int:
    conn().blpop([gate], timeout=15)
    return 1


@app.task(queue="wfgrp")
def grouped(n: int, tag: str) -> int:
    r = conn()
    running = r.incr(f"active:{tag}")
    r.rpush(f"seen:{tag}", running)
    time.sleep(0.15)
    r.decr(f"active:{tag}")
    return n


@app.task(queue="wfbig")
def noop(n: int) -> int:
    return n


@app.task
def collect(outs: list[ChildResult[int]], tag: str) -> list[list[object]]:
    conn().incr(f"cb:{tag}")
    return [[o.index, o.job_id, o.task, o.ok, o.value, o.error_type, o.error.split("\n", 1)[0]] for o in outs]


@app.task
def summary(outs: list[ChildResult[int]], tag: str) -> list[int]:
    conn().incr(f"cb:{tag}")
    in_order = all(o.index == i and o.ok and o.value == i and o.job_id.endswith(f".{i}")
                   for i, o in enumerate(outs))
    return [len(outs), sum(o.value or 0 for o in outs), int(in_order)]


@app.task
def mark(outs: list[ChildResult[int]], tag: str, which: str) -> str:
    conn().incr(f"cb:{tag}")
    conn().rpush(f"ran:{tag}", which)
    return f"{which}: {sum(1 for o in outs if not o.ok)} failed"


# -- parents: fan-outs from inside a task -------------------------------------------------

@app.task
def spawn(ctx: JobContext, n: int, tag: str) -> str:
    handle = ctx.fanout([child.s(i, tag) for i in range(n)], then=collect.s(tag))
    return handle.key


@app.task(max_attempts=2)
def spawn_then_fail(ctx: JobContext, n: int, tag: str) -> str:
    conn().incr(f"parent:{tag}")
    handle = ctx.fanout([child.s(i, tag) for i in range(n)], then=collect.s(tag))
    if ctx.attempt == 1:
        raise RuntimeError("the parent fails after starting its fan-out")
    return handle.key
'''

QUEUES = ("wf", "wfpages", "wfgrp", "wfbig")
_tags = itertools.count()
# Every fan-out callback counter (cb:<tag>) made here: the last test checks each is 1.
CALLBACK_TAGS: list[str] = []


def new_tag(what: str) -> str:
    return f"{what}-{next(_tags)}-{time.monotonic_ns() % 1_000_000}"


def callback_tag(what: str) -> str:
    tag = new_tag(what)
    CALLBACK_TAGS.append(tag)
    return tag


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("wf-app")
    (directory / "wf_app.py").write_text(WF_APP)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMNIQ_TASKS_REDIS_URL", redis_server.url)
        mp.syspath_prepend(str(directory))
        yield directory
        module = sys.modules.pop("wf_app", None)
        if module is not None:
            module.app.close()


@pytest.fixture(scope="module")
def rr(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A decoded client, flushed once: a module-wide worker runs, so no test flushes."""
    conn = redis.Redis(port=redis_server.port, decode_responses=True)
    conn.flushall()
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def worker(app_dir: Path, redis_server: RedisServer, rr: redis.Redis,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliWorker]:
    log = tmp_path_factory.mktemp("wf-log") / "worker.log"
    started = CliWorker(app_dir, redis_server.url, "wf_app:app",
                        ["-Q", ",".join(QUEUES), "-c", "16", "--poll-interval", "0.2"], log,
                        ready_text="worker for app wftest")
    try:
        yield started.wait_ready()
    finally:
        started.kill()


@pytest.fixture(scope="module")
def tasks(app_dir: Path, rr: redis.Redis) -> ModuleType:
    return importlib.import_module("wf_app")


@pytest.fixture()
def wf(tasks: ModuleType, worker: CliWorker) -> ModuleType:
    """The app module, with the worker running."""
    return tasks


def job(rr: redis.Redis, queue: str, job_id: str) -> dict[str, str]:
    return rr.hgetall(keys.job_key(queue, job_id))


def once(rr: redis.Redis, queue: str, workflow_id: str) -> set[str]:
    return rr.smembers(keys.once_key(queue, workflow_id))


def assert_fanout_finished(rr: redis.Redis, key: str, child_queues: set[str], callback_queue: str | None,
                           worker: CliWorker | None = None) -> None:
    """The Redis state a fan-out leaves once its callback is published (docs/workflows.md)."""
    fo = keys.fanout_key(key, "fo")
    assert rr.hget(fo, "state") == "fired"
    assert rr.hget(fo, "published") == "1"
    assert not rr.exists(keys.fanout_key(key, "count"), keys.fanout_key(key, "done"))
    wait_for(lambda: rr.zscore(keys.FANOUT_INDEX, key) is None, 5, worker, f"{key} to leave the index")
    day = 24 * 3600 * 1000
    assert 6 * day < rr.pttl(fo) <= 7 * day
    n = int(rr.hget(fo, "n") or 0)
    if n:
        assert rr.hlen(keys.fanout_key(key, "res")) == n
        assert 6 * day < rr.pttl(keys.fanout_key(key, "res")) <= 7 * day
    for queue in child_queues | ({callback_queue} if callback_queue else set()):
        assert 6 * day < rr.pttl(keys.once_key(queue, key)) <= 7 * day, queue
    published = set().union(*(once(rr, q, key) for q in child_queues)) if child_queues else set()
    assert published == {f"{key}.{i}" for i in range(n)}
    if callback_queue:
        assert f"{key}.then" in once(rr, callback_queue, key)


# == 1. Signatures ========================================================================


def test_signature_checks_arguments_at_once(tasks: ModuleType) -> None:
    with pytest.raises(TaskArgumentError):
        tasks.add.s("x", 1)  # a wrong type
    with pytest.raises(TaskArgumentError, match="doc"):
        tasks.merge.s()  # the first is left open, the second is missing
    with pytest.raises(TaskArgumentError):
        tasks.add.s(1, c=3)  # an unknown keyword
    with pytest.raises(TaskArgumentError):
        tasks.shift.s(tasks.Point(1, 2), "far")  # a wrong type with every argument given
    with pytest.raises(TaskArgumentError):
        tasks.add.si(1)  # .si() takes everything itself
    # Celery-style: the positional arguments given bind to the parameters after the open first one
    sig = tasks.merge.s("doc-1")
    assert sig.takes_previous and sig.spec.first == "pages"
    assert msgspec.json.decode(bytes(sig.spec.kwargs)) == {"doc": "doc-1"}
    assert not tasks.add.s(1, 2).takes_previous and tasks.add.s(1, 2).spec.first == ""
    assert tasks.add.s(1).spec.first == "a"  # 1 binds to b
    assert msgspec.json.decode(bytes(tasks.add.s(1).spec.kwargs)) == {"b": 1}
    assert tasks.add.s(b=1).spec.first == "a"
    assert tasks.add.si(1, 2).spec.first == ""
    with pytest.raises(TaskArgumentError, match="left open"):
        tasks.merge.s("doc-1").delay()  # published alone, the open argument is missing
    with pytest.raises(TaskArgumentError, match="first step of a chain"):
        chain(tasks.double.s(), tasks.double.s())


def test_signature_repr(tasks: ModuleType) -> None:
    assert repr(tasks.add.s(1, 2)) == 'wf_app.add.s({"a":1,"b":2})'
    assert repr(tasks.merge.s("d")) == 'wf_app.merge.s({"doc":"d"}, first open)'
    assert repr(tasks.add.s(1, 2) | tasks.double.s()) == 'wf_app.add.s({"a":1,"b":2}) | wf_app.double.s({}, first open)'


def test_signature_set_validates_and_copies(tasks: ModuleType) -> None:
    sig = tasks.add.s(1, 2)
    for bad in ({"countdown": -1}, {"countdown": True}, {"countdown": "5"}, {"max_attempts": -1},
                {"max_attempts": True}, {"max_attempts": 1.5}, {"group_limit": -2}, {"timeout_ms": "x"},
                {"max_attempts": 0}, {"timeout_ms": 0}, {"backoff_ms": -1}):
        with pytest.raises(InvalidOptionError):
            sig.set(**bad)
    with pytest.raises(OmniqError):
        sig.set(queue="bad{queue}")
    with pytest.raises(OmniqError):
        sig.set(gid="")
    changed = sig.set(queue="wfidle", gid="g-1", countdown=30, max_attempts=5, group_limit=3)
    assert (changed.spec.queue, changed.spec.gid, changed.spec.countdown_ms, changed.spec.max_attempts,
            changed.spec.group_limit) == ("wfidle", "g-1", 30_000, 5, 3)
    assert (sig.spec.queue, sig.spec.gid, sig.spec.countdown_ms, sig.spec.max_attempts) == ("wf", "", 0, 1)
    assert changed.spec.kwargs == sig.spec.kwargs


def test_signature_delay_publishes_with_its_options(tasks: ModuleType, rr: redis.Redis) -> None:
    before = tasks.app.client.server_now_ms()
    handle = tasks.add.s(1, 2).set(queue="wfidle", gid="g-delay", countdown=30, max_attempts=5).delay()
    fields = job(rr, "wfidle", handle.id)
    assert fields["gid"] == "g-delay"
    assert fields["max_attempts"] == "5"
    assert fields["state"] == "delayed"
    assert before + 29_000 <= int(fields["due_ms"]) <= before + 31_000
    assert msgspec.json.decode(fields["payload"])["task"] == "wf_app.add"
    plain = tasks.add.s(3, 4).set(queue="wfidle").delay()
    fields = job(rr, "wfidle", plain.id)
    assert fields["state"] == "wait" and "gid" not in fields
    # the task's own options (App: max_attempts 1, timeout 20 s, backoff 0), not the protocol's defaults
    assert (fields["max_attempts"], fields["timeout_ms"], fields["backoff_ms"]) == ("1", "20000", "0")
    slow = tasks.add.s(5, 6).set(queue="wfidle", backoff_ms=250, timeout_ms=1500).delay()
    assert (job(rr, "wfidle", slow.id)["backoff_ms"], job(rr, "wfidle", slow.id)["timeout_ms"]) == ("250", "1500")


def test_gid_rule_needing_the_open_first_parameter(wf: ModuleType, rr: redis.Redis) -> None:
    assert wf.tagged.s("given", 1).spec.gid == "doc:given"  # known now: resolved now
    open_sig = wf.tagged.s(2)
    assert open_sig.spec.first == "doc" and open_sig.spec.gid == ""  # resolved when published
    handle = (wf.fixed.si("abc") | open_sig).delay()
    assert handle.get(timeout=20) == "abc/2"
    assert job(rr, "wf", f"{handle.id}.1")["gid"] == "doc:abc"
    assert "gid" not in job(rr, "wf", f"{handle.id}.0")


# == 2. Chains ============================================================================


def test_chain_of_three_struct_values_flow(wf: ModuleType, rr: redis.Redis) -> None:
    by_chain = chain(wf.make_point.s(2), wf.shift.s(10), wf.describe.s()).delay()
    by_pipe = (wf.make_point.s(2) | wf.shift.s(10) | wf.describe.s()).delay()
    assert by_chain.get(timeout=20) == "12,-2"
    assert by_pipe.get(timeout=20) == "12,-2"
    assert by_chain.id.startswith("ch-") and by_chain.id != by_pipe.id
    assert [s.id for s in by_chain.steps] == [f"{by_chain.id}.{n}" for n in range(3)]
    assert by_chain.status() is JobStatus.COMPLETED and by_chain.failed_step() is None
    middle = by_chain.steps[1].get(timeout=1)
    assert type(middle) is wf.Point and middle == wf.Point(12, -2)  # a Struct out
    assert once(rr, "wf", by_chain.id) == {f"{by_chain.id}.{n}" for n in range(3)}
    assert 6 * 86_400_000 < rr.pttl(keys.once_key("wf", by_chain.id)) <= 7 * 86_400_000
    # the published step carries its predecessor's value as its first argument
    step1 = msgspec.json.decode(job(rr, "wf", f"{by_chain.id}.1")["payload"])
    assert step1["kwargs"] == {"p": {"x": 2, "y": -2}, "dx": 10}


def test_chain_si_step_gets_nothing(wf: ModuleType) -> None:
    handle = chain(wf.add.s(1, 2), wf.fixed.si("z"), wf.shout.s()).delay()
    assert handle.get(timeout=20) == "Z!"
    assert handle.steps[1].get(timeout=1) == "z"


def test_chain_stops_at_a_step_failed_for_good(wf: ModuleType, rr: redis.Redis, worker: CliWorker) -> None:
    handle = chain(wf.add.s(1, 2), wf.boom.s(), wf.double.s()).delay()
    with pytest.raises(TaskFailed) as caught:
        handle.get(timeout=20)
    failed = caught.value
    assert failed.job_id == f"{handle.id}.1"
    assert failed.task == "wf_app.boom" and failed.error_type == "ValueError" and failed.message == "boom at 3"
    assert "in boom" in failed.traceback
    assert handle.status() is JobStatus.FAILED
    step = handle.failed_step()
    assert step is not None and step.id == f"{handle.id}.1"
    assert job(rr, "wf", f"{handle.id}.1")["state"] == "failed"
    wait_for(lambda: f"chain {handle.id} stopped at step 1" in worker.log(), 5, worker, "the stop to be logged")
    time.sleep(0.3)
    assert not rr.exists(keys.job_key("wf", f"{handle.id}.2"))
    assert once(rr, "wf", handle.id) == {f"{handle.id}.0", f"{handle.id}.1"}


def test_chain_waits_for_a_step_that_retries(wf: ModuleType, rr: redis.Redis) -> None:
    tag = new_tag("flaky")
    start = time.monotonic()
    handle = chain(wf.add.s(1, 2), wf.flaky.s(tag).set(max_attempts=2), wf.double.s()).delay()
    assert handle.get(timeout=20) == 8
    assert rr.get(f"runs:{tag}") == "2"
    fields = job(rr, "wf", f"{handle.id}.1")
    assert fields["attempt"] == "2" and fields["max_attempts"] == "2"
    # the task's backoff_ms=0 holds for a step too (it was the protocol's 5 s default)
    assert fields["backoff_ms"] == "0" and time.monotonic() - start < 4
    assert handle.status() is JobStatus.COMPLETED


def test_chain_with_an_id_publishes_once(wf: ModuleType, rr: redis.Redis) -> None:
    tag = new_tag("once")
    cid = f"order-{tag}"
    steps = chain(wf.tick.si(5, tag), wf.double.s())
    first = steps.apply_async(id=cid)
    assert first.id == cid
    assert first.get(timeout=20) == 10
    second = steps.apply_async(id=cid)
    assert second.get(timeout=5) == 10
    time.sleep(0.5)
    assert rr.get(f"runs:{tag}") == "1"
    assert once(rr, "wf", cid) == {f"{cid}.0", f"{cid}.1"}
    with pytest.raises(InvalidOptionError):
        steps.apply_async(id="bad{id}")


def test_chain_step_refusing_the_result_fails_its_predecessor(wf: ModuleType, rr: redis.Redis) -> None:
    handle = chain(wf.to_text.s(1).set(max_attempts=3), wf.double.s()).delay()
    with pytest.raises(TaskFailed) as caught:
        handle.get(timeout=20)
    assert caught.value.job_id == f"{handle.id}.0"
    assert f"chain {handle.id}: step 1 (wf_app.double) refuses this step's result" in caught.value.error
    fields = job(rr, "wf", f"{handle.id}.0")
    assert fields["state"] == "failed" and fields["attempt"] == "1"  # for good: no retry
    assert not rr.exists(keys.job_key("wf", f"{handle.id}.1"))
    assert handle.status() is JobStatus.FAILED


# == 3. Fan-outs ==========================================================================


@pytest.mark.parametrize("n", [1, 10])
def test_fanout_small(wf: ModuleType, rr: redis.Redis, worker: CliWorker, n: int) -> None:
    tag = callback_tag(f"small{n}")
    key = f"fo-{tag}"
    handle = wf.app.fanout([wf.child.s(i, tag) for i in range(n)], then=wf.collect.s(tag), key=key)
    assert handle.key == key
    outs = handle.get(timeout=20)
    assert outs == [[i, f"{key}.{i}", "wf_app.child", True, i, "", ""] for i in range(n)]
    assert rr.get(f"cb:{tag}") == "1" and rr.get(f"runs:{tag}") == str(n)
    assert handle.status() is JobStatus.COMPLETED
    callback = handle.callback()
    assert callback is not None and callback.id == f"{key}.then" and callback.queue == "wf"
    assert [r.value for r in handle.results()] == list(range(n))
    assert_fanout_finished(rr, key, {"wfpages"}, "wf", worker)


def test_fanout_of_ten_thousand(wf: ModuleType, rr: redis.Redis, worker: CliWorker,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    n = 10_000
    tag = callback_tag("big")
    key = f"fo-{tag}"
    scripts = wf.app.client.scripts
    sizes: list[int] = []
    real_call = scripts.call

    def spy(name: str, anchor: str, args: Any) -> Any:
        if name == "enqueue_batch":
            sizes.append(int(args[2]))
        return real_call(name, anchor, args)

    monkeypatch.setattr(scripts, "call", spy)
    start = time.monotonic()
    handle = wf.app.fanout([wf.noop.s(i) for i in range(n)], then=wf.summary.s(tag), key=key)
    assert sizes == [1000] * 10  # published 1000 per script call
    assert handle.get(timeout=60) == [n, n * (n - 1) // 2, 1]  # every outcome, in order
    elapsed = time.monotonic() - start
    assert rr.scard(keys.once_key("wfbig", key)) == n
    assert rr.get(f"cb:{tag}") == "1"
    assert_fanout_finished(rr, key, {"wfbig"}, "wf", worker)
    print(f"10,000 children end to end: {elapsed:.1f} s")


def test_fanout_children_in_a_group_keep_its_limit(wf: ModuleType, rr: redis.Redis, worker: CliWorker) -> None:
    tag = callback_tag("grp")
    key = f"fo-{tag}"
    gid = f"g-{tag}"
    children = [wf.grouped.s(i, tag).set(gid=gid, group_limit=2) for i in range(8)]
    handle = wf.app.fanout(children, then=wf.collect.s(tag), key=key)
    outs = handle.get(timeout=30)
    assert [o[4] for o in outs] == list(range(8))
    seen = [int(x) for x in rr.lrange(f"seen:{tag}", 0, -1)]
    assert len(seen) == 8
    assert max(seen) == 2  # never more than 2 at once, and 2 did run together (-c 16)
    assert all(job(rr, "wfgrp", f"{key}.{i}")["gid"] == gid for i in range(8))
    assert_fanout_finished(rr, key, {"wfgrp"}, "wf", worker)


def test_fanout_child_failed_for_good_reaches_the_callback(wf: ModuleType, rr: redis.Redis,
                                                           worker: CliWorker) -> None:
    tag = callback_tag("failone")
    key = f"fo-{tag}"
    handle = wf.app.fanout([wf.maybe_fail.s(i, 2).set(max_attempts=1) for i in range(4)],
                           then=wf.collect.s(tag), key=key)
    outs = handle.get(timeout=20)
    assert [o[:5] for o in outs] == [[0, f"{key}.0", "wf_app.maybe_fail", True, 0],
                                     [1, f"{key}.1", "wf_app.maybe_fail", True, 10],
                                     [2, f"{key}.2", "wf_app.maybe_fail", False, None],
                                     [3, f"{key}.3", "wf_app.maybe_fail", True, 30]]
    assert outs[2][5:] == ["ValueError", "ValueError: child 2 is torn"]
    assert [o[5] for o in outs if o[3]] == ["", "", ""]
    assert rr.hget(keys.fanout_key(key, "fo"), "failed") == "1"
    results = handle.results()
    assert not results[2].ok and results[2].error_type == "ValueError" and "in maybe_fail" in results[2].error
    assert_fanout_finished(rr, key, {"wfpages"}, "wf", worker)


def test_fanout_on_error_is_published_instead_of_then(wf: ModuleType, rr: redis.Redis, worker: CliWorker) -> None:
    tag = callback_tag("onerr")
    key = f"fo-{tag}"
    handle = wf.app.fanout([wf.maybe_fail.s(i, 0) for i in range(3)], then=wf.mark.s(tag, "then"),
                           on_error=wf.mark.s(tag, "on_error"), key=key)
    assert handle.get(timeout=20) == "on_error: 1 failed"
    callback = handle.callback()
    assert callback is not None and callback.id == f"{key}.then"
    assert msgspec.json.decode(job(rr, "wf", f"{key}.then")["payload"])["kwargs"]["which"] == "on_error"
    time.sleep(0.5)
    assert rr.lrange(f"ran:{tag}", 0, -1) == ["on_error"]  # then never ran
    # all ok: then, not on_error
    tag2 = callback_tag("onerr-ok")
    ok = wf.app.fanout([wf.maybe_fail.s(i, 99) for i in range(3)], then=wf.mark.s(tag2, "then"),
                       on_error=wf.mark.s(tag2, "on_error"), key=f"fo-{tag2}")
    assert ok.get(timeout=20) == "then: 0 failed"
    assert rr.lrange(f"ran:{tag2}", 0, -1) == ["then"]
    assert_fanout_finished(rr, key, {"wfpages"}, "wf", worker)


def test_fanout_without_callback_returns_child_results(wf: ModuleType, rr: redis.Redis, worker: CliWorker) -> None:
    tag = new_tag("nocb")
    key = f"fo-{tag}"
    handle = wf.app.fanout([wf.child.s(i, tag) for i in range(4)], key=key)
    outs = handle.get(timeout=20)
    assert all(isinstance(o, ChildResult) for o in outs)
    assert [(o.index, o.job_id, o.task, o.ok, o.value, o.error) for o in outs] == \
        [(i, f"{key}.{i}", "wf_app.child", True, i, "") for i in range(4)]
    assert handle.callback() is None and handle.status() is JobStatus.COMPLETED
    assert_fanout_finished(rr, key, {"wfpages"}, None, worker)


def test_fanout_from_a_task_uses_the_job_id_key(wf: ModuleType, rr: redis.Redis, worker: CliWorker) -> None:
    tag = callback_tag("inner")
    parent = wf.spawn.delay(3, tag)
    key = parent.get(timeout=20)
    assert key == f"{parent.id}.fo0"
    outs = wf.app.fanout_handle(key).get(timeout=20)
    assert [o[4] for o in outs] == [0, 1, 2]
    assert rr.get(f"cb:{tag}") == "1"
    assert_fanout_finished(rr, key, {"wfpages"}, "wf", worker)


def test_fanout_from_a_retried_parent_publishes_once(wf: ModuleType, rr: redis.Redis, worker: CliWorker) -> None:
    n = 5
    tag = callback_tag("retried")
    parent = wf.spawn_then_fail.delay(n, tag)
    key = parent.get(timeout=20)
    assert key == f"{parent.id}.fo0"
    assert rr.get(f"parent:{tag}") == "2" and job(rr, "wf", parent.id)["attempt"] == "2"
    assert [o[4] for o in wf.app.fanout_handle(key).get(timeout=20)] == list(range(n))
    time.sleep(1.5)  # longer than a sweep: nothing more runs
    assert rr.scard(keys.once_key("wfpages", key)) == n
    assert rr.get(f"runs:{tag}") == str(n)
    assert rr.hgetall(f"each:{tag}") == {str(i): "1" for i in range(n)}
    assert rr.get(f"cb:{tag}") == "1"
    assert_fanout_finished(rr, key, {"wfpages"}, "wf", worker)


def test_fanout_same_key_twice_publishes_nothing_new(wf: ModuleType, rr: redis.Redis, worker: CliWorker) -> None:
    tag = callback_tag("twice")
    key = f"fo-{tag}"
    first = wf.app.fanout([wf.child.s(i, tag) for i in range(3)], then=wf.collect.s(tag), key=key)
    assert [o[4] for o in first.get(timeout=20)] == [0, 1, 2]
    # started before (and finished since): the second starts nothing, even with other children
    second = wf.app.fanout([wf.child.s(i, tag) for i in range(7)], then=wf.collect.s(tag), key=key)
    assert second.key == key
    assert rr.zscore(keys.FANOUT_INDEX, key) is None  # a fired fan-out is not put back in the index
    assert [o[4] for o in second.get(timeout=5)] == [0, 1, 2]
    time.sleep(0.5)
    assert rr.get(f"runs:{tag}") == "3" and rr.get(f"cb:{tag}") == "1"
    assert rr.scard(keys.once_key("wfpages", key)) == 3
    assert not rr.exists(keys.job_key("wfpages", f"{key}.3"))
    assert rr.hget(keys.fanout_key(key, "fo"), "n") == "3"


def test_fanout_of_nothing_calls_back_at_once(wf: ModuleType, rr: redis.Redis, worker: CliWorker) -> None:
    tag = callback_tag("empty")
    key = f"fo-{tag}"
    handle = wf.app.fanout([], then=wf.collect.s(tag), key=key)
    assert rr.hget(keys.fanout_key(key, "fo"), "state") == "fired"  # before any worker ran
    assert handle.get(timeout=20) == []
    assert rr.get(f"cb:{tag}") == "1"
    assert not rr.exists(keys.fanout_key(key, "res"))
    assert_fanout_finished(rr, key, set(), "wf", worker)


def test_fanout_status_transitions(wf: ModuleType, rr: redis.Redis, worker: CliWorker) -> None:
    tag = callback_tag("gated")
    key = f"fo-{tag}"
    gate = f"gate:{tag}"
    handle = wf.app.fanout([wf.child.s(0, tag), wf.gated_child.s(gate), wf.child.s(2, tag)],
                           then=wf.collect.s(tag), key=key)
    wait_for(lambda: rr.get(f"runs:{tag}") == "2", 10, worker, "the ungated children")
    wait_for(lambda: job(rr, "wfpages", f"{key}.1").get("state") == "active", 10, worker, "the gated child")
    assert handle.status() is JobStatus.ACTIVE and not handle.ready()
    assert handle.info()["state"] == "open"
    partial = handle.results()
    assert [r.ok for r in partial] == [True, False, True] and "not counted" in partial[1].error
    assert rr.get(keys.fanout_key(key, "count")) == "1"
    rr.rpush(gate, "go")
    outs = handle.get(timeout=20)
    assert [o[3:5] for o in outs] == [[True, 0], [True, 1], [True, 2]]
    assert handle.status() is JobStatus.COMPLETED and handle.ready()
    assert handle.info()["state"] == "fired"
    assert_fanout_finished(rr, key, {"wfpages"}, "wf", worker)


def test_sweeper_counts_a_child_whose_job_is_gone(wf: ModuleType, rr: redis.Redis, worker: CliWorker) -> None:
    """A child removed before it ran is never counted by a worker: the worker's sweeper
    (App(workflow_sweep=1.0)) counts it as failed, and the callback runs once."""
    tag = callback_tag("swept")
    key = f"fo-{tag}"
    handle = wf.app.fanout([wf.child.s(0, tag), wf.child.s(1, tag).set(queue="wfidle")],
                           then=wf.collect.s(tag), key=key)
    wf.app.client.remove_job("wfidle", f"{key}.1", "wait")
    start = time.monotonic()
    outs = handle.get(timeout=15)
    assert time.monotonic() - start < 8
    assert outs[0][3:5] == [True, 0]
    assert outs[1][:4] == [1, f"{key}.1", "", False] and "job gone" in outs[1][6]
    wait_for(lambda: f"fan-out {key}: counted 1 child(ren)" in worker.log(), 5, worker, "the sweep to be logged")
    assert rr.get(f"cb:{tag}") == "1" and rr.hget(keys.fanout_key(key, "fo"), "failed") == "1"
    assert_fanout_finished(rr, key, {"wfpages", "wfidle"}, "wf", worker)


def test_fanout_key_is_validated(tasks: ModuleType) -> None:
    for bad in ("", "a{b}", "x" * 129):
        with pytest.raises(InvalidOptionError):
            tasks.app.fanout([tasks.child.s(0, "t")], key=bad)
    with pytest.raises(TaskArgumentError):
        tasks.app.fanout([tasks.double.s()])  # a child takes nothing from before
    with pytest.raises(TaskArgumentError):
        tasks.app.fanout([tasks.child.s(0, "t")], then=tasks.add.s(1))  # its first parameter is an int


def test_every_callback_ran_exactly_once(wf: ModuleType, rr: redis.Redis) -> None:
    """After everything settled (longer than a sweep), each callback of this module ran once."""
    time.sleep(2.0)
    assert CALLBACK_TAGS
    assert {tag: rr.get(f"cb:{tag}") for tag in CALLBACK_TAGS} == {tag: "1" for tag in CALLBACK_TAGS}
    assert rr.zcard(keys.FANOUT_INDEX) == 0


# == 4. Eager mode ========================================================================


def test_eager_chain(tasks: ModuleType) -> None:
    with tasks.app.eager_mode():
        handle = (tasks.make_point.s(2) | tasks.shift.s(10) | tasks.describe.s()).delay()
        assert handle.get() == "12,-2" and handle.status() is JobStatus.COMPLETED
        assert handle.failed_step() is None
        assert chain(tasks.add.s(1, 2), tasks.fixed.si("z"), tasks.shout.s()).delay().get() == "Z!"
        failed = chain(tasks.add.s(1, 2), tasks.boom.s(), tasks.double.s()).apply_async(id="eager-chain")
        assert failed.status() is JobStatus.FAILED
        with pytest.raises(TaskFailed) as caught:
            failed.get()
        assert caught.value.job_id == "eager-chain.1" and caught.value.error_type == "ValueError"
        step = failed.failed_step()
        assert step is not None and step.id == "eager-chain.1"
        assert len(failed.steps) == 2  # the third never ran
        # as on a worker: the step before fails for good, saying why (delay() itself does not raise)
        refused = chain(tasks.to_text.s(1), tasks.double.s(), tasks.double.s()).apply_async(id="eager-refused")
        assert refused.status() is JobStatus.FAILED
        with pytest.raises(TaskFailed) as caught:
            refused.get()
        assert caught.value.job_id == "eager-refused.0"
        assert "chain eager-refused: step 1 (wf_app.double) refuses this step's result" in caught.value.error
        step = refused.failed_step()
        assert step is not None and step.id == "eager-refused.0" and len(refused.steps) == 1


def test_eager_fanout(tasks: ModuleType, rr: redis.Redis) -> None:
    tag = new_tag("eager")
    with tasks.app.eager_mode():
        handle = tasks.app.fanout([tasks.maybe_fail.s(i, 1) for i in range(3)], then=tasks.collect.s(tag),
                                  key="eager-fo")
        outs = handle.get()
        assert [o[:5] for o in outs] == [[0, "eager-fo.0", "wf_app.maybe_fail", True, 0],
                                         [1, "eager-fo.1", "wf_app.maybe_fail", False, None],
                                         [2, "eager-fo.2", "wf_app.maybe_fail", True, 20]]
        assert outs[1][5:] == ["ValueError", "ValueError: child 1 is torn"]
        bare = tasks.app.fanout([tasks.maybe_fail.s(i, 9) for i in range(3)]).get()
        assert all(isinstance(o, ChildResult) for o in bare)
        assert [(o.index, o.ok, o.value) for o in bare] == [(0, True, 0), (1, True, 10), (2, True, 20)]
        chosen = tasks.app.fanout([tasks.maybe_fail.s(i, 0) for i in range(2)], then=tasks.mark.s(tag, "then"),
                                  on_error=tasks.mark.s(tag, "on_error"))
        assert chosen.get() == "on_error: 1 failed"
        assert tasks.app.fanout([], then=tasks.collect.s(tag + "-empty")).get() == []
    assert rr.lrange(f"ran:{tag}", 0, -1) == ["on_error"]
    assert not rr.exists(keys.fanout_key("eager-fo", "fo"))  # nothing in Redis but what the bodies did


def test_signature_types(tasks: ModuleType) -> None:
    assert isinstance(tasks.add.s(1, 2), Signature)
    assert isinstance(tasks.add.s(1, 2) | tasks.double.s(), Chain)
    joined = chain(tasks.add.s(1, 2) | tasks.double.s(), tasks.double.s())
    assert len(joined.steps) == 3
    with pytest.raises(TypeError):
        chain(tasks.add.s(1, 2), 5)  # type: ignore[arg-type]
