"""A real worker process on a real 3-master Redis Cluster, through the CLI.

The app (``cluster_app``, written into a temp dir that is the worker's cwd) has one
task per queue; the queues' slots land on all three masters (checked, not assumed).
Each task counts its run in ``ran:<queue>`` (a hash: job id -> runs), so a test can
prove every job ran exactly once even after the completed lane was trimmed. Worker
processes are always killed at teardown; every wait is bounded.
"""

from __future__ import annotations

import importlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from helpers_state import assert_invariants
from omniq_tasks.errors import OmniqConnectionError
from omniq_tasks.results import JobStatus
from cli_worker import CliWorker, wait_for
from redis_server import RedisClusterNodes

pytestmark = pytest.mark.cluster

CLUSTER_APP = r'''
"""Tasks for tests/test_cluster_worker.py: one per queue, each counting its runs."""

from __future__ import annotations

import os

from omniq_tasks import App, JobContext
from omniq_tasks.protocol.connection import connect

QUEUES = [f"cw{i}" for i in range(6)]  # slots on all three masters of the test cluster
_conn: dict[str, object] = {}


def build(url: str | None = None) -> tuple[App, dict[str, object]]:
    app = App("cw", url, max_attempts=5, timeout_ms=10_000, backoff_ms=0)
    tasks = {}
    for queue in QUEUES:
        def count(ctx: JobContext, n: int) -> None:
            conn = _conn.get(app.redis_url)
            if conn is None:
                conn = _conn[app.redis_url] = connect(app.redis_url)
            conn.hincrby("ran:" + ctx.queue, ctx.job_id, 1)

        tasks[queue] = app.task(queue=queue, name=f"cw.count.{queue}")(count)
    return app, tasks


app, TASKS = build(os.environ.get("OMNIQ_TASKS_REDIS_URL"))
'''


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("cluster-app")
    (directory / "cluster_app.py").write_text(CLUSTER_APP)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(directory))
        yield directory
        sys.modules.pop("cluster_app", None)


@pytest.fixture()
def module(app_dir: Path) -> ModuleType:
    return importlib.import_module("cluster_app")


def flush(cluster: RedisClusterNodes) -> RedisCluster:
    """A decoded cluster client on an emptied cluster."""
    rc = RedisCluster.from_url(cluster.url, decode_responses=True)
    rc.flushall(target_nodes=RedisCluster.PRIMARIES)
    return rc


@pytest.fixture()
def rc(redis_cluster: RedisClusterNodes) -> Iterator[RedisCluster]:
    conn = flush(redis_cluster)
    yield conn
    conn.close()


@pytest.fixture()
def published(module: ModuleType, redis_cluster: RedisClusterNodes,
              rc: RedisCluster) -> Iterator[tuple[Any, dict[str, Any]]]:
    """(app, tasks by queue) publishing to the session cluster by its redis+cluster:// URL."""
    app, tasks = module.build(redis_cluster.cluster_url)
    yield app, tasks
    app.close()


class ClusterWorker(CliWorker):
    """``python -m omniq_tasks worker cluster_app:app -Q <queues> ...`` in its own process group."""

    def __init__(self, cwd: Path, url: str, queues: list[str], args: list[str], log_path: Path) -> None:
        super().__init__(cwd, url, "cluster_app:app", ["-Q", ",".join(queues), *args], log_path,
                         ready_text="worker for app cw")


@pytest.fixture()
def start_worker(app_dir: Path, tmp_path: Path) -> Iterator[Callable[..., ClusterWorker]]:
    started: list[ClusterWorker] = []

    def start(url: str, queues: list[str], *args: str, ready: bool = True) -> ClusterWorker:
        worker = ClusterWorker(app_dir, url, queues, list(args), tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    for worker in started:
        worker.kill()


def masters_of(cluster: RedisClusterNodes, queues: list[str]) -> dict[str, int]:
    """Queue -> index of the master serving its slot, read from the cluster (CLUSTER SLOTS)."""
    return {q: cluster.node_of("{" + q + "}:meta") for q in queues}


def runs(rc: RedisCluster, queue: str) -> dict[str, int]:
    return {job_id: int(n) for job_id, n in rc.hgetall("ran:" + queue).items()}


def all_ran_once(rc: RedisCluster, expected: dict[str, set[str]]) -> bool:
    return all(runs(rc, q) == dict.fromkeys(ids, 1) for q, ids in expected.items())


# -- the tests --------------------------------------------------------------------------------


def test_the_queues_span_every_master(module: ModuleType, redis_cluster: RedisClusterNodes) -> None:
    masters = masters_of(redis_cluster, module.QUEUES)
    assert set(masters.values()) == {0, 1, 2}, masters
    assert masters[module.QUEUES[-1]] != masters[module.QUEUES[0]]  # the last queue is not the first's


def test_one_cli_worker_runs_every_queue_across_the_masters(
        published: tuple[Any, dict[str, Any]], module: ModuleType, redis_cluster: RedisClusterNodes,
        rc: RedisCluster, start_worker: Callable[..., ClusterWorker]) -> None:
    app, tasks = published
    queues: list[str] = module.QUEUES
    expected: dict[str, set[str]] = {}
    handles = []
    for q in queues:
        handles += [tasks[q].delay(n) for n in range(20)]
        expected[q] = {h.id for h in handles if h.queue == q}
    assert {h.status() for h in handles} == {JobStatus.WAITING}
    assert app.client.list_queues() == sorted(queues)
    assert [app.client.stats(q).waiting for q in queues] == [20] * len(queues)

    worker = start_worker(redis_cluster.cluster_url, queues, "--poll-interval", "0.5")
    wait_for(lambda: all_ran_once(rc, expected), 30, worker, "every job to run once")
    wait_for(lambda: all(app.client.stats(q).completed_kept == 20 for q in queues), 10, worker,
             "every ack")

    for q in queues:
        assert_invariants(rc, q)
        stats = app.client.stats(q)
        assert (stats.waiting, stats.active, stats.failed, stats.completed_kept) == (0, 0, 0, 20)
        assert set(rc.lrange("{" + q + "}:completed", 0, -1)) == expected[q]
    assert {h.status() for h in handles} == {JobStatus.COMPLETED}
    info = handles[-1].info()
    assert info is not None and info.state == "completed" and info.attempt == 1
    assert "Traceback" not in worker.log()


def test_a_publish_to_any_queue_wakes_the_idle_worker(
        published: tuple[Any, dict[str, Any]], module: ModuleType, redis_cluster: RedisClusterNodes,
        rc: RedisCluster, start_worker: Callable[..., ClusterWorker]) -> None:
    """With a 5 s poll, only the wake-up a publish pushes starts a job at once, on every queue.

    The worker also looks for jobs after each maintenance pass (every 1 s), so a queue
    left unwatched still gets its job within 1 s: the bound is well under that, on
    every one of the six queues.
    """
    app, tasks = published
    queues: list[str] = module.QUEUES
    worker = start_worker(redis_cluster.cluster_url, queues, "--poll-interval", "5")
    first = tasks[queues[0]].delay(0)
    wait_for(lambda: first.status() is JobStatus.COMPLETED, 10, worker, "the first job")
    latencies: list[float] = []
    for q in reversed(queues):  # the last queue first: the one a first-queue-only waker missed
        time.sleep(0.5)  # idle again, blocked on the wake lists
        start = time.monotonic()
        handle = tasks[q].delay(1)
        wait_for(lambda: handle.status() is JobStatus.COMPLETED, 4, worker, f"the job on {q}")
        elapsed = time.monotonic() - start
        info = handle.info()
        assert info is not None and info.first_started_ms is not None and info.created_ms is not None
        started_after_ms = info.first_started_ms - info.created_ms  # on the server's clock
        latencies.append(elapsed)
        assert elapsed < 0.4 and started_after_ms < 400, (q, elapsed, started_after_ms)
    assert sorted(latencies)[len(latencies) // 2] < 0.15, latencies
    for q in queues:
        assert_invariants(rc, q)


def test_bulk_map_on_the_cluster_is_stored_and_run(
        published: tuple[Any, dict[str, Any]], module: ModuleType, redis_cluster: RedisClusterNodes,
        rc: RedisCluster, start_worker: Callable[..., ClusterWorker]) -> None:
    app, tasks = published
    queues = module.QUEUES[:3]  # three masters (checked below)
    assert len(set(masters_of(redis_cluster, queues).values())) == 3
    expected = {}
    for q in queues:
        handles = tasks[q].map(range(3000))
        assert len(handles) == 3000 and not any(h.existed for h in handles)
        expected[q] = {h.id for h in handles}
        assert app.client.stats(q).waiting == 3000
        assert rc.zcard("{" + q + "}:idx:wait") == 3000
        assert_invariants(rc, q)

    worker = start_worker(redis_cluster.cluster_url, queues, "--drain", ready=False)
    assert worker.wait_exit(90) == 0, worker.log()[-4000:]
    assert all_ran_once(rc, expected)
    for q in queues:
        assert_invariants(rc, q)
        stats = app.client.stats(q)
        assert (stats.waiting, stats.active, stats.failed, stats.completed_kept) == (0, 0, 0, 100)


def test_a_master_killed_gives_clear_errors_and_the_worker_recovers_when_it_is_back(
        module: ModuleType, app_dir: Path, start_worker: Callable[..., ClusterWorker]) -> None:
    cluster = RedisClusterNodes(persist=True)  # its own: killing a node must not touch the shared one
    app = None
    rc = None
    try:
        rc = flush(cluster)
        app, tasks = module.build(cluster.cluster_url)
        queues: list[str] = module.QUEUES
        worker = start_worker(cluster.cluster_url, queues, "--poll-interval", "0.5")
        before = {q: {tasks[q].delay(n).id for n in range(5)} for q in queues}
        wait_for(lambda: all_ran_once(rc, before), 20, worker, "the jobs before the kill")

        victim_queue = queues[-1]
        victim = cluster.node_of("{" + victim_queue + "}:meta")
        other_queue = next(q for q in queues if cluster.node_of("{" + q + "}:meta") != victim)
        cluster.kill_node(victim)

        # The publisher: our error, naming the URL, at once.
        start = time.monotonic()
        with pytest.raises(OmniqConnectionError) as info:
            tasks[victim_queue].delay(1)
        assert time.monotonic() - start < 5
        assert f"cannot reach Redis at {cluster.cluster_url}" in str(info.value)
        with pytest.raises(OmniqConnectionError):
            tasks[victim_queue].map(range(10))
        # Once the others see the master fail, the whole cluster refuses (no replica takes
        # over): the same error family, not a refused command.
        live = next(i for i in range(3) if i != victim)
        with redis.Redis(port=cluster.nodes[live].port) as node:
            wait_for(lambda: node.cluster("info")["cluster_state"] == "fail", 15, worker, "cluster_state:fail")
        start = time.monotonic()
        with pytest.raises(OmniqConnectionError, match="cluster"):
            tasks[other_queue].delay(1)
        assert time.monotonic() - start < 10

        # The worker: a clear error line, and it keeps running.
        wait_for(lambda: "redis unreachable" in worker.log(), 15, worker, "the worker's error line")
        assert worker.proc.poll() is None

        cluster.restart_node(victim)
        deadline = time.monotonic() + 20
        after: dict[str, set[str]] = {}
        for q in queues:
            while True:  # the publisher's own retry: the client may take a moment to see the node
                try:
                    after[q] = {tasks[q].delay(n).id for n in range(5)}
                    break
                except OmniqConnectionError:
                    assert time.monotonic() < deadline, "could not publish after the restart"
                    time.sleep(0.2)
        expected = {q: before[q] | after[q] for q in queues}
        wait_for(lambda: all_ran_once(rc, expected), 30, worker, "the jobs after the restart")
        wait_for(lambda: all(app.client.stats(q).active == 0 for q in queues), 10, worker, "the acks")
        for q in queues:
            assert_invariants(rc, q)
        assert worker.proc.poll() is None
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.wait_exit(20) == 0
        assert "Traceback" not in worker.log()
    finally:
        if app is not None:
            app.close()
        if rc is not None:
            rc.close()
        cluster.stop()


def test_the_demo_runs_on_the_cluster(redis_cluster: RedisClusterNodes, rc: RedisCluster) -> None:
    result = subprocess.run([sys.executable, "-m", "omniq_tasks", "demo", "--redis-url", redis_cluster.cluster_url],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo: OK" in result.stdout
