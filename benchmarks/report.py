"""The results table: figure, ours, the official SDK's, their ratio, the target, met?"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .suite import Figure, Settings, Suite

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    key: str
    label: str
    fmt: Callable[[float], str]
    target: str = "—"
    # met(ours, ratio) -> bool; None when the row has no target
    met: Callable[[float, float | None], bool] | None = None
    has_ratio: bool = True


def _rate(v: float) -> str:
    return f"{v:,.0f}"


def _ms(v: float) -> str:
    return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"


def _pct(v: float) -> str:
    return f"{v:.2f}"


def _mb(v: float) -> str:
    return f"{v:.1f}"


def _times(v: float) -> str:
    return f"{v:.2f}×"


def rows(s: Settings) -> list[Row]:
    return [
        Row("publish_single", "publish/s, single (.delay() loop)", _rate,
            "≥ 1× peer", lambda o, r: r is not None and r >= 1),
        Row("publish_bulk", "publish/s, bulk (task.map)", _rate,
            "≥ 8× peer", lambda o, r: r is not None and r >= 8),
        Row("process_threads", "process/s, threads (default worker)", _rate,
            "≥ 10× peer (aim 12,000/s)", lambda o, r: r is not None and r >= 10),
        Row("process_results", "process/s, threads, results stored (a small Struct)", _rate, has_ratio=False),
        Row("results_share", "results stored ÷ threads process/s", _times,
            "≥ 0.90×", lambda o, r: o >= 0.9, has_ratio=False),
        Row("process_middleware", "process/s, threads, with a middleware present (no-op)", _rate,
            has_ratio=False),
        Row("middleware_share", "with a middleware ÷ threads process/s", _times,
            "≥ 0.90×", lambda o, r: o >= 0.9, has_ratio=False),
        Row("process_fanout", "children/s, one 10,000-child fan-out end to end (publish to callback result)",
            _rate, has_ratio=False),
        Row("fanout_share", "fan-out children/s ÷ threads process/s", _times, has_ratio=False),
        Row("process_processes", "process/s, --pool processes", _rate),
        Row("process_async", "process/s, async def tasks", _rate),
        Row("process_groups", "process/s, 1,000 groups of limit 1", _rate),
        Row("groups_share", "groups ÷ ungrouped process/s", _times,
            "≥ 0.50×", lambda o, r: o >= 0.5, has_ratio=False),
        Row("process_multi", "process/s, 3 queues, standalone", _rate, has_ratio=False),
        Row("process_cluster", "process/s, 3 queues over 3 cluster masters", _rate, has_ratio=False),
        Row("cluster_share", "cluster ÷ standalone process/s, 3 queues", _times, has_ratio=False),
        Row("latency_p50", "latency p50, publish to start (ms)", _ms,
            "≤ 2 ms", lambda o, r: o <= 2),
        Row("latency_p99", "latency p99, publish to start (ms)", _ms,
            "≤ 10 ms", lambda o, r: o <= 10),
        Row("foreign_latency", "foreign producer (no wake) max latency (ms)", _ms,
            "≤ 1,100 ms (1 s poll)", lambda o, r: o <= 1100),
        Row("idle_cpu", "idle worker CPU (% of a core)", _pct,
            "< 2 %", lambda o, r: o < 2),
        Row("rss_idle", "idle worker RSS after the latency run (MB)", _mb),
        Row("rss_first", f"worker RSS at job {s.rss_sample_at:,} (MB)", _mb),
        Row("rss_end", f"worker RSS at job {s.rss_jobs:,} (MB)", _mb),
        Row("rss_growth", f"RSS growth, job {s.rss_sample_at:,} → {s.rss_jobs:,}", _times,
            "≤ 1.10×", lambda o, r: o <= 1.10, has_ratio=False),
    ]


def table(suite: Suite) -> list[list[str]]:
    out = [["figure", "ours", "peer (omniq 4.0.0)", "ratio", "target", "met?"]]
    for row in rows(suite.s):
        fig: Figure = suite.figures.get(row.key, Figure(error="not measured"))
        ours, peer = fig.ours_value, fig.peer_value
        ratio = ours / peer if ours is not None and peer and row.has_ratio else None
        if row.key not in suite.figures:  # left out by --only
            cells = ["not measured", "—", "—", row.target, "—"]
        elif fig.error and ours is None:
            cells = ["ERROR", row.fmt(peer) if peer is not None else "—", "—", row.target, "—"]
        else:
            met = "—"
            if row.met is not None and ours is not None:
                met = "yes" if row.met(ours, ratio) else "NO"
            cells = [row.fmt(ours) if ours is not None else "—",
                     row.fmt(peer) if peer is not None else "—",
                     f"{ratio:.2f}×" if ratio is not None else "—", row.target, met]
        out.append([row.label, *cells])
    return out


def render_text(cells: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(cells[0]) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(cells[0]) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def default_path(now: datetime.datetime) -> Path:
    return RESULTS_DIR / f"{now:%Y-%m-%d}-{socket.gethostname()}.md"


READING = (
    "ratio = ours ÷ peer, both measured in this run on the same redis-server with the same CPU "
    "placement. For rates higher is better; for latency, CPU and RSS lower is better. The peer "
    "is the official SDK (`omniq` 4.0.0): `publish()` in a loop and `consume()` with its "
    "defaults; it has one consume loop, so its figure is the peer of all three process/s rows. "
    "Process/s counts from the first job's start to the last job's end, as recorded by the "
    "tasks themselves (worker startup and shutdown excluded). Each throughput figure is the "
    "median of the repetitions listed below."
)


def markdown(suite: Suite, cells: list[list[str]], started: datetime.datetime, elapsed: float,
             argv: list[str]) -> str:
    s = suite.s
    import omniq_tasks
    lines = [
        f"# omniq-tasks benchmark, {started:%Y-%m-%d %H:%M} on {socket.gethostname()}",
        "",
        f"- command: `{' '.join(['python -m benchmarks', *argv])}`",
        f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}",
        f"- load average at start: {suite.load_at_start}",
        f"- Python {platform.python_version()}, redis-server {suite.redis_version}, "
        f"omniq-tasks {omniq_tasks.__version__}, peer omniq 4.0.0",
        f"- placement: {suite.placement.describe()}",
        f"- counts: publish {s.publish_jobs:,} single / {s.bulk_jobs:,} bulk; process {s.jobs:,} jobs "
        f"(peer {s.peer_jobs:,}), {s.repeat} repetition(s); latency {s.latency_rate:g} jobs/s for "
        f"{s.latency_s:g} s; idle CPU over {s.idle_s:g} s; {s.foreign_jobs} foreign job(s); "
        f"RSS over {s.rss_jobs:,} jobs; cluster rows {s.cluster_jobs:,} jobs over 3 queues",
        f"- run time: {elapsed:.0f} s" + (" (smoke run: tiny counts, figures are not meaningful)" if s.smoke else ""),
        "",
        render_markdown(cells),
        "",
        READING,
        "",
        "## Details",
        "",
        *[f"- {d}" for d in suite.details],
        "",
    ]
    raw = []
    for row in rows(s):
        fig = suite.figures.get(row.key)
        if fig and (fig.ours or fig.peer):
            raw.append(f"- {row.label}: ours " + (", ".join(row.fmt(v) for v in fig.ours) or "—")
                       + "; peer " + (", ".join(row.fmt(v) for v in fig.peer) or "—"))
    lines += ["## All repetitions", "", *raw, ""]
    if suite.problems:
        lines += ["## Problems", "", *[f"- {p}" for p in suite.problems], ""]
    return "\n".join(lines)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def print_table(cells: list[list[str]]) -> None:
    print(render_text(cells))
    sys.stdout.flush()
