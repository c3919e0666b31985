"""Security: TLS (rediss:// with a self-signed CA), a worker under a restricted ACL user,
what a hostile payload can make a worker do (nothing but fail), and no pickle anywhere.

Everything runs on real redis-server processes (TLS ones made by omniq_tasks.testing
with a throwaway CA). The ACL rule is read from docs/security.md, so the documented
rule is the one tested.
"""

from __future__ import annotations

import ast
import os
import pickle  # only to build a hostile payload; the package itself must never import it
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

import omniq_tasks
from omniq_tasks import App, OmniqClient
from omniq_tasks.errors import PayloadTooLargeError
from omniq_tasks.testing import make_ca
from omniq_tasks.worker.loop import Worker
from redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "security.md"
PACKAGE = Path(omniq_tasks.__file__).resolve().parent


def _wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- TLS -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server() -> Iterator[RedisServer]:
    server = RedisServer(tls=True)
    yield server
    server.stop()


@pytest.fixture()
def tls_admin(tls_server: RedisServer) -> Iterator[redis.Redis]:
    conn = tls_server.client(decode_responses=True)
    conn.flushall()
    yield conn
    conn.close()


def test_tls_server_speaks_only_tls(tls_server: RedisServer, tls_admin: redis.Redis) -> None:
    assert tls_server.url.startswith("rediss://127.0.0.1:")
    assert "ssl_ca_certs=" in tls_server.url
    assert tls_admin.config_get("port") == {"port": "0"}  # no plain-text port at all
    assert tls_admin.config_get("tls-port") == {"tls-port": str(tls_server.port)}
    plain = redis.Redis(port=tls_server.port, socket_timeout=2)
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    plain.close()


def test_tls_publish_and_in_process_worker(tls_server: RedisServer, tls_admin: redis.Redis) -> None:
    app = App("tls", redis_url=tls_server.url, queue="tls-q", timeout_ms=5000)
    ran: list[str] = []

    @app.task
    def greet(name: str) -> None:
        ran.append(name)

    try:
        handle = greet.delay("ada")
        conn = app.client.redis.connection_pool.get_connection()
        try:
            assert isinstance(conn, redis.SSLConnection)  # the URL really gave us TLS
        finally:
            app.client.redis.connection_pool.release(conn)
        assert handle.status() == "wait"
        assert Worker(app, drain=True).run() == 0
        assert ran == ["ada"]
        assert handle.status() == "completed"
        assert tls_admin.hget(f"{{tls-q}}:job:{handle.id}", "state") == "completed"
    finally:
        app.close()


CLI_TASKS = '''
import os
import redis
from omniq_tasks import App

app = App("tls-cli", queue="tls-cli")

@app.task
def store(key: str, value: str) -> None:
    conn = redis.Redis.from_url(os.environ["OMNIQ_TASKS_REDIS_URL"])
    conn.set("{tls-cli}:out:" + key, value)
    conn.close()
'''


def test_tls_worker_cli_process(tls_server: RedisServer, tls_admin: redis.Redis, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The published worker command on a rediss:// URL from the environment, as deployed."""
    (tmp_path / "tls_cli_tasks.py").write_text(CLI_TASKS)
    monkeypatch.setenv("OMNIQ_TASKS_REDIS_URL", tls_server.url)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sys.path.insert(0, str(tmp_path))
    try:
        import tls_cli_tasks  # the same module the worker imports, to publish with
        assert tls_cli_tasks.app.redis_url == tls_server.url
        handles = [tls_cli_tasks.store.delay(f"k{i}", f"v{i}") for i in range(5)]
        tls_cli_tasks.app.close()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tls_cli_tasks", None)
    result = subprocess.run(
        [sys.executable, "-m", "omniq_tasks", "worker", "tls_cli_tasks:app", "--drain"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [tls_admin.get(f"{{tls-cli}}:out:k{i}") for i in range(5)] == [f"v{i}" for i in range(5)]
    assert {tls_admin.hget(f"{{tls-cli}}:job:{h.id}", "state") for h in handles} == {"completed"}


def test_tls_wrong_ca_is_refused_clearly(tls_server: RedisServer, tls_admin: redis.Redis,
                                         tmp_path: Path) -> None:
    other = make_ca(tmp_path, "other-ca")
    url = f"rediss://127.0.0.1:{tls_server.port}/0?ssl_ca_certs={other.cert}"
    app = App("wrong-ca", redis_url=url, queue="tls-q")

    @app.task
    def greet(name: str) -> None: ...

    try:
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            greet.delay("ada")
        worker = Worker(app, drain=True)
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            worker.step()  # what run() logs as "redis unreachable (...)" and backs off on
        worker.runner.stop()
    finally:
        app.close()
    assert tls_admin.dbsize() == 0  # nothing reached the server


def test_tls_without_a_ca_is_refused(tls_server: RedisServer) -> None:
    """The system trust store does not know our CA: verification is on by default."""
    client = OmniqClient(f"rediss://127.0.0.1:{tls_server.port}/0")
    try:
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            client.publish("tls-q", {"x": 1})
    finally:
        client.close()


# -- ACL -----------------------------------------------------------------------------

ACL_USER = "emails-app"
ACL_PASSWORD = "change-me"


def documented_acl_rule() -> list[str]:
    """The ``ACL SETUSER`` line of docs/security.md, split into its arguments."""
    lines = [line.strip() for line in DOCS.read_text().splitlines()
             if line.strip().startswith("ACL SETUSER ")]
    assert lines, "docs/security.md must give the exact ACL SETUSER line"
    words = lines[0].split()
    assert words[2] == ACL_USER and f">{ACL_PASSWORD}" in words
    return words[2:]


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    server = RedisServer()  # its own server: users made here must not leak into other tests
    yield server
    server.stop()


@pytest.fixture()
def acl_admin(acl_server: RedisServer) -> Iterator[redis.Redis]:
    admin = acl_server.client(decode_responses=True)
    admin.flushall()
    admin.execute_command("ACL", "SETUSER", *documented_acl_rule())
    admin.execute_command("ACL", "LOG", "RESET")
    yield admin
    admin.execute_command("ACL", "DELUSER", ACL_USER)
    admin.close()


def acl_url(server: RedisServer) -> str:
    return f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{server.port}/0"


def refusals(admin: redis.Redis) -> list[str]:
    """What the server refused, from ACL LOG (redis-py's optional CLIENT SETINFO aside)."""
    entries = admin.execute_command("ACL", "LOG")
    out = []
    for entry in entries:
        fields = dict(zip(entry[::2], entry[1::2])) if isinstance(entry, list) else entry
        if fields.get("object") != "client|setinfo":
            out.append(f"{fields.get('reason')} {fields.get('object')} ({fields.get('context')})")
    return out


def test_acl_rule_is_limited_to_the_documented_keys() -> None:
    rule = documented_acl_rule()
    assert "reset" in rule and "resetchannels" in rule and "-@all" in rule
    patterns = [w for w in rule if w.startswith("~") or w.startswith("%")]
    assert patterns == ["~{emails}:*", "~{cc:*}:*", "~{omniq-tasks}:*"]
    assert not any(w in ("+@all", "allcommands", "allkeys", "~*", "+@dangerous", "nopass") for w in rule)


def test_acl_user_runs_publisher_and_worker_end_to_end(acl_server: RedisServer, acl_admin: redis.Redis) -> None:
    app = App("acl", redis_url=acl_url(acl_server), queue="emails", timeout_ms=5000, backoff_ms=0)
    ran: list[Any] = []
    lock = threading.Lock()

    @app.task
    def send(to: str) -> None:
        with lock:
            ran.append(to)

    @app.task(gid="company:{company}", group_limit=2)
    def grouped(company: int, n: int) -> None:
        with lock:
            ran.append((company, n))

    @app.task(max_attempts=1)
    def broken() -> None:
        raise ValueError("always")

    @app.task
    def part(ctx: omniq_tasks.JobContext, key: str) -> None:
        left = ctx.child_ack(key)
        with lock:
            ran.append(("part", left))

    @app.task
    def page(n: int) -> int:
        return n * 10

    @app.task
    def total(pages: list[omniq_tasks.ChildResult[int]]) -> int:
        with lock:
            ran.append(("total", sum(p.value or 0 for p in pages)))
        return 0

    worker = Worker(app, poll_interval_s=0.2, maintenance_interval_s=0.1)
    thread = threading.Thread(target=worker.run, name="acl-worker", daemon=True)
    thread.start()
    try:
        _wait_for(lambda: any(c.get("user") == ACL_USER and c.get("cmd") == "blpop"
                              for c in acl_admin.client_list()),
                  what="the idle worker to block on {emails}:wake as the ACL user")
        handle = send.delay("a@b.c")                       # enqueue + wake token
        grouped.map([(1, i) for i in range(3)] + [(2, i) for i in range(3)])   # enqueue_batch
        failing = broken.delay()
        app.client.childs_init("emails:report-1", 2)
        part.delay("emails:report-1")
        part.delay("emails:report-1")
        # a fan-out and a chain: fanout_open/child/mark, the once-sets, the sweepers' index
        fanned = app.fanout([page.s(n) for n in range(3)], then=total.s(), key="emails:doc-1")
        chained = omniq_tasks.chain(page.s(1), page.s()).delay()
        _wait_for(lambda: len(ran) == 10, what="every job to run")
        assert fanned.get(timeout=10) == 0 and chained.get(timeout=10) == 100
        _wait_for(lambda: failing.status() == "failed", what="the failing job to fail")
        _wait_for(lambda: handle.status() == "completed", what="the job to be acked")
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert sorted(x for x in ran if isinstance(x, tuple) and x[0] == "part") == [("part", 0), ("part", 1)]
    assert ("total", 30) in ran

    client = app.client  # the admin-ish operations an app does with the same user
    client.pause("emails")
    assert client.is_paused("emails")
    assert client.resume("emails")
    assert client.stats("emails").failed == 1
    assert list(client.iter_ids("emails", "failed")) == [failing.id]
    assert client.job("emails", failing.id) is not None
    client.retry_failed("emails", failing.id)
    client.remove_job("emails", failing.id, "wait")
    assert client.promote_delayed("emails") == 0 and client.reap_expired("emails") == 0
    app.close()
    assert refusals(acl_admin) == []  # not one command of the whole run was refused


def test_acl_user_cannot_touch_other_keys(acl_server: RedisServer, acl_admin: redis.Redis) -> None:
    acl_admin.set("other", "secret")
    acl_admin.set("{other}:x", "theirs")
    acl_admin.rpush("{reports}:wait", "job-1")
    user = redis.Redis.from_url(acl_url(acl_server), decode_responses=True)
    try:
        assert user.ping()
        for command in (("GET", "other"), ("SET", "{other}:x", "mine"), ("DEL", "other"),
                        ("LPOP", "{reports}:wait"), ("HGETALL", "{reports}:job:job-1"),
                        ("GET", "{emails.eu}:meta"), ("GET", "{emails}"),
                        ("FLUSHALL",), ("FLUSHDB",), ("KEYS", "*"), ("SCAN", "0"), ("RANDOMKEY",),
                        ("CONFIG", "GET", "*"), ("SCRIPT", "FLUSH"),
                        ("PUBLISH", "chan", "x"), ("ACL", "LIST"), ("SHUTDOWN",)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                user.execute_command(*command)
        # EVAL is allowed (it reloads our scripts after a flush), but a script runs with
        # the caller's ACL: it reaches no key the user could not reach itself.
        for script in ("return redis.call('GET', 'other')", "return redis.call('SET', '{other}:x', 'mine')"):
            with pytest.raises(redis.ResponseError, match=r"(?i)noperm|permission|can't"):
                user.eval(script, 0)
        # Our own scripts cannot reach another queue either: Lua runs with the caller's ACL.
        app = App("acl", redis_url=acl_url(acl_server), queue="reports")

        @app.task
        def report(n: int) -> None: ...

        with pytest.raises(redis.ResponseError, match=r"(?i)noperm|permission|can't"):
            report.delay(1)
        app.close()
    finally:
        user.close()
    assert acl_admin.get("other") == "secret"
    assert acl_admin.get("{other}:x") == "theirs"
    assert acl_admin.lrange("{reports}:wait", 0, -1) == ["job-1"]
    assert acl_admin.keys("{reports}:*") == ["{reports}:wait"]


# -- what a payload can make the worker do -------------------------------------------


class _Hostile:
    """Unpickling this runs a shell command: proof that nothing unpickles payloads."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def test_hostile_payloads_only_fail_the_job(r: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> None:
    app = App("hostile", redis_url=redis_server.url, queue="inbox", timeout_ms=5000, max_attempts=3)
    ran: list[str] = []

    @app.task
    def send(to: str) -> None:
        ran.append(to)

    marker = tmp_path / "pwned"
    client = app.client
    try:
        jobs = {
            "unknown": client.publish("inbox", {"task": "os.system", "args": [f"touch {marker}"]}),
            "builtin": client.publish("inbox", {"task": "builtins.eval",
                                                "args": [f"open({str(marker)!r}, 'w')"]}),
            "bad-args": client.publish("inbox", {"task": send.name, "kwargs": {
                "to": {"py/object": "os.system", "__reduce__": [f"touch {marker}"]}}}),
            "extra-arg": client.publish("inbox", {"task": send.name, "kwargs": {
                "to": "x", "__class__": "os.system"}}),
            "raw": client.publish("inbox", ["no", "envelope"]),
        }
        # A foreign producer is not held to our publisher's checks: a pickle straight into
        # the protocol's enqueue script (what any client with write access can do).
        pickled = pickle.dumps(_Hostile(marker))
        client.scripts.call("enqueue", "{inbox}:meta", ("pickled-job", pickled, 3, 5000, 0, 0, 0, "", 0))
        good = send.delay("ok@example.com")
        assert Worker(app, drain=True).run() == 0
    finally:
        app.close()
    assert ran == ["ok@example.com"]
    assert not marker.exists()
    check = OmniqClient(redis_server.url)
    try:
        assert check.job("inbox", good.id).state == "completed"  # type: ignore[union-attr]
        errors = {}
        for name, published in [*jobs.items(), ("pickle", None)]:
            info = check.job("inbox", published.job_id if published else "pickled-job")
            assert info is not None
            assert (info.state, info.attempt) == ("failed", 1), name  # at once, no retries
            errors[name] = info.last_error
    finally:
        check.close()
    assert "unknown task 'os.system'" in errors["unknown"]
    assert "unknown task 'builtins.eval'" in errors["builtin"]
    assert "invalid arguments" in errors["bad-args"]
    assert "invalid arguments" in errors["extra-arg"]
    assert "no raw handler" in errors["raw"] and "no raw handler" in errors["pickle"]


def test_payload_size_is_limited_at_publish(r: redis.Redis, redis_server: RedisServer) -> None:
    app = App("big", redis_url=redis_server.url, queue="inbox")

    @app.task
    def send(body: str) -> None: ...

    try:
        with pytest.raises(PayloadTooLargeError):
            send.delay("x" * (1024 * 1024))
        with pytest.raises(PayloadTooLargeError):
            app.client.publish("inbox", {"body": "x" * (1024 * 1024)})
    finally:
        app.close()
    assert r.keys("{inbox}:job:*") == []


# -- no pickle (or other code-running decoders) in the package -------------------------

PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "shelve", "jsonpickle", "marshal",
                  "copyreg"}
# multiprocessing objects that pickle what passes through them
MP_PICKLING = {"Queue", "SimpleQueue", "JoinableQueue", "Pool", "Manager", "Listener", "Client",
               "ForkingPickler", "reduction"}
CODE_BUILTINS = {"eval", "exec", "compile"}


def pickle_problems(source: str, filename: str = "<source>") -> list[str]:
    """Where ``source`` imports pickle-like modules, uses multiprocessing's pickling APIs,
    a process pool executor, or runs code from strings (eval/exec/compile)."""
    tree = ast.parse(source, filename)
    problems: list[str] = []
    mp_names: set[str] = set()     # names bound to multiprocessing (or its submodules/contexts)
    queue_names: set[str] = set()  # names bound to the stdlib (thread) queue module

    def flag(node: ast.AST, what: str) -> None:
        problems.append(f"{filename}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                bound = alias.asname or top
                if top in PICKLE_MODULES:
                    flag(node, f"imports {alias.name}")
                elif top == "multiprocessing":
                    mp_names.add(bound)
                    if any(part in MP_PICKLING for part in alias.name.split(".")[1:]):
                        flag(node, f"imports {alias.name}")
                elif alias.name == "queue":
                    queue_names.add(bound)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            top = module.split(".")[0]
            if top in PICKLE_MODULES:
                flag(node, f"imports from {module}")
            for alias in node.names:
                if top in ("multiprocessing",) or (module == "" and alias.name == "multiprocessing"):
                    if alias.name in MP_PICKLING:
                        flag(node, f"imports {alias.name} from {module} (it pickles)")
                    mp_names.add(alias.asname or alias.name)
                if alias.name == "ProcessPoolExecutor":
                    flag(node, f"imports ProcessPoolExecutor from {module} (it pickles)")
                if alias.name in PICKLE_MODULES:
                    flag(node, f"imports {alias.name}")
    uses_mp = bool(mp_names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if node.attr == "ProcessPoolExecutor":
                flag(node, "uses ProcessPoolExecutor (it pickles)")
            elif node.attr in MP_PICKLING and uses_mp and not (
                    isinstance(node.value, ast.Name) and node.value.id in queue_names):
                flag(node, f"uses .{node.attr} of multiprocessing (it pickles)")
            elif node.attr in ("send", "recv") and uses_mp:
                flag(node, f"calls .{node.attr}() where multiprocessing is imported: Connection.send/recv "
                           f"pickle, use send_bytes/recv_bytes with JSON")
        elif isinstance(node, ast.Name) and node.id == "ProcessPoolExecutor":
            flag(node, "uses ProcessPoolExecutor (it pickles)")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in CODE_BUILTINS:
                flag(node, f"calls {func.id}()")
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and str(node.args[0].value).split(".")[0] in PICKLE_MODULES | {"multiprocessing"}:
                flag(node, f"imports {node.args[0].value} dynamically")
    return problems


@pytest.mark.parametrize("snippet", [
    "import pickle",
    "import pickle as p",
    "from pickle import loads",
    "import _pickle",
    "import dill",
    "import shelve",
    "import cloudpickle",
    "from multiprocessing import Queue",
    "from multiprocessing import SimpleQueue as SQ",
    "import multiprocessing\nq = multiprocessing.Queue()",
    "import multiprocessing as mp\nq = mp.get_context('spawn').SimpleQueue()",
    "from multiprocessing import get_context\nctx = get_context('spawn')\np = ctx.Pool(2)",
    "from multiprocessing import Pipe\na, b = Pipe()\na.send({'x': 1})",
    "from multiprocessing.connection import Client",
    "from multiprocessing.reduction import ForkingPickler",
    "from concurrent.futures import ProcessPoolExecutor",
    "import concurrent.futures\nconcurrent.futures.ProcessPoolExecutor()",
    "import importlib\nimportlib.import_module('pickle')",
    "eval('1')",
    "exec('x = 1')",
])
def test_pickle_scanner_catches(snippet: str) -> None:
    assert pickle_problems(snippet), f"not caught: {snippet!r}"


@pytest.mark.parametrize("snippet", [
    "import queue\nq = queue.SimpleQueue()",
    "import queue as queue_mod\nimport multiprocessing\nq = queue_mod.Queue()",
    "from multiprocessing import Pipe\na, b = Pipe()\na.send_bytes(b'{}')\nb.recv_bytes()",
    "import subprocess, json\njson.loads('{}')",
    "import re\nre.compile('x')",
    "import msgspec\nmsgspec.json.decode(b'{}')",
])
def test_pickle_scanner_allows(snippet: str) -> None:
    assert pickle_problems(snippet) == []


def test_no_pickle_anywhere_in_the_package() -> None:
    """No module of omniq_tasks imports pickle or its kin, uses multiprocessing's pickling
    APIs or a process pool executor, or runs code from strings."""
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    problems = [p for f in files for p in pickle_problems(f.read_text(encoding="utf-8"),
                                                         str(f.relative_to(PACKAGE.parent)))]
    assert problems == [], "\n".join(problems)


def test_docs_link_security_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "(docs/security.md)" in readme
    text = DOCS.read_text()
    for topic in ("TLS", "ACL", "pickle", "last_error", "protected-mode", "AOF"):
        assert topic in text, topic
    assert re.search(r"rediss://", text)


def test_password_in_the_url_is_never_shown(acl_server: RedisServer, acl_admin: redis.Redis,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """The ACL user's password stays out of reprs, error messages and log lines."""
    closed = RedisServer()
    port = closed.port
    closed.stop()  # nothing listens there now
    app = App("secret", redis_url=f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{port}/0", queue="emails")

    @app.task
    def send(to: str) -> None: ...

    shown = [repr(app), repr(app.client)]
    with caplog.at_level("DEBUG"):
        with pytest.raises(redis.ConnectionError) as refused:
            send.delay("a@b.c")
        shown.append(str(refused.value))
        good = App("secret", redis_url=acl_url(acl_server), queue="emails")
        good.task(name="send")(send.fn)
        assert Worker(good, drain=True).run() == 0
        good.close()
    app.close()
    shown += [record.getMessage() for record in caplog.records]
    assert f"127.0.0.1:{port}" in shown[2]  # the error does say where
    assert not [text for text in shown if ACL_PASSWORD in text]
