"""``omniq-tasks demo``: what the framework does, end to end, in a few seconds.

Publishes 300 typed emails for six companies (a FIFO group per company, at most
two at once), a billing task that fails once and succeeds on its retry, and one
that always fails; runs a worker (threads, in this process) while it shows live
progress, then a summary: completed, failed, retried, the most mails any company
ran at once (measured from the tasks' own start and end times), per-company
order, throughput. Exit code 0 when everything behaved, 1 otherwise.

Where: by default a throwaway ``embedded://`` server in a temporary folder
(:func:`default_target`); ``--redis-url`` uses the user's Redis. There the demo
must not touch the user's data: it works in queues of its own
(``demo-emails-<hex>`` and ``demo-billing-<hex>``, names no key on the server
uses) and deletes exactly those queues' keys when it ends.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import msgspec
from rich.console import Console, Group
from rich.live import Live
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TaskID
from rich.table import Table

from ..app import App
from ..context import JobContext
from ..defaults import READ_PAGE
from ..middleware import AckResult, Middleware
from ..outcome import Outcome
from ..protocol import keys
from ..protocol.client import redis_errors
from ..protocol import embedded
from ..protocol.connection import EMBEDDED_SCHEME, scheme_of
from ..protocol.models import QueueStats, ReservedJob
from ..protocol.urls import redact_url
from ..results import JobHandle
from ..task import Task
from ..worker.loop import Worker

# company id -> how many emails it sends: 300 in all, uneven like real tenants.
COMPANY_MAILS = {1: 80, 2: 60, 3: 50, 4: 45, 5: 40, 6: 25}
GROUP_LIMIT = 2
CONCURRENCY = 16
MAIL_SECONDS = (0.03, 0.07)  # each "SMTP call" sleeps between these, by the mail's number
BILLING_BACKOFF_MS = 200
DEADLINE_S = 20.0  # a demo that has not finished by then reports what it saw
REFRESH_S = 0.1


class Email(msgspec.Struct):
    to: str
    subject: str
    number: int  # the mail's place in its company's outbox, from 0


class Invoice(msgspec.Struct):
    company_id: int
    amount_cents: int


class CardDeclined(Exception):
    pass


class Span(NamedTuple):
    number: int
    lease_ms: int  # its lock_until_ms when leased: the server's lease time + the (same) lease length
    start: float  # when the task's body began and ended (time.monotonic())
    end: float


@dataclass
class Record:
    """What the tasks and the worker saw, written from the worker's threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    spans: dict[int, list[Span]] = field(default_factory=dict)  # company -> its mails
    acks: dict[str, int] = field(default_factory=dict)  # AckResult.status -> count
    done: dict[str, int] = field(default_factory=dict)  # queue -> completed
    retried: set[str] = field(default_factory=set)  # job ids that ran again after a failure

    def sent(self, company_id: int) -> int:
        with self.lock:
            return len(self.spans.get(company_id, ()))

    def count(self, status: str) -> int:
        with self.lock:
            return self.acks.get(status, 0)


class Tally(Middleware):
    """Counts how each job's ack ended (the worker's loop thread calls it)."""

    def __init__(self, record: Record) -> None:
        self.record = record

    def after_ack(self, job: ReservedJob, outcome: Outcome, result: AckResult) -> None:
        record = self.record
        with record.lock:
            record.acks[result.status] = record.acks.get(result.status, 0) + 1
            if result.status == "completed":
                record.done[job.queue] = record.done.get(job.queue, 0) + 1
            elif result.status == "retry":
                record.retried.add(job.job_id)


class Queues(NamedTuple):
    emails: str
    billing: str


def default_target() -> str:
    """``embedded://`` on a fresh temporary folder (the caller removes the folder)."""
    return f"{EMBEDDED_SCHEME}://{tempfile.mkdtemp(prefix='omniq-demo-')}"


def embedded_folder(url: str) -> Path | None:
    """The folder of an ``embedded://`` URL; None for any other scheme."""
    return Path(url.partition("://")[2]) if scheme_of(url) == EMBEDDED_SCHEME else None


class Demo(NamedTuple):
    app: App
    send_email: Task[[int, Email], None]
    sync_invoice: Task[[Invoice], None]
    charge_card: Task[[Invoice], None]


def build_app(url: str, queues: Queues, record: Record) -> Demo:
    app = App("demo", url, middleware=[Tally(record)])

    @app.task(queue=queues.emails, gid="company:{company_id}", group_limit=GROUP_LIMIT,
              name="demo.send_email")
    def send_email(ctx: JobContext, company_id: int, msg: Email) -> None:
        start = time.monotonic()
        low, high = MAIL_SECONDS
        time.sleep(low + (high - low) * (msg.number * 7 % 10) / 9)
        span = Span(msg.number, ctx.lock_until_ms, start, time.monotonic())
        with record.lock:
            record.spans.setdefault(company_id, []).append(span)

    @app.task(queue=queues.billing, max_attempts=3, backoff_ms=BILLING_BACKOFF_MS, name="demo.sync_invoice")
    def sync_invoice(ctx: JobContext, invoice: Invoice) -> None:
        if ctx.attempt == 1:
            raise ConnectionError(f"CRM timed out syncing company {invoice.company_id}'s invoice")

    @app.task(queue=queues.billing, max_attempts=3, backoff_ms=BILLING_BACKOFF_MS, name="demo.charge_card")
    def charge_card(ctx: JobContext, invoice: Invoice) -> None:
        raise CardDeclined(f"card declined for company {invoice.company_id} "
                           f"({invoice.amount_cents / 100:.2f} EUR, attempt {ctx.attempt})")

    return Demo(app, send_email, sync_invoice, charge_card)


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one moment (an end at the moment of a start closes first)."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def fifo_kept(spans: list[Span]) -> bool:
    """Did the worker lease a company's mails in the order they were published?

    Read from the server's lease times (one clock, whatever the threads do): they
    never go back from one mail to the next. Two mails leased in the same
    millisecond (one reserve call) tie, and may start in either order on threads.
    """
    leases = [s.lease_ms for s in sorted(spans)]
    return leases == sorted(leases)


def own_queues(app: App) -> Queues:
    """Queue names nobody uses on this Redis: demo-emails-<hex> and demo-billing-<hex>."""
    while True:
        suffix = secrets.token_hex(4)
        queues = Queues(f"demo-emails-{suffix}", f"demo-billing-{suffix}")
        with redis_errors(app.client.url):
            if not any(any(True for _ in app.client.redis.scan_iter(match=keys.queue_pattern(q), count=READ_PAGE))
                       for q in queues):
                return queues


def remove_queue(app: App, queue: str) -> int:
    """Delete every key of ``queue`` and nothing else; returns how many went."""
    redis = app.client.redis
    with redis_errors(app.client.url):
        found = list(redis.scan_iter(match=keys.queue_pattern(queue), count=READ_PAGE))
        for start in range(0, len(found), 500):
            redis.delete(*found[start:start + 500])
    return len(found)


def publish(demo: Demo) -> JobHandle:
    """The 300 emails (interleaved across companies, as they would arrive) and the billing jobs.

    Returns the handle of the job that always fails.
    """
    calls = [(company, Email(to=f"user{n}@company{company}.example", subject=f"Invoice #{n}", number=n))
             for n in range(max(COMPANY_MAILS.values()))
             for company, mails in COMPANY_MAILS.items() if n < mails]
    demo.send_email.map(calls)  # one script call for all of them
    demo.sync_invoice.delay(Invoice(company_id=1, amount_cents=12_900))
    return demo.charge_card.delay(Invoice(company_id=2, amount_cents=4_200))


def queue_table(app: App, queues: Queues, record: Record) -> Table:
    table = Table(title="queues (live)", title_justify="left")
    for column in ("queue", "waiting", "active", "delayed", "completed", "failed"):
        table.add_column(column, justify="left" if column == "queue" else "right")
    for queue in queues:
        stats: QueueStats = app.client.stats(queue)
        with record.lock:
            done = record.done.get(queue, 0)
        table.add_row(queue, str(stats.waiting_total), str(stats.active), str(stats.delayed),
                      str(done), str(stats.failed))
    return table


def finished(record: Record, app: App, queues: Queues) -> bool:
    total = sum(COMPANY_MAILS.values()) + 1  # the emails and sync_invoice
    with record.lock:
        completed, failed = record.acks.get("completed", 0), record.acks.get("failed", 0)
    return completed >= total and failed >= 1 and app.client.stats(queues.billing).active == 0


def run_worker(app: App, queues: Queues, record: Record, console: Console) -> float:
    """Run a worker until the demo's jobs are settled (or the deadline); returns seconds taken."""
    worker = Worker(app, list(queues), concurrency=CONCURRENCY, maintenance_interval_s=0.1,
                    poll_interval_s=0.2)
    loop = threading.Thread(target=worker.run, name="demo-worker", daemon=True)
    started = time.monotonic()
    loop.start()
    deadline = started + DEADLINE_S
    try:
        if console.is_terminal:
            progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                console=console)
            bars: dict[int, TaskID] = {
                company: progress.add_task(f"company {company} emails", total=mails)
                for company, mails in COMPANY_MAILS.items()}
            # The worker's log lines (a retry, the failure) print above the live display.
            logger = logging.getLogger("omniq_tasks")
            handler = RichHandler(console=console, show_path=False, show_time=False)
            logger.addHandler(handler)
            propagate, logger.propagate = logger.propagate, False
            try:
                with Live(console=console, transient=False, auto_refresh=False) as live:
                    while True:
                        for company, bar in bars.items():
                            progress.update(bar, completed=record.sent(company))
                        live.update(Group(progress, queue_table(app, queues, record)), refresh=True)
                        if finished(record, app, queues) or time.monotonic() > deadline:
                            break
                        time.sleep(REFRESH_S)
            finally:
                logger.removeHandler(handler)
                logger.propagate = propagate
        else:
            console.print(f"running a worker ({CONCURRENCY} threads) ...")
            while not finished(record, app, queues) and time.monotonic() < deadline:
                time.sleep(REFRESH_S)
        return time.monotonic() - started
    finally:
        worker.stop()
        loop.join(timeout=10)


def summary(app: App, queues: Queues, record: Record, failing: JobHandle, elapsed: float,
            console: Console) -> bool:
    """Print the summary table; True when everything behaved."""
    emails = sum(COMPANY_MAILS.values())
    with record.lock:
        spans = {company: list(s) for company, s in record.spans.items()}
        completed = record.acks.get("completed", 0)
        failed = record.acks.get("failed", 0)
        retries = record.acks.get("retry", 0)
        retried = len(record.retried)
        lost = record.acks.get("lost", 0) + record.acks.get("error", 0)
    peaks = {c: most_at_once([(s.start, s.end) for s in spans.get(c, [])]) for c in COMPANY_MAILS}
    fifo = {c: fifo_kept(spans.get(c, [])) and len(spans.get(c, [])) == COMPANY_MAILS[c] for c in COMPANY_MAILS}
    peak = max(peaks.values())
    info = failing.info()
    error = info.last_error if info is not None else ""
    traceback_kept = info is not None and info.state == "failed" and "CardDeclined" in error
    stats = [app.client.stats(q) for q in queues]
    idle = all(s.active == 0 and s.waiting_total == 0 and s.delayed == 0 for s in stats)

    checks: list[tuple[str, str, str, bool]] = [
        ("completed", str(completed), f"{emails + 1} ({emails} emails, 1 invoice)", completed == emails + 1),
        ("failed", str(failed), "1 (charge_card, every attempt)", failed == 1 and traceback_kept),
        ("retried", f"{retried} jobs, {retries} retries", ">= 1 (the invoice ran again)", retried >= 1),
        ("most at once", f"{peak} (of any company)", f"<= group_limit {GROUP_LIMIT}", peak <= GROUP_LIMIT),
        ("FIFO per company", f"{sum(fifo.values())}/{len(fifo)} companies", "every company", all(fifo.values())),
        ("queues idle", "yes" if idle else "no", "nothing waiting or running", idle and lost == 0),
    ]
    table = Table(title="omniq-tasks demo: summary", title_justify="left")
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_column("expected")
    table.add_column("ok")
    for name, value, expected, ok in checks:
        table.add_row(name, value, expected, "ok" if ok else "[bold red]NO[/]")
    jobs = completed + failed
    table.add_row("throughput", f"{jobs / elapsed:.0f} jobs/s" if elapsed > 0 else "-",
                  f"mails sleep {MAIL_SECONDS[0] * 1000:.0f}-{MAIL_SECONDS[1] * 1000:.0f} ms", "")
    table.add_row("elapsed", f"{elapsed:.2f} s", "", "")
    console.print(table)

    per_company = Table(title="per company", title_justify="left")
    for column in ("company", "emails", "sent", "most at once", "in order"):
        per_company.add_column(column, justify="right")
    for company, mails in COMPANY_MAILS.items():
        per_company.add_row(str(company), str(mails), str(len(spans.get(company, []))), str(peaks[company]),
                            "yes" if fifo[company] else "[bold red]NO[/]")
    console.print(per_company)
    lines = error.strip().splitlines()
    if lines:
        console.print(f"charge_card failed for good after {info.attempt if info else '?'} attempts; "
                      f"its last_error keeps the exception and the traceback:", soft_wrap=True)
        for line in lines[:12]:
            console.print(f"    {line}", highlight=False, markup=False, soft_wrap=True)
    ok = all(ok for *_, ok in checks)
    console.print("demo: OK" if ok else "[bold red]demo: something did not behave[/]")
    return ok


def run(url: str | None = None, console: Console | None = None) -> int:
    """Run the demo on ``url`` (default: :func:`default_target`); returns an exit code."""
    console = console or Console(highlight=False)
    target = url or default_target()
    folder = embedded_folder(target) if url is None else None
    record = Record()
    probe = App("demo", target)  # finds free queue names, removes them at the end
    queues: Queues | None = None
    demo: Demo | None = None
    try:
        queues = own_queues(probe)
        demo = build_app(target, queues, record)
        where = (f"a throwaway embedded server ({Path(embedded.find_server_binary()).name}) in {folder}"
                 if folder else redact_url(target))
        console.print(f"redis: {where}", soft_wrap=True)
        console.print(f"queues: {queues.emails}, {queues.billing}", soft_wrap=True)
        failing = publish(demo)
        console.print(f"published {sum(COMPANY_MAILS.values())} emails for {len(COMPANY_MAILS)} companies "
                      f"(gid company:<id>, group_limit={GROUP_LIMIT}), an invoice sync that fails once, "
                      f"and a card charge that always fails", soft_wrap=True)
        elapsed = run_worker(demo.app, queues, record, console)
        return 0 if summary(demo.app, queues, record, failing, elapsed, console) else 1
    finally:
        try:
            if demo is not None:
                demo.app.close()
            if queues is not None:
                for queue in queues:
                    remove_queue(probe, queue)
        finally:
            probe.close()
            if folder is not None:  # we were its only user: it stops, then its folder goes
                embedded.release(folder, wait_for_stop=True)
                shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(run())
