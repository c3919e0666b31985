"""Faults of the embedded server (embedded://): its redis-server SIGKILLed while workers
run (the supervisor restarts it from the AOF), a worker SIGKILLed (the server stays for
the others), and every user gone (the server stops, nothing left running).

Workers are real CLI workers on ``embedded://<dir>``; the producer and the checker
attach to the same folder, so they are users of the server too.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis

from omniq_tasks import App
from omniq_tasks.protocol import embedded
from reliability.harness import Published, Workers, finish, publish, specs, wait_for
from reliability.ledger_app import Q_GROUPED, Q_WORK, build

QUEUES = f"{Q_WORK},{Q_GROUPED}"


def server_pid(r: redis.Redis) -> int:
    return int(r.info("server")["process_id"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, OSError):
        return False


@pytest.fixture()
def folder(workdir: Path) -> Iterator[Path]:
    path = workdir / "omniq-data"
    yield path
    embedded.release(path, wait_for_stop=True)


def test_embedded_server_kill9_while_workers_run(folder: Path, workers: Workers, ledger: Path) -> None:
    """The server process is SIGKILLed twice while 2 workers run 1,500 jobs (500 in
    groups of limit 2) and a producer publishes; the supervisor starts it again from
    the AOF, the workers reconnect, and every invariant holds: nothing lost, nothing
    run after its ack, no group over its limit. Then one worker is SIGKILLed: the
    server stays up for the other users. When the last user is gone it stops."""
    url = f"embedded://{folder}"
    app = App("ledger", redis_url=url, max_attempts=5, timeout_ms=1500, backoff_ms=0)
    t = build(app)
    direct = embedded.attach(url).url
    r = redis.Redis.from_url(direct, decode_responses=True)
    started = [workers.start(url, "-Q", QUEUES, "-c", "8", direct_url=direct) for _ in range(2)]
    pub = Published()
    plain = specs(t["work"], ({"n": i, "sleep_ms": 5} for i in range(1000)))
    grouped = specs(t["grouped"], ({"g": str(i % 10), "n": i, "sleep_ms": 5} for i in range(500)))
    pids = []
    for round_no, start in enumerate(range(0, 1000, 100)):
        publish(app.client, Q_WORK, plain[start:start + 100], pub, chunk=100)
        publish(app.client, Q_GROUPED, grouped[start // 2:start // 2 + 50], pub, chunk=50)
        if round_no in (3, 6):
            pids.append(server_pid(r))
            os.kill(pids[-1], signal.SIGKILL)
            wait_for(lambda: embedded.answers_ping(embedded.socket_path(folder)), 20, "the server back")
        time.sleep(0.2)
    assert server_pid(r) not in pids, "the server was not restarted"
    res = finish(r, "embedded server kill -9 twice (supervisor restarts it from the AOF)", pub, ledger,
                 workers, record=False, group_limits={Q_GROUPED: 2})
    res.assert_ok(workers.logs())

    # A killed user: the others keep the server. (finish() killed the workers: start one.)
    survivor, victim = (workers.start(url, "-Q", QUEUES, direct_url=direct) for _ in range(2))
    pid = server_pid(r)
    victim.kill()
    time.sleep(5 * embedded.POLL_S)
    assert alive(pid) and server_pid(r) == pid
    res.record()

    # Every user gone: the server stops.
    survivor.kill()
    r.close()
    app.close()
    embedded.release(folder, wait_for_stop=True)
    wait_for(lambda: not alive(pid), 10, "the server to stop after its last user")
    assert started  # the first workers were users too, all gone now
