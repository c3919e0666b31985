"""``omniq-tasks demo``: emails per company on a throwaway redis-server, end to end.

Starts its own redis-server (unless given a URL), publishes a burst of typed,
grouped jobs and a failing one, runs a worker until the queue is drained, and
prints what happened: per-company order, the group limit, retries, and stats.

On a Redis of the user's, the demo must not touch their data: it works in a queue
of its own (``demo-emails-<random>``) and deletes that queue's keys, and only
those, when it ends.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time

import msgspec

from ..protocol import keys
from ..app import App
from ..protocol.client import redis_errors
from ..defaults import READ_PAGE
from ..context import JobContext
from ..testing import RedisServer
from ..protocol.urls import redact_url
from ..worker.loop import Worker

COMPANIES = (1, 2, 3)
MAILS_PER_COMPANY = 4
GROUP_LIMIT = 2


class Email(msgspec.Struct):
    to: str
    subject: str


def build_app(url: str, record: list[tuple[int, str, float, float]], lock: threading.Lock,
              queue: str = "demo-emails") -> App:
    app = App("demo", url, backoff_ms=200)

    @app.task(queue=queue, gid="company:{company_id}", group_limit=GROUP_LIMIT, name="demo.send_email")
    def send_email(company_id: int, msg: Email) -> None:
        started = time.monotonic()
        time.sleep(0.05)
        with lock:
            record.append((company_id, msg.subject, started, time.monotonic()))

    @app.task(queue=queue, max_attempts=2, name="demo.flaky")
    def flaky(ctx: JobContext, n: int) -> None:
        raise RuntimeError(f"flaky job {n} failed on attempt {ctx.attempt}")

    return app


def most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def own_queue(app: App) -> str:
    """A queue name nobody uses on this Redis: demo-emails-<8 random hex digits>."""
    while True:
        queue = f"demo-emails-{secrets.token_hex(4)}"
        with redis_errors(app.client.url):
            if not any(True for _ in app.client.redis.scan_iter(match=keys.queue_pattern(queue), count=READ_PAGE)):
                return queue


def remove_queue(app: App, queue: str) -> int:
    """Delete every key of ``queue`` and nothing else; returns how many went."""
    redis = app.client.redis
    with redis_errors(app.client.url):
        found = list(redis.scan_iter(match=keys.queue_pattern(queue), count=READ_PAGE))
        for start in range(0, len(found), 500):
            redis.delete(*found[start:start + 500])
    return len(found)


def run(url: str | None = None) -> int:
    """Run the demo; returns an exit code (0 when everything behaved)."""
    server = RedisServer() if url is None else None
    target = url or (server.url if server else "")
    record: list[tuple[int, str, float, float]] = []
    lock = threading.Lock()
    app: App | None = None
    queue = ""
    try:
        probe = App("demo", target)
        queue = own_queue(probe)
        probe.close()
        app = build_app(target, record, lock, queue)
        send_email = app.registry.get("demo.send_email")
        flaky = app.registry.get("demo.flaky")
        assert send_email is not None and flaky is not None
        print(f"redis: {redact_url(target)}{' (embedded, throwaway)' if server else ''}, queue: {queue}")
        for n in range(MAILS_PER_COMPANY):
            for company in COMPANIES:
                send_email.delay(company, Email(to=f"user{n}@company{company}.example", subject=f"mail {n}"))
        failing = flaky.delay(1)
        print(f"published {MAILS_PER_COMPANY * len(COMPANIES)} emails for companies {COMPANIES} "
              f"(group_limit={GROUP_LIMIT}) and one task that always fails")
        worker = Worker(app, concurrency=8, maintenance_interval_s=0.1)
        loop = threading.Thread(target=worker.run, name="demo-worker")
        loop.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
                len(record) < MAILS_PER_COMPANY * len(COMPANIES) or failing.status() != "failed"):
            time.sleep(0.05)
        worker.stop()
        loop.join()
        ok = True
        for company in COMPANIES:
            mails = [(s, a, b) for c, s, a, b in record if c == company]
            order = [s for s, _, _ in sorted(mails, key=lambda m: m[1])]
            peak = most_at_once([(a, b) for _, a, b in mails])
            in_order = order == [f"mail {n}" for n in range(MAILS_PER_COMPANY)]
            ok &= in_order and peak <= GROUP_LIMIT
            print(f"company {company}: {len(mails)} sent, in order: {in_order}, most at once: {peak}")
        info = failing.info()
        print(f"failing job: state={info.state if info else None}, attempts={info.attempt if info else None}, "
              f"last_error={(info.last_error.splitlines() or [''])[0] if info else ''!r}")
        stats = app.client.stats(queue)
        print(f"stats: completed_kept={stats.completed_kept} failed={stats.failed} "
              f"waiting={stats.waiting_total} active={stats.active}")
        ok &= info is not None and info.state == "failed" and stats.active == 0
        print("demo: OK" if ok else "demo: something did not behave")
        return 0 if ok else 1
    finally:
        if app is not None:
            if server is None and queue:
                remove_queue(app, queue)
            app.close()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(run())
