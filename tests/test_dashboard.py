"""The web dashboard (omniq-tasks dashboard) on a real redis-server.

API tests go through Starlette's TestClient (the app in-process) and assert the JSON
and the Redis state each endpoint and action leaves, plus the guards (basic auth,
read-only, cross-site refusal, Host check). Browser tests run the real command
(uvicorn) and a real CLI worker, driven in Debian's chromium by Playwright; they save a
screenshot of each page under $OMNIQ_ARTIFACTS (else the test's tmp_path). Without
chromium or playwright they skip with one line, or fail when CI=true.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from cli_worker import CliWorker, wait_for
from omniq_tasks import OmniqClient
from omniq_tasks.cli.main import main
from omniq_tasks.ops.actions import publish
from omniq_tasks.protocol import keys
from redis_server import RedisServer

pytest.importorskip("starlette", reason="the dashboard tests need pip install -e '.[test]' (starlette)")
with warnings.catch_warnings():  # Starlette >= 1.10 would rather have httpx2; httpx (older ones need it) works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

from omniq_tasks.dashboard.guards import LOOPBACK_HOSTS  # noqa: E402
from omniq_tasks.dashboard.web import create_app  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ACT = {"X-OmniQ-Dashboard": "1"}
CHROMIUM = os.environ.get("OMNIQ_CHROMIUM", "/usr/bin/chromium")


def envelope(task: str, **kwargs: Any) -> str:
    return json.dumps({"task": task, "args": [], "kwargs": kwargs})


def make_failed(client: OmniqClient, queue: str, n: int, error: str = "ValueError: boom") -> list[str]:
    """Publish ``n`` jobs and fail each for good (reserve + ack_fail final)."""
    ids = []
    for i in range(n):
        publish(client, queue, envelope("send", n=i), max_attempts=1)
    for _ in range(n):
        job = client.reserve(queue)
        assert job.status == "JOB"
        client.ack_fail(queue, job.job_id, job.lease_token, error=error, final=True)
        ids.append(job.job_id)
    return ids


@pytest.fixture()
def web(client: OmniqClient) -> Iterator[TestClient]:
    with TestClient(create_app(client, sample=False)) as test_client:
        yield test_client


# -- the API: reads ----------------------------------------------------------------------

def test_overview_lists_every_queue_with_counts_and_samples_throughput(client: OmniqClient, r: redis.Redis) -> None:
    for n in range(3):
        publish(client, "mails", envelope("send", n=n))
    publish(client, "mails", envelope("send", n=9), gid="acme", group_limit=2)
    make_failed(client, "reports", 2)
    client.pause("reports")
    with TestClient(create_app(client, interval_s=0.1, window_s=1.0)) as web:
        dash = web.app.state.dashboard  # type: ignore[attr-defined]
        wait_for(lambda: len(dash.history.samples()) >= 2, 5, what="two throughput samples")
        job = client.reserve("mails")
        assert job.status == "JOB"
        client.ack_success("mails", job.job_id, job.lease_token)
        wait_for(lambda: (s := dash.history.latest()) and s.completed_per_s.get("mails", 0) > 0, 5,
                 what="a sample counting the completed job")
        body = web.get("/api/overview").json()
        # the history is bounded by window_s / interval_s
        wait_for(lambda: len(dash.history.samples()) == 10, 5, what="a full window")
    rows = {row["queue"]: row for row in body["queues"]}
    assert set(rows) == {"mails", "reports"}
    mails = rows["mails"]
    assert mails["waiting"] + mails["group_waiting"] == 3  # 4 published, 1 completed (either kind)
    assert mails | {"waiting": 0, "group_waiting": 0, "groups_ready": 0, "last_activity_ms": 0,
                    "completed_per_s": 0, "failed_per_s": 0} == {
        "queue": "mails", "waiting": 0, "group_waiting": 0, "active": 0, "delayed": 0, "failed": 0,
        "completed_kept": 1, "groups_ready": 0, "paused": False, "last_activity_ms": 0, "workers": 0,
        "completed_per_s": 0, "failed_per_s": 0}
    assert mails["last_activity_ms"] > 0
    assert (rows["reports"]["failed"], rows["reports"]["paused"]) == (2, True)
    assert body["workers"] == [] and body["read_only"] is False
    samples = body["throughput"]["samples"]
    assert body["throughput"]["interval_s"] == 0.1 and body["throughput"]["window_s"] == 1.0
    assert any(s["completed_per_s"].get("mails", 0) > 0 for s in samples)
    assert all(set(s) == {"at_ms", "interval_s", "completed_per_s", "failed_per_s", "backlog_per_s"} for s in samples)
    assert [s["at_ms"] for s in samples] == sorted(s["at_ms"] for s in samples)


def test_queue_pages_lanes_and_groups(web: TestClient, client: OmniqClient, r: redis.Redis) -> None:
    ids = [publish(client, "pages", envelope("send", n=n)).job_id for n in range(25)]
    for n in range(3):
        publish(client, "pages", envelope("send", n=100 + n), gid=f"g{n}", group_limit=n + 2)
    failed = make_failed(client, "pages", 0)
    assert failed == []
    body = web.get("/api/queues/pages", params={"lane": "wait", "limit": 10, "offset": 20,
                                                 "group_limit": 2, "group_offset": 0}).json()
    assert body["queue"]["waiting"] == 25 and body["queue"]["group_waiting"] == 3
    lane = body["lane"]
    assert (lane["lane"], lane["total"], lane["offset"], lane["limit"], lane["newest_first"]) == ("wait", 28, 20, 10, False)
    assert [j["id"] for j in lane["jobs"]][:5] == ids[20:25]  # oldest first: the last 8 of 28
    assert len(lane["jobs"]) == 8 and all(j["task"] == "send" for j in lane["jobs"])
    groups = body["groups"]
    assert (groups["total"], [g["gid"] for g in groups["groups"]]) == (3, ["g0", "g1"])
    assert groups["groups"][1] == {"gid": "g1", "inflight": 0, "limit": 3, "limit_set": 3, "waiting": 1, "ready": True}
    newest = web.get("/api/queues/pages/jobs", params={"lane": "wait", "limit": 2, "order": "newest"}).json()
    assert newest["newest_first"] is True and newest["total"] == 28 and len(newest["jobs"]) == 2
    page2 = web.get("/api/queues/pages/groups", params={"limit": 2, "offset": 2}).json()
    assert [g["gid"] for g in page2["groups"]] == ["g2"]
    # a running job is in the active lane with its lease
    job = client.reserve("pages")
    assert job.status == "JOB"
    active = web.get("/api/queues/pages/jobs", params={"lane": "active"}).json()
    assert [j["id"] for j in active["jobs"]] == [job.job_id] and active["jobs"][0]["lock_until_ms"] > 0
    for bad in ({"lane": "nope"}, {"limit": 0}, {"limit": "x"}, {"offset": -1}, {"order": "sideways"}):
        answer = web.get("/api/queues/pages", params=bad)
        assert answer.status_code == 400 and answer.json()["error"], bad
    assert web.get("/api/queues/bad%20name").status_code == 400


def test_job_detail_fields_payload_error_timings(web: TestClient, client: OmniqClient) -> None:
    (failed,) = make_failed(client, "jobs", 1, error="Traceback...\nValueError: boom")
    body = web.get(f"/api/queues/jobs/jobs/{failed}").json()
    assert (body["id"], body["state"], body["task"], body["queue"]) == (failed, "failed", "send", "jobs")
    assert body["payload"] == {"task": "send", "args": [], "kwargs": {"n": 0}}
    assert '"kwargs"' in body["payload_pretty"] and body["last_error"] == "Traceback...\nValueError: boom"
    assert body["fields"]["state"] == "failed" and body["fields"]["max_attempts"] == "1"
    assert {t["field"] for t in body["times"]} >= {"created_ms", "failed_ms"}
    assert all(t["utc"].endswith("UTC") for t in body["times"])
    assert "created to finished" in {d["name"] for d in body["durations"]}
    missing = web.get("/api/queues/jobs/jobs/01NOSUCHJOB")
    assert missing.status_code == 404 and "no job" in missing.json()["error"]


# -- the API: actions ----------------------------------------------------------------------

def test_pause_and_resume(web: TestClient, client: OmniqClient, r: redis.Redis) -> None:
    publish(client, "pq", envelope("send"))
    answer = web.post("/api/queues/pq/pause", headers=ACT)
    assert answer.status_code == 200 and answer.json() == {"queue": "pq", "paused": True}
    assert client.is_paused("pq") and client.reserve("pq").status == "PAUSED"
    assert web.get("/api/queues/pq").json()["queue"]["paused"] is True
    assert web.post("/api/queues/pq/resume", headers=ACT).json() == {"queue": "pq", "paused": False, "was_paused": True}
    assert not client.is_paused("pq")
    assert web.post("/api/queues/pq/resume", headers=ACT).json()["was_paused"] is False


def test_retry_one_and_all_failed(web: TestClient, client: OmniqClient, r: redis.Redis) -> None:
    ids = make_failed(client, "rq", 5)
    one = web.post("/api/queues/rq/retry", headers=ACT, json={"ids": [ids[0]]}).json()
    assert one == {"done": 1, "refused": {}, "calls": 1}
    assert r.hget(keys.job_key("rq", ids[0]), "state") == "wait"
    again = web.post("/api/queues/rq/retry", headers=ACT, json={"ids": [ids[0]]}).json()
    assert again["done"] == 0 and again["refused"] == {ids[0]: "NOT_FAILED"}
    every = web.post("/api/queues/rq/retry", headers=ACT, json={"all_failed": True}).json()
    assert every["done"] == 4
    stats = client.stats("rq")
    assert (stats.failed, stats.waiting) == (0, 5)
    assert r.zcard("{rq}:idx:failed") == 0 and r.llen("{rq}:wait") == 5
    assert all(r.hget(keys.job_key("rq", i), "attempt") == "0" for i in ids)
    for bad in ({}, {"ids": []}, {"ids": [3]}, {"ids": ["x"], "all_failed": True}):
        answer = web.post("/api/queues/rq/retry", headers=ACT, json=bad)
        assert answer.status_code == 400 and answer.json()["error"], bad
    assert web.post("/api/queues/rq/retry", headers=ACT, content=b"not json").status_code == 400


def test_remove(web: TestClient, client: OmniqClient, r: redis.Redis) -> None:
    (failed,) = make_failed(client, "xq", 1)
    waiting = publish(client, "xq", envelope("send"), gid="acme").job_id
    assert web.post("/api/queues/xq/remove", headers=ACT, json={"lane": "failed", "ids": [failed]}).json()["done"] == 1
    assert not r.exists(keys.job_key("xq", failed)) and client.stats("xq").failed == 0
    # a grouped waiting job: the page sends lane "wait" (its state); ops finds its group
    assert web.post("/api/queues/xq/remove", headers=ACT, json={"lane": "wait", "ids": [waiting]}).json()["done"] == 1
    assert not r.exists(keys.job_key("xq", waiting)) and r.llen("{xq}:g:acme:wait") == 0
    publish(client, "xq", envelope("send"))
    running = client.reserve("xq")
    assert running.status == "JOB"
    refused = web.post("/api/queues/xq/remove", headers=ACT, json={"lane": "active", "ids": [running.job_id]})
    assert refused.status_code == 400 and "running jobs cannot be removed" in refused.json()["error"]
    assert web.post("/api/queues/xq/remove", headers=ACT, json={"ids": ["a"]}).status_code == 400


def test_set_a_groups_limit(web: TestClient, client: OmniqClient, r: redis.Redis) -> None:
    for n in range(3):
        publish(client, "gq", envelope("send", n=n), gid="acme", group_limit=1)
    assert client.reserve("gq").status == "JOB"  # acme is full: 1 running, limit 1
    assert web.get("/api/queues/gq/groups").json()["groups"][0]["ready"] is False
    change = web.post("/api/queues/gq/group-limit", headers=ACT, json={"gid": "acme", "limit": 3}).json()
    assert change == {"queue": "gq", "gid": "acme", "limit": 3, "previous": 1, "made_ready": True}
    assert r.get("{gq}:g:acme:limit") == "3"
    row = web.get("/api/queues/gq/groups").json()["groups"][0]
    assert (row["limit"], row["limit_set"], row["inflight"], row["waiting"], row["ready"]) == (3, 3, 1, 2, True)
    for bad in ({"gid": "acme", "limit": 0}, {"gid": "acme", "limit": "2"}, {"gid": "acme", "limit": True},
                {"limit": 2}):
        assert web.post("/api/queues/gq/group-limit", headers=ACT, json=bad).status_code == 400, bad
    assert r.get("{gq}:g:acme:limit") == "3"


def test_metrics_serves_the_queue_gauges(web: TestClient, client: OmniqClient) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    make_failed(client, "mq", 2)
    client.pause("mq")
    text = web.get("/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("omniq_queue_jobs", (("lane", "failed"), ("queue", "mq")))] == 2
    assert samples[("omniq_queue_paused", (("queue", "mq"),))] == 1


def test_pages_and_assets_are_served_from_the_package(web: TestClient) -> None:
    for path, marker in (("/", 'data-page="overview"'), ("/queue?name=q", 'data-page="queue"'),
                         ("/job?queue=q&id=1", 'data-page="job"')):
        answer = web.get(path)
        assert answer.status_code == 200 and marker in answer.text and "text/html" in answer.headers["content-type"]
        assert "http://" not in answer.text.replace("http://www.w3.org", "") and "https://" not in answer.text
        assert answer.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    script = web.get("/static/dashboard.js")
    assert script.status_code == 200 and "X-OmniQ-Dashboard" in script.text
    assert "innerHTML" not in script.text and "https://" not in script.text
    assert web.get("/static/dashboard.css").status_code == 200
    assert web.get("/api/config").json()["read_only"] is False


# -- the guards ---------------------------------------------------------------------------

def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_on_every_route(client: OmniqClient) -> None:
    with TestClient(create_app(client, auth=("admin", "s3cret"), sample=False)) as web:
        for path in ("/", "/queue?name=q", "/job?queue=q&id=1", "/static/dashboard.js", "/api/config",
                     "/api/overview", "/api/queues/q", "/metrics"):
            refused = web.get(path)
            assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic"), path
            assert web.get(path, headers=basic("admin", "wrong")).status_code == 401, path
            assert web.get(path, headers=basic("other", "s3cret")).status_code == 401, path
            assert web.get(path, headers=basic("admin", "s3cret")).status_code == 200, path
        assert web.get("/", headers={"Authorization": "Basic !!!"}).status_code == 401
        assert web.post("/api/queues/q/pause", headers=ACT).status_code == 401
        assert not client.is_paused("q")
        assert web.post("/api/queues/q/pause", headers={**ACT, **basic("admin", "s3cret")}).status_code == 200
        assert client.is_paused("q")


def test_read_only_refuses_every_action(client: OmniqClient, r: redis.Redis) -> None:
    (failed,) = make_failed(client, "ro", 1)
    publish(client, "ro", envelope("send"), gid="acme")
    with TestClient(create_app(client, read_only=True, sample=False)) as web:
        assert web.get("/api/config").json()["read_only"] is True
        assert web.get("/api/overview").json()["read_only"] is True
        assert web.get(f"/api/queues/ro/jobs/{failed}").json()["read_only"] is True
        for path, body in (("pause", {}), ("resume", {}), ("retry", {"ids": [failed]}),
                           ("retry", {"all_failed": True}), ("remove", {"lane": "failed", "ids": [failed]}),
                           ("group-limit", {"gid": "acme", "limit": 5})):
            answer = web.post(f"/api/queues/ro/{path}", headers=ACT, json=body)
            assert answer.status_code == 403 and "read-only" in answer.json()["error"], path
    assert not client.is_paused("ro")
    assert r.hget(keys.job_key("ro", failed), "state") == "failed"
    assert r.get("{ro}:g:acme:limit") is None


def test_cross_site_requests_are_refused(web: TestClient, client: OmniqClient) -> None:
    attempts: list[dict[str, Any]] = [
        # a plain HTML form from another site: no custom header, form encoding
        {"headers": {"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"},
         "content": b"x=1"},
        {"headers": {"Content-Type": "application/x-www-form-urlencoded"}, "content": b"x=1"},
        {"headers": {"X-OmniQ-Dashboard": "0"}},
        {"headers": {**ACT, "Origin": "http://evil.example"}},
        {"headers": {**ACT, "Origin": "null"}},
        {"headers": {**ACT, "Sec-Fetch-Site": "cross-site"}},
        {"headers": {**ACT, "Sec-Fetch-Site": "same-site"}},
    ]
    for attempt in attempts:
        answer = web.post("/api/queues/cs/pause", **attempt)
        assert answer.status_code == 403 and answer.json()["error"].startswith("refused"), attempt
    assert not client.is_paused("cs")
    same = web.post("/api/queues/cs/pause", headers={**ACT, "Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 200 and client.is_paused("cs")


def test_a_loopback_dashboard_answers_only_to_loopback_host_names(client: OmniqClient) -> None:
    app = create_app(client, allowed_hosts=LOOPBACK_HOSTS, sample=False)
    with TestClient(app, base_url="http://127.0.0.1:8765") as web:
        assert web.get("/api/config").status_code == 200
        assert web.get("/api/config", headers={"Host": "localhost:8765"}).status_code == 200
        assert web.get("/api/config", headers={"Host": "[::1]:8765"}).status_code == 200
        # a DNS-rebinding page reaches 127.0.0.1 under its own name
        assert web.get("/api/overview", headers={"Host": "evil.example:8765"}).status_code == 400


def test_the_command_without_the_extra_exits_2_naming_the_install(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "starlette", None)  # import starlette raises ImportError
    assert main(["dashboard", "--url", "redis://127.0.0.1:1/0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'omniq-tasks[dashboard]'" in err


def test_the_command_refuses_a_bad_auth_and_a_taken_port(redis_server: RedisServer, r: redis.Redis,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--url", redis_server.url, "--auth", "nocolon"]) == 2
    assert "USER:PASSWORD" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", "--url", redis_server.url, "--port", str(port)]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    assert main(["dashboard", "--url", "redis://127.0.0.1:1/0"]) == 1


# -- the real command, a real worker, a real browser ----------------------------------------

DASH_APP = r'''
import time
from pathlib import Path

from omniq_tasks import App, PermanentError

app = App("dash-app", queue="dq", max_attempts=1, timeout_ms=10000)


@app.task(name="work")
def work(n: int) -> int:
    time.sleep(0.2)
    return n


@app.task(name="fragile")
def fragile(flag: str) -> str:
    if not Path(flag).exists():
        raise PermanentError("the flag file is missing: " + flag)
    return "fixed"
'''


class DashboardProcess:
    """``python -m omniq_tasks dashboard --port 0 ...``; ``url`` once it printed where it listens."""

    def __init__(self, redis_url: str, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "omniq_tasks", "dashboard", "--url", redis_url,
                                      "--port", "0", *args], stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        line = wait_for(self._announced, 20, what="the dashboard to listen")
        self.url = line.split(" on ", 1)[1].split()[0].rstrip("/")

    def _announced(self) -> str | None:
        assert self.proc.poll() is None, f"dashboard exited:\n{self.log_path.read_text()}"
        return next((l for l in self.log_path.read_text().splitlines() if "dashboard on http://" in l), None)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("playwright (pip install playwright)")
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        missing.append("chromium (apt-get install -y chromium)")
    if missing:
        message = "browser tests need " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: they must run)")
        pytest.skip(message)
    executable = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@pytest.fixture()
def artifacts(tmp_path: Path) -> Path:
    where = Path(os.environ["OMNIQ_ARTIFACTS"]) if os.environ.get("OMNIQ_ARTIFACTS") else tmp_path / "artifacts"
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture()
def processes() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for proc in reversed(started):
        proc.kill() if isinstance(proc, CliWorker) else proc.stop()


def test_browser_watch_a_worker_then_retry_a_failed_job(browser: Any, redis_server: RedisServer, r: redis.Redis,
                                                        client: OmniqClient, tmp_path: Path, artifacts: Path,
                                                        processes: list[Any]) -> None:
    from playwright.sync_api import expect

    (tmp_path / "dash_app.py").write_text(DASH_APP)
    flag = tmp_path / "flag"
    for n in range(30):
        publish(client, "dq", envelope("work", n=n))
    fragile = publish(client, "dq", envelope("fragile", flag=str(flag)), max_attempts=1).job_id
    dash = DashboardProcess(redis_server.url, tmp_path / "dashboard.log", "--auth", "admin:s3cret")
    processes.append(dash)
    context = browser.new_context(http_credentials={"username": "admin", "password": "s3cret"},
                                  viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(dash.url + "/")
    row = page.locator('tr[data-queue="dq"]')
    expect(row.locator('[data-field="waiting"]')).to_have_text("31", timeout=10_000)
    worker = CliWorker(tmp_path, redis_server.url, "dash_app:app", ["-c", "2", "--poll-interval", "0.2"],
                       tmp_path / "worker.log", ready_text="worker for app dash-app")
    processes.append(worker)
    worker.wait_ready()
    seen: list[str] = []

    def finished() -> bool:
        seen.append(row.locator('[data-field="waiting"]').inner_text())
        return seen[-1] == "0" and row.locator('[data-field="completed_kept"]').inner_text() == "30"

    wait_for(finished, 60, worker, what="the overview to show the worker finishing the queue")
    changes = [v for n, v in enumerate(seen) if n == 0 or v != seen[n - 1]]
    assert len(changes) >= 3, f"the waiting count did not move while the worker ran: {changes}"
    assert [int(v) for v in changes] == sorted((int(v) for v in changes), reverse=True)
    expect(row.locator('[data-field="failed"]')).to_have_text("1")
    expect(page.locator("#workers tbody tr")).to_have_count(1)
    expect(page.locator("#workers tbody tr td").nth(1)).to_have_text("dash-app")
    expect(row.locator('[data-field="workers"]')).to_have_text("1")
    page.wait_for_function("document.querySelectorAll('#chart polyline.completed').length === 1")
    page.screenshot(path=str(artifacts / "dashboard-overview.png"), full_page=True)

    row.locator("a").click()  # the queue page, on its failed lane (the queue has a failed job)
    page.wait_for_url("**/queue?name=dq&lane=failed")
    job_row = page.locator(f'#jobs tr[data-job="{fragile}"]')
    expect(job_row).to_contain_text("the flag file is missing")
    expect(page.locator("#lanes a.current")).to_have_text("failed (1)")
    page.locator('#lanes a[data-lane="completed"]').click()
    expect(page.locator("#jobs tbody tr")).to_have_count(20)
    expect(page.locator("#page-info")).to_contain_text("1–20 of 30")
    page.locator("#next").click()
    expect(page.locator("#jobs tbody tr")).to_have_count(10)
    page.locator('#lanes a[data-lane="failed"]').click()
    expect(job_row).to_be_visible()
    page.screenshot(path=str(artifacts / "dashboard-queue.png"), full_page=True)

    job_row.locator("a").click()
    page.wait_for_url("**/job?**")
    expect(page.locator("#state-badge")).to_have_text("failed")
    expect(page.locator("#error")).to_contain_text("PermanentError")
    expect(page.locator("#payload")).to_contain_text('"fragile"')
    page.screenshot(path=str(artifacts / "dashboard-job-failed.png"), full_page=True)
    flag.write_text("ok")
    page.locator("#job-actions button.retry").click()
    expect(page.locator("#state-badge")).to_have_text("completed", timeout=20_000)
    expect(page.locator("#result")).to_contain_text("fixed")
    assert r.hget(keys.job_key("dq", fragile), "state") == "completed"
    assert client.stats("dq").failed == 0
    page.screenshot(path=str(artifacts / "dashboard-job.png"), full_page=True)

    # pause from the overview: the worker stops taking jobs
    page.goto(dash.url + "/")
    row.get_by_role("button", name="Pause").click()
    expect(row.locator('[data-field="paused"]')).to_have_text("paused")
    assert client.is_paused("dq")
    publish(client, "dq", envelope("work", n=99))
    time.sleep(1.0)
    assert client.stats("dq").waiting == 1
    row.get_by_role("button", name="Resume").click()
    expect(row.locator('[data-field="waiting"]')).to_have_text("0", timeout=20_000)
    assert not client.is_paused("dq")
    context.close()


def test_browser_read_only_hides_and_refuses_actions(browser: Any, redis_server: RedisServer, r: redis.Redis,
                                                     client: OmniqClient, tmp_path: Path, artifacts: Path,
                                                     processes: list[Any]) -> None:
    from playwright.sync_api import expect

    (failed,) = make_failed(client, "roq", 1)
    publish(client, "roq", envelope("send"), gid="acme", group_limit=2)
    dash = DashboardProcess(redis_server.url, tmp_path / "dashboard.log", "--read-only")
    processes.append(dash)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(dash.url + "/")
    expect(page.locator('tr[data-queue="roq"] [data-field="failed"]')).to_have_text("1")
    expect(page.locator("#where")).to_contain_text("read-only")
    assert page.locator("button").count() == 0
    page.goto(dash.url + "/queue?name=roq&lane=failed")
    expect(page.locator(f'#jobs tr[data-job="{failed}"]')).to_be_visible()
    expect(page.locator('#groups tr[data-gid="acme"]')).to_be_visible()
    expect(page.locator("#queue-actions .badge.ro")).to_have_text("read-only")
    assert page.locator("button.action").count() == 0 and page.locator("input").count() == 0
    page.screenshot(path=str(artifacts / "dashboard-read-only.png"), full_page=True)
    page.goto(dash.url + f"/job?queue=roq&id={failed}")
    expect(page.locator("#state-badge")).to_have_text("failed")
    assert page.locator("button.action").count() == 0
    # the page's own fetch, with the header, is still refused
    status = page.evaluate("""async (id) => (await fetch('/api/queues/roq/retry', {method: 'POST',
        headers: {'X-OmniQ-Dashboard': '1', 'Content-Type': 'application/json'},
        body: JSON.stringify({ids: [id]})})).status""", failed)
    assert status == 403
    assert r.hget(keys.job_key("roq", failed), "state") == "failed"
    page.close()


def test_browser_a_form_or_fetch_from_another_site_cannot_act(browser: Any, redis_server: RedisServer,
                                                             r: redis.Redis, client: OmniqClient,
                                                             tmp_path: Path, processes: list[Any]) -> None:
    publish(client, "victim", envelope("send"))
    dash = DashboardProcess(redis_server.url, tmp_path / "dashboard.log")
    processes.append(dash)
    target = dash.url + "/api/queues/victim/pause"
    evil = (f'<form id="f" method="POST" action="{target}"><input name="x" value="1"></form>'
            f'<script>document.getElementById("f").submit()</script>')

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = evil.encode() if self.path == "/form" else b"<p>nothing to see</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{server.server_port}/form")
        page.wait_for_url(target)  # the form posted itself to the dashboard...
        assert "refused" in page.content()  # ...which answered 403
        assert not client.is_paused("victim")
        # a cross-origin fetch with the header needs a CORS preflight the dashboard never grants
        page.goto(f"http://127.0.0.1:{server.server_port}/plain")
        assert page.evaluate("location.port") == str(server.server_port)
        outcome = page.evaluate("""async (url) => { try { const r = await fetch(url, {method: 'POST',
            headers: {'X-OmniQ-Dashboard': '1'}}); return 'status ' + r.status; }
            catch (e) { return 'blocked'; } }""", target)
        assert outcome in ("blocked", "status 403")
        assert not client.is_paused("victim")
        page.close()
    finally:
        server.shutdown()
