"""The runners on their own: ThreadRunner and the process pool, driven in-process.

A runner must never die and never lose a slot, whatever a job does: a payload the
decoder cannot take (100,000 nested lists), a task raising SystemExit,
KeyboardInterrupt, MemoryError or an exception whose str() raises, or a task that
kills its process. Each job is reported exactly once through ``on_done``; a dead
child charges only its own job and is replaced. ``stop()`` returns promptly.

The end-to-end tests at the bottom run the same cases through the CLI worker and
check the job hashes and lanes in Redis. Tasks live in tests/runner_apps/poison.py.
"""

from __future__ import annotations

import logging
import os
import queue as queue_mod
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import msgspec
import pytest
import redis

import omniq_tasks
from omniq_tasks import OmniqClient
from omniq_tasks.protocol.models import ReservedJob
from omniq_tasks.envelope import build_envelope
from omniq_tasks.outcome import Outcome
from omniq_tasks.worker.process_pool import ProcessRunner
from omniq_tasks.worker.runners import ThreadRunner
from cli_worker import CliWorker, gone
from redis_server import RedisServer
from runner_apps import poison

TESTS_DIR = Path(__file__).resolve().parent
APP_PATH = "runner_apps.poison:app"
DEPTH = 100_000
DEEP_ENVELOPE = '{"task":"ok","args":' + "[" * DEPTH + "]" * DEPTH + "}"
DEEP_LIST = "[" * DEPTH + "]" * DEPTH


def payload(task: str, **kwargs: Any) -> str:
    return build_envelope(task, msgspec.json.encode(kwargs)).decode()


def make_job(job_id: str, task: str = "", *, queue: str = "pq", raw: str | None = None,
             attempt: int = 1, max_attempts: int = 3, **kwargs: Any) -> ReservedJob:
    return ReservedJob(queue=queue, job_id=job_id, payload=raw if raw is not None else payload(task, **kwargs),
                       lock_until_ms=0, attempt=attempt, max_attempts=max_attempts, gid="",
                       lease_token="t" * 40, timeout_ms=5000)


class Reports:
    """The on_done callback: every report, in order, for the test to wait on."""

    def __init__(self) -> None:
        self._queue: queue_mod.SimpleQueue[tuple[ReservedJob, Outcome]] = queue_mod.SimpleQueue()
        self.seen: dict[str, list[Outcome]] = {}

    def __call__(self, job: ReservedJob, outcome: Outcome) -> None:
        self._queue.put((job, outcome))

    def wait(self, job_ids: list[str], timeout: float = 15.0) -> dict[str, Outcome]:
        deadline = time.monotonic() + timeout
        while not all(j in self.seen for j in job_ids):
            left = deadline - time.monotonic()
            try:
                job, outcome = self._queue.get(timeout=max(left, 0.001))
            except queue_mod.Empty:
                missing = [j for j in job_ids if j not in self.seen]
                raise AssertionError(f"no report for {missing} within {timeout} s; got {self.seen}") from None
            self.seen.setdefault(job.job_id, []).append(outcome)
        for j in job_ids:
            assert len(self.seen[j]) == 1, f"{j} reported {len(self.seen[j])} times: {self.seen[j]}"
        return {j: self.seen[j][0] for j in job_ids}

    def none_within(self, seconds: float) -> None:
        try:
            job, outcome = self._queue.get(timeout=seconds)
        except queue_mod.Empty:
            return
        raise AssertionError(f"unexpected report {job.job_id}: {outcome}")


def notes(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    return [(tag, int(pid)) for tag, pid in (line.split() for line in path.read_text().splitlines())]


def wait_note(path: Path, tag: str, timeout: float = 15.0) -> int:
    """The pid that noted ``tag``, once it has."""
    deadline = time.monotonic() + timeout
    while True:
        for seen, pid in notes(path):
            if seen == tag:
                return pid
        if time.monotonic() > deadline:
            raise AssertionError(f"{tag!r} never noted in {path}: {notes(path)}")
        time.sleep(0.02)


# -- what every runner must survive ------------------------------------------------------------

# (job id, task, kwargs, error prefix); none of these is final: a retry might succeed
TASK_FAILURES: list[tuple[str, str, dict[str, Any], str]] = [
    ("system-exit", "raises", {"kind": "system_exit"}, "SystemExit: 4\n"),
    ("keyboard", "raises", {"kind": "keyboard_interrupt"}, "KeyboardInterrupt: \n"),
    ("memory", "raises", {"kind": "memory_error"}, "MemoryError: out of memory (simulated)\n"),
    ("bad-str", "raises", {"kind": "bad_str"}, "BadStr: <exception str() failed>"),
    ("exiting-str", "raises", {"kind": "exiting_str"}, "ExitingStr: <exception str() failed>"),
    ("weird", "raises", {"kind": "weird"}, "Weird: <exception str() failed>"),
    ("recursion", "raises", {"kind": "recursion"}, "RecursionError: maximum recursion depth exceeded"),
    ("a-system-exit", "araises", {"kind": "system_exit"}, "SystemExit: 5\n"),
    ("a-keyboard", "araises", {"kind": "keyboard_interrupt"}, "KeyboardInterrupt: \n"),
    ("a-cancelled", "araises", {"kind": "cancelled"}, "CancelledError: "),
    ("a-weird", "araises", {"kind": "weird"}, "Weird: <exception str() failed>"),
    ("a-exiting-str", "araises", {"kind": "exiting_str"}, "ExitingStr: <exception str() failed>"),
]
DECODE_ERROR = "payload could not be decoded: "


def is_depth_error(error: str) -> bool:
    """The decoder's own refusal of deep nesting, or the RecursionError it would hit."""
    return error.startswith(DECODE_ERROR) and ("deeper than" in error or "RecursionError" in error)


def failure_jobs() -> list[ReservedJob]:
    jobs = [make_job(job_id, task, **kwargs) for job_id, task, kwargs, _ in TASK_FAILURES]
    jobs.append(make_job("deep-envelope", raw=DEEP_ENVELOPE))
    jobs.append(make_job("deep-raw", queue="rawq", raw=DEEP_LIST))
    jobs.append(make_job("decoder-crash", queue="boomq", raw='{"n": 1}'))
    return jobs


def check_failures(got: dict[str, Outcome]) -> None:
    for job_id, task, _, prefix in TASK_FAILURES:
        outcome = got[job_id]
        assert (outcome.ok, outcome.task, outcome.final) == (False, task, False), (job_id, outcome)
        assert outcome.error.startswith(prefix), (job_id, outcome.error)
    for job_id in ("deep-envelope", "deep-raw"):
        outcome = got[job_id]
        assert (outcome.ok, outcome.final) == (False, True), (job_id, outcome)
        assert is_depth_error(outcome.error), (job_id, outcome.error)
        assert len(outcome.error) < 300  # one clear line, no 100,000-frame story
    crash = got["decoder-crash"]
    assert crash == Outcome(False, "boom", DECODE_ERROR + "RecursionError: maximum recursion depth exceeded "
                            "(simulated)", final=True)


def test_thread_runner_reports_every_failure_and_keeps_its_only_thread(tmp_path: Path) -> None:
    reports = Reports()
    runner = ThreadRunner(poison.app, 1, reports)
    try:
        jobs = failure_jobs()
        for job in jobs:
            runner.submit(job)
        check_failures(reports.wait([j.job_id for j in jobs]))
        # the single slot still runs jobs, sync and async
        runner.submit(make_job("after", "ok", path=str(tmp_path / "n"), tag="after"))
        runner.submit(make_job("async-after", "asleepy", path=str(tmp_path / "n"), tag="a", seconds=0.0))
        got = reports.wait(["after", "async-after"])
        assert got["after"] == Outcome(True, "ok") and got["async-after"] == Outcome(True, "asleepy")
    finally:
        runner.stop()


def test_thread_runner_stop_returns_at_once_and_drops_late_results(tmp_path: Path) -> None:
    reports = Reports()
    runner = ThreadRunner(poison.app, 4, reports)
    path = tmp_path / "n"
    for n in range(2):
        runner.submit(make_job(f"busy-{n}", "sleepy", path=str(path), tag=f"busy-{n}", seconds=1.2))
    runner.submit(make_job("abusy", "asleepy", path=str(path), tag="abusy", seconds=1.2))
    runner.submit(make_job("quick", "ok", path=str(path), tag="quick"))
    assert reports.wait(["quick"])["quick"].ok
    for tag in ("busy-0", "busy-1", "abusy"):
        wait_note(path, tag + "-start")
    started = time.monotonic()
    runner.stop()
    took = time.monotonic() - started
    assert took < 0.6, f"stop took {took:.2f} s with 3 busy jobs"
    wait_note(path, "busy-0-end", timeout=5)
    wait_note(path, "busy-1-end", timeout=5)
    reports.none_within(0.3)  # finished after stop: not reported


# -- the process pool ---------------------------------------------------------------------------


@pytest.fixture()
def pool_reports() -> Iterator[Callable[[int], tuple[ProcessRunner, Reports]]]:
    made: list[ProcessRunner] = []

    def make(size: int, app_path: str = APP_PATH) -> tuple[ProcessRunner, Reports]:
        reports = Reports()
        runner = ProcessRunner(app_path, size, reports)
        made.append(runner)
        return runner, reports

    yield make
    for runner in made:
        runner.stop()


MIDDLEWARE_APP = """
import os
from omniq_tasks import App
from omniq_tasks.outcome import Outcome
from omniq_tasks.middleware import Middleware

class InChild(Middleware):
    def before_run(self, job):
        self.pid = os.getpid()

    def after_run(self, job, outcome):
        # Proves both hooks ran in the child, and that a replaced outcome crosses whole.
        return Outcome(outcome.ok, outcome.task, f"ran in {self.pid}", result=outcome.result,
                       retry_at_ms=1_700_000_000_123, duration_ms=outcome.duration_ms)

app = App("with-middleware", queue="pq", middleware=[InChild()])

@app.task(name="pair")
def pair(a: int) -> tuple[int, str]:
    return a, str(os.getpid())
"""


def test_process_pool_carries_the_whole_outcome_and_runs_the_hooks_in_the_child(
        pool_reports: Callable[..., tuple[ProcessRunner, Reports]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mw_app.py").write_text(MIDDLEWARE_APP)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned children get our sys.path
    runner, reports = pool_reports(1, "mw_app:app")
    runner.submit(make_job("pair-1", "pair", a=5))
    outcome = reports.wait(["pair-1"])["pair-1"]
    child = msgspec.json.decode(outcome.result)
    assert outcome.ok and outcome.task == "pair" and child[0] == 5 and int(child[1]) != os.getpid()
    assert outcome.error == f"ran in {child[1]}" and outcome.retry_at_ms == 1_700_000_000_123
    assert outcome.duration_ms > 0


def test_process_pool_child_exit_charges_only_its_job(
        pool_reports: Callable[[int], tuple[ProcessRunner, Reports]], tmp_path: Path) -> None:
    runner, reports = pool_reports(2)
    path = str(tmp_path / "n")
    runner.submit(make_job("long", "sleepy", path=path, tag="long", seconds=1.0))
    wait_note(tmp_path / "n", "long-start")
    runner.submit(make_job("dies", "exits", path=path, tag="dies", code=3, attempt=2, max_attempts=3))
    runner.submit(make_job("next-1", "ok", path=path, tag="next-1"))
    runner.submit(make_job("next-2", "ok", path=path, tag="next-2"))
    got = reports.wait(["long", "dies", "next-1", "next-2"])

    assert got["long"] == Outcome(True, "sleepy")
    assert got["next-1"] == Outcome(True, "ok") and got["next-2"] == Outcome(True, "ok")
    dead = got["dies"]
    assert (dead.ok, dead.task, dead.final) == (False, "exits", False)
    dead_pid = wait_note(tmp_path / "n", "dies")
    assert dead.error == f"worker process died: exit code 3 (pid {dead_pid}, attempt 2 of 3)"
    assert gone(dead_pid)
    # the pool is back to two children: two slow jobs run side by side, neither in the dead one
    for n in range(2):
        runner.submit(make_job(f"pair-{n}", "sleepy", path=path, tag=f"pair-{n}", seconds=0.5))
    reports.wait(["pair-0", "pair-1"])
    pids = {wait_note(tmp_path / "n", f"pair-{n}-start") for n in range(2)}
    assert len(pids) == 2 and dead_pid not in pids


def test_process_pool_sigkilled_child_and_idle_death(
        pool_reports: Callable[[int], tuple[ProcessRunner, Reports]], tmp_path: Path) -> None:
    runner, reports = pool_reports(1)
    path = str(tmp_path / "n")
    runner.submit(make_job("victim", "sleepy", path=path, tag="victim", seconds=30))
    pid = wait_note(tmp_path / "n", "victim-start")
    os.kill(pid, signal.SIGKILL)
    victim = reports.wait(["victim"])["victim"]
    assert (victim.ok, victim.task, victim.final) == (False, "sleepy", False)
    assert victim.error == f"worker process died: killed by signal SIGKILL (pid {pid}, attempt 1 of 3)"

    runner.submit(make_job("second", "ok", path=path, tag="second"))
    assert reports.wait(["second"])["second"].ok
    idle_pid = wait_note(tmp_path / "n", "second")
    assert idle_pid != pid
    os.kill(idle_pid, signal.SIGKILL)  # dies with no job: just replaced, nothing reported
    assert gone(idle_pid)
    runner.submit(make_job("third", "ok", path=path, tag="third"))
    assert reports.wait(["third"])["third"].ok
    assert wait_note(tmp_path / "n", "third") not in (pid, idle_pid)
    reports.none_within(0.1)


def test_process_pool_reports_every_failure_and_keeps_its_only_child(
        pool_reports: Callable[[int], tuple[ProcessRunner, Reports]], tmp_path: Path) -> None:
    runner, reports = pool_reports(1)
    jobs = failure_jobs()
    for job in jobs:
        runner.submit(job)
    check_failures(reports.wait([j.job_id for j in jobs], timeout=30))
    runner.submit(make_job("after", "ok", path=str(tmp_path / "n"), tag="after"))
    assert reports.wait(["after"])["after"] == Outcome(True, "ok")
    assert len({pid for _, pid in notes(tmp_path / "n")}) == 1  # no child died on the way


def test_process_pool_stop_ends_busy_children(
        pool_reports: Callable[[int], tuple[ProcessRunner, Reports]], tmp_path: Path) -> None:
    runner, reports = pool_reports(2)
    path = str(tmp_path / "n")
    runner.submit(make_job("stuck", "sleepy", path=path, tag="stuck", seconds=30))
    runner.submit(make_job("quick", "ok", path=path, tag="quick"))
    assert reports.wait(["quick"])["quick"].ok
    busy_pid = wait_note(tmp_path / "n", "stuck-start")
    idle_pid = wait_note(tmp_path / "n", "quick")
    started = time.monotonic()
    runner.stop()
    took = time.monotonic() - started
    assert took < 2.5, f"stop took {took:.2f} s"
    assert gone(busy_pid, 0.5) and gone(idle_pid, 0.5)
    reports.none_within(0.2)  # the job stopped by stop() is not reported as a crash


def test_process_pool_whose_children_cannot_start_backs_off_and_logs_once(
        pool_reports: Callable[[int], tuple[ProcessRunner, Reports]],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="omniq_tasks.worker")
    runner, reports = pool_reports(2, "runner_apps.broken:app")
    runner.submit(make_job("waits", "ok", path="/dev/null", tag="x"))
    time.sleep(3.0)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert "worker process could not start" in message and "runner_apps.broken refuses to import" in message
    starts = [r for r in caplog.records if r.getMessage().startswith("starting worker process")]
    assert 2 <= len(starts) <= 4, f"{len(starts)} starts in 3 s: not backing off"
    started = time.monotonic()
    runner.stop()
    assert time.monotonic() - started < 2.5
    reports.none_within(0.1)  # the job was never run, so never charged


# -- end to end: the CLI worker on the test Redis -----------------------------------------------


class Worker(CliWorker):
    """``python -m omniq_tasks worker runner_apps.poison:app ...`` in its own process group, started."""

    def __init__(self, redis_url: str, args: list[str], log_path: Path) -> None:
        super().__init__(TESTS_DIR, redis_url, APP_PATH, ["--poll-interval", "0.2", *args], log_path,
                         ready_text="worker for app runners", pythonpath=[str(TESTS_DIR)])
        self.wait_ready(15)


@pytest.fixture()
def start_worker(redis_server: RedisServer, r: redis.Redis, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(*args: str) -> Worker:
        worker = Worker(redis_server.url, list(args), tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


def job_hash(r: redis.Redis, job_id: str, queue: str = "pq") -> dict[str, str]:
    return r.hgetall("{" + queue + "}:job:" + job_id)


def wait_states(r: redis.Redis, wanted: dict[str, str], worker: Worker, timeout: float = 20.0,
                queue: str = "pq") -> None:
    deadline = time.monotonic() + timeout
    while True:
        now = {j: r.hget("{" + queue + "}:job:" + j, "state") for j in wanted}
        if now == wanted:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"states {now}, wanted {wanted}\nworker log:\n{worker.log()[-4000:]}")
        time.sleep(0.05)


def publish(client: OmniqClient, job_id: str, task: str, *, max_attempts: int = 1, **kwargs: Any) -> None:
    client.publish_json("pq", payload(task, **kwargs), job_id=job_id, max_attempts=max_attempts,
                        backoff_ms=0, timeout_ms=5000)


def publish_foreign(r: redis.Redis, queue: str, job_id: str, payload_text: str, max_attempts: int) -> None:
    """EVAL the protocol's enqueue script as another producer would: our client's checks are skipped."""
    script = (Path(omniq_tasks.__file__).parent / "lua" / "enqueue.lua").read_text()
    reply = r.eval(script, 1, "{" + queue + "}:meta", job_id, payload_text, max_attempts, 5000, 0, 0, 0, "", 0)
    assert reply[:2] == ["OK", job_id], reply


def test_e2e_os_exit_in_one_task_charges_only_that_job(
        client: OmniqClient, r: redis.Redis, start_worker: Callable[..., Worker], tmp_path: Path) -> None:
    path = str(tmp_path / "n")
    worker = start_worker("-Q", "pq", "--pool", "processes", "-c", "2")
    publish(client, "long", "sleepy", max_attempts=3, path=path, tag="long", seconds=1.0)
    wait_note(tmp_path / "n", "long-start")
    publish(client, "dies", "exits", max_attempts=1, path=path, tag="dies", code=3)
    for n in range(3):
        publish(client, f"ok-{n}", "ok", max_attempts=3, path=path, tag=f"ok-{n}")
    wait_states(r, {"long": "completed", "dies": "failed", "ok-0": "completed", "ok-1": "completed",
                    "ok-2": "completed"}, worker)

    dead_pid = wait_note(tmp_path / "n", "dies")
    dead = job_hash(r, "dies")
    assert (dead["attempt"], dead["max_attempts"]) == ("1", "1")
    assert dead["last_error"] == f"worker process died: exit code 3 (pid {dead_pid}, attempt 1 of 1)"
    for job_id in ("long", "ok-0", "ok-1", "ok-2"):
        assert job_hash(r, job_id)["attempt"] == "1", job_id  # not charged for the crash
    assert r.lrange("{pq}:failed", 0, -1) == ["dies"]
    assert sorted(r.lrange("{pq}:completed", 0, -1)) == ["long", "ok-0", "ok-1", "ok-2"]
    assert r.zcard("{pq}:active") == 0
    # the worker keeps running with a new child in place of the dead one
    publish(client, "later", "ok", path=path, tag="later")
    wait_states(r, {"later": "completed"}, worker)
    assert worker.proc.poll() is None
    assert wait_note(tmp_path / "n", "later") != dead_pid
    assert f"worker process {dead_pid} died (exit code 3)" in worker.log()


def test_e2e_sigkilled_child_fails_its_job_only(
        client: OmniqClient, r: redis.Redis, start_worker: Callable[..., Worker], tmp_path: Path) -> None:
    path = str(tmp_path / "n")
    worker = start_worker("-Q", "pq", "--pool", "processes", "-c", "2")
    publish(client, "victim", "sleepy", path=path, tag="victim", seconds=30)
    publish(client, "bystander", "sleepy", path=path, tag="bystander", seconds=1.0)
    pid = wait_note(tmp_path / "n", "victim-start")
    wait_note(tmp_path / "n", "bystander-start")
    os.kill(pid, signal.SIGKILL)
    wait_states(r, {"victim": "failed", "bystander": "completed"}, worker)
    victim = job_hash(r, "victim")
    assert victim["attempt"] == "1"
    assert victim["last_error"] == f"worker process died: killed by signal SIGKILL (pid {pid}, attempt 1 of 1)"
    assert job_hash(r, "bystander")["attempt"] == "1"
    assert r.zcard("{pq}:active") == 0 and worker.proc.poll() is None


def test_e2e_poison_pill_ends_failed_after_max_attempts(
        client: OmniqClient, r: redis.Redis, start_worker: Callable[..., Worker], tmp_path: Path) -> None:
    path = str(tmp_path / "n")
    worker = start_worker("-Q", "pq", "--pool", "processes", "-c", "1")
    publish(client, "pill", "attempts", max_attempts=3, path=path)
    wait_states(r, {"pill": "failed"}, worker, timeout=30)
    ran = notes(tmp_path / "n")
    assert [tag for tag, _ in ran] == ["attempt-1", "attempt-2", "attempt-3"]
    assert len({pid for _, pid in ran}) == 3  # each attempt killed its child
    pill = job_hash(r, "pill")
    assert (pill["attempt"], pill["max_attempts"]) == ("3", "3")
    assert pill["last_error"] == f"worker process died: exit code 3 (pid {ran[-1][1]}, attempt 3 of 3)"
    assert r.lrange("{pq}:failed", 0, -1) == ["pill"] and r.zcard("{pq}:active") == 0
    publish(client, "after", "ok", path=path, tag="after")
    wait_states(r, {"after": "completed"}, worker)


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_e2e_deep_payload_fails_for_good_and_the_only_slot_keeps_working(
        client: OmniqClient, r: redis.Redis, start_worker: Callable[..., Worker], tmp_path: Path,
        pool: str) -> None:
    path = str(tmp_path / "n")
    publish_foreign(r, "pq", "deep", DEEP_ENVELOPE, max_attempts=3)
    publish_foreign(r, "rawq", "deep-raw", DEEP_LIST, max_attempts=3)
    for n in range(3):
        publish(client, f"ok-{n}", "ok", path=path, tag=f"ok-{n}")
    worker = start_worker("-Q", "pq,rawq", "--pool", pool, "-c", "1")
    wait_states(r, {"deep": "failed", "ok-0": "completed", "ok-1": "completed", "ok-2": "completed"}, worker)
    wait_states(r, {"deep-raw": "failed"}, worker, queue="rawq")
    for job_id, queue in (("deep", "pq"), ("deep-raw", "rawq")):
        h = job_hash(r, job_id, queue)
        assert (h["attempt"], h["max_attempts"]) == ("1", "3"), h  # final: not retried
        assert is_depth_error(h["last_error"]), h["last_error"]
        assert r.lrange("{" + queue + "}:failed", 0, -1) == [job_id]
    assert r.zcard("{pq}:active") == 0 and r.zcard("{rawq}:active") == 0
    assert worker.proc.poll() is None


def test_e2e_grace_over_ends_busy_children_and_exits_promptly(
        client: OmniqClient, r: redis.Redis, start_worker: Callable[..., Worker], tmp_path: Path) -> None:
    path = str(tmp_path / "n")
    worker = start_worker("-Q", "pq", "--pool", "processes", "-c", "2", "--grace", "0.5")
    publish(client, "stuck", "sleepy", path=path, tag="stuck", seconds=30)
    pid = wait_note(tmp_path / "n", "stuck-start")
    sent = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=8) == 0, worker.log()
    took = time.monotonic() - sent
    assert took < 4, f"exit took {took:.1f} s"
    assert gone(pid, 1.0), "the busy child outlived its worker"
    log = worker.log()
    assert "grace period over" in log and "died" not in log
    assert job_hash(r, "stuck")["state"] == "active"  # left to its lease, not charged
    assert notes(tmp_path / "n") == [("stuck-start", pid)]
