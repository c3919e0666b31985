"""Each default and limit is written once in Python (omniq_tasks.defaults), and the
limits the Lua scripts enforce say the same as the Python constants."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from omniq_tasks import App, OmniqClient, defaults, job_spec
from omniq_tasks.worker import execution
from omniq_tasks.protocol.client import JobSpec

LUA_SRC = Path(__file__).resolve().parent.parent / "lua_src"


def lua_constant(relative: str, name: str) -> int:
    """``local NAME = <int>`` in a Lua source (``7 * 24`` style products are not used here)."""
    text = (LUA_SRC / relative).read_text(encoding="utf-8")
    found = re.findall(rf"^\s*local\s+{name}\s*=\s*(\d+)\s*(?:--.*)?$", text, re.MULTILINE)
    assert len(found) == 1, f"{relative}: expected one 'local {name} = <number>', found {found}"
    return int(found[0])


@pytest.mark.parametrize(("relative", "name", "python"), [
    ("include/batch.lua", "MAX_BATCH", defaults.MAX_BATCH),
    ("enqueue_batch.lua", "MAX_JOBS", defaults.MAX_CALL_JOBS),
    ("ack_success_batch.lua", "MAX_ACKS", defaults.MAX_CALL_JOBS),
    ("ack_fail_batch.lua", "MAX_ACKS", defaults.MAX_CALL_JOBS),
    ("heartbeat_batch.lua", "MAX_LEASES", defaults.MAX_CALL_JOBS),
    ("include/lanes.lua", "KEEP_COMPLETED", defaults.KEEP_COMPLETED),
    ("include/lanes.lua", "DEFAULT_TIMEOUT_MS", defaults.SCRIPT_TIMEOUT_MS),
    ("include/lanes.lua", "MAX_ERROR_BYTES", defaults.MAX_ERROR_BYTES),  # ack_fail and ack_fail_batch
])
def test_lua_limits_match_python(relative: str, name: str, python: int) -> None:
    assert lua_constant(relative, name) == python


def test_reserve_batch_clamps_to_the_call_limit() -> None:
    text = (LUA_SRC / "reserve_batch.lua").read_text(encoding="utf-8")
    clamp = re.search(r"local max_jobs = math\.min\(.*,\s*(\w+)\)\s*$", text, re.MULTILINE)
    assert clamp, "reserve_batch.lua: no 'local max_jobs = math.min(..., limit)'"
    limit = clamp.group(1)
    value = int(limit) if limit.isdigit() else lua_constant("reserve_batch.lua", limit)
    assert value == defaults.MAX_CALL_JOBS


def test_maintenance_scripts_default_to_the_python_limit() -> None:
    for script in ("promote_delayed.lua", "reap_expired.lua", "reap_leases.lua"):
        text = (LUA_SRC / script).read_text(encoding="utf-8")
        found = re.search(r'to_int\(ARGV\[2\] or "(\d+)"\)', text)
        assert found and int(found.group(1)) == defaults.MAINTENANCE_LIMIT, script


def test_error_text_fits_what_ack_fail_keeps() -> None:
    assert execution.MAX_ERROR_CHARS == defaults.MAX_ERROR_BYTES


def test_every_entry_point_uses_the_same_job_defaults() -> None:
    expected = {"max_attempts": defaults.MAX_ATTEMPTS, "timeout_ms": defaults.TIMEOUT_MS,
                "backoff_ms": defaults.BACKOFF_MS}
    assert (defaults.MAX_ATTEMPTS, defaults.TIMEOUT_MS, defaults.BACKOFF_MS) == (3, 30_000, 5_000)
    for fn in (App.__init__, job_spec):
        params = inspect.signature(fn).parameters
        assert {name: params[name].default for name in expected} == expected, fn
    spec = JobSpec("id", b"{}")
    assert {name: getattr(spec, name) for name in expected} == expected
    assert {name: getattr(job_spec(b"{}"), name) for name in expected} == expected
    app = App("a")
    assert {name: getattr(app, name) for name in expected} == expected
    assert app.queue == defaults.QUEUE and app.wake_cap == defaults.WAKE_CAP
    assert app.max_payload_bytes == defaults.MAX_PAYLOAD_BYTES
    params = inspect.signature(OmniqClient.__init__).parameters
    assert params["max_payload_bytes"].default == defaults.MAX_PAYLOAD_BYTES
    assert inspect.signature(OmniqClient.enqueue_many).parameters["wake_cap"].default == defaults.WAKE_CAP


def test_app_falls_back_to_the_default_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(defaults.REDIS_URL_ENV, raising=False)
    assert App("a").redis_url == defaults.REDIS_URL == "redis://localhost:6379/0"


def test_check_int() -> None:
    assert defaults.check_int("n", 5, 1) == 5
    with pytest.raises(TypeError):
        defaults.check_int("n", True, 0)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        defaults.check_int("n", 0, 1)
