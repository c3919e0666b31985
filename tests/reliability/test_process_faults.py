"""Faults of the worker processes: SIGKILL, SIGSTOP, poison pills, two reapers, a skewed clock.

Each test drives CLI worker processes against its own redis-server and ends with the
one checker (harness.check); the invariants a fault legitimately breaks are named
in ``tolerate`` and only reported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from omniq_tasks import App, OmniqClient
from reliability.harness import (GROUP_OVER_LIMIT, JOB_OVERLAP, SOAK, HERE, Published, RedisProc,
                                 Workers, finish, lanes_busy, publish, specs, wait_for)
from reliability.ledger_app import Q_GROUPED, Q_POISON, Q_WORK, build

LIMITS = {Q_GROUPED: 2}
# SIGKILL test: the 5,000 jobs by default, four times as many with OMNIQ_SOAK=1.
PLAIN, GROUPED = (16_000, 4_000) if SOAK else (4_000, 1_000)


def ledger_app(url: str, **options: Any) -> tuple[App, dict[str, Any]]:
    """The ledger tasks on an App of the test's own (same names and options as the worker's)."""
    defaults = {"max_attempts": 5, "timeout_ms": 1500, "backoff_ms": 0}
    app = App("ledger", redis_url=url, **{**defaults, **options})
    return app, build(app)


def test_sigkill_every_second_three_workers_5000_jobs(
        redis_proc: Callable[..., RedisProc], workers: Workers, ledger: Path) -> None:
    """3 workers share 5,000 jobs (4,000 plain, 1,000 in 20 groups of limit 2); every
    second one of them is SIGKILLed and a new one started. Checks every invariant."""
    server = redis_proc()
    app, t = ledger_app(server.url)
    queues = f"{Q_WORK},{Q_GROUPED}"
    live = [workers.start(server.url, "-Q", queues, "-c", "16", ready=False) for _ in range(3)]
    for w in live:
        w.wait_ready()
    pub = Published()
    # 100 ms bodies: 5,000 of them keep 48 slots busy for about 10 s.
    publish(app.client, Q_WORK, specs(t["work"], ({"n": i, "sleep_ms": 100} for i in range(PLAIN))), pub)
    publish(app.client, Q_GROUPED, specs(t["grouped"], ({"g": str(i % 20), "n": i, "sleep_ms": 100}
                                                        for i in range(GROUPED))), pub)
    kills = 0
    deadline = time.monotonic() + (600 if SOAK else 120)
    r = server.client()
    while lanes_busy(r, [Q_WORK, Q_GROUPED]) and time.monotonic() < deadline:
        time.sleep(1.0)
        victim = live.pop(0)
        victim.kill()
        kills += 1
        live.append(workers.start(server.url, "-Q", queues, "-c", "16", ready=False))
    res = finish(r, f"SIGKILL a worker every second (3 workers, {PLAIN + GROUPED:,} jobs)", pub, ledger, workers,
                 group_limits=LIMITS, notes=[f"{kills} SIGKILLs"])
    assert kills >= 3, "the jobs ran before the fault could act: make them longer"
    res.assert_ok(workers.logs())


def test_sigstop_past_the_lease_then_sigcont(
        redis_proc: Callable[..., RedisProc], workers: Workers, ledger: Path) -> None:
    """Worker A is SIGSTOPped for 3 s with 1 s leases, then SIGCONTed (twice). B reaps
    A's leases and runs those jobs again while A's bodies are frozen mid-run: two runs
    of one job and a group over its limit are then legitimate (tolerated, reported).
    Checked: every job ends once, none fails without running, no body runs after its
    ack (A must not start, after SIGCONT, a job it leased before the stop whose lease
    has since ended), A's late finishes are not acked (it logs the lost leases) and A
    keeps working."""
    server = redis_proc()
    app, t = ledger_app(server.url, timeout_ms=1000)
    queues = f"{Q_WORK},{Q_GROUPED}"
    a = workers.start(server.url, "-Q", queues, "-c", "8")
    b = workers.start(server.url, "-Q", queues, "-c", "8")
    pub = Published()
    publish(app.client, Q_WORK, specs(t["work"], ({"n": i, "sleep_ms": 50} for i in range(400))), pub)
    publish(app.client, Q_GROUPED, specs(t["grouped"], ({"g": str(i % 5), "n": i, "sleep_ms": 50}
                                                        for i in range(100))), pub)
    frozen: list[tuple[int, float]] = []
    for _ in range(2):  # twice: a stop that lands between a lease and its body's start is a race
        time.sleep(0.7)
        frozen.append((a.pid, time.time() * 1000))
        a.signal(signal.SIGSTOP)
        time.sleep(3.0)
        a.signal(signal.SIGCONT)
    cont_ms = time.time() * 1000
    r = server.client()
    # More work after SIGCONT, to see that A still takes jobs.
    publish(app.client, Q_WORK, specs(t["work"], ({"n": 1000 + i, "sleep_ms": 20} for i in range(200))), pub)
    res = finish(r, "SIGSTOP a worker 3 s past its 1 s leases, then SIGCONT (x2)", pub, ledger, workers,
                 group_limits=LIMITS, tolerate=[JOB_OVERLAP, GROUP_OVER_LIMIT], frozen=frozen)
    from reliability.harness import read_ledger
    a_after = sum(1 for runs in read_ledger(ledger).values() for run in runs
                  if run.pid == a.pid and run.start > cont_ms)
    res.assert_ok(workers.logs())
    assert "lease lost" in a.log(), a.log()[-3000:]
    assert a_after > 0, "worker A took no job after SIGCONT"


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_poison_pills(pool: str, redis_proc: Callable[..., RedisProc], workers: Workers,
                      ledger: Path) -> None:
    """Among 200 plain jobs: a task that calls os._exit, one that SIGSEGVs itself, one
    that raises, one that raises SystemExit, and three bad payloads (unknown task,
    wrong argument type, not an envelope). Two workers, restarted when they die (as a
    supervisor would). Checked: every invariant; every plain job completes; each
    poison fails after running (max_attempts 2); the bad payloads fail without a run
    and without burning attempts; with --pool processes no worker process dies."""
    server = redis_proc()
    app, t = ledger_app(server.url)
    args = ["-Q", f"{Q_POISON},{Q_WORK}", "--pool", pool, "-c", "2" if pool == "processes" else "8"]
    live = [workers.start(server.url, *args, ready=False) for _ in range(2)]
    for w in live:
        w.wait_ready()
    pub = Published()
    plain = specs(t["work"], ({"n": i, "sleep_ms": 20} for i in range(200)))
    publish(app.client, Q_WORK, plain, pub)
    poisons = {mode: t["poison"].encode_call((), {"mode": mode, "sleep_ms": 100}, max_attempts=2, timeout_ms=1000)
               for mode in ("exit", "segv", "raise", "sysexit")}
    publish(app.client, Q_POISON, list(poisons.values()), pub)
    bad_payloads = [b'{"task":"ledger.nope","args":[],"kwargs":{"x":1}}',
                    b'{"task":"ledger.poison","args":[],"kwargs":{"mode":5}}',
                    b'{"not":"an envelope"}']
    for payload in bad_payloads:
        job = app.client.publish_json(Q_POISON, payload, max_attempts=2, timeout_ms=1000, backoff_ms=0)
        pub.add(Q_POISON, [job.job_id], bad=True)

    restarts = 0
    stop = threading.Event()

    def supervise() -> None:
        nonlocal restarts
        while not stop.wait(0.2):
            for i, w in enumerate(live):
                if not w.alive():
                    restarts += 1
                    live[i] = workers.start(server.url, *args, ready=False)

    supervisor = threading.Thread(target=supervise, daemon=True)
    supervisor.start()
    r = server.client()
    try:
        from reliability.harness import wait_settled
        wait_settled(r, [Q_WORK, Q_POISON], 60)
    finally:
        stop.set()
        supervisor.join()
    res = finish(r, f"poison pills, --pool {pool}", pub, ledger, workers, settle_s=5,
                 notes=[f"{restarts} worker restart(s)"])
    res.assert_ok(workers.logs())
    states = {mode: r.hmget("{" + Q_POISON + "}:job:" + spec.job_id, "state", "attempt")
              for mode, spec in poisons.items()}
    assert all(s == ["failed", "2"] for s in states.values()), states
    plain_states = [r.hget("{" + Q_WORK + "}:job:" + s.job_id, "state") for s in plain]
    assert all(s in (None, "completed") for s in plain_states), \
        f"plain jobs that did not complete: {[s for s in plain_states if s not in (None, 'completed')]}"
    if pool == "processes":
        assert restarts == 0, f"a poison pill took the whole worker down ({restarts} restarts)\n{workers.logs()}"


REAPER = r"""
import sys, time
from omniq_tasks import OmniqClient
client = OmniqClient(sys.argv[1])
until = time.monotonic() + float(sys.argv[2])
reaped = 0
while time.monotonic() < until:
    reaped += client.reap_expired(sys.argv[3])
print(reaped)
"""


def test_two_reapers_at_once(redis_proc: Callable[..., RedisProc], workers: Workers, ledger: Path) -> None:
    """Worker A leases 8 long jobs and is SIGKILLed; two reaper processes call
    reap_expired in a tight loop while worker B (which reaps too) runs those and 500
    more short jobs. Checked: every invariant, each abandoned lease is reaped once
    (the reapers' counts add up to the killed leases and the next run's attempt is
    exactly one more), no job runs twice at once."""
    server = redis_proc()
    app, t = ledger_app(server.url, timeout_ms=1000)
    a = workers.start(server.url, "-Q", Q_WORK, "-c", "8")
    pub = Published()
    long_jobs = specs(t["work"], ({"n": i, "sleep_ms": 3000} for i in range(8)))
    publish(app.client, Q_WORK, long_jobs, pub)
    r = server.client()
    wait_for(lambda: r.zcard("{" + Q_WORK + "}:active") == 8, 10, "A to lease the 8 long jobs")
    time.sleep(0.3)
    a.kill()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    reapers = [subprocess.Popen([sys.executable, "-c", REAPER, server.url, "6", Q_WORK],
                                stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    publish(app.client, Q_WORK, specs(t["work"], ({"n": 100 + i, "sleep_ms": 5} for i in range(500))), pub)
    workers.start(server.url, "-Q", Q_WORK, "-c", "8")
    reaped = [int(p.communicate(timeout=30)[0].strip() or 0) for p in reapers]
    res = finish(r, "two reapers at once (+ the worker's own)", pub, ledger, workers,
                 notes=[f"reapers reaped {reaped}"])
    res.assert_ok(workers.logs())
    from reliability.harness import read_ledger
    runs = read_ledger(ledger)
    for spec in long_jobs:
        attempts = [run.attempt for run in runs.get(spec.job_id, [])]
        assert attempts == list(range(1, len(attempts) + 1)), (spec.job_id, attempts)
    assert sum(reaped) <= 8


SKEW = '''
import os, time
_skew = float(os.environ.get("OMNIQ_TEST_CLOCK_SKEW_S", "0") or 0)
if _skew:  # this process's wall clock is off by _skew seconds (monotonic is not)
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + _skew
    time.time_ns = lambda: _time_ns() + int(_skew * 1e9)
'''

SKEWED_PRODUCER = r"""
import sys, time
assert abs(time.time() - float(sys.argv[1])) > 60, "the clock skew shim is not active"
from ledger_app import tasks
for i in range(10):
    print(tasks["work"].apply_async(kwargs={"n": 5000 + i}, countdown=0.5).id)
"""


def test_client_clock_skewed_by_minutes(redis_proc: Callable[..., RedisProc], workers: Workers,
                                        ledger: Path, workdir: Path) -> None:
    """One worker's wall clock runs 5 minutes ahead, the other's 5 minutes behind (a
    sitecustomize shifts time.time/time_ns); producers with the same skews publish
    jobs with a 0.5 s countdown. 1 s leases, some bodies of 2.5 s that only survive
    by heartbeats. Checked: every invariant with nothing tolerated (no lease reaped
    early: no job runs twice at once), and the countdown jobs run within seconds."""
    server = redis_proc()
    app, t = ledger_app(server.url, timeout_ms=1000)
    shim = workdir / "skew"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SKEW)
    queues = f"{Q_WORK},{Q_GROUPED}"
    for skew in ("300", "-300"):
        workers.start(server.url, "-Q", queues, "-c", "8", pythonpath=[str(shim)],
                      env={"OMNIQ_TEST_CLOCK_SKEW_S": skew})
    pub = Published()
    publish(app.client, Q_WORK, specs(t["work"], ({"n": i, "sleep_ms": 2500} for i in range(6))), pub)
    publish(app.client, Q_WORK, specs(t["work"], ({"n": 100 + i, "sleep_ms": 10} for i in range(600))), pub)
    publish(app.client, Q_GROUPED, specs(t["grouped"], ({"g": str(i % 5), "n": i, "sleep_ms": 10}
                                                        for i in range(100))), pub)
    env = {**os.environ, "OMNIQ_TASKS_REDIS_URL": server.url,
           "PYTHONPATH": os.pathsep.join([str(shim), str(HERE), os.environ.get("PYTHONPATH", "")])}
    for skew in ("300", "-300"):
        out = subprocess.run([sys.executable, "-c", SKEWED_PRODUCER, str(time.time())], capture_output=True,
                             text=True, env={**env, "OMNIQ_TEST_CLOCK_SKEW_S": skew}, timeout=60)
        assert out.returncode == 0, out.stderr
        pub.add(Q_WORK, out.stdout.split())
    res = finish(server.client(), "worker and producer clocks skewed by ±5 min", pub, ledger, workers,
                 settle_s=30, group_limits=LIMITS)
    res.assert_ok(workers.logs())
