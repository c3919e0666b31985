"""The admin commands: ``omniq-tasks queues|groups|jobs|job|pause|resume|retry|remove|purge|publish|workers|stats``.

Each takes ``--url URL`` or ``--app module:app`` (the app's Redis) and ``--json``
(machine output: one JSON document, or one per line for ``stats --watch``). The
reading and acting is :mod:`omniq_tasks.ops`; this module parses, prints tables that
fit 80 columns (rich), and turns every error into one line on stderr and a non-zero
exit code (1: the operation failed, 2: the command line is wrong).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, NoReturn, Sequence

import msgspec
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..defaults import REDIS_URL, REDIS_URL_ENV
from ..protocol import keys
from ..protocol.client import OmniqClient

ADMIN_COMMANDS = ("queues", "groups", "jobs", "job", "pause", "resume", "retry", "remove", "purge",
                  "publish", "workers", "stats")
LANE_CHOICES = keys.LANES
TABLE_WIDTH = 80


class UsageError(Exception):
    """A command line that cannot be right: exit code 2."""


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """argparse's errors as one line (with where to read more) instead of the usage block."""
    prog = parser.prog

    def error(message: str) -> NoReturn:
        print(f"{prog}: {message} (see {prog} --help)", file=sys.stderr)
        raise SystemExit(2)

    setattr(parser, "error", error)


def add_admin_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the admin commands to the ``omniq-tasks`` parser's subcommands."""

    def command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text, description=description)
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--url", default=None, metavar="URL",
                           help=f"the Redis to read (default: ${REDIS_URL_ENV}, else {REDIS_URL})")
        where.add_argument("--app", default=None, metavar="MODULE:APP",
                           help="use the Redis of this App (imported with the current directory on the path)")
        parser.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
        _one_line_errors(parser)
        return parser

    command("queues", "one row per queue: waiting, running, delayed, failed, groups, paused",
            "One row per queue (found by one paged SCAN for '*:stats', plus the queues running "
            "workers serve): waiting, group_waiting, active, delayed, failed, completed_kept, "
            "groups_ready, paused, last activity. Shows queues of every OmniQ SDK.")
    groups = command("groups", "a queue's groups (inflight/limit/waiting), or set a group's limit",
                     "List QUEUE's groups with their running jobs, limit and waiting jobs, by gid; "
                     "or 'groups QUEUE set-limit GID N' to change a group's concurrency limit "
                     "(its waiting jobs start at once when the new limit gives them room).")
    groups.add_argument("queue", metavar="QUEUE")
    groups.add_argument("action", nargs="*", metavar="set-limit GID N", help="change GID's limit to N")
    _page_options(groups, 50)
    jobs = command("jobs", "a lane's jobs, page by page",
                   "List the jobs of one lane of QUEUE (newest first for failed and completed, "
                   "oldest first otherwise), LIMIT at a time from OFFSET.")
    jobs.add_argument("queue", metavar="QUEUE")
    jobs.add_argument("--lane", choices=LANE_CHOICES, default="wait", help="the lane (default wait)")
    jobs.add_argument("--order", choices=("newest", "oldest"), default=None, help="which end first")
    _page_options(jobs, 20)
    job = command("job", "one job in full: fields, payload, error, timings",
                  "Every field of job ID of QUEUE, its payload decoded and pretty-printed, its last "
                  "error, its times in UTC and how long each step took, and its kept result.")
    job.add_argument("queue", metavar="QUEUE")
    job.add_argument("job_id", metavar="ID")
    for name, text in (("pause", "stop new jobs of a queue from starting (running jobs go on)"),
                       ("resume", "let a paused queue's jobs start again")):
        command(name, text, text[0].upper() + text[1:] + ".").add_argument("queue", metavar="QUEUE")
    retry = command("retry", "retry failed jobs by id, or every failed job",
                    "Put failed jobs back in their wait lane with attempt 0: the ids given, or "
                    "with --all-failed every job of the failed lane (100 per call).")
    retry.add_argument("queue", metavar="QUEUE")
    retry.add_argument("ids", nargs="*", metavar="ID")
    retry.add_argument("--all-failed", action="store_true", help="every job of the failed lane")
    remove = command("remove", "delete jobs by id from a lane",
                     "Delete jobs (their hashes too) from a lane; running jobs cannot be removed.")
    remove.add_argument("queue", metavar="QUEUE")
    remove.add_argument("ids", nargs="+", metavar="ID")
    remove.add_argument("--lane", required=True, choices=LANE_CHOICES)
    purge = command("purge", "delete every job of a lane (asks for --yes)",
                    "Delete every job of a lane of QUEUE, however many, 100 per call.")
    purge.add_argument("queue", metavar="QUEUE")
    purge.add_argument("--lane", required=True, choices=LANE_CHOICES)
    purge.add_argument("--yes", action="store_true", help="really delete them (without it, nothing is done)")
    publish = command("publish", "publish a raw JSON job",
                      "Publish JSON (an object or array; '-' reads it from stdin) to QUEUE as any "
                      "OmniQ producer would. An omniq-tasks task takes an envelope: "
                      '{"task": "name", "args": [], "kwargs": {...}}.')
    publish.add_argument("queue", metavar="QUEUE")
    publish.add_argument("payload", metavar="JSON")
    publish.add_argument("--gid", default=None, help="publish into this group (FIFO per group)")
    publish.add_argument("--group-limit", type=int, default=0, metavar="N",
                         help="the group's limit, if it has none yet (see 'groups set-limit')")
    publish.add_argument("--delay", type=float, default=0.0, metavar="SECONDS", help="run no earlier than this")
    publish.add_argument("--id", default=None, dest="job_id", help="the job id (default: a new ULID)")
    publish.add_argument("--max-attempts", type=int, default=None, metavar="N")
    publish.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="the lease length")
    command("workers", "running omniq-tasks workers: host, pid, queues, running jobs, processed",
            "The running workers, from the record each keeps in Redis (refreshed every 5 s, "
            "gone 15 s after a worker dies, at once when it stops cleanly).")
    stats = command("stats", "jobs per second per queue (--watch: live)",
                    "Queue counts with jobs per second over INTERVAL: completed, failed, and how "
                    "fast the backlog grows. --watch keeps refreshing until Ctrl-C.")
    stats.add_argument("--watch", action="store_true", help="refresh every INTERVAL until interrupted")
    stats.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="default 2")
    stats.add_argument("--count", type=int, default=None, metavar="N", help="stop after N refreshes")


def _page_options(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--limit", type=int, default=default, help=f"how many (default {default}, at most 1000)")
    parser.add_argument("--offset", type=int, default=0, help="how many to skip (default 0)")


# -- running a command ------------------------------------------------------------------

def run_admin(args: argparse.Namespace) -> int:
    """Run one admin command; errors are one line on stderr and a non-zero exit code."""
    import redis as redis_lib

    from ..errors import OmniqError
    from ..protocol.urls import redact_text

    prog = f"omniq-tasks {args.command}"
    client: OmniqClient | None = None
    try:
        client = _connect(args)
        return int(HANDLERS[args.command](client, args))
    except UsageError as exc:
        print(f"{prog}: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (OmniqError, ValueError, TypeError, redis_lib.RedisError) as exc:
        print(f"{prog}: {redact_text(_one_line(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:  # never a traceback: the one line says what it was
        print(f"{prog}: unexpected {type(exc).__name__}: {redact_text(_one_line(exc))}", file=sys.stderr)
        return 1
    finally:
        if client is not None:
            try:
                client.close()
            except Exception:
                pass


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _connect(args: argparse.Namespace) -> OmniqClient:
    if args.app:
        from ..app import load_app

        try:
            app = load_app(args.app)
        except Exception as exc:  # whatever the user's module raises on import
            detail = exc if isinstance(exc, (ImportError, ValueError)) else f"{type(exc).__name__}: {exc}"
            raise UsageError(f"cannot load app {args.app!r}: {detail}") from None
        return app.client
    return OmniqClient(args.url or os.environ.get(REDIS_URL_ENV) or REDIS_URL)


def _console() -> Console:
    """The terminal's width on a terminal; TABLE_WIDTH when piped, so tables fit 80 columns."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(width=TABLE_WIDTH, highlight=False)
    return console


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")
    sys.stdout.flush()


def _listing(args: argparse.Namespace, value: Any, empty: str | None) -> Console | None:
    """The start of every listing command: with --json, print ``value`` and return None;
    with ``empty`` (nothing to list), print that line and return None; else the console
    to print the table on."""
    if args.json:
        _print_json(value)
        return None
    console = _console()
    if empty is not None:
        console.print(Text(empty))
        return None
    return console


def _table(*columns: str, title: str | None = None, right: Sequence[str] = ()) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=title, title_justify="left",
                  show_edge=False, padding=(0, 1, 0, 0))  # with the box's blank divider: 2 between columns
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", overflow="fold")
    return table


def _cells(*values: object) -> list[Text]:
    """Cells as plain Text: ids, gids and errors are never read as rich markup."""
    return [Text(str(v)) for v in values]


def _queue_arg(args: argparse.Namespace) -> str:
    try:
        return keys.validate_queue(args.queue)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# -- the commands -----------------------------------------------------------------------

def cmd_queues(client: OmniqClient, args: argparse.Namespace) -> int:
    from ..ops.formatting import ago, count
    from ..ops.queues import queue_rows

    rows = queue_rows(client)
    console = _listing(args, rows, None if rows else f"no queues at {client.url}")
    if console is None:
        return 0
    now = client.server_now_ms()
    numbers = ("wait", "g.wait", "active", "delay", "failed", "done", "ready")
    table = _table("queue", *numbers, "paused", "last", right=(*numbers, "last"))
    for r in rows:
        table.add_row(*_cells(r.queue, count(r.waiting), count(r.group_waiting), count(r.active),
                              count(r.delayed), count(r.failed), count(r.completed_kept), count(r.groups_ready),
                              "yes" if r.paused else "no", ago(r.last_activity_ms, now)))
    console.print(table)
    return 0


def cmd_groups(client: OmniqClient, args: argparse.Namespace) -> int:
    from ..ops.groups import group_page, set_group_limit

    queue = _queue_arg(args)
    if args.action:
        if args.action[0] != "set-limit" or len(args.action) != 3:
            raise UsageError("expected 'groups QUEUE' or 'groups QUEUE set-limit GID N'")
        gid, text = args.action[1], args.action[2]
        try:
            limit = int(text)
        except ValueError:
            raise UsageError(f"N must be a whole number >= 1, not {text!r}") from None
        if limit < 1:
            raise UsageError(f"N must be a whole number >= 1, not {text!r}")
        change = set_group_limit(client, queue, gid, limit)
        if args.json:
            _print_json(change)
        else:
            before = "none (1)" if change.previous is None else str(change.previous)
            note = "; the group is ready: its waiting jobs start now" if change.made_ready else ""
            print(f"group {gid} of {queue}: limit {before} -> {limit}{note}")
        return 0
    page = group_page(client, queue, limit=args.limit, offset=args.offset)
    empty = f"no groups in {queue}" + (f" from offset {page.offset}" if page.total else "")
    console = _listing(args, page, None if page.groups else empty)
    if console is None:
        return 0
    table = _table("gid", "inflight", "limit", "waiting", "ready", right=("inflight", "limit", "waiting"),
                   title=f"groups {page.offset + 1}-{page.offset + len(page.groups)} of {page.total} in {queue}")
    for g in page.groups:
        limit_text = str(g.limit) if g.limit_set is not None else f"{g.limit} (unset)"
        table.add_row(*_cells(g.gid, g.inflight, limit_text, g.waiting, "yes" if g.ready else ""))
    console.print(table)
    return 0


def cmd_jobs(client: OmniqClient, args: argparse.Namespace) -> int:
    from ..ops.formatting import ago
    from ..ops.jobs import lane_page

    queue = _queue_arg(args)
    newest = None if args.order is None else args.order == "newest"
    page = lane_page(client, queue, args.lane, limit=args.limit, offset=args.offset, newest_first=newest)
    empty = f"no jobs in lane {args.lane} of {queue}" + (f" from offset {page.offset}" if page.total else "")
    console = _listing(args, page, None if page.jobs else empty)
    if console is None:
        return 0
    now = client.server_now_ms()
    order = "newest" if page.newest_first else "oldest"
    last = {"failed": "error", "delayed": "due", "active": "lease"}.get(args.lane, "since")
    middle = "try" if args.lane == "failed" else "gid"
    table = _table("id", "task", middle, "try" if middle == "gid" else "since", last,
                   right=("try", "since", "due", "lease"),
                   title=f"{args.lane} jobs {page.offset + 1}-{page.offset + len(page.jobs)} of {page.total} "
                         f"in {queue} ({order} first)")
    for j in page.jobs:
        task = (j.task or "(raw)") if j.state else "(gone)"
        tries = f"{j.attempt}/{j.max_attempts}"
        if args.lane == "failed":
            table.add_row(*_cells(j.id, task, tries, ago(j.entered_ms, now), j.last_error))
        else:
            end_cell = {"due": ago(j.due_ms, now), "lease": ago(j.lock_until_ms, now)}.get(last, ago(j.entered_ms, now))
            table.add_row(*_cells(j.id, task, j.gid or "-", tries, end_cell))
    console.print(table)
    return 0


def cmd_job(client: OmniqClient, args: argparse.Namespace) -> int:
    from ..ops.formatting import ago
    from ..ops.jobs import TIME_FIELDS, job_detail

    queue = _queue_arg(args)
    detail = job_detail(client, queue, args.job_id)
    if detail is None:
        print(f"omniq-tasks job: no job {args.job_id!r} in queue {queue}", file=sys.stderr)
        return 1
    if args.json:
        _print_json(detail)
        return 0
    console = _console()
    head = Text(f"job {detail.id} in {queue}: {detail.state or '?'}")
    if detail.task:
        head.append(f" (task {detail.task})")
    console.print(head)
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column(overflow="fold")
    skip = {"payload", "last_error", *TIME_FIELDS}  # shown below, the times as UTC clock times
    for name, value in detail.fields.items():
        if name not in skip:
            fields.add_row(*_cells(name, value if value != "" else '""'))
    console.print(Text("\nfields"))
    console.print(fields)
    if detail.times:
        times = Table.grid(padding=(0, 2))
        times.add_column(style="bold")
        times.add_column()
        times.add_column()
        for row in detail.times:
            when = ago(row.ms, detail.now_ms)
            times.add_row(*_cells(row.field, row.utc, when if when.startswith("in ") else f"{when} ago"))
        console.print(Text("\ntimes (UTC)"))
        console.print(times)
    if detail.durations:
        spans = Table.grid(padding=(0, 2))
        spans.add_column(style="bold")
        spans.add_column()
        for span in detail.durations:
            spans.add_row(*_cells(span.name, span.text))
        console.print(Text("\ndurations"))
        console.print(spans)
    console.print(Text("\npayload"))
    console.print(Text(detail.payload_pretty or '""'))
    if detail.last_error:
        console.print(Text("\nlast_error"))
        console.print(Text(detail.last_error))
    if detail.result is not None:
        console.print(Text("\nresult"))
        console.print(Text(detail.result))
    return 0


def cmd_pause(client: OmniqClient, args: argparse.Namespace) -> int:
    from ..ops.actions import pause

    queue = _queue_arg(args)
    pause(client, queue)
    _say(args, {"queue": queue, "paused": True}, f"{queue} paused: no new job starts; running jobs go on")
    return 0


def cmd_resume(client: OmniqClient, args: argparse.Namespace) -> int:
    from ..ops.actions import resume

    queue = _queue_arg(args)
    was = resume(client, queue)
    _say(args, {"queue": queue, "paused": False, "was_paused": was},
         f"{queue} resumed" if was else f"{queue} was not paused")
    return 0


def cmd_retry(client: OmniqClient, args: argparse.Namespace) -> int:
    from ..ops.actions import retry, retry_all_failed

    queue = _queue_arg(args)
    if args.all_failed == bool(args.ids):
        raise UsageError("give job ids or --all-failed (not both)")
    result = retry_all_failed(client, queue) if args.all_failed else retry(client, queue, args.ids)
    return _bulk(args, queue, "retried", result)


def cmd_remove(client: OmniqClient, args: argparse.Namespace) -> int:
    from ..ops.actions import remove

    queue = _queue_arg(args)
    return _bulk(args, queue, f"removed from {args.lane}", remove(client, queue, args.lane, args.ids))


def cmd_purge(client: OmniqClient, args: argparse.Namespace) -> int:
    from ..ops.actions import check_removable, purge

    queue = _queue_arg(args)
    check_removable(args.lane)  # before asking for --yes: the lane active can never be purged
    if not args.yes:
        held = int(client.redis.zcard(keys.idx_key(queue, args.lane)))
        raise UsageError(f"this deletes every job of lane {args.lane} of {queue} ({held} now); "
                         f"add --yes to do it")
    return _bulk(args, queue, f"purged from {args.lane}", purge(client, queue, args.lane))


def cmd_publish(client: OmniqClient, args: argparse.Namespace) -> int:
    from ..ops.actions import publish

    queue = _queue_arg(args)
    payload = sys.stdin.read() if args.payload == "-" else args.payload
    if args.timeout is not None and not 0 < args.timeout < 1e9:  # NaN and inf too
        raise UsageError(f"--timeout must be > 0 seconds, not {args.timeout}")
    timeout_ms = None if args.timeout is None else int(args.timeout * 1000)
    published = publish(client, queue, payload, gid=args.gid, group_limit=args.group_limit,
                        delay_s=args.delay, job_id=args.job_id, max_attempts=args.max_attempts,
                        timeout_ms=timeout_ms)
    text = f"job {published.job_id} " + ("already existed; nothing changed" if published.existed
                                          else f"published to {queue}")
    _say(args, published, text)
    return 0


def cmd_workers(client: OmniqClient, args: argparse.Namespace) -> int:
    from ..ops.formatting import ago
    from ..ops.workers import live_workers

    workers = live_workers(client)
    console = _listing(args, workers, None if workers else
                       "no running workers (omniq-tasks workers keep a record while they run)")
    if console is None:
        return 0
    now = int(time.time() * 1000)  # records carry the workers' clocks, as does ours
    table = _table("worker", "app", "queues", "pool", "run", "done", "failed", "up", right=("run", "done", "failed", "up"))
    for w in workers:
        table.add_row(*_cells(w.id, w.app, ",".join(w.queues), f"{w.pool} x{w.concurrency}", w.running,
                              w.processed, w.failures, ago(w.started_ms, now)))
    console.print(table)
    return 0


def cmd_stats(client: OmniqClient, args: argparse.Namespace) -> int:
    from ..ops.queues import QueueFinder, ThroughputMeter, queue_rows
    from ..ops.workers import live_workers

    if not args.interval > 0:
        raise UsageError(f"--interval must be > 0 seconds, not {args.interval}")
    if args.count is not None and args.count < 1:
        raise UsageError(f"--count must be >= 1, not {args.count}")
    finder = QueueFinder(client)
    meter = ThroughputMeter(client)
    processed: dict[str, int] = {}
    console = _console()
    live: Any = None
    if args.watch and console.is_terminal and not args.json:
        from rich.live import Live

        live = Live(console=console, auto_refresh=False)
        live.start()
    try:
        refreshes = 0
        sampled_at = time.monotonic()
        meter.sample(queue_rows(client, finder, live_workers(client)))  # the base of the first rates
        while True:
            time.sleep(max(args.interval - (time.monotonic() - sampled_at), 0.0))
            workers = live_workers(client)
            rows = queue_rows(client, finder, workers)
            sampled_at_now = time.monotonic()
            rates = meter.sample(rows)
            seconds = sampled_at_now - sampled_at
            sampled_at = sampled_at_now
            worker_rate = sum(max(w.processed - processed.get(w.id, w.processed), 0) for w in workers) / seconds
            processed = {w.id: w.processed for w in workers}
            refreshes += 1
            if args.json:
                sys.stdout.write(msgspec.json.encode({
                    "at_ms": client.server_now_ms(), "interval_s": round(seconds, 3),
                    "queues": [{**msgspec.to_builtins(row), **_rate(rates.get(row.queue))} for row in rows],
                    "workers": len(workers), "running": sum(w.running for w in workers),
                    "workers_processed_per_s": round(worker_rate, 2)}).decode() + "\n")
                sys.stdout.flush()
            else:
                table = _stats_table(rows, rates, workers, worker_rate)
                if live is not None:
                    live.update(table, refresh=True)
                else:
                    console.print(table)
            if not args.watch or (args.count is not None and refreshes >= args.count):
                return 0
    finally:
        if live is not None:
            live.stop()


def _rate(rate: Any) -> dict[str, Any]:
    if rate is None:
        return {"completed_per_s": None, "failed_per_s": None, "backlog_per_s": None, "estimated": False}
    return {"completed_per_s": round(rate.completed_per_s, 2), "failed_per_s": round(rate.failed_per_s, 2),
            "backlog_per_s": round(rate.backlog_per_s, 2), "estimated": rate.estimated}


def _stats_table(rows: Sequence[Any], rates: dict[str, Any], workers: Sequence[Any], worker_rate: float) -> Table:
    from ..ops.formatting import count

    def per_s(value: float, estimated: bool = False) -> str:
        return ("~" if estimated else "") + (f"{value:.0f}" if value >= 10 else f"{value:.1f}")

    numbers = ("wait", "active", "failed", "done/s", "fail/s", "backlog/s", "workers")
    table = _table("queue", *numbers, right=numbers,
                   title=time.strftime("%H:%M:%S") + f"  {len(workers)} worker(s), "
                         f"{sum(w.running for w in workers)} running, {worker_rate:.1f} jobs/s")
    for row in rows:
        rate = rates.get(row.queue)
        table.add_row(*_cells(
            row.queue + (" (paused)" if row.paused else ""), count(row.waiting + row.group_waiting),
            count(row.active), count(row.failed),
            per_s(rate.completed_per_s, rate.estimated) if rate else "-",
            per_s(rate.failed_per_s) if rate else "-",
            (f"{rate.backlog_per_s:+.1f}" if rate else "-"), row.workers))
    return table


def _say(args: argparse.Namespace, value: Any, text: str) -> None:
    if args.json:
        _print_json(value)
    else:
        print(text)


def _bulk(args: argparse.Namespace, queue: str, verb: str, result: Any) -> int:
    """Print a BulkResult; exit 1 when any id was refused."""
    if args.json:
        _print_json(result)
    else:
        print(f"{result.done} job(s) {verb} in {queue}")
        reasons: dict[str, list[str]] = {}
        for job_id, reason in result.refused.items():
            reasons.setdefault(reason, []).append(job_id)
        for reason, ids in sorted(reasons.items()):
            shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
            print(f"omniq-tasks {args.command}: {len(ids)} refused ({reason}): {shown}", file=sys.stderr)
    return 1 if result.refused else 0


HANDLERS: dict[str, Callable[[OmniqClient, argparse.Namespace], int]] = {
    "queues": cmd_queues, "groups": cmd_groups, "jobs": cmd_jobs, "job": cmd_job, "pause": cmd_pause,
    "resume": cmd_resume, "retry": cmd_retry, "remove": cmd_remove, "purge": cmd_purge,
    "publish": cmd_publish, "workers": cmd_workers, "stats": cmd_stats,
}
