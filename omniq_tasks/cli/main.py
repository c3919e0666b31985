"""The ``omniq-tasks`` command line: argument parsing and app import only."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import traceback
from typing import TYPE_CHECKING

from .. import __version__

if TYPE_CHECKING:
    from ..app import App

# What --embedded means: the embedded server's folder in the current directory.
EMBEDDED_URL = "embedded://./.omniq"


def build_parser() -> argparse.ArgumentParser:
    from ..worker.loop import DEFAULT_THREAD_SLOTS

    parser = argparse.ArgumentParser(
        prog="omniq-tasks",
        description="Typed Python tasks on the OmniQ v1 protocol (Redis + Lua).",
    )
    parser.add_argument("--version", action="version", version=f"omniq-tasks {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    worker = commands.add_parser(
        "worker", help="run the tasks of an app",
        description="Run the tasks of APP ('module:attr', imported with the current "
                    "directory on the import path). With several queues, earlier ones "
                    "are served first.")
    _add_app_options(worker)
    worker.add_argument("-Q", "--queues", help="comma-separated queues (default: every queue of the app's tasks)")
    worker.add_argument("-c", "--concurrency", type=int, default=None,
                        help=f"jobs leased and run at once (default: {DEFAULT_THREAD_SLOTS} with threads, the CPU count with processes)")
    worker.add_argument("--pool", choices=("threads", "processes"), default="threads",
                        help="where sync tasks run (async tasks always run on an event loop)")
    worker.add_argument("--drain", action="store_true",
                        help="run what is ready (and retries due within --drain-wait), then exit")
    worker.add_argument("--drain-wait", type=float, default=30.0, metavar="SECONDS",
                        help="with --drain, wait for delayed jobs (retries) due within this long "
                             "(default 30; 0: do not wait)")
    worker.add_argument("--grace", type=float, default=30.0, metavar="SECONDS",
                        help="on SIGTERM/SIGINT, how long running jobs may take to finish (default 30)")
    worker.add_argument("--poll-interval", type=float, default=1.0, metavar="SECONDS",
                        help="longest idle wait before looking for jobs again (default 1)")
    worker.add_argument("--beat", action="store_true",
                        help="also run the scheduler (as `omniq-tasks beat`) in this process")
    worker.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve Prometheus metrics on http://HOST:PORT/metrics "
                             "(needs pip install 'omniq-tasks[metrics]')")
    worker.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                        help="the address --metrics-port listens on (default 127.0.0.1; 0.0.0.0: every interface)")
    beat = commands.add_parser(
        "beat", help="publish the app's periodic schedules",
        description="Publish each tick of APP's schedules (@app.periodic, app.add_periodic). "
                    "Any number may run at once: each tick is published once.")
    _add_app_options(beat)
    schedules = commands.add_parser(
        "schedules", help="list the app's schedules: next run, last published tick",
        description="List APP's periodic schedules with their next run and the last tick any "
                    "scheduler published.")
    _add_app_options(schedules)
    demo = commands.add_parser(
        "demo", help="a few seconds of the framework at work, on a throwaway embedded server",
        description="Publish 300 typed emails in per-company FIFO groups (at most two at once), "
                    "a task that fails once and one that always fails; run a worker with live "
                    "progress; print a summary. Exit code 0 when everything behaved.")
    demo.add_argument("--redis-url", default=None,
                      help="use this Redis instead of a throwaway embedded:// server; the demo "
                           "works in queues of its own (demo-...-<hex>) and deletes them at the end")
    from .admin import add_admin_commands

    add_admin_commands(commands)  # queues, groups, jobs, job, pause, ... (cli/admin.py)
    from .dashboard import add_dashboard_command

    add_dashboard_command(commands)  # the web dashboard (cli/dashboard.py)
    return parser


def _add_app_options(command: argparse.ArgumentParser) -> None:
    """APP, where Redis is, and logging: what every command that loads an app takes."""
    command.add_argument("app", metavar="APP", help="the App, e.g. shop.tasks:app")
    where = command.add_mutually_exclusive_group()
    where.add_argument("--redis-url", default=None, metavar="URL",
                       help="the Redis to use instead of the app's (redis://, rediss://, unix://, "
                            "redis+cluster://, redis+sentinel://, embedded://FOLDER)")
    where.add_argument("--embedded", action="store_true",
                       help=f"use the embedded server in {EMBEDDED_URL[len('embedded://'):]} "
                            f"(the same as --redis-url {EMBEDDED_URL}), started if not running")
    command.add_argument("--log-level", default=None,
                         choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                         help="INFO: start, stop, failures, retries and a summary a minute; "
                              "DEBUG adds one line per job start and end (default INFO; an app "
                              "that set up logging itself keeps its levels unless this is given)")
    command.add_argument("--log-format", default="text", choices=("text", "json"),
                         help="text lines, or one JSON object per line (time, level, logger, message, "
                              "job_id, task, attempt); only when the app did not set up logging itself")


def _load_app(args: argparse.Namespace) -> App | int:
    """The App named by ``args.app`` with logging set up and ``--redis-url``/``--embedded``
    applied, or the exit code (2) after saying why it cannot be loaded."""
    from ..app import load_app
    from ..logcontext import JsonFormatter, TextFormatter, install_filter
    from ..protocol.urls import redact_text

    try:
        app = load_app(args.app)  # first: the app's module may set up logging itself
    except Exception as exc:  # anything the user's module raises on import
        detail = exc if isinstance(exc, (ImportError, ValueError)) else f"{type(exc).__name__}: {exc}"
        print(f"omniq-tasks: cannot load app {args.app!r}: {redact_text(str(detail))}", file=sys.stderr)
        if args.log_level == "DEBUG":
            traceback.print_exc()
        return 2
    root = logging.getLogger()
    if not root.handlers:  # the app left logging to us
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if args.log_format == "json" else TextFormatter())
        root.addHandler(handler)
        root.setLevel(args.log_level or "INFO")
        # Our formats use no caller, thread or process fields: skip collecting them
        # (the logging HOWTO's "Optimization" section).
        logging._srcfile = None
        logging.logThreads = False
        logging.logProcesses = False
        logging.logMultiprocessing = False
    elif args.log_level:  # the app's own setup stays; only the level asked for is set
        root.setLevel(args.log_level)
    install_filter(root)  # job_id, task_name, attempt on every record, the app's own loggers too
    if args.embedded or args.redis_url:
        app.close()  # in case the module already used the app's own URL
        app.redis_url = EMBEDDED_URL if args.embedded else args.redis_url
    return app


def run_worker(args: argparse.Namespace) -> int:
    from ..errors import OmniqError
    from ..protocol.urls import redact_text
    from ..worker.beat import Beat
    from ..worker.loop import Worker

    if args.metrics_port is not None:  # before loading the app: a missing extra is said at once
        from ..worker.metrics import require_prometheus

        try:
            require_prometheus()
        except ImportError as exc:
            print(f"omniq-tasks: --metrics-port: {exc}", file=sys.stderr)
            return 2
        if not 0 <= args.metrics_port <= 65535:
            print("omniq-tasks: --metrics-port must be between 0 and 65535", file=sys.stderr)
            return 2
    app = _load_app(args)
    if isinstance(app, int):
        return app
    metrics = None
    if args.metrics_port is not None:
        from ..worker.metrics import WorkerMetrics

        metrics = WorkerMetrics(app.client)
        app.add_middleware(metrics)  # before the Worker: its hooks are fixed when it is made
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    if args.concurrency is not None and args.concurrency < 1:
        print("omniq-tasks: --concurrency must be >= 1", file=sys.stderr)
        return 2
    try:
        worker = Worker(app, queues, concurrency=args.concurrency, pool=args.pool, app_path=args.app,
                        drain=args.drain, drain_wait_s=args.drain_wait, grace_s=args.grace,
                        poll_interval_s=args.poll_interval)
    except (OmniqError, ValueError) as exc:
        print(f"omniq-tasks: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    server = None
    if metrics is not None:
        metrics.attach(worker)
        try:
            server = metrics.serve(args.metrics_port, args.metrics_host)
        except (OSError, ValueError) as exc:  # the port is taken, the host unknown
            print(f"omniq-tasks: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}",
                  file=sys.stderr)
            return 2
        logging.getLogger("omniq_tasks.worker").info(
            "metrics on http://%s:%d/metrics", args.metrics_host, server.port)
    beat = Beat(app) if args.beat else None
    if beat is not None:  # in a thread of this process; stopped with the worker
        threading.Thread(target=beat.run, name="omniq-beat", daemon=True).start()
    try:
        return worker.run()
    except OmniqError as exc:  # e.g. Redis unreachable when the worker starts
        print(f"omniq-tasks: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    finally:
        if beat is not None:
            beat.stop()
        if server is not None:
            server.stop()


def run_beat(args: argparse.Namespace) -> int:
    import signal

    from ..worker.beat import Beat

    app = _load_app(args)
    if isinstance(app, int):
        return app
    beat = Beat(app)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: beat.stop())
    return beat.run()


def run_schedules(args: argparse.Namespace) -> int:
    from .schedules import print_schedules
    from ..errors import OmniqError
    from ..protocol.urls import redact_text

    app = _load_app(args)
    if isinstance(app, int):
        return app
    try:
        print_schedules(app)
    except OmniqError as exc:
        print(f"omniq-tasks: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "worker":
        return run_worker(args)
    if args.command == "beat":
        return run_beat(args)
    if args.command == "schedules":
        return run_schedules(args)
    from .admin import ADMIN_COMMANDS, run_admin

    if args.command in ADMIN_COMMANDS:
        return run_admin(args)
    if args.command == "dashboard":
        from .dashboard import run_dashboard

        return run_dashboard(args)
    if args.command == "demo":
        from .demo import run
        from ..errors import OmniqError
        from ..protocol.urls import redact_text

        logging.basicConfig(level=logging.WARNING)
        try:
            return run(args.redis_url)
        except OmniqError as exc:
            print(f"omniq-tasks demo: {redact_text(str(exc))}", file=sys.stderr)
            return 1
    parser.print_help(sys.stdout)
    return 0
