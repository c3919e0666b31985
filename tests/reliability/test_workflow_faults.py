"""Workflows under worker crashes: real CLI workers killed at each point of a workflow
step (docs/workflows.md, "What is guaranteed"), then a replacement without the fault.

A worker started with ``OMNIQ_TASKS_FAULT=<point>`` exits (``os._exit(70)``) when it
reaches that point (omniq_tasks/worker/flows.py); the replacement finishes the work
after the dead worker's leases end (1.2 s here) and the reaper has acted, and the
sweepers (``workflow_sweep=1.0``) finish what no re-run will. Every test then checks:

* the callback's body ran exactly once (ledger) and received every child's outcome,
  in order, each index once with the right value (or ok False for a failed child);
* each child was published once (``{Q}:once:<key>`` holds exactly the n child ids;
  the callback's queue's once-set exactly ``<key>.then``) and counted once;
* the Redis state is clean: ``{cc:<key>}:fo`` is "fired" and ``{omniq-tasks}:fanouts``
  no longer holds the key; and harness.check's invariants over every job (each ends
  once, nothing left in a lane, nothing runs after its ack, no lease runs twice).

With a large ``workflow_sweep`` on the publisher (its fan-out is first due for a sweep
60 s later), only a child's re-run can finish the fan-out: that isolates the re-run
path (FIRE again) from the sweeper's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest
from redis.cluster import RedisCluster

from omniq_tasks import App, chain
from omniq_tasks.testing import RedisClusterNodes
from reliability.harness import (HERE, Published, RedisProc, Workers, WorkerProc, check, read_ledger, wait_for,
                                 wait_settled)
from reliability.workflow_app import (APP_OPTIONS, Q_CALLBACK, Q_CHAIN, Q_CHILD, Q_PARENT, build, child_value)

FANOUTS = "{omniq-tasks}:fanouts"
LATE_SWEEP = 60.0  # a publisher's workflow_sweep that keeps the sweepers away for the whole test


class WfWorker(WorkerProc):
    """``python -m omniq_tasks worker workflow_app:app -Q <queues>`` in its own process group,
    with ``OMNIQ_TASKS_FAULT`` set when ``fault`` is given."""

    def __init__(self, redis_url: str, ledger: Path, log_path: Path, queues: Sequence[str], fault: str,
                 concurrency: int, direct_url: str) -> None:
        self.log_path = log_path
        self.fault = fault
        path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env = {**os.environ, "OMNIQ_TASKS_REDIS_URL": redis_url, "OMNIQ_LEDGER": str(ledger),
               "OMNIQ_LEDGER_REDIS_URL": direct_url, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
        env.pop("OMNIQ_TASKS_FAULT", None)
        if fault:
            env["OMNIQ_TASKS_FAULT"] = fault
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omniq_tasks", "worker", "workflow_app:app", "--poll-interval", "0.2",
             "-Q", ",".join(queues), "-c", str(concurrency)],
            cwd=HERE, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 20) -> WfWorker:
        wait_for(lambda: "worker for app wf" in self.log() or not self.alive(), timeout, f"worker {self.pid} to start")
        assert self.alive(), f"worker exited at start:\n{self.log()[-3000:]}"
        return self

    def wait_dead(self, timeout: float = 20) -> int:
        """Wait until the worker exited (at its fault point); its exit code."""
        wait_for(lambda: not self.alive(), timeout, f"worker {self.pid} to die at {self.fault or 'its crash'}")
        code = self.proc.wait()
        if self.fault:
            assert code == 70 and f"fault hook OMNIQ_TASKS_FAULT={self.fault}" in self.log(), \
                f"worker {self.pid} exited {code}, not at its fault point:\n{self.log()[-3000:]}"
        return code


@dataclass
class Env:
    """One test's Redis (a server, or the cluster), its publisher App and its workers."""

    url: str
    direct_url: str  # the ledger's look-up of `prior` ("" on the cluster: not looked up)
    r: Any           # a decoded redis.Redis or RedisCluster
    ledger: Path
    workers: Workers
    made: list[App]

    def app(self, **options: Any) -> tuple[App, dict[str, Any]]:
        """A publisher App with the workers' tasks (``options`` over the workers' APP_OPTIONS)."""
        app = App("wf", redis_url=self.url, **{**APP_OPTIONS, **options})
        self.made.append(app)
        return app, build(app)

    def start(self, queues: Sequence[str], fault: str = "", concurrency: int = 4, ready: bool = False) -> WfWorker:
        w = WfWorker(self.url, self.ledger, self.workers.tmp / f"worker-{len(self.workers.all)}.log", queues,
                     fault, concurrency, self.direct_url)
        self.workers.all.append(w)
        return w.wait_ready() if ready else w

    def runs(self) -> dict[str, int]:
        return {job_id: len(recs) for job_id, recs in read_ledger(self.ledger).items()}

    def callbacks(self, key: str) -> list[dict[str, Any]]:
        path = Path(str(self.ledger) + ".callbacks")
        lines = path.read_text().splitlines() if path.exists() else []
        return [c for c in map(json.loads, lines) if c["job_id"] == f"{key}.then"]


@pytest.fixture()
def env(redis_proc: Callable[..., RedisProc], workers: Workers, ledger: Path) -> Iterator[Env]:
    server = redis_proc()
    made: list[App] = []
    yield Env(server.url, server.url, server.client(), ledger, workers, made)
    for app in made:
        app.close()


def fo(e: Env, key: str, field: str) -> Any:
    return e.r.hget("{cc:" + key + "}:fo", field)


def wait_fired(e: Env, key: str, timeout: float) -> None:
    try:
        wait_for(lambda: fo(e, key, "state") == "fired", timeout, f"fan-out {key} to fire")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{e.workers.logs()}") from None


def settle_fanout(e: Env, key: str, queues: Sequence[str], timeout: float = 30) -> None:
    """Wait until the fan-out fired and every queue is settled (the callback ran)."""
    wait_fired(e, key, timeout)
    wait_for(lambda: e.r.hget("{" + Q_CALLBACK + "}:job:" + key + ".then", "state") in ("completed", "failed")
             or not e.r.exists("{" + Q_CALLBACK + "}:job:" + key + ".then"), timeout, "the callback to end")
    assert wait_settled(e.r, queues, timeout), f"queues {queues} not settled\n{e.workers.logs()}"
    time.sleep(0.3)  # a last body still writing its end line


def expect_fanout(e: Env, key: str, n: int, *, child_queues: Sequence[str] = (Q_CHILD,),
                  failed: dict[int, str] | None = None, reruns: Sequence[int] = (), gone: Sequence[int] = (),
                  fault: str, notes: Sequence[str] = (), extra_jobs: dict[str, str] | None = None,
                  settle_s: float = 30) -> None:
    """Everything a finished fan-out must show (see the module's docstring).

    ``failed``: index -> a text its error must contain; ``reruns``: children whose body
    ran twice (the others ran once); ``gone``: children removed before they ran."""
    failed = failed or {}
    queues = [*child_queues, Q_CALLBACK, *sorted(set((extra_jobs or {}).values()))]
    settle_fanout(e, key, queues, settle_s)
    e.workers.kill_all()
    runs = e.runs()
    # The callback: one run, every child's outcome once, in order.
    assert runs.get(f"{key}.then") == 1, f"callback ran {runs.get(f'{key}.then', 0)} times\n{e.workers.logs()}"
    got = e.callbacks(key)
    assert len(got) == 1, got
    results = got[0]["results"]
    assert [r[0] for r in results] == list(range(n))
    assert [r[1] for r in results] == [f"{key}.{i}" for i in range(n)]
    for index, job_id, ok, value, error in results:
        if index in failed or index in gone:
            assert not ok and value is None, results[index]
            assert (failed.get(index) or "job gone") in error, results[index]
        else:
            assert ok and value == child_value(index), results[index]
    # Each child ran once (twice for the re-run ones; never for the removed ones).
    for i in range(n):
        expected = 0 if i in gone else 2 if i in reruns else 1
        assert runs.get(f"{key}.{i}", 0) == expected, (i, runs.get(f"{key}.{i}"), sorted(runs.items()))
    # Published once: the once-sets hold exactly the children and the callback.
    child_ids = {f"{key}.{i}" for i in range(n)}
    once: set[str] = set()
    for q in child_queues:
        members = e.r.smembers("{" + q + "}:once:" + key)
        assert not (once & members), f"a child published to two queues: {once & members}"
        once |= members
    assert once == child_ids, sorted(once ^ child_ids)
    assert e.r.smembers("{" + Q_CALLBACK + "}:once:" + key) == {f"{key}.then"}
    # Counted once: the fan-out's record, its results, and the index.
    assert fo(e, key, "state") == "fired"
    assert int(fo(e, key, "failed") or 0) == len(failed) + len(gone)
    assert e.r.hlen("{cc:" + key + "}:res") == n
    assert not e.r.exists("{cc:" + key + "}:count") and not e.r.exists("{cc:" + key + "}:done")
    assert e.r.zscore(FANOUTS, key) is None, "the fan-out is still in the sweepers' index"
    # Every job: harness.check's invariants (children, callback, and any other job of the test).
    pub = Published()
    for i in range(n):
        if i not in gone:
            pub.add(child_queues[i % len(child_queues)], [f"{key}.{i}"])
    pub.add(Q_CALLBACK, [f"{key}.then"])
    for job_id, q in (extra_jobs or {}).items():
        pub.add(q, [job_id])
    res = check(e.r, fault, pub, e.ledger, notes=list(notes))
    res.record()
    res.assert_ok(e.workers.logs())


def unacked_child(e: Env, key: str, n: int, queues: Sequence[str] = (Q_CHILD,)) -> int:
    """The one child of a dead -c 1 worker that ran but was never acked (its index)."""
    left = [i for i in range(n) if not e.r.hget("{" + queues[i % len(queues)] + "}:job:" + f"{key}.{i}",
                                                   "completed_ms")]
    assert len(left) == 1, left
    return left[0]


def children(t: dict[str, Any], n: int, **options: Any) -> list[Any]:
    return [t["child"].s(i).set(**options) if options else t["child"].s(i) for i in range(n)]


# -- the tests --------------------------------------------------------------------------------


def test_duplicate_delivery_before_the_ack(env: Env) -> None:
    """Fault before_ack: a child ran and was counted, its worker died before the ack.
    It runs again (2 runs in the ledger), is counted once; the callback runs once."""
    app, t = env.app()
    key, n = "wf-dup", 6
    app.fanout(children(t, n), then=t["collect"].s("dup"), key=key)
    env.start([Q_CHILD], "before_ack", concurrency=1).wait_dead()
    counted = env.r.smembers("{cc:" + key + "}:done")
    assert len(counted) == 1 and env.r.hlen("{cc:" + key + "}:res") == 1, counted
    (first,) = counted
    assert env.runs() == {first: 1}
    env.start([Q_CHILD, Q_CALLBACK])
    expect_fanout(env, key, n, reruns=[int(first.rsplit(".", 1)[1])], fault="workflow: before_ack (child counted, not acked)")


@pytest.mark.parametrize("attempts", [5, 1])
def test_crash_after_the_last_count_before_the_callback(env: Env, attempts: int) -> None:
    """Fault before_fire: the last child's count answered FIRE, its worker died before
    publishing the callback. max_attempts 5: the child runs again and is told FIRE again
    (the sweepers are kept away, so only that re-run can publish). max_attempts 1: the
    reaper fails the child instead, and the sweeper publishes the callback."""
    app, t = env.app(workflow_sweep=LATE_SWEEP if attempts > 1 else 1.0)
    key, n = f"wf-fire-{attempts}", 6
    app.fanout(children(t, n, max_attempts=attempts), then=t["collect"].s("fire"), key=key)
    env.start([Q_CHILD], "before_fire", concurrency=1).wait_dead()
    assert fo(env, key, "state") == "closed"
    assert not env.r.exists("{" + Q_CALLBACK + "}:job:" + key + ".then"), "the callback was published"
    runs = env.runs()
    assert len(runs) == n and set(runs.values()) == {1}, runs
    last = unacked_child(env, key, n)
    replacement = env.start([Q_CHILD, Q_CALLBACK])
    expect_fanout(env, key, n, reruns=[last] if attempts > 1 else [],
                  fault=f"workflow: before_fire (max_attempts {attempts})")
    state = env.r.hget("{" + Q_CHILD + "}:job:" + f"{key}.{last}", "state")
    assert state == ("completed" if attempts > 1 else "failed")
    swept = "a stopped worker left unpublished" in replacement.log()
    assert swept == (attempts == 1), replacement.log()[-3000:]


def test_crash_after_the_callback_is_published(env: Env) -> None:
    """Fault after_fire: the callback is published, "fired" not noted, the child not acked.
    The child's re-run is told FIRE again and publishes nothing new (once-set): the
    callback runs once. (The sweepers are kept away: only the re-run finishes it.)"""
    app, t = env.app(workflow_sweep=LATE_SWEEP)
    key, n = "wf-after-fire", 6
    app.fanout(children(t, n), then=t["collect"].s("after"), key=key)
    env.start([Q_CHILD], "after_fire", concurrency=1).wait_dead()
    assert fo(env, key, "state") == "closed"
    assert env.r.hget("{" + Q_CALLBACK + "}:job:" + key + ".then", "state") == "wait"
    last = unacked_child(env, key, n)
    env.start([Q_CHILD, Q_CALLBACK])
    expect_fanout(env, key, n, reruns=[last], fault="workflow: after_fire (callback published, not noted)")


@pytest.mark.parametrize("attempts", [5, 1])
def test_crash_after_the_body_before_its_count(env: Env, attempts: int) -> None:
    """Fault before_step: a child's body ran, nothing of its step was done. max_attempts 5:
    the re-run counts it. max_attempts 1: the reaper fails it, the sweeper counts it as
    failed (with the reaper's error) and the callback gets ok False for that index."""
    app, t = env.app()
    key, n = f"wf-step-{attempts}", 6
    app.fanout(children(t, n, max_attempts=attempts), then=t["collect"].s("step"), key=key)
    env.start([Q_CHILD], "before_step", concurrency=1).wait_dead()
    assert env.r.hlen("{cc:" + key + "}:res") == 0 and fo(env, key, "state") == "open"
    (first,) = env.runs()
    index = int(first.rsplit(".", 1)[1])
    env.start([Q_CHILD, Q_CALLBACK])
    if attempts > 1:
        expect_fanout(env, key, n, reruns=[index], fault="workflow: before_step (max_attempts 5)")
    else:
        expect_fanout(env, key, n, failed={index: "lease expired"},
                      fault="workflow: before_step (max_attempts 1: reaper fails, sweeper counts)")


def test_retried_parent_starts_no_second_fanout(env: Env) -> None:
    """A parent calls ctx.fanout(...) and its process exits in the body on attempt 1.
    Its re-run (after the fan-out fired) reaches the same key (<job id>.fo0), publishes
    nothing again and leaves the sweepers' index empty."""
    app, t = env.app()
    n = 6
    parent = t["parent"].delay(n, crash_on_attempt=1)
    key = f"{parent.id}.fo0"
    env.start([Q_PARENT]).wait_dead()  # it only serves the parent: no child runs on it
    assert env.r.scard("{" + Q_CHILD + "}:once:" + key) == n
    # The children and the callback first; the parent's lease is reaped (and re-run) only
    # once a worker serves its queue: after the fan-out fired, the hardest case for it.
    env.start([Q_CHILD, Q_CALLBACK])
    wait_fired(env, key, 30)
    assert env.runs()[parent.id] == 1
    env.start([Q_PARENT])
    expect_fanout(env, key, n, fault="workflow: parent exits after ctx.fanout (attempt 1)",
                  extra_jobs={parent.id: Q_PARENT})
    assert env.runs()[parent.id] == 2
    assert parent.get(timeout=5) == key
    assert env.r.hget("{" + Q_PARENT + "}:job:" + parent.id, "attempt") == "2"


def test_chain_killed_before_next_and_before_ack(env: Env) -> None:
    """A chain of three (one queue per step): the worker of step 0 dies at before_next
    (its next step not published), the worker of step 1 at before_ack (its next step
    published, not acked). Both re-run; each step is published once (the once-sets of
    the three queues hold exactly the 3 step ids), the final value is right."""
    app, t = env.app()
    step = t["step"]
    chain_id = "wf-chain"
    handle = chain(step.s(1, 1).set(queue=Q_CHAIN[0]), step.s(2).set(queue=Q_CHAIN[1]),
                   step.s(3).set(queue=Q_CHAIN[2])).apply_async(id=chain_id)
    a = env.start([Q_CHAIN[0]], "before_next", concurrency=1)
    c = env.start([Q_CHAIN[1]], "before_ack", concurrency=1)
    a.wait_dead()
    assert not env.r.exists("{" + Q_CHAIN[1] + "}:job:" + chain_id + ".1")
    env.start([Q_CHAIN[0]])
    c.wait_dead()
    assert env.r.hget("{" + Q_CHAIN[2] + "}:job:" + chain_id + ".2", "state") == "wait"
    env.start(list(Q_CHAIN))
    assert handle.get(timeout=30) == 1123
    assert wait_settled(env.r, Q_CHAIN, 20)
    time.sleep(0.3)
    env.workers.kill_all()
    ids = [f"{chain_id}.{i}" for i in range(3)]
    assert env.runs() == {ids[0]: 2, ids[1]: 2, ids[2]: 1}
    for q, job_id in zip(Q_CHAIN, ids):
        assert env.r.smembers("{" + q + "}:once:" + chain_id) == {job_id}
    assert not any(env.r.exists("{" + q + "}:job:" + chain_id + ".3") for q in Q_CHAIN)
    pub = Published()
    for q, job_id in zip(Q_CHAIN, ids):
        pub.add(q, [job_id])
    res = check(env.r, "workflow: chain, before_next at step 0 and before_ack at step 1", pub, env.ledger)
    res.record()
    res.assert_ok(env.workers.logs())


def test_child_removed_by_an_admin(env: Env) -> None:
    """A waiting child removed (client.remove_job) while no worker serves its queue: the
    sweeper counts it as failed ("job gone") and the callback runs once."""
    app, t = env.app()
    key, n = "wf-removed", 5
    app.fanout(children(t, n), then=t["collect"].s("removed"), key=key)
    app.client.remove_job(Q_CHILD, f"{key}.2", "wait")
    env.start([Q_CHILD, Q_CALLBACK])
    expect_fanout(env, key, n, gone=[2], fault="workflow: a waiting child removed by an admin")


# -- Redis Cluster ------------------------------------------------------------------------------


def _on_masters(cluster: RedisClusterNodes, count: int) -> list[str]:
    """``count`` queue names (wf0, wf1, ...) whose slots are on different masters."""
    chosen: list[str] = []
    masters: set[int] = set()
    for i in range(200):
        name = f"wf{i}"
        master = cluster.node_of("{" + name + "}:meta")
        if master not in masters:
            chosen.append(name)
            masters.add(master)
            if len(chosen) == count:
                return chosen
    raise AssertionError("no queue names on enough masters")


@pytest.mark.cluster
def test_fanout_before_fire_on_a_cluster(redis_cluster: RedisClusterNodes, workers: Workers,
                                         ledger: Path) -> None:
    """The core case on a 3-master Redis Cluster: 12 children on 2 queues whose slots are
    on different masters (the callback's queue and the counter's slot are wherever they
    fall), fault before_fire, then a replacement worker: callback once, all counted once."""
    rc = RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    rc.flushall(target_nodes=RedisCluster.PRIMARIES)
    qa, qb = _on_masters(redis_cluster, 2)
    e = Env(redis_cluster.cluster_url, "", rc, ledger, workers, [])
    try:
        app, t = e.app()
        key, n = "wf-cluster", 12
        app.fanout([t["child"].s(i).set(queue=(qa, qb)[i % 2]) for i in range(n)],
                   then=t["collect"].s("cluster"), key=key)
        e.start([qa, qb], "before_fire", concurrency=1).wait_dead(timeout=40)
        assert fo(e, key, "state") == "closed"
        last = unacked_child(e, key, n, (qa, qb))
        e.start([qa, qb, Q_CALLBACK])
        expect_fanout(e, key, n, child_queues=(qa, qb), reruns=[last], fault="workflow: before_fire on a "
                      "3-master cluster", notes=[f"children on {qa} and {qb}"], settle_s=40)
    finally:
        for app in e.made:
            app.close()
        rc.close()

