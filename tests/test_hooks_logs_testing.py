"""Task callbacks (on_success/on_retry/on_failure), the running job in log records, the
CLI's logging setup, the testing helper (a real worker in a thread) and eager mode."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import msgspec
import pytest
import redis

from omniq_tasks import App, JobContext, JobStatus
from omniq_tasks.errors import TaskArgumentError, TaskFailed
from omniq_tasks.logcontext import JobLogFilter, JsonFormatter, TextFormatter, current_job, job_scope
from omniq_tasks.middleware import JobView, TaskCallbacks
from omniq_tasks.protocol import keys
from omniq_tasks.testing_worker import run_worker
from redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]


class Records(logging.Handler):
    """Keeps the records it gets, with the job filter on (as the CLI installs it)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(JobLogFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:  # handle() holds the handler's lock
        self.records.append(record)


@pytest.fixture()
def records() -> Iterator[Records]:
    handler = Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


def state(r: redis.Redis, queue: str, job_id: str) -> str:
    return str(r.hget(keys.job_key(queue, job_id), "state"))


# -- callbacks ---------------------------------------------------------------------------


def test_callbacks_run_once_each_in_order_with_a_real_worker(r: redis.Redis, redis_server: RedisServer) -> None:
    calls: list[tuple[str, JobView, Any]] = []
    app = App("cb", redis_server.url, queue="cb", backoff_ms=50)

    @app.task(on_success=lambda job, result: calls.append(("success", job, result)),
              on_failure=lambda job, error: calls.append(("failure", job, error)))
    def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    @app.task(max_attempts=2, on_retry=lambda job, error: calls.append(("retry", job, error)),
              on_failure=lambda job, error: calls.append(("failure", job, error)),
              on_success=lambda job, result: calls.append(("success", job, result)))
    def flaky(n: int) -> None:
        raise ValueError(f"boom {n}")

    assert sum(isinstance(mw, TaskCallbacks) for mw in app.middleware) == 1  # added once, by the App
    with run_worker(app, redis_url=redis_server.url) as worker:
        ok = add.delay(2, 3)
        bad = flaky.delay(7)
        worker.drain()
        assert state(r, "cb", ok.id) == "completed" and state(r, "cb", bad.id) == "failed"
    mine = [(kind, job.id, job.attempt) for kind, job, _ in calls]
    assert (("success", ok.id, 1)) in mine
    assert [c for c in mine if c[1] == bad.id] == [("retry", bad.id, 1), ("failure", bad.id, 2)]
    assert len(calls) == 3
    success = next(c for c in calls if c[0] == "success")
    assert success[2] == {"sum": 5}
    assert success[1] == JobView(ok.id, "cb", add.name, 1, add.max_attempts, "", (), {"a": 2, "b": 3})
    retry, failure = (c for c in calls if c[1].id == bad.id)
    assert retry[2].startswith("ValueError: boom 7") and failure[2].startswith("ValueError: boom 7")
    assert failure[1].kwargs == {"n": 7} and failure[1].task == flaky.name


def test_a_raising_callback_is_logged_and_the_job_stays_acked(
        r: redis.Redis, redis_server: RedisServer, records: Records) -> None:
    called: list[str] = []

    def broken(job: JobView, result: Any) -> None:
        called.append(job.id)
        raise RuntimeError("callback broke")

    app = App("cbx", redis_server.url, queue="cbx")

    @app.task(on_success=broken)
    def work(n: int) -> int:
        return n

    with run_worker(app, redis_url=redis_server.url) as worker:
        handles = [work.delay(i) for i in range(3)]
        worker.drain()
    assert sorted(called) == sorted(h.id for h in handles)  # once each, and the next still called
    assert all(state(r, "cbx", h.id) == "completed" for h in handles)
    assert r.zcard(keys.lane_key("cbx", "active")) == 0
    logged = [rec for rec in records.records if rec.name == "omniq_tasks.middleware" and rec.levelno == logging.ERROR]
    assert len(logged) == 3
    assert "callback" in logged[0].getMessage() and "raised; ignored" in logged[0].getMessage()
    assert logged[0].exc_info is not None and "callback broke" in str(logged[0].exc_info[1])


# -- the running job in log records -------------------------------------------------------


def test_records_of_the_tasks_own_logger_name_the_job_in_threads_and_async(
        r: redis.Redis, redis_server: RedisServer, records: Records) -> None:
    app = App("logs", redis_server.url, queue="logs", backoff_ms=20)
    user_log = logging.getLogger("shop.tasks")

    @app.task
    def sync_task(n: int) -> None:
        user_log.info("sync %d", n)

    @app.task
    async def async_task(n: int) -> None:
        await asyncio.sleep(0.01)
        user_log.info("async %d", n)

    @app.task(max_attempts=2)
    def fails(n: int) -> None:
        user_log.warning("attempt of %d", n)
        raise ValueError("again")

    with run_worker(app, redis_url=redis_server.url, concurrency=8) as worker:
        syncs = {sync_task.delay(i).id: i for i in range(10)}
        asyncs = {async_task.delay(i).id: i for i in range(10)}
        failing = fails.delay(1)
        worker.drain()
    mine = [rec for rec in records.records if rec.name == "shop.tasks"]
    assert len(mine) == 22
    for rec in mine:
        message = rec.getMessage()
        if message.startswith("sync"):
            assert syncs[rec.job_id] == int(message.split()[1]) and rec.task_name == sync_task.name
        elif message.startswith("async"):
            assert asyncs[rec.job_id] == int(message.split()[1]) and rec.task_name == async_task.name
        else:
            assert rec.job_id == failing.id and rec.task_name == fails.name
        assert rec.attempt in (1, 2)
    assert sorted(rec.attempt for rec in mine if rec.job_id == failing.id) == [1, 2]
    # outside a job: None, and the worker's own lines name no job
    assert all(rec.job_id is None for rec in records.records if rec.name == "omniq_tasks.worker")
    assert current_job.get() is None


def test_filter_and_formatters() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    with job_scope("J1", "shop.send", 3, "emails"):
        assert JobLogFilter().filter(record)
    assert (record.job_id, record.task_name, record.attempt) == ("J1", "shop.send", 3)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello you" and line["job_id"] == "J1" and line["task"] == "shop.send"
    assert line["attempt"] == 3 and line["level"] == "INFO" and line["logger"] == "x" and line["time"]
    assert TextFormatter().format(record).endswith("INFO x: hello you [task=shop.send job=J1 attempt=3]")
    outside = logging.LogRecord("x", logging.INFO, __file__, 1, "plain", (), None)
    JobLogFilter().filter(outside)
    assert outside.job_id is None and "job_id" not in json.loads(JsonFormatter().format(outside))
    assert TextFormatter().format(outside).endswith("INFO x: plain")


# -- the CLI's logging setup ---------------------------------------------------------------

APP_MODULE = '''
import logging
from omniq_tasks import App
{setup}
app = App("clilog", queue="clilog")

@app.task
def speak(n: int) -> None:
    logging.getLogger("clilog.tasks").warning("spoken %d", n)
'''


def cli_drain(tmp_path: Path, redis_url: str, setup: str, *args: str) -> tuple[str, str]:
    """Write the app module, publish one job, run ``worker --drain``; (job id, stderr)."""
    (tmp_path / "cliapp.py").write_text(textwrap.dedent(APP_MODULE.format(setup=setup)))
    app = App("clilog", redis_url, queue="clilog")

    @app.task(name="cliapp.speak")
    def speak(n: int) -> None: ...

    job_id = speak.delay(5).id
    app.close()
    env = {**os.environ, "OMNIQ_TASKS_REDIS_URL": redis_url,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "omniq_tasks", "worker", "cliapp:app", "--drain", *args],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return job_id, result.stderr


def test_the_cli_keeps_an_apps_own_logging_setup(r: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> None:
    setup = ('logging.basicConfig(level=logging.WARNING, '
             'format="APPFMT %(levelname)s %(name)s job=%(job_id)s: %(message)s")')
    job_id, err = cli_drain(tmp_path, redis_server.url, setup)
    lines = err.splitlines()
    assert f"APPFMT WARNING clilog.tasks job={job_id}: spoken 5" in lines
    assert not any("INFO" in line for line in lines)  # the app's WARNING level is kept
    assert state(r, "clilog", job_id) == "completed"
    # --log-level given explicitly: the app's format stays, the level is ours
    job_id, err = cli_drain(tmp_path, redis_server.url, setup, "--log-level", "INFO")
    assert "APPFMT INFO omniq_tasks.worker job=None: worker for app clilog" in err
    assert f"APPFMT WARNING clilog.tasks job={job_id}: spoken 5" in err


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_the_cli_json_log_format(r: redis.Redis, redis_server: RedisServer, tmp_path: Path, pool: str) -> None:
    job_id, err = cli_drain(tmp_path, redis_server.url, "", "--log-format", "json", "--pool", pool, "-c", "1")
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line is JSON
    spoken = [line for line in lines if line["logger"] == "clilog.tasks"]
    assert len(spoken) == 1
    assert spoken[0]["message"] == "spoken 5" and spoken[0]["job_id"] == job_id
    assert spoken[0]["task"] == "cliapp.speak" and spoken[0]["attempt"] == 1 and spoken[0]["level"] == "WARNING"
    assert any(line["logger"] == "omniq_tasks.worker" and "job_id" not in line for line in lines)


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_the_cli_text_format_names_the_job(r: redis.Redis, redis_server: RedisServer, tmp_path: Path,
                                           pool: str) -> None:
    job_id, err = cli_drain(tmp_path, redis_server.url, "", "--pool", pool, "-c", "1")
    assert f"WARNING clilog.tasks: spoken 5 [task=cliapp.speak job={job_id} attempt=1]" in err
    assert "INFO omniq_tasks.worker: worker for app clilog" in err


# -- the testing helper ----------------------------------------------------------------------


def test_run_worker_on_a_throwaway_server_drains_the_queue() -> None:
    app = App("helper", "redis://127.0.0.1:1/0", queue="helper")  # never used: a throwaway server is
    seen: list[int] = []

    @app.task(gid="g{n}", backoff_ms=30, max_attempts=3)
    def record(n: int, ctx: JobContext) -> int:
        if n == 0 and ctx.attempt == 1:
            raise ValueError("first time")  # retried after its backoff: drain waits for it
        seen.append(n)
        return n

    with run_worker(app) as worker:
        assert worker.server is not None and app.redis_url == worker.server.url
        handles = record.map(range(20))
        worker.drain()
        stats = worker.stats("helper")
        assert (stats.waiting_total, stats.active, stats.delayed, stats.failed) == (0, 0, 0, 0)
        assert all(h.status() == JobStatus.COMPLETED for h in handles)
        server = worker.server
    assert sorted(seen) == list(range(20))
    assert app.redis_url == "redis://127.0.0.1:1/0"  # the app's own URL is back
    assert server.process.poll() is not None  # the throwaway server is stopped


# -- eager mode ------------------------------------------------------------------------------


class Total(msgspec.Struct):
    amount: int
    currency: str


def eager_app() -> App:
    return App("eager", "redis://127.0.0.1:1/0", queue="eager", eager=True)  # Redis never touched


def test_eager_runs_at_once_and_returns_the_value() -> None:
    app = eager_app()

    @app.task
    def total(amounts: list[int], currency: str = "EUR") -> Total:
        return Total(sum(amounts), currency)

    @app.task
    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return n * 2

    @app.task
    def whoami(ctx: JobContext, n: int) -> str:
        return f"{ctx.job_id}:{ctx.attempt}:{n}"

    handle = total.delay([1, 2, 3])
    assert handle.get() == Total(6, "EUR") and isinstance(handle.get(), Total)
    assert handle.status() == JobStatus.COMPLETED and handle.ready() and handle.queue == "eager"
    assert handle.info() is None and handle.forget() is False
    assert total.apply_async(([4],), {"currency": "USD"}, countdown=10).get(timeout=1) == Total(4, "USD")
    assert [h.get() for h in double.map([1, 2, 3])] == [2, 4, 6]
    h = whoami.delay(7)
    assert h.get() == f"{h.id}:1:7"


def test_eager_checks_arguments_and_raises_task_failed() -> None:
    app = eager_app()
    ran: list[int] = []

    @app.task
    def divide(a: int, b: int) -> float:
        ran.append(a)
        return a / b

    with pytest.raises(TaskArgumentError):
        divide.delay("1", 2)  # type: ignore[arg-type]
    with pytest.raises(TaskArgumentError):
        divide.map([(1, 2), ("x", 2)])  # nothing runs: every item is checked first
    assert ran == []
    handle = divide.delay(1, 0)
    assert handle.status() == JobStatus.FAILED
    with pytest.raises(TaskFailed) as failed:
        handle.get()
    assert isinstance(failed.value.__cause__, ZeroDivisionError)
    assert failed.value.job_id == handle.id and "ZeroDivisionError" in failed.value.error


def test_eager_mode_context_manager() -> None:
    app = App("eager2", "redis://127.0.0.1:1/0", queue="eager2")

    @app.task
    def echo(text: str) -> str:
        return text

    assert not app.eager
    with app.eager_mode():
        assert echo.delay("hi").get() == "hi"
    assert not app.eager
