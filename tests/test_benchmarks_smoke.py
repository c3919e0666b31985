"""The benchmark suite runs end to end: ``python -m benchmarks --smoke`` (a few seconds).

No timing assertions: the smoke run only proves every row is measured (a worker
that crashes or hangs shows up as an ERROR row and a non-zero exit) and that the
results file is written.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ROW_PREFIXES = [
    "publish/s, single",
    "publish/s, bulk",
    "process/s, threads",
    "process/s, threads, results stored",
    "results stored ÷ threads",
    "process/s, threads, with a middleware present",
    "with a middleware ÷ threads",
    "process/s, --pool processes",
    "process/s, async",
    "process/s, 1,000 groups",
    "groups ÷ ungrouped",
    "process/s, 3 queues, standalone",
    "process/s, 3 queues over 3 cluster masters",
    "cluster ÷ standalone",
    "latency p50",
    "latency p99",
    "foreign producer",
    "idle worker CPU",
    "idle worker RSS",
    "worker RSS at job 1,000 ",
    "worker RSS at job 2,000 ",
    "RSS growth",
]


def test_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=170,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["figure", "ours"]
    for prefix in ROW_PREFIXES:
        matching = [line for line in lines if line.startswith(prefix)]
        assert matching, f"no row {prefix!r} in:\n{result.stdout}"
        assert "ERROR" not in matching[0], matching[0]
    assert out.exists()
    text = out.read_text()
    assert str(out) in result.stdout
    for prefix in ROW_PREFIXES:
        assert f"| {prefix}" in text, prefix
