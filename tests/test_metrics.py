"""Prometheus metrics: a real CLI worker with --metrics-port on a real redis-server, scraped over
HTTP and parsed with prometheus_client's own parser; the queue-depth collector on its own; and
what happens without the flag or without prometheus_client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from omniq_tasks import App, JobContext, OmniqClient
from cli_worker import CliWorker, wait_for
from redis_server import RedisServer

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from omniq_tasks.worker.metrics import LANES, queue_depth_collector  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

METRICS_APP = r'''
import time

from omniq_tasks import App, JobContext, PermanentError

app = App("metricsapp", queue="mq", max_attempts=3, timeout_ms=5000, backoff_ms=0)


@app.task
def ok(n: int) -> int:
    return n


@app.task
def boom() -> None:
    raise PermanentError("never works")


@app.task
def flaky(ctx: JobContext) -> None:
    if ctx.attempt == 1:
        raise RuntimeError("works the second time")


@app.task(queue="slowq", timeout_ms=600)
def slow(seconds: float) -> None:
    time.sleep(seconds)


@app.task(queue="heldq")
def held() -> None:
    pass
'''

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples:
    """Every sample of http://127.0.0.1:port/metrics, by (sample name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when absent (a counter never incremented is not shown)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (from /proc: its socket inodes in /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture()
def publisher(redis_server: RedisServer, r: redis.Redis) -> Iterator[App]:
    """Stubs of the worker app's tasks, to publish from the test."""
    app = App("metricsapp", redis_server.url, queue="mq", max_attempts=3, timeout_ms=5000, backoff_ms=0)
    yield app
    app.close()


def start_worker(tmp_path: Path, url: str, *args: str) -> CliWorker:
    (tmp_path / "metricsapp.py").write_text(METRICS_APP)
    return CliWorker(tmp_path, url, "metricsapp:app", ["--poll-interval", "0.2", *args],
                     tmp_path / "worker.log", ready_text="worker for app metricsapp").wait_ready()


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="reads listening ports from /proc")


@needs_proc
def test_worker_serves_job_lease_and_queue_metrics(tmp_path: Path, redis_server: RedisServer,
                                                    publisher: App) -> None:
    @publisher.task(name="metricsapp.ok")
    def ok(n: int) -> int: ...

    @publisher.task(name="metricsapp.boom")
    def boom() -> None: ...

    @publisher.task(name="metricsapp.flaky")
    def flaky(ctx: JobContext) -> None: ...

    @publisher.task(name="metricsapp.slow", queue="slowq", timeout_ms=600)
    def slow(seconds: float) -> None: ...

    @publisher.task(name="metricsapp.held", queue="heldq")
    def held() -> None: ...

    publisher.client.pause("heldq")  # its jobs stay waiting: a depth that holds still
    for _ in range(3):
        held.delay()
    port = free_port()
    worker = start_worker(tmp_path, redis_server.url, "-Q", "mq,slowq,heldq", "-c", "4",
                          "--metrics-port", str(port))
    try:
        assert f"metrics on http://127.0.0.1:{port}/metrics" in worker.log()
        assert listening_ports(worker.pid) == {port}
        first = scrape(port)
        assert value(first, "omniq_worker_slots") == 4
        assert value(first, "omniq_jobs_running", queue="slowq") == 0
        assert ("process_resident_memory_bytes", ()) in first  # the process collector is there too

        slow.delay(2.0)  # a lease of 600 ms renewed about every 200 ms
        wait_for(lambda: value(scrape(port), "omniq_jobs_running", queue="slowq") == 1, 10, worker,
                 "the slow job to show as running")
        for n in range(5):
            ok.delay(n)
        for _ in range(2):
            boom.delay()
        for _ in range(3):
            flaky.delay()

        def settled() -> Samples | None:
            samples = scrape(port)
            done = (value(samples, "omniq_jobs_completed_total", task="metricsapp.ok", queue="mq") == 5
                    and value(samples, "omniq_jobs_completed_total", task="metricsapp.flaky", queue="mq") == 3
                    and value(samples, "omniq_jobs_failed_total", task="metricsapp.boom", queue="mq") == 2
                    and value(samples, "omniq_jobs_completed_total", task="metricsapp.slow", queue="slowq") == 1)
            return samples if done else None

        samples = wait_for(settled, 30, worker, "every job to be counted")
        labels = {task: {"task": f"metricsapp.{task}", "queue": "slowq" if task == "slow" else "mq"}
                  for task in ("ok", "boom", "flaky", "slow")}
        expected = {  # task: (processed, completed, retried, failed)
            "ok": (5, 5, 0, 0), "boom": (2, 0, 0, 2), "flaky": (6, 3, 3, 0), "slow": (1, 1, 0, 0)}
        for task, (processed, completed, retried, failed) in expected.items():
            got = tuple(value(samples, f"omniq_jobs_{kind}_total", **labels[task])
                        for kind in ("processed", "completed", "retried", "failed"))
            assert got == (processed, completed, retried, failed), (task, got)
            assert value(samples, "omniq_jobs_lost_total", **labels[task]) == 0
            assert value(samples, "omniq_jobs_ack_errors_total", **labels[task]) == 0
            # one observation per run, in the +Inf bucket and the count
            assert value(samples, "omniq_job_duration_seconds_count", **labels[task]) == processed
            assert value(samples, "omniq_job_duration_seconds_bucket", le="+Inf", **labels[task]) == processed
        assert value(samples, "omniq_job_duration_seconds_sum", **labels["slow"]) >= 2.0
        assert value(samples, "omniq_job_duration_seconds_bucket", le="1.0", **labels["slow"]) == 0
        assert value(samples, "omniq_job_duration_seconds_bucket", le="0.5", **labels["ok"]) == 5

        # leases: the 2 s job's 600 ms lease was renewed several times, none lost
        assert value(samples, "omniq_lease_renewals_total", queue="slowq") >= 4, worker.log()
        assert value(samples, "omniq_leases_lost_total", queue="slowq") == 0
        assert value(samples, "omniq_jobs_running", queue="slowq") == 0
        assert value(samples, "omniq_jobs_running", queue="mq") == 0

        # queue depths: what stats() says, lane by lane (read again after the 1 s cache)
        def depths_match() -> bool:
            samples = scrape(port)
            for queue in ("mq", "slowq", "heldq"):
                stats = publisher.client.stats(queue)
                if any(value(samples, "omniq_queue_jobs", queue=queue, lane=lane) != getattr(stats, lane)
                       for lane in LANES):
                    return False
                if value(samples, "omniq_queue_paused", queue=queue) != int(stats.paused):
                    return False
                if value(samples, "omniq_queue_groups_ready", queue=queue) != stats.groups_ready:
                    return False
            return True

        wait_for(depths_match, 10, worker, "queue depth gauges to match stats()")
        final = scrape(port)
        assert value(final, "omniq_queue_jobs", queue="heldq", lane="waiting") == 3
        assert value(final, "omniq_queue_paused", queue="heldq") == 1
        assert value(final, "omniq_queue_jobs", queue="mq", lane="failed") == 2
        assert value(final, "omniq_queue_paused", queue="mq") == 0
    finally:
        worker.signal(15)
        code = worker.wait_exit(20)
        worker.kill()
    assert code == 0, worker.log()
    with pytest.raises(urllib.error.URLError):  # the server stopped with the worker
        scrape(port)


@needs_proc
def test_a_worker_without_the_flag_opens_no_port(tmp_path: Path, redis_server: RedisServer, r: redis.Redis) -> None:
    worker = start_worker(tmp_path, redis_server.url, "-Q", "mq")
    try:
        time.sleep(0.3)
        assert listening_ports(worker.pid) == set()
        assert "metrics on" not in worker.log()
    finally:
        worker.kill()


def test_the_package_runs_without_prometheus_client(tmp_path: Path, redis_server: RedisServer,
                                                     r: redis.Redis) -> None:
    """With prometheus_client unimportable: everything imports, a worker runs, --metrics-port exits 2."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "prometheus_client.py").write_text("raise ImportError('hidden by the test')\n")
    (tmp_path / "metricsapp.py").write_text(METRICS_APP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide), str(tmp_path)]),
           "OMNIQ_TASKS_REDIS_URL": redis_server.url}
    check = ("import sys, omniq_tasks, omniq_tasks.cli.main, omniq_tasks.worker.loop, omniq_tasks.worker.metrics "
             "as m; assert not m.prometheus_available(); print('ok')")
    done = subprocess.run([sys.executable, "-c", check], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
    drained = subprocess.run([sys.executable, "-m", "omniq_tasks", "worker", "metricsapp:app", "-Q", "mq", "--drain"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert drained.returncode == 0, drained.stderr
    refused = subprocess.run([sys.executable, "-m", "omniq_tasks", "worker", "metricsapp:app",
                              "--metrics-port", "9108"], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'omniq-tasks[metrics]'" in lines[0], refused.stderr


def test_a_taken_port_exits_2(tmp_path: Path, redis_server: RedisServer, r: redis.Redis) -> None:
    (tmp_path / "metricsapp.py").write_text(METRICS_APP)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMNIQ_TASKS_REDIS_URL": redis_server.url}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "omniq_tasks", "worker", "metricsapp:app",
                               "--metrics-port", str(port)], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr


def test_queue_depth_collector_reads_stats_once_per_queue_and_caches(
        client: OmniqClient, publisher: App, monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    @publisher.task(name="metricsapp.ok")
    def ok(n: int) -> int: ...

    for n in range(4):
        ok.delay(n)
    calls: list[str] = []
    real_stats = client.stats

    def counting_stats(queue: str) -> Any:
        calls.append(queue)
        return real_stats(queue)

    monkeypatch.setattr(client, "stats", counting_stats)
    asked = []

    def provider() -> list[str]:
        asked.append(1)
        return ["mq", "other"]

    registry = CollectorRegistry(auto_describe=True)
    collector = queue_depth_collector(client, provider, cache_s=60)
    registry.register(collector)  # describe() only: registering calls no Redis
    assert calls == [] and asked == []

    def parsed() -> Samples:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}

    first = parsed()
    assert calls == ["mq", "other"] and len(asked) == 1
    assert value(first, "omniq_queue_jobs", queue="mq", lane="waiting") == 4
    assert value(first, "omniq_queue_jobs", queue="other", lane="waiting") == 0
    assert ("omniq_queue_jobs", (("lane", "active"), ("queue", "other"))) in first  # zeros are shown
    ok.delay(9)
    assert parsed() == first and calls == ["mq", "other"]  # within cache_s: served again
    collector.cache_s = 0
    assert value(parsed(), "omniq_queue_jobs", queue="mq", lane="waiting") == 5
    assert calls == ["mq", "other"] * 2


def test_every_ack_status_and_lease_loss_is_counted_in_process(client: OmniqClient) -> None:
    """after_ack and the renewal observer, without a worker: each status has its counter,
    a job of no known task is labelled "unknown", and the histogram's buckets are cumulative."""
    from prometheus_client import generate_latest

    from omniq_tasks.middleware import AckResult
    from omniq_tasks.outcome import Outcome
    from omniq_tasks.protocol.models import ReservedJob
    from omniq_tasks.worker.metrics import WorkerMetrics

    metrics = WorkerMetrics(client, process_metrics=False)
    job = ReservedJob(queue="q", job_id="j1", payload="{}", lock_until_ms=0, attempt=1, max_attempts=3,
                      gid="", lease_token="tok")
    runs = [("t", "completed", 3.0), ("t", "retry", 30.0), ("t", "failed", 700.0), ("t", "lost", 2000.0),
            ("t", "error", 0.0), ("", "failed", 0.0)]
    for task, status, ms in runs:
        metrics.after_ack(job, Outcome(status == "completed", task, duration_ms=ms), AckResult(status))
    metrics.renewed("q", 5, 0)
    metrics.renewed("q", 2, 1)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
               for s in f.samples}
    t = {"task": "t", "queue": "q"}
    assert [value(samples, f"omniq_jobs_{k}_total", **t) for k in
            ("processed", "completed", "retried", "failed", "lost", "ack_errors")] == [5, 1, 1, 1, 1, 1]
    assert value(samples, "omniq_jobs_failed_total", task="unknown", queue="q") == 1
    assert value(samples, "omniq_job_duration_seconds_bucket", le="0.005", **t) == 2  # 0 and 3 ms
    assert value(samples, "omniq_job_duration_seconds_bucket", le="0.05", **t) == 3
    assert value(samples, "omniq_job_duration_seconds_bucket", le="1.0", **t) == 4
    assert value(samples, "omniq_job_duration_seconds_bucket", le="2.5", **t) == 5
    assert value(samples, "omniq_job_duration_seconds_count", **t) == 5
    assert abs(value(samples, "omniq_job_duration_seconds_sum", **t) - 2.733) < 1e-9
    assert value(samples, "omniq_lease_renewals_total", queue="q") == 7
    assert value(samples, "omniq_leases_lost_total", queue="q") == 1
    assert not any(name.startswith("process_") for name, _ in samples)  # process_metrics=False

