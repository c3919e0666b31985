"""python -m benchmarks: omniq-tasks against the official OmniQ SDK, on one redis-server.

See benchmarks/README.md. Prints the table and writes it (markdown) to
benchmarks/results/<YYYY-MM-DD>-<hostname>.md, or to --out.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

from .report import default_path, markdown, print_table, table, write
from .suite import MEASURES, Settings, Suite, log


def positive(text: str) -> int:
    value = int(text.replace("_", "").replace(",", ""))
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark omniq-tasks against the official OmniQ SDK (omniq 4.0.0) on a "
                    "redis-server started for the run.")
    p.add_argument("--smoke", action="store_true",
                   help="a few seconds with tiny counts, every row still measured (what CI runs)")
    p.add_argument("--jobs", type=positive, help=f"no-op jobs per processing run (default {d.jobs:,})")
    p.add_argument("--peer-jobs", type=positive,
                   help=f"jobs per run of the official consume(), which is slower (default {d.peer_jobs:,})")
    p.add_argument("--publish-jobs", type=positive,
                   help=f"jobs per single-publish loop, ours and the peer's (default {d.publish_jobs:,})")
    p.add_argument("--bulk-jobs", type=positive, help=f"jobs per task.map() call (default {d.bulk_jobs:,})")
    p.add_argument("--rss-jobs", type=positive,
                   help=f"jobs in the RSS run; RSS is sampled at job 10,000 and at the end "
                        f"(default {d.rss_jobs:,})")
    p.add_argument("--cluster-jobs", type=positive,
                   help=f"jobs per 3-queue run, standalone and on a 3-master cluster (default {d.cluster_jobs:,})")
    p.add_argument("--only", action="append", choices=MEASURES,
                   help="run only this group of measurements (repeatable); the other rows read 'not measured'")
    p.add_argument("--repeat", type=positive,
                   help=f"runs per throughput figure, the median is reported (default {d.repeat})")
    p.add_argument("--latency-seconds", type=float, help=f"latency run length (default {d.latency_s:g})")
    p.add_argument("--idle-seconds", type=float, help=f"idle CPU window (default {d.idle_s:g})")
    p.add_argument("--pin", choices=("split", "same", "none"), default=d.pin,
                   help="CPU placement: same = redis-server and all Python processes on the first "
                        "CPU (default: cheapest, steadiest round trips); split = redis-server on the "
                        "last CPU, Python on the first; none = no pinning")
    p.add_argument("--out", type=Path, help="markdown file to write (default benchmarks/results/"
                                            "<YYYY-MM-DD>-<hostname>.md)")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings.smoke_settings() if args.smoke else Settings()
    for attr, value in (("jobs", args.jobs), ("peer_jobs", args.peer_jobs),
                        ("publish_jobs", args.publish_jobs), ("bulk_jobs", args.bulk_jobs),
                        ("rss_jobs", args.rss_jobs), ("repeat", args.repeat),
                        ("cluster_jobs", args.cluster_jobs),
                        ("latency_s", args.latency_seconds), ("idle_s", args.idle_seconds)):
        if value is not None:
            setattr(s, attr, value)
    s.pin = args.pin
    s.only = tuple(args.only or ())
    return s


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    started = datetime.datetime.now()
    t0 = time.monotonic()
    suite = Suite(settings)
    suite.load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        suite.run()
    finally:
        suite.close()
    cells = table(suite)
    print_table(cells)
    path = write(args.out or default_path(started),
                 markdown(suite, cells, started, time.monotonic() - t0, argv))
    print(f"\nwritten to {path}")
    if suite.problems:
        log(f"{len(suite.problems)} problem(s): " + "; ".join(suite.problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
