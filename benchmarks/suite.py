"""The measurements: one redis-server, our publisher and worker and the official SDK on it.

Every figure is measured in this run, on this server, with the same CPU placement
for us and for the peer (see ``Placement``), so ratios are comparable even when
the absolute numbers are noise from a shared machine.
"""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = ROOT / "tests"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The measure groups, in the order a run takes them (``--only`` picks some).
MEASURES = ("publish", "processing", "cluster", "latency", "rss")


# -- settings --------------------------------------------------------------------------

@dataclass
class Settings:
    publish_jobs: int = 3000       # .delay() loop and the peer's publish loop
    bulk_jobs: int = 50_000        # one task.map() call
    jobs: int = 20_000             # processing rows, ours
    peer_jobs: int = 3000          # processing rows, the official consume()
    repeat: int = 3                # throughput rows: median of this many runs
    latency_rate: float = 50.0     # jobs/s
    latency_s: float = 5.0
    idle_s: float = 5.0
    foreign_jobs: int = 6
    rss_jobs: int = 1_000_000
    rss_chunk: int = 1000          # RSS run: publish this many at a time ...
    rss_backlog: int = 10_000      # ... while fewer than this are waiting
    pin: str = "same"
    settle_s: float = 0.5          # pause before idle measurements and before stopping a worker
    cluster_jobs: int = 30_000     # 3 queues, standalone and a 3-master cluster
    fanout_children: int = 10_000  # one fan-out, end to end (publish, children, callback)
    only: tuple[str, ...] = ()     # measure groups to run (empty: all of MEASURES)
    smoke: bool = False

    @classmethod
    def smoke_settings(cls) -> Settings:
        return cls(publish_jobs=200, bulk_jobs=1000, jobs=400, peer_jobs=100, repeat=1,
                   latency_s=0.5, idle_s=0.5, foreign_jobs=1, rss_jobs=2000, rss_chunk=500,
                   rss_backlog=1000, settle_s=0.2, cluster_jobs=300, fanout_children=300, smoke=True)

    @property
    def rss_sample_at(self) -> int:
        return min(10_000, max(1, self.rss_jobs // 2))


# -- results -----------------------------------------------------------------------------

@dataclass
class Figure:
    """One measured quantity: our runs and the peer's (medians are reported)."""

    ours: list[float] = field(default_factory=list)
    peer: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def ours_value(self) -> float | None:
        return statistics.median(self.ours) if self.ours else None

    @property
    def peer_value(self) -> float | None:
        return statistics.median(self.peer) if self.peer else None


class BenchError(RuntimeError):
    """A run that did not do what it should (crash, hang, jobs missing)."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- CPU placement ---------------------------------------------------------------------

@dataclass
class Placement:
    """Which CPUs redis-server and the measured Python processes run on.

    ``same`` (default): redis-server and every Python process (this one, our
    workers and publishers, the official SDK's) on the first allowed CPU. ``split``:
    redis-server on the last CPU, the Python processes on the first. ``none``: no
    pinning. Children inherit the affinity of the process that starts them, so
    pinning this process before starting a child pins the child and all its
    threads (what ``taskset -c`` does).
    """

    mode: str
    redis_cpus: set[int] | None = None
    python_cpus: set[int] | None = None

    @classmethod
    def choose(cls, mode: str) -> Placement:
        cpus = sorted(os.sched_getaffinity(0))
        if mode == "none" or len(cpus) < 1:
            return cls("none")
        if mode == "same" or len(cpus) < 2:
            return cls("same", {cpus[0]}, {cpus[0]})
        if mode == "split":
            return cls("split", {cpus[-1]}, {cpus[0]})
        raise ValueError(f"unknown placement {mode!r}")

    def describe(self) -> str:
        if self.mode == "none":
            return "none (no CPU pinning)"
        return (f"{self.mode}: redis-server on CPU {','.join(map(str, sorted(self.redis_cpus or ())))}, "
                f"Python processes (ours and the peer's) on CPU "
                f"{','.join(map(str, sorted(self.python_cpus or ())))}")


# -- /proc readers -----------------------------------------------------------------------

def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


# -- the suite ---------------------------------------------------------------------------

class Suite:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.figures: dict[str, Figure] = {}
        self.details: list[str] = []
        self.problems: list[str] = []
        self.load_at_start = ""
        self.rep = 0
        self.tmp = Path(tempfile.mkdtemp(prefix="omniq-bench-"))
        self.placement = Placement.choose(settings.pin)
        self._start_redis()
        os.environ["OMNIQ_TASKS_REDIS_URL"] = self.url
        os.environ.pop("BENCH_TIMES_DIR", None)
        # imported only now: the App reads the Redis URL from the environment
        import redis

        from benchmarks import bench_app
        from omniq_tasks import OmniqClient
        self.bench_app = bench_app
        self.redis = redis.Redis(port=self.port)
        self.low = OmniqClient(self.url)
        self.cluster: Any = None  # started by measure_cluster
        self.cluster_client: Any = None
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))

    # -- redis ---------------------------------------------------------------

    def _start_redis(self) -> None:
        if str(TESTS_DIR) not in sys.path:
            sys.path.insert(0, str(TESTS_DIR))
        from redis_server import RedisServer

        original = os.sched_getaffinity(0)
        if self.placement.redis_cpus:
            os.sched_setaffinity(0, self.placement.redis_cpus)
        try:
            self.server = RedisServer()
        finally:
            os.sched_setaffinity(0, self.placement.python_cpus or original)
        self.port = self.server.port
        self.url = self.server.url
        info = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
        self.redis_version = info.split("v=")[1].split()[0] if "v=" in info else info.strip()

    def close(self) -> None:
        try:
            self.low.close()
            self.redis.close()
            if self.cluster_client is not None:
                self.cluster_client.close()
        finally:
            self.server.stop()
            if self.cluster is not None:
                self.cluster.stop()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def flush(self) -> None:
        self.redis.flushdb()

    # -- bookkeeping -------------------------------------------------------------

    def figure(self, name: str) -> Figure:
        return self.figures.setdefault(name, Figure())

    def attempt(self, names: list[str], fn: Callable[[], None]) -> None:
        """Run one measurement; a failure marks its figures and is reported, not raised."""
        try:
            fn()
        except Exception as exc:  # a crash or hang of a worker must not hide the other rows
            msg = f"{type(exc).__name__}: {exc}"
            log(f"FAILED {', '.join(names)}: {msg}")
            self.problems.append(f"{', '.join(names)}: {msg}")
            for name in names:
                self.figure(name).error = msg

    # -- processes -----------------------------------------------------------------

    def spawn(self, cmd: list[str], log_name: str | None, extra_env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        env = dict(self.env, **(extra_env or {}))
        stderr: Any = subprocess.DEVNULL
        if log_name:
            stderr = open(self.tmp / log_name, "ab")
        try:
            return subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        finally:
            if log_name:
                stderr.close()

    def log_tail(self, log_name: str, lines: int = 8) -> str:
        path = self.tmp / log_name
        if not path.exists():
            return ""
        text = path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def wait(self, proc: subprocess.Popen[bytes], timeout: float, what: str, log_name: str | None) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            tail = self.log_tail(log_name) if log_name else ""
            raise BenchError(f"{what} did not exit within {timeout:.0f} s (killed); log: {tail}") from None

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        """Kill a process we started, and the session it leads (a process pool's children)."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def stop(self, proc: subprocess.Popen[bytes], what: str) -> None:
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            self.problems.append(f"{what} did not exit within 15 s of SIGTERM (killed)")

    def worker_cmd(self, app_attr: str, *extra: str) -> list[str]:
        """Exactly what a user runs: default settings apart from ``extra``."""
        return [sys.executable, "-m", "omniq_tasks", "worker", f"benchmarks.bench_app:{app_attr}", *extra]

    # -- publishing -----------------------------------------------------------------

    def publish_single_ours(self, n: int) -> float:
        self.flush()
        noop = self.bench_app.noop
        for i in range(20):  # connect and load the scripts outside the timing
            noop.delay(i)
        start = time.perf_counter()
        for i in range(n):
            noop.delay(i)
        return n / (time.perf_counter() - start)

    def official_client(self) -> Any:
        import redis
        from omniq.client import OmniqClient as OfficialClient
        return OfficialClient(redis=redis.Redis(port=self.port, decode_responses=True))

    def publish_single_peer(self, n: int) -> float:
        from omniq_tasks.protocol.ids import new_job_id
        self.flush()
        client = self.official_client()
        name = self.bench_app.noop.name
        for i in range(20):
            client.publish(queue="bench-peer-pub", payload={"task": name, "kwargs": {"i": i}},
                           job_id=new_job_id())
        start = time.perf_counter()
        for i in range(n):
            # the SDK makes a ULID itself when given none; here it is explicit (see peer.py)
            client.publish(queue="bench-peer-pub", payload={"task": name, "kwargs": {"i": i}},
                           job_id=new_job_id())
        elapsed = time.perf_counter() - start
        client.close()
        client.ops.r.close()
        return n / elapsed

    def publish_bulk_ours(self, n: int) -> float:
        self.flush()
        noop = self.bench_app.noop
        noop.map(range(20))
        start = time.perf_counter()
        handles = noop.map(range(n))
        elapsed = time.perf_counter() - start
        if len(handles) != n:
            raise BenchError(f"task.map returned {len(handles)} handles for {n} jobs")
        return n / elapsed

    def measure_publish(self) -> None:
        s = self.s
        for rep in range(s.repeat):
            self.attempt(["publish_single"], lambda: self._record(
                "publish_single", ours=self.publish_single_ours(s.publish_jobs)))
            self.attempt(["publish_single"], lambda: self._record(
                "publish_single", peer=self.publish_single_peer(s.publish_jobs)))
            self.attempt(["publish_bulk"], lambda: self._record(
                "publish_bulk", ours=self.publish_bulk_ours(s.bulk_jobs)))
            log(f"publish rep {rep + 1}/{s.repeat}: single ours {self._last('publish_single', 'ours')}, "
                f"peer {self._last('publish_single', 'peer')}, bulk {self._last('publish_bulk', 'ours')}")
        peer = self.figure("publish_single").peer
        self.figure("publish_bulk").peer = list(peer)  # the same official publish loop

    def _record(self, name: str, ours: float | None = None, peer: float | None = None) -> None:
        fig = self.figure(name)
        if ours is not None:
            fig.ours.append(ours)
        if peer is not None:
            fig.peer.append(peer)

    def _last(self, name: str, side: str) -> str:
        values = getattr(self.figure(name), side)
        return f"{values[-1]:,.0f}/s" if values else "failed"

    # -- processing -------------------------------------------------------------------

    def _enqueue_raw(self, queue: str, payloads: list[bytes], gids: list[str] | None = None) -> None:
        from omniq_tasks.protocol.client import job_spec
        specs = [job_spec(p, gid=gids[i] if gids else None, group_limit=1 if gids else 0)
                 for i, p in enumerate(payloads)]
        self.low.enqueue_many(queue, specs, wake_cap=0)

    def process_ours(self, kind: str, n: int) -> float:
        """Pre-publish n no-op jobs, run the CLI worker with --drain, rate from the tasks' own clocks."""
        app = self.bench_app
        self.flush()
        if kind == "async":
            app.anoop.map(range(n))
            cmd, queue = self.worker_cmd("async_app", "--drain"), "bench-async"
        elif kind == "groups":
            app.gnoop.map(range(n))
            cmd, queue = self.worker_cmd("group_app", "--drain"), "bench-groups"
        elif kind == "results":
            app.rstruct.map(range(n))
            cmd, queue = self.worker_cmd("result_app", "--drain"), "bench-results"
        elif kind == "middleware":
            app.mnoop.map(range(n))
            cmd, queue = self.worker_cmd("mw_app", "--drain"), "bench-mw"
        elif kind == "processes":
            app.noop.map(range(n))
            cmd, queue = self.worker_cmd("app", "--drain", "--pool", "processes"), "bench-noop"
        else:
            app.noop.map(range(n))
            cmd, queue = self.worker_cmd("app", "--drain"), "bench-noop"
        from omniq_tasks.protocol import keys
        return self._drained_rate(kind, cmd, n, lambda: self.redis.zcard(keys.idx_key(queue, "wait"))
                                  + self.redis.zcard(keys.lane_key(queue, "active")))

    def fanout_ours(self, n: int) -> float:
        """Children/s of one n-child fan-out end to end: from app.fanout() (bulk publish)
        until its callback's result is read, on a worker started beforehand."""
        app = self.bench_app
        self.flush()
        log_name = "worker-fanout.log"
        proc = self.spawn(self.worker_cmd("fan_app"), log_name)
        try:
            warm = app.fan_app.fanout([app.fchild.s(1)], then=app.fsum.s())
            if warm.get(timeout=30) != 1:
                raise BenchError(f"the warm-up fan-out went wrong; log: {self.log_tail(log_name)}")
            start = time.perf_counter()
            handle = app.fan_app.fanout([app.fchild.s(i) for i in range(n)], then=app.fsum.s())
            total = handle.get(timeout=60 + n / 100)
            elapsed = time.perf_counter() - start
            if total != n * (n - 1) // 2:
                raise BenchError(f"the callback summed {total}, not {n * (n - 1) // 2}")
            self.details.append(f"rep {self.rep}, ours fan-out: {n:,} children, app.fanout() to the "
                                f"callback's result {elapsed:.3f} s = {n / elapsed:,.0f} children/s")
            return n / elapsed
        finally:
            self.stop(proc, "fan-out worker")

    def _drained_rate(self, kind: str, cmd: list[str], n: int, left: Callable[[], int],
                      extra_env: dict[str, str] | None = None) -> float:
        """Run a ``--drain`` worker on n pre-published jobs; rate from the tasks' own clocks.

        ``left`` counts the jobs still waiting or running afterwards (must be 0).
        """
        times_dir = Path(tempfile.mkdtemp(dir=self.tmp, prefix=f"times-{kind}-"))
        log_name = f"worker-{kind}.log"
        started = time.perf_counter()
        proc = self.spawn(cmd, log_name, {"BENCH_TIMES_DIR": str(times_dir), **(extra_env or {})})
        rc = self.wait(proc, 30 + n / 100, f"worker ({kind})", log_name)
        wall = time.perf_counter() - started
        if rc != 0:
            raise BenchError(f"worker ({kind}) exited with {rc}; log: {self.log_tail(log_name)}")
        records = [json.loads(Path(p).read_text()) for p in glob.glob(str(times_dir / "times-*.json"))]
        count = sum(r["count"] for r in records)
        remaining = left()
        if count != n or remaining:
            raise BenchError(f"worker ({kind}) ran {count} of {n} jobs and left {remaining} in the queue "
                             f"(exit {rc}); log: {self.log_tail(log_name)}")
        first = min(r["first"] for r in records)
        last = max(r["last"] for r in records)
        rate = n / max(last - first, 1e-6)
        self.details.append(f"rep {self.rep}, ours {kind}: {n:,} jobs, first start to last end {last - first:.3f} s "
                            f"= {rate:,.0f}/s; process start to exit {wall:.2f} s "
                            f"({len(records)} process(es) ran jobs)")
        return rate

    def process_peer(self, grouped: bool, n: int) -> float:
        """The official consume() with a no-op handler on n pre-published jobs."""
        self.flush()
        queue = "bench-peer-groups" if grouped else "bench-peer"
        name = self.bench_app.noop.name
        payloads = [b'{"task":"%s","kwargs":{"i":%d}}' % (name.encode(), i) for i in range(n)]
        gids = [f"g{i % self.bench_app.GROUPS}" for i in range(n)] if grouped else None
        self._enqueue_raw(queue, payloads, gids)
        out = self.tmp / f"peer-{queue}.json"
        out.unlink(missing_ok=True)
        log_name = f"peer-{queue}.log"
        started = time.perf_counter()
        proc = self.spawn([sys.executable, "-m", "benchmarks.peer", "consume", str(self.port), queue,
                           str(n), str(out)], log_name)
        rc = self.wait(proc, 30 + n / 20, f"official consume ({queue})", log_name)
        wall = time.perf_counter() - started
        if rc != 0 or not out.exists():
            raise BenchError(f"official consume ({queue}) exited with {rc}; log: {self.log_tail(log_name)}")
        rec = json.loads(out.read_text())
        if rec["count"] != n:
            raise BenchError(f"official consume ran {rec['count']} of {n} jobs")
        rate = n / max(rec["last"] - rec["first"], 1e-6)
        self.details.append(f"rep {self.rep}, peer consume{' (groups)' if grouped else ''}: {n:,} jobs, first start to "
                            f"last end {rec['last'] - rec['first']:.3f} s = {rate:,.0f}/s; "
                            f"process start to exit {wall:.2f} s")
        return rate

    def measure_processing(self) -> None:
        s = self.s
        for rep in range(s.repeat):
            self.rep = rep + 1
            for kind in ("threads", "results", "middleware", "processes", "async", "groups"):
                self.attempt([f"process_{kind}"], lambda kind=kind: self._record(
                    f"process_{kind}", ours=self.process_ours(kind, s.jobs)))
            self.attempt(["process_fanout"], lambda: self._record(
                "process_fanout", ours=self.fanout_ours(s.fanout_children)))
            self.attempt(["process_threads", "process_processes", "process_async"],
                         lambda: self._record("process_threads", peer=self.process_peer(False, s.peer_jobs)))
            self.attempt(["process_groups"], lambda: self._record(
                "process_groups", peer=self.process_peer(True, s.peer_jobs)))
            log(f"process rep {rep + 1}/{s.repeat}: " + ", ".join(
                f"{k} {self._last('process_' + k, 'ours')}"
                for k in ("threads", "results", "middleware", "processes", "async", "groups", "fanout"))
                + f"; peer {self._last('process_threads', 'peer')}, "
                  f"groups {self._last('process_groups', 'peer')}")
        peer = self.figure("process_threads").peer
        for kind in ("processes", "async"):  # the SDK has one consume loop: the same peer figure
            self.figure(f"process_{kind}").peer = list(peer)
        ungrouped, grouped = self.figure("process_threads"), self.figure("process_groups")
        for kind in ("results", "middleware", "fanout"):  # next to the plain worker of the same run
            other, ratio = self.figure(f"process_{kind}"), self.figure(f"{kind}_share")
            if ungrouped.ours_value and other.ours_value:
                ratio.ours = [other.ours_value / ungrouped.ours_value]
            else:
                ratio.error = other.error or ungrouped.error or "no figures"
        share = self.figure("groups_share")
        if ungrouped.ours_value and grouped.ours_value:
            share.ours = [grouped.ours_value / ungrouped.ours_value]
        else:
            share.error = grouped.error or ungrouped.error or "no figures"
        if ungrouped.peer_value and grouped.peer_value:
            share.peer = [grouped.peer_value / ungrouped.peer_value]

    # -- latency, idle CPU, foreign producers -------------------------------------

    def _wait_list(self, key: str, count: int, timeout: float) -> list[float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.redis.llen(key) >= count:
                break
            time.sleep(0.02)
        values = [float(v) for v in self.redis.lrange(key, 0, -1)]
        if len(values) < count:
            raise BenchError(f"only {len(values)} of {count} latency jobs ran within {timeout:.0f} s")
        return values

    def _idle_cpu(self, pid: int) -> float:
        before, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(self.s.idle_s)
        return 100 * (cpu_seconds(pid) - before) / (time.monotonic() - t0)

    def _paced(self, publish: Callable[[float], None]) -> int:
        n = max(1, int(self.s.latency_rate * self.s.latency_s))
        start = time.monotonic() + 0.05
        for i in range(n):
            delay = start + i / self.s.latency_rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            publish(time.time())
        return n

    def latency_ours(self) -> None:
        self.flush()
        lat = self.bench_app.lat
        log_name = "worker-latency.log"
        proc = self.spawn(self.worker_cmd("lat_app"), log_name)
        try:
            lat.delay(time.time(), "bench:warm")
            if self.redis.blpop(["bench:warm"], timeout=30) is None:
                raise BenchError(f"the worker ran no job within 30 s; log: {self.log_tail(log_name)}")
            time.sleep(self.s.settle_s)
            self.attempt(["idle_cpu"], lambda: self._record("idle_cpu", ours=self._idle_cpu(proc.pid)))
            n = self._paced(lambda t: lat.delay(t, "bench:lat:ours"))
            values = [v * 1000 for v in self._wait_list("bench:lat:ours", n, 10 + n / 10)]
            self._record("latency_p50", ours=percentile(values, 50))
            self._record("latency_p99", ours=percentile(values, 99))
            self.details.append(f"ours latency: {n} jobs at {self.s.latency_rate:g}/s, p50 "
                                f"{percentile(values, 50):.2f} ms, p99 {percentile(values, 99):.2f} ms, "
                                f"max {max(values):.2f} ms")
            self.attempt(["foreign_latency"], lambda: self._foreign())
            # let the last job's ack go out: SIGTERM right as a job ends can leave it
            # unacked until the grace period is over (reported with the results)
            time.sleep(self.s.settle_s)
            self._record("rss_idle", ours=rss_kb(proc.pid) / 1024)
        finally:
            self.stop(proc, "latency worker")

    def _foreign(self) -> None:
        """Jobs from the plain low-level publish (no wake token): picked up by the poll."""
        lat = self.bench_app.lat
        from omniq_tasks.protocol import keys
        wake_key = keys.wake_key(lat.queue)
        self.redis.delete(wake_key)
        time.sleep(0.2)
        rng = random.Random(7)
        values = []
        for j in range(self.s.foreign_jobs):
            time.sleep(rng.uniform(0.05, 1.0))  # land anywhere in the worker's poll cycle
            key = f"bench:foreign:{j}"
            t = time.time()
            self.low.publish("bench-lat", {"task": lat.name, "kwargs": {"t": t, "key": key}})
            got = self.redis.blpop([key], timeout=10)
            if got is None:
                raise BenchError("a job from the plain publish did not start within 10 s")
            values.append(float(got[1]) * 1000)
        self._record("foreign_latency", ours=max(values))
        self.details.append(f"foreign producer: {len(values)} jobs via OmniqClient.publish, start "
                            f"latency ms: {', '.join(f'{v:.0f}' for v in values)}")

    def latency_peer(self) -> None:
        from omniq_tasks.protocol.ids import new_job_id
        self.flush()
        queue = "bench-lat-peer"
        log_name = "peer-latency.log"
        proc = self.spawn([sys.executable, "-m", "benchmarks.peer", "latency", str(self.port), queue,
                           "bench:lat:peer"], log_name)
        client = self.official_client()
        try:
            client.publish(queue=queue, payload={"t": time.time()}, job_id=new_job_id())
            self._wait_list("bench:lat:peer", 1, 30)
            self.redis.delete("bench:lat:peer")
            time.sleep(self.s.settle_s)
            self.attempt(["idle_cpu"], lambda: self._record("idle_cpu", peer=self._idle_cpu(proc.pid)))
            n = self._paced(lambda t: client.publish(queue=queue, payload={"t": t}, job_id=new_job_id()))
            values = [v * 1000 for v in self._wait_list("bench:lat:peer", n, 10 + n / 10)]
            self._record("latency_p50", peer=percentile(values, 50))
            self._record("latency_p99", peer=percentile(values, 99))
            self.details.append(f"peer latency: {n} jobs at {self.s.latency_rate:g}/s, p50 "
                                f"{percentile(values, 50):.2f} ms, p99 {percentile(values, 99):.2f} ms")
            time.sleep(self.s.settle_s)
            self._record("rss_idle", peer=rss_kb(proc.pid) / 1024)
        finally:
            client.ops.r.close()
            self.stop(proc, "official consume (latency)")

    def measure_latency(self) -> None:
        names = ["latency_p50", "latency_p99", "idle_cpu", "foreign_latency", "rss_idle"]
        self.attempt(names, self.latency_ours)
        self.attempt(names, self.latency_peer)
        log("latency: ours p50 %s p99 %s, peer p50 %s p99 %s" % tuple(
            f"{v:.2f} ms" if v is not None else "-" for v in (
                self.figure("latency_p50").ours_value, self.figure("latency_p99").ours_value,
                self.figure("latency_p50").peer_value, self.figure("latency_p99").peer_value)))

    # -- memory over a long run ---------------------------------------------------------

    def measure_rss(self) -> None:
        self.attempt(["rss_first", "rss_end", "rss_growth"], self._rss)

    def _rss(self) -> None:
        s = self.s
        self.flush()
        task = self.bench_app.rnoop
        total, sample_at = s.rss_jobs, s.rss_sample_at
        wait_key, active_key = "{bench-rss}:wait", "{bench-rss}:active"
        # stderr: 2 log lines a job would be gigabytes of file; the worker still formats them
        proc = self.spawn(self.worker_cmd("rss_app"), None)
        published = done = 0
        rss_first: float | None = None
        first_at = 0
        samples: list[tuple[int, float]] = []
        next_sample = sample_at
        started = time.monotonic()
        last_done, last_change = -1, started
        try:
            while True:
                pipe = self.redis.pipeline(transaction=False)
                pipe.llen(wait_key)
                pipe.zcard(active_key)
                waiting, active = pipe.execute()
                done = published - waiting - active
                now = time.monotonic()
                if done != last_done:
                    last_done, last_change = done, now
                elif now - last_change > 60:
                    raise BenchError(f"the worker made no progress for 60 s at job {done:,}")
                if done >= next_sample or done >= total:
                    kb = rss_kb(proc.pid)
                    samples.append((done, kb / 1024))
                    if rss_first is None:
                        rss_first = kb / 1024
                        first_at = done
                    next_sample = max(next_sample + max(total // 10, 1), done + 1)
                if done >= total:
                    break
                if proc.poll() is not None:
                    raise BenchError(f"the worker exited with {proc.returncode} after {done:,} jobs")
                if published < total and waiting < s.rss_backlog:
                    count = min(s.rss_chunk, total - published)
                    task.map(range(published, published + count))
                    published += count
                else:
                    time.sleep(0.02)
            rss_end = rss_kb(proc.pid) / 1024
        finally:
            self.stop(proc, "RSS worker")
        elapsed = time.monotonic() - started
        assert rss_first is not None
        self._record("rss_first", ours=rss_first)
        self._record("rss_end", ours=rss_end)
        self._record("rss_growth", ours=rss_end / rss_first)
        self.details.append(
            f"RSS run: {total:,} jobs in {elapsed:.0f} s ({total / elapsed:,.0f}/s with the publisher "
            f"sharing the CPU), backlog kept under {s.rss_backlog:,}; RSS MB by jobs done: "
            + ", ".join(f"{d:,}: {mb:.1f}" for d, mb in samples))
        self.details.append(f"RSS first sample taken at job {first_at:,} (target {sample_at:,}: the "
                            f"count is read between publishes)")
        log(f"RSS: {rss_first:.1f} MB at job {first_at:,}, {rss_end:.1f} MB at job {total:,}")

    # -- Redis Cluster: one worker on 3 queues over 3 masters, against the same on standalone ----

    def _start_cluster(self) -> None:
        """A 3-master cluster, its nodes placed as redis-server is (all on one CPU with ``same``)."""
        from redis.cluster import RedisCluster

        from omniq_tasks import OmniqClient
        from redis_server import RedisClusterNodes

        original = os.sched_getaffinity(0)
        if self.placement.redis_cpus:
            os.sched_setaffinity(0, self.placement.redis_cpus)
        try:
            self.cluster = RedisClusterNodes()
        finally:
            os.sched_setaffinity(0, self.placement.python_cpus or original)
        self.cluster_client = OmniqClient(self.cluster.cluster_url)
        assert isinstance(self.cluster_client.redis, RedisCluster)
        masters = {self.cluster.node_of("{" + q + "}:meta") for q in self.bench_app.MULTI_QUEUES}
        if len(masters) != 3:
            raise BenchError(f"the 3 queues are on {len(masters)} master(s) of the cluster, not 3")

    def process_three_queues(self, on_cluster: bool, n: int) -> float:
        """n no-op jobs over 3 queues, one default CLI worker with --drain on all three."""
        from omniq_tasks.protocol import keys
        from redis.cluster import RedisCluster

        client = self.cluster_client if on_cluster else self.low
        if isinstance(client.redis, RedisCluster):
            client.redis.flushall(target_nodes=RedisCluster.PRIMARIES)
        else:
            self.flush()
        per_queue = n // 3
        for task in self.bench_app.MULTI_TASKS:
            client.enqueue_many(task.queue, [task.encode_call((i,), {}) for i in range(per_queue)], wake_cap=0)

        def left() -> int:
            return sum(int(client.redis.zcard(keys.idx_key(q, "wait"))) + int(client.redis.zcard(keys.lane_key(q, "active")))
                       for q in self.bench_app.MULTI_QUEUES)

        kind = "3 queues, cluster" if on_cluster else "3 queues, standalone"
        env = {"OMNIQ_TASKS_REDIS_URL": self.cluster.cluster_url} if on_cluster else None
        return self._drained_rate(kind, self.worker_cmd("multi_app", "--drain"), per_queue * 3, left, env)

    def measure_cluster(self) -> None:
        s = self.s
        self.attempt(["process_multi", "process_cluster", "cluster_share"], self._start_cluster)
        if self.cluster_client is None:
            return
        for rep in range(s.repeat):
            self.rep = rep + 1
            self.attempt(["process_multi"], lambda: self._record(
                "process_multi", ours=self.process_three_queues(False, s.cluster_jobs)))
            self.attempt(["process_cluster"], lambda: self._record(
                "process_cluster", ours=self.process_three_queues(True, s.cluster_jobs)))
            log(f"cluster rep {rep + 1}/{s.repeat}: 3 queues standalone {self._last('process_multi', 'ours')}, "
                f"cluster {self._last('process_cluster', 'ours')}")
        standalone, cluster = self.figure("process_multi"), self.figure("process_cluster")
        share = self.figure("cluster_share")
        if standalone.ours_value and cluster.ours_value:
            share.ours = [cluster.ours_value / standalone.ours_value]
        else:
            share.error = cluster.error or standalone.error or "no figures"

    # -- all ---------------------------------------------------------------------------------

    def run(self) -> None:
        log(f"redis-server {self.redis_version} on port {self.port}; placement {self.placement.describe()}")
        for name in MEASURES:
            if not self.s.only or name in self.s.only:
                getattr(self, f"measure_{name}")()
