"""Faults of Redis and of the path to it: kill -9 with AOF, SCRIPT FLUSH, CLIENT KILL,
a proxy that drops replies, DEBUG SLEEP past the leases, maxmemory with noeviction.

Each test starts its own redis-server and CLI workers and ends with the one checker
(harness.check); invariants a fault legitimately breaks are named in ``tolerate``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

import redis

from omniq_tasks import App, OmniqClient
from reliability.harness import (GROUP_OVER_LIMIT, JOB_OVERLAP, RERUN_AFTER_ACK, Loop, Published,
                                 RedisProc, ReplyDropProxy, Workers, finish, jitter, publish, specs,
                                 wait_settled)
from reliability.ledger_app import Q_GROUPED, Q_WORK, build

LIMITS = {Q_GROUPED: 2}
QUEUES = f"{Q_WORK},{Q_GROUPED}"


def ledger_app(url: str, **options: Any) -> tuple[App, dict[str, Any]]:
    defaults = {"max_attempts": 5, "timeout_ms": 1500, "backoff_ms": 0}
    app = App("ledger", redis_url=url, **{**defaults, **options})
    return app, build(app)


def mixed_jobs(t: dict[str, Any], plain: int, grouped: int, sleep_ms: int,
               **options: Any) -> list[tuple[str, list[Any]]]:
    """Plain jobs, then jobs in 10 groups of limit 2; ``options`` go to Task.prepare."""
    return [(Q_WORK, specs(t["work"], ({"n": i, "sleep_ms": sleep_ms} for i in range(plain)), **options)),
            (Q_GROUPED, specs(t["grouped"], ({"g": str(i % 10), "n": i, "sleep_ms": sleep_ms}
                                             for i in range(grouped)), **options))]


def run_under(fault: Loop | None, server: RedisProc, app: App, jobs: list[tuple[str, list[Any]]],
              pub: Published, settle_s: float = 60, pace_s: float = 0.25) -> bool:
    """Publish 100 jobs every ``pace_s`` (so the fault acts for several seconds, on
    publishing too; failed chunks are retried with the same ids), wait until settled,
    then stop the fault."""
    try:
        chunks = [(queue, batch[i:i + 100]) for queue, batch in jobs for i in range(0, len(batch), 100)]
        for queue, chunk in chunks:
            publish(app.client, queue, chunk, pub, chunk=100)
            time.sleep(pace_s)
        return wait_settled(server.client(), [q for q, _ in jobs], settle_s)
    finally:
        if fault is not None:
            fault.stop()


# -- kill -9 and restart with AOF --------------------------------------------------------------


def _kill9_during_publishing(server: RedisProc, app: App, t: dict[str, Any], workers: Workers,
                             pub: Published, total: int) -> float:
    """A producer publishes one job at a time (each call's outcome recorded) while two
    workers run them; 1 s in, redis-server is SIGKILLed and 0.5 s later restarted from
    its AOF. Returns the kill time (epoch ms)."""
    for _ in range(2):
        workers.start(server.url, "-Q", Q_WORK, "-c", "8")
    producer = OmniqClient(server.url)
    killed_at: list[float] = []

    def produce() -> None:
        for i in range(total):
            spec = t["work"].encode_call((), {"n": i, "sleep_ms": 5})
            try:
                producer.enqueue_many(Q_WORK, [spec])
                pub.add(Q_WORK, [spec.job_id])
            except redis.RedisError as exc:
                pub.maybe.add(spec.job_id)  # not told: the call failed
                pub.errors.append(str(exc))
                time.sleep(0.05)
            time.sleep(0.002)

    thread = threading.Thread(target=produce)
    thread.start()
    time.sleep(1.0)
    killed_at.append(time.time() * 1000)
    server.kill9()
    time.sleep(0.5)
    server.start()
    thread.join(timeout=120)
    producer.close()
    return killed_at[0]


def test_redis_kill9_restart_aof_always(redis_proc: Callable[..., RedisProc], workers: Workers,
                                        ledger: Path) -> None:
    """appendfsync always: nothing a producer was told was published is lost, no acked
    job runs again, and every other invariant holds across the restart."""
    server = redis_proc(appendfsync="always")
    app, t = ledger_app(server.url)
    pub = Published()
    _kill9_during_publishing(server, app, t, workers, pub, 1500)
    res = finish(server.client(), "redis kill -9 + restart, AOF always", pub, ledger, workers,
                 notes=[f"{len(pub.errors)} publish call(s) failed during the outage"])
    res.assert_ok(workers.logs())


def test_redis_kill9_restart_aof_everysec(redis_proc: Callable[..., RedisProc], workers: Workers,
                                          ledger: Path) -> None:
    """appendfsync everysec: measures the loss window. Lost jobs (told published, gone
    after the restart) and bodies run again because their ack was lost are tolerated
    and reported; a lost job must have been told published within 2 s of the kill
    (everysec's documented bound), everything else must hold."""
    server = redis_proc(appendfsync="everysec")
    app, t = ledger_app(server.url)
    pub = Published()
    killed_at = _kill9_during_publishing(server, app, t, workers, pub, 1500)
    res = finish(server.client(), "redis kill -9 + restart, AOF everysec", pub, ledger, workers,
                 tolerate=["lost", RERUN_AFTER_ACK], record=False,
                 notes=[f"{len(pub.errors)} publish call(s) failed during the outage"])
    lost = [v.split()[1].rstrip(":") for v in res.tolerated if v.startswith("[lost]")]
    windows = sorted(killed_at - pub.told_ms[j] for j in lost)
    res.notes.append(f"loss window: {len(lost)} lost, told {windows[-1]:.0f} ms before the kill at most"
                     if lost else "loss window: nothing lost (a process kill leaves the page cache; "
                                  "only a host crash loses everysec's last second)")
    res.record()
    res.assert_ok(workers.logs())
    assert all(w <= 2000 for w in windows), f"lost jobs told published long before the kill: {windows}"


# -- script cache and connections -------------------------------------------------------------


def test_script_flush_in_a_loop(redis_proc: Callable[..., RedisProc], workers: Workers, ledger: Path) -> None:
    """SCRIPT FLUSH every 2-50 ms while 2 workers run 2,000 plain and 300 grouped jobs
    published meanwhile, max_attempts 1 (a lease lost to the fault fails its job
    without a run). Every invariant, nothing tolerated."""
    server = redis_proc()
    app, t = ledger_app(server.url)
    for _ in range(2):
        workers.start(server.url, "-Q", QUEUES, "-c", "8")
    flusher = server.client()
    loop = Loop(lambda: flusher.script_flush(), jitter(0.002, 0.05))
    pub = Published()
    run_under(loop, server, app, mixed_jobs(t, 2000, 300, 5, max_attempts=1), pub)
    res = finish(server.client(), "SCRIPT FLUSH every 2-50 ms", pub, ledger, workers, group_limits=LIMITS,
                 notes=[f"{loop.count} flushes"])
    res.assert_ok(workers.logs())


def test_client_kill_in_a_loop(redis_proc: Callable[..., RedisProc], workers: Workers, ledger: Path) -> None:
    """CLIENT KILL TYPE normal SKIPME yes every 100 ms (every worker, producer and
    ledger connection) while 2 workers run 2,000 plain and 300 grouped jobs published
    meanwhile, max_attempts 1: a script call whose connection dies after Redis ran it
    must not lose the lease it granted. Every invariant, nothing tolerated."""
    server = redis_proc()
    app, t = ledger_app(server.url)
    for _ in range(2):
        workers.start(server.url, "-Q", QUEUES, "-c", "8")
    killer = server.client()
    killed: list[int] = []
    loop = Loop(lambda: killed.append(killer.client_kill_filter(_type="normal", skipme=True)),
                lambda: 0.1)
    pub = Published()
    run_under(loop, server, app, mixed_jobs(t, 2000, 300, 5, max_attempts=1), pub)
    res = finish(server.client(), "CLIENT KILL TYPE normal every 100 ms", pub, ledger, workers,
                 group_limits=LIMITS, notes=[f"{loop.count} kill rounds, {sum(killed)} connections killed"])
    res.assert_ok(workers.logs())


def test_proxy_drops_replies(redis_proc: Callable[..., RedisProc], workers: Workers, ledger: Path) -> None:
    """The workers reach Redis through a loopback proxy that every 100 ms closes a
    connection after Redis ran a call and before its reply is forwarded. Two workers,
    2,000 plain and 300 grouped jobs, max_attempts 1. Every invariant, nothing
    tolerated: a replayed call must not lose a lease (its job would fail without a
    run), burn an attempt, or run a body again."""
    server = redis_proc()
    app, t = ledger_app(server.url)
    proxy = ReplyDropProxy(server.port, every_s=0.1)
    try:
        for _ in range(2):
            workers.start(proxy.url, "-Q", QUEUES, "-c", "8", direct_url=server.url)
        pub = Published()
        run_under(None, server, app, mixed_jobs(t, 2000, 300, 5, max_attempts=1), pub, settle_s=60)
    finally:
        proxy.stop()
    res = finish(server.client(), "proxy drops a reply every 100 ms", pub, ledger, workers,
                 group_limits=LIMITS, notes=[f"{proxy.dropped} replies dropped"])
    res.assert_ok(workers.logs())


# -- a frozen server, a full server ----------------------------------------------------------


def test_debug_sleep_longer_than_the_leases(redis_proc: Callable[..., RedisProc], workers: Workers,
                                            ledger: Path) -> None:
    """DEBUG SLEEP 3 freezes Redis for 3 s with 1 s leases and 300 + 100 grouped jobs of
    300 ms running. When it wakes, leases of bodies still running may be reaped before their
    heartbeat lands: two runs of one job and a group over its limit are then
    at-least-once behaviour (tolerated, reported). Checked: every job ends once, none
    fails without running, no body runs after its ack, workers survive."""
    server = redis_proc()
    app, t = ledger_app(server.url, timeout_ms=1000)
    for _ in range(2):
        workers.start(server.url, "-Q", QUEUES, "-c", "8")
    pub = Published()
    for queue, batch in mixed_jobs(t, 300, 100, 300):
        publish(app.client, queue, batch, pub)
    time.sleep(1.0)
    server.client().execute_command("DEBUG", "SLEEP", "3")
    res = finish(server.client(), "DEBUG SLEEP 3 s with 1 s leases", pub, ledger, workers,
                 group_limits=LIMITS, tolerate=[JOB_OVERLAP, GROUP_OVER_LIMIT])
    res.assert_ok(workers.logs())


def is_full(error: str) -> bool:
    return "OOM" in error or "maxmemory" in error


def test_maxmemory_noeviction(redis_proc: Callable[..., RedisProc], workers: Workers, ledger: Path) -> None:
    """maxmemory 3 MB above the empty server's use, noeviction: a producer publishes
    6,000 jobs of ~1 KB in chunks of 100 (refused chunks retried) before and
    while 2 workers drain them. Checked: the producer is refused (OOM) rather than
    told and then lost, the workers keep draining (no crash, no stuck queue), every
    invariant holds."""
    server = redis_proc("--maxmemory-policy", "noeviction")
    admin = server.client()
    used = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory", str(used + 3 * 1024 * 1024))
    app, t = ledger_app(server.url)
    pad = "x" * 1000
    batch = specs(t["work"], ({"n": i, "sleep_ms": 1, "pad": pad} for i in range(6000)))
    pub = Published()
    first = threading.Thread(target=publish, args=(app.client, Q_WORK, batch, pub),
                             kwargs={"chunk": 100, "retry_for_s": 60})
    first.start()
    # Start the workers once the producer has been refused, so the server is full.
    deadline = time.monotonic() + 20
    while not any(is_full(e) for e in pub.errors) and first.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    oom_before_workers = sum(is_full(e) for e in pub.errors)
    for _ in range(2):
        workers.start(server.url, "-Q", Q_WORK, "-c", "8")
    first.join(timeout=90)
    alive = [w.alive() for w in workers.all]
    memory = admin.info("memory")
    prefixes: dict[str, int] = {}
    for key in admin.scan_iter(count=1000):
        head = key.split(":")[1] if key.startswith("{") and ":" in key else key[:12]
        prefixes[head] = prefixes.get(head, 0) + 1
    top = sorted(prefixes.items(), key=lambda kv: -kv[1])[:4]
    res = finish(admin, "maxmemory + noeviction (3 MB headroom)", pub, ledger, workers, settle_s=30,
                 notes=[f"{sum(is_full(e) for e in pub.errors)} refusals (full) to the producer "
                        f"({oom_before_workers} before workers started)", f"workers alive: {alive}",
                        f"at the end used_memory {int(memory['used_memory']) - used} B over the empty "
                        f"server's (limit +3 MB), {admin.dbsize()} keys, most {top}"])
    res.assert_ok(workers.logs())
    assert oom_before_workers > 0, "the server never filled: lower the headroom"
    assert all(alive), f"a worker died under OOM\n{workers.logs()}"
