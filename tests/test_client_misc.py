"""The client around the scripts: connections, NOSCRIPT recovery, names, reads, the catalog."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis

import omniq_tasks
from helpers_state import assert_invariants
from omniq_tasks import InvalidNameError, OmniqClient, OmniqError
from omniq_tasks.protocol.models import BatchItem, JobInfo, QueueStats, ReservedJob
from omniq_tasks.protocol.scripts import scripts_dir
from omniq_tasks.protocol import scripts as scripts_module
from redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent


# -- NOSCRIPT recovery ---------------------------------------------------------------


def test_calls_work_after_script_flush(client: OmniqClient, r) -> None:
    client.publish("q", {"n": 1}, job_id="a", now_ms=1)
    r.script_flush()
    assert r.script_exists(client.scripts["enqueue"].sha) == [False]

    client.publish("q", {"n": 2}, job_id="b", now_ms=2)
    r.script_flush()
    got = client.reserve("q", now_ms=3)

    assert isinstance(got, ReservedJob) and got.job_id == "a"
    assert r.script_exists(client.scripts["reserve"].sha) == [True]
    assert_invariants(r, "q")


def test_calls_work_after_a_server_restart() -> None:
    server = RedisServer()  # a dedicated server: restarting the shared one would disturb others
    try:
        with OmniqClient(server.url) as c:
            c.publish("q", {"n": 1}, job_id="before", now_ms=1)
            server.restart()  # data, loaded scripts and connections are gone

            pub = c.publish("q", {"n": 2}, job_id="after", now_ms=2)
            got = c.reserve("q", now_ms=3)

            assert pub.existed is False
            assert isinstance(got, ReservedJob) and got.job_id == "after"
            assert c.job("q", "before") is None
    finally:
        server.stop()


# -- names are checked before Redis is touched -------------------------------------

BAD_QUEUE_NAMES = ["", "a{b", "a}b", "{q}", "a:b", "has space", " lead", "trail ", "tab\t",
                   "ümlaut", "q*", "x" * 129, None, 5, b"bytes"]


@pytest.mark.parametrize("name", BAD_QUEUE_NAMES)
def test_bad_queue_names_are_refused_before_redis(client: OmniqClient, r, name) -> None:
    r.script_flush()
    calls = [
        lambda: client.publish(name, {"n": 1}, now_ms=1),
        lambda: client.publish_json(name, b"{}", now_ms=1),
        lambda: client.reserve(name, now_ms=1),
        lambda: client.heartbeat(name, "j", "t", now_ms=1),
        lambda: client.ack_success(name, "j", "t", now_ms=1),
        lambda: client.ack_fail(name, "j", "t", error="e", now_ms=1),
        lambda: client.promote_delayed(name, now_ms=1),
        lambda: client.reap_expired(name, now_ms=1),
        lambda: client.pause(name),
        lambda: client.resume(name),
        lambda: client.is_paused(name),
        lambda: client.retry_failed(name, "j", now_ms=1),
        lambda: client.retry_failed_batch(name, ["j"], now_ms=1),
        lambda: client.remove_job(name, "j", "wait", now_ms=1),
        lambda: client.remove_jobs_batch(name, "wait", ["j"], now_ms=1),
        lambda: client.stats(name),
        lambda: client.job(name, "j"),
    ]
    for call in calls:
        with pytest.raises(InvalidNameError) as info:
            call()
        assert isinstance(info.value, ValueError) and isinstance(info.value, OmniqError)
    assert r.dbsize() == 0
    shas = [client.scripts[n].sha for n in scripts_module.PROTOCOL_SCRIPTS]
    assert not any(r.script_exists(*shas))


@pytest.mark.parametrize("name", ["a", "A-z_0.9", "x" * 128, "-", "..."])
def test_good_queue_names(client: OmniqClient, r, name: str) -> None:
    client.publish(name, {"n": 1}, job_id="j", now_ms=1)
    assert r.llen("{" + name + "}:wait") == 1
    assert client.list_queues() == [name]


# -- connections -------------------------------------------------------------------


def roundtrip(c: OmniqClient, queue: str = "conn") -> None:
    c.publish(queue, {"n": 1}, job_id="j", now_ms=1)
    got = c.reserve(queue, now_ms=2)
    assert isinstance(got, ReservedJob) and got.payload == '{"n":1}'
    c.ack_success(queue, "j", got.lease_token, now_ms=3)
    assert c.stats(queue).completed_kept == 1
    assert c.job(queue, "j").state == "completed"
    assert c.list_queues() == [queue]


def test_client_from_redis_url(redis_server, r) -> None:
    with OmniqClient(redis_server.url) as c:
        roundtrip(c)


def test_client_from_unix_socket_url() -> None:
    sock = Path(tempfile.mkdtemp(prefix="omq-")) / "r.sock"
    server = RedisServer("--unixsocket", str(sock), "--unixsocketperm", "700")
    try:
        with OmniqClient(f"unix://{sock}") as c:
            roundtrip(c)
            assert c.redis.connection_pool.connection_kwargs["path"] == str(sock)
    finally:
        server.stop()
        shutil.rmtree(sock.parent, ignore_errors=True)


@pytest.mark.parametrize("decode", [True, False])
def test_client_from_an_existing_redis(redis_server, r, decode: bool) -> None:
    conn = redis.Redis(port=redis_server.port, decode_responses=decode)
    c = OmniqClient(conn)
    assert c.redis is conn
    roundtrip(c)
    assert c.retry_failed_batch("conn", ["nope"], now_ms=4) == [BatchItem("nope", False, "NO_JOB")]
    assert c.resume("conn") is False
    c.childs_init("k", 1)
    assert c.child_ack("k", "x") == 0
    c.close()


@pytest.mark.parametrize("bad", [42, object(), b"redis://localhost"])
def test_client_refuses_other_connection_objects(bad) -> None:
    with pytest.raises(TypeError):
        OmniqClient(bad)


def test_due_ms_past_year_9999_is_refused_before_redis() -> None:
    from omniq_tasks.defaults import MAX_DUE_MS
    from omniq_tasks.protocol.client import job_spec

    assert job_spec(b"{}", due_ms=MAX_DUE_MS).due_ms == MAX_DUE_MS
    with pytest.raises(ValueError, match="due_ms must be <="):
        job_spec(b"{}", due_ms=10**18)  # Lua would keep it as 1e+18, which no SDK reads as a time


def test_max_payload_bytes_is_checked() -> None:
    with pytest.raises(ValueError):
        OmniqClient("redis://127.0.0.1:1/0", max_payload_bytes=1)


# -- reads ---------------------------------------------------------------------------


def test_stats_of_a_queue(client: OmniqClient, r) -> None:
    assert client.stats("fresh") == QueueStats(queue="fresh")

    client.publish("s", {"n": 1}, job_id="w", now_ms=10)
    client.publish("s", {"n": 2}, job_id="g", gid="grp", now_ms=11)
    client.publish("s", {"n": 3}, job_id="d", due_ms=99, now_ms=12)
    client.publish("s", {"n": 4}, job_id="w2", now_ms=13)
    client.reserve("s", now_ms=20)  # g
    client.pause("s")

    assert client.stats("s") == QueueStats(
        queue="s", waiting=2, group_waiting=0, waiting_total=2, active=1, delayed=1,
        failed=0, completed_kept=0, groups_ready=0, last_activity_ms=20, last_enqueue_ms=13,
        last_reserve_ms=20, last_finish_ms=0, paused=True,
    )


def test_list_queues_finds_every_stats_hash(client: OmniqClient, r) -> None:
    assert client.list_queues() == []
    for name in ("beta", "alpha", "a.b-c_d"):
        client.publish(name, {"n": 1}, now_ms=1)
    client.childs_init("fan", 2)  # not a queue
    r.set("unrelated:stats", "x")  # not ours: no braces
    r.hset("{bad name}:stats", "waiting", 1)  # braces but not a legal queue name

    assert client.list_queues() == ["a.b-c_d", "alpha", "beta"]


def test_list_queues_scans_past_one_page(client: OmniqClient, r) -> None:
    pipe = r.pipeline()
    for n in range(1500):
        pipe.hset(f"{{q{n:04d}}}:stats", "waiting", 0)
        pipe.set(f"{{q{n:04d}}}:other", 1)
    pipe.execute()
    assert client.list_queues() == [f"q{n:04d}" for n in range(1500)]


def test_job_returns_jobinfo_or_none(client: OmniqClient, r) -> None:
    assert client.job("q", "missing") is None

    client.publish("q", {"n": 1}, job_id="j", gid="grp", max_attempts=2, timeout_ms=500,
                   backoff_ms=7, now_ms=100)
    got = client.reserve("q", now_ms=200)
    client.ack_fail("q", "j", got.lease_token, error="oops", now_ms=300)

    assert client.job("q", "j") == JobInfo(
        queue="q", id="j", state="delayed", payload='{"n":1}', attempt=1, max_attempts=2,
        timeout_ms=500, backoff_ms=7, gid="grp", created_ms=100, updated_ms=300,
        queued_ms=100, first_started_ms=200, last_started_ms=200, completed_ms=None,
        failed_ms=None, due_ms=307, lock_until_ms=None, lease_token="", last_error="oops",
        last_error_ms=300,
    )


def test_iter_ids_reads_the_idx_mirror(client: OmniqClient, r) -> None:
    for n in range(3):
        client.publish("q", {"n": n}, job_id=f"j{n}", now_ms=10 - n)
    assert list(client.iter_ids("q", "wait")) == ["j2", "j1", "j0"]  # by entered-at ms
    assert list(client.iter_ids("q", "failed")) == []
    with pytest.raises(ValueError):
        list(client.iter_ids("q", "gwait"))


# -- the generated scripts -------------------------------------------------------------


def test_generated_scripts_are_up_to_date() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "build_lua.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


HEADER = re.compile(r"\A-- .+\n(?:--.*\n)*?-- KEYS\[1\] .+\n(?:--.*\n)*?-- ARGV .+\n"
                    r"(?:--.*\n)*?-- Reply .+\n(?:--.*\n)*?-- Errors .+\n")


def test_catalog_every_script_has_its_header_and_a_name() -> None:
    files = {p.stem: p for p in Path(scripts_dir()).glob("*.lua")}
    known = getattr(scripts_module, "ALL_SCRIPTS", scripts_module.PROTOCOL_SCRIPTS)

    assert len(scripts_module.PROTOCOL_SCRIPTS) == 15
    assert set(scripts_module.PROTOCOL_SCRIPTS) <= set(files)
    assert set(files) == set(known), "every file in lua/ is a named script, and back"
    for name, path in files.items():
        text = path.read_text(encoding="utf-8")
        assert text.startswith(f"-- {name}"), name
        assert HEADER.match(text), f"{name}.lua lacks its KEYS/ARGV/Reply/Errors header"


def test_catalog_every_script_loads(client: OmniqClient, r) -> None:
    r.script_flush()
    for name in getattr(scripts_module, "ALL_SCRIPTS", scripts_module.PROTOCOL_SCRIPTS):
        sha = r.script_load(scripts_module.script_source(name))
        assert sha == client.scripts[name].sha, name
    assert Path(scripts_dir()) == Path(omniq_tasks.__file__).parent / "lua"
