"""Prometheus metrics of a worker (``omniq-tasks worker APP --metrics-port 9108``).

Needs the optional ``prometheus_client`` (``pip install 'omniq-tasks[metrics]'``);
this module imports without it, and ``require_prometheus()`` says what to install.

What a worker counts, and where (docs/operations.md lists every metric):

- per job, in ``WorkerMetrics.after_ack`` (a middleware: a worker without it pays
  nothing): processed / completed / retried / failed / lost / ack errors per task
  and queue, and the run time histogram. Plain counts in lists only the loop
  thread writes (a dict lookup and three additions, no lock: under a microsecond),
  turned into prometheus families at scrape time;
- per renewal call, the renewals and the leases found lost (``Renewal.observer``);
- at scrape time only: jobs running per queue (the worker's leases), its slots,
  and queue depths per lane from ``OmniqClient.stats`` (``QueueDepthCollector``:
  one call per queue, cached ``cache_s``, so a scrape every second costs Redis
  one round trip per queue at most).

``queue_depth_collector(client, queues_provider)`` is the queue-depth part alone,
for any process that serves ``/metrics`` (the dashboard mounts it too).
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from ..middleware import AckResult, Middleware
from ..outcome import Outcome
from ..protocol.client import OmniqClient
from ..protocol.models import QueueStats, ReservedJob

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from .loop import Worker

log = logging.getLogger("omniq_tasks.worker")

INSTALL_HINT = "pip install 'omniq-tasks[metrics]'"
# Every metric's name starts so.
PREFIX = "omniq_"
# Run time buckets, seconds: from a millisecond to an hour (tasks are often slow).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 300.0, 900.0, 3600.0)
# The lanes of omniq_queue_jobs: the QueueStats fields, named as `omniq-tasks queues` shows them.
LANES = ("waiting", "group_waiting", "active", "delayed", "failed", "completed_kept")
# How long a queue-depth reading is served again before Redis is asked anew.
QUEUE_CACHE_S = 1.0
# A task label for a job whose payload named no task we know.
UNKNOWN_TASK = "unknown"


def prometheus_available() -> bool:
    """Whether ``prometheus_client`` can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def require_prometheus() -> None:
    """Raise ImportError, naming what to install, when ``prometheus_client`` is missing."""
    if not prometheus_available():
        raise ImportError(f"metrics need the prometheus_client package: {INSTALL_HINT}")


# -- queue depths, read at scrape time ------------------------------------------------------


class QueueDepthCollector:
    """A prometheus collector of queue depths: ``omniq_queue_jobs{queue,lane}``,
    ``omniq_queue_groups_ready{queue}`` and ``omniq_queue_paused{queue}``.

    At each scrape it calls ``queues_provider()`` and ``client.stats(queue)`` once per
    queue, unless the last reading is younger than ``cache_s`` seconds (then that one
    is served again: several scrapers cost Redis no more). A queue whose stats cannot
    be read is left out of that scrape (logged once until it can be read again).
    Thread-safe: scrapes may come from any thread.
    """

    def __init__(self, client: OmniqClient, queues_provider: Callable[[], Iterable[str]],
                 cache_s: float = QUEUE_CACHE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.queues_provider = queues_provider
        self.cache_s = cache_s
        self.clock = clock
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._stats: list[QueueStats] = []
        self._failing: set[str] = set()

    def describe(self) -> list[Metric]:
        """The families without samples: registering never calls Redis."""
        return self._families([])

    def collect(self) -> list[Metric]:
        return self._families(self.read())

    def read(self) -> list[QueueStats]:
        """The stats of every queue, at most ``cache_s`` old."""
        with self._lock:
            now = self.clock()
            if now - self._read_at >= self.cache_s:
                self._stats = self._read_now()
                self._read_at = self.clock()
            return self._stats

    def _read_now(self) -> list[QueueStats]:
        try:
            queues = list(dict.fromkeys(self.queues_provider()))
        except Exception as exc:
            self._trouble("*", f"could not list the queues for metrics: {exc}")
            return []
        self._over("*")
        out = []
        for queue in queues:
            try:
                out.append(self.client.stats(queue))
            except Exception as exc:  # Redis away, an ACL without HGETALL: the scrape goes on
                self._trouble(queue, f"could not read the stats of queue {queue} for metrics: {exc}")
                continue
            self._over(queue)
        return out

    def _trouble(self, key: str, message: str) -> None:
        if key not in self._failing:
            self._failing.add(key)
            log.warning("%s", message)

    def _over(self, key: str) -> None:
        self._failing.discard(key)

    @staticmethod
    def _families(stats: Sequence[QueueStats]) -> list[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        jobs = GaugeMetricFamily(f"{PREFIX}queue_jobs", "Jobs in each lane of a queue (the queue's stats hash)",
                                 labels=["queue", "lane"])
        ready = GaugeMetricFamily(f"{PREFIX}queue_groups_ready", "Groups of a queue with a job ready to lease",
                                  labels=["queue"])
        paused = GaugeMetricFamily(f"{PREFIX}queue_paused", "1 while the queue is paused", labels=["queue"])
        for s in stats:
            for lane in LANES:
                jobs.add_metric([s.queue, lane], getattr(s, lane))
            ready.add_metric([s.queue], s.groups_ready)
            paused.add_metric([s.queue], 1 if s.paused else 0)
        return [jobs, ready, paused]


def queue_depth_collector(client: OmniqClient, queues_provider: Callable[[], Iterable[str]],
                          cache_s: float = QUEUE_CACHE_S) -> QueueDepthCollector:
    """The queue-depth collector for ``client``'s queues named by ``queues_provider()``.

    Register it on any prometheus registry: ``registry.register(queue_depth_collector(
    client, lambda: ["emails", "reports"]))``, or ``client.list_queues`` to follow
    every queue (that one scans: the cache keeps it to one scan per ``cache_s``).
    Needs ``prometheus_client`` (``require_prometheus()``).
    """
    require_prometheus()
    return QueueDepthCollector(client, queues_provider, cache_s)


# -- the worker's own counters ----------------------------------------------------------


# After-ack statuses and the counter each is shown as (omniq_jobs_<name>_total).
STATUS_COUNTERS = {
    "completed": ("completed", "Runs acked as done"),
    "retry": ("retried", "Runs that failed and were acked to run again"),
    "failed": ("failed", "Runs that failed for good (attempts used up, or a final failure)"),
    "lost": ("lost", "Runs not acked: the lease had ended or another worker owns the job"),
    "error": ("ack_errors", "Runs whose ack call failed (they run again after their lease)"),
}


class WorkerMetrics(Middleware):
    """The worker's prometheus metrics, on a registry of their own (``registry``).

    Add it to the App before creating the worker (``app.add_middleware(metrics)``);
    it attaches itself to the worker when the worker starts (or call ``attach``),
    then ``serve(port)`` serves ``/metrics``.

    Counting happens in ``after_ack``, in the worker's loop thread, after Redis
    answered (so ``--pool processes`` is counted in the parent), into plain lists
    only that thread writes: no lock, about a microsecond a job. The families are
    built from them at scrape time (a scrape may see a run counted and not yet
    observed in the histogram: they differ by the runs of one pass at most).
    """

    def __init__(self, client: OmniqClient, *, registry: CollectorRegistry | None = None,
                 queue_cache_s: float = QUEUE_CACHE_S, process_metrics: bool = True) -> None:
        require_prometheus()
        from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

        self.registry = registry if registry is not None else CollectorRegistry()
        if process_metrics:  # what the default registry has: process_*, python_info, python_gc_*
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self.worker: Worker | None = None
        self._queues: list[str] = []
        # (task, queue, status) -> [runs, histogram of (task, queue)]; a histogram is
        # [sum of seconds, runs per bucket..., runs over the last bound].
        self._runs: dict[tuple[str, str, str], list[Any]] = {}
        self._histograms: dict[tuple[str, str], list[float]] = {}
        # queue -> [leases renewed, leases found lost]
        self._leases: dict[str, list[int]] = {}
        self.queue_depths = QueueDepthCollector(client, lambda: self._queues, queue_cache_s)
        self.registry.register(self.queue_depths)
        self.registry.register(_JobsCollector(self))

    # -- binding to the worker ------------------------------------------------------

    def attach(self, worker: Worker) -> None:
        """Count ``worker``'s renewals and read its leases and queues (once; before or at its start)."""
        if self.worker is worker:
            return
        self.worker = worker
        self._queues = list(worker.queues)
        worker.renewal.observer = self.renewed

    def on_worker_start(self, worker: Worker) -> None:
        self.attach(worker)

    # -- the hot paths (the worker's loop thread): a dict lookup and a few additions ---

    def after_ack(self, job: ReservedJob, outcome: Outcome, result: AckResult) -> None:
        key = (outcome.task or UNKNOWN_TASK, job.queue, result.status)
        cell = self._runs.get(key)
        if cell is None:
            histogram = self._histograms.setdefault(key[:2], [0.0] * (len(DURATION_BUCKETS) + 2))
            cell = self._runs[key] = [0, histogram]
        cell[0] += 1
        histogram = cell[1]
        seconds = outcome.duration_ms / 1000.0
        histogram[0] += seconds
        histogram[bisect_left(DURATION_BUCKETS, seconds) + 1] += 1

    def renewed(self, queue: str, renewed: int, lost: int) -> None:
        """A renewal call for ``queue`` answered: ``renewed`` leases extended, ``lost`` gone."""
        counts = self._leases.get(queue)
        if counts is None:
            counts = self._leases[queue] = [0, 0]
        counts[0] += renewed
        counts[1] += lost

    # -- serving ----------------------------------------------------------------------

    def serve(self, port: int, host: str = "127.0.0.1") -> MetricsServer:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread (``port`` 0: any free port)."""
        return serve_metrics(self.registry, port, host)


class _JobsCollector:
    """The families of a WorkerMetrics, built at scrape time from its counts and its worker."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return self._families(empty=True)

    def collect(self) -> list[Metric]:
        return self._families(empty=False)

    def _families(self, empty: bool) -> list[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        labels = ["task", "queue"]
        processed = CounterMetricFamily(f"{PREFIX}jobs_processed", "Runs this worker settled, whatever became "
                                        "of them (completed, retried, failed, lost or ack error)", labels=labels)
        by_status = {status: CounterMetricFamily(f"{PREFIX}jobs_{name}", doc, labels=labels)
                     for status, (name, doc) in STATUS_COUNTERS.items()}
        duration = HistogramMetricFamily(f"{PREFIX}job_duration_seconds", "How long task bodies ran (0 for a "
                                         "job that never started)", labels=labels)
        renewals = CounterMetricFamily(f"{PREFIX}lease_renewals", "Leases renewed (heartbeat_batch)",
                                       labels=["queue"])
        lost = CounterMetricFamily(f"{PREFIX}leases_lost", "Leases a renewal found gone (expired, or another "
                                   "worker owns the job); their runs are not acked", labels=["queue"])
        running = GaugeMetricFamily(f"{PREFIX}jobs_running", "Jobs this worker holds a lease on and has not "
                                                             "settled yet", labels=["queue"])
        slots = GaugeMetricFamily(f"{PREFIX}worker_slots", "Jobs this worker leases and runs at once "
                                                           "(its concurrency)")
        families = [processed, *by_status.values(), duration, renewals, lost, running, slots]
        if empty:
            return families
        m = self.metrics
        totals: dict[tuple[str, str], float] = {}
        for (task, queue, status), cell in list(m._runs.items()):  # list(): one step under the GIL
            key = (task, queue)
            by_status[status].add_metric(key, cell[0])
            totals[key] = totals.get(key, 0) + cell[0]
        for key, total in totals.items():
            processed.add_metric(key, total)
        bounds = [repr(b) for b in DURATION_BUCKETS] + ["+Inf"]  # as prometheus_client's Histogram writes them
        for key, histogram in list(m._histograms.items()):
            counts = histogram[1:]
            cumulative, buckets = 0.0, []
            for bound, n in zip(bounds, counts):
                cumulative += n
                buckets.append((bound, cumulative))
            duration.add_metric(list(key), buckets, histogram[0])
        for queue, (renewed_n, lost_n) in list(m._leases.items()):
            renewals.add_metric([queue], renewed_n)
            lost.add_metric([queue], lost_n)
        worker = m.worker
        if worker is not None:
            per_queue = dict.fromkeys(worker.queues, 0)
            for lease in worker.leases.held():
                per_queue[lease.job.queue] = per_queue.get(lease.job.queue, 0) + 1
            for queue, n in per_queue.items():
                running.add_metric([queue], n)
            slots.add_metric([], worker.concurrency)
        return families


class MetricsServer:
    """prometheus_client's HTTP server for one registry, in a daemon thread."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self.thread = thread
        self.host: str = server.server_address[0]
        self.port: int = server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Start prometheus_client's HTTP server for ``registry`` (raises OSError when the port is taken)."""
    require_prometheus()
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread)
