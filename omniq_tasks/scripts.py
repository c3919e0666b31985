"""Load the protocol scripts shipped in ``omniq_tasks/lua/`` as redis-py Script objects.

redis-py's ``Script`` calls EVALSHA and, on NOSCRIPT (after ``SCRIPT FLUSH`` or a
server restart), loads the source again and retries, so no SHA cache is kept here.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

# The OmniQ v1 protocol scripts, by the names every SDK uses.
PROTOCOL_SCRIPTS = (
    "enqueue", "reserve", "heartbeat", "ack_success", "ack_fail", "promote_delayed",
    "reap_expired", "pause", "resume", "retry_failed", "retry_failed_batch",
    "remove_job", "remove_jobs_batch", "childs_init", "child_ack",
)
# omniq-tasks extensions: new file names, never called by the official SDKs.
EXTENSION_SCRIPTS = ("enqueue_batch", "reserve_batch", "ack_success_batch")
ALL_SCRIPTS = PROTOCOL_SCRIPTS + EXTENSION_SCRIPTS


@cache
def script_source(name: str) -> str:
    """The text of ``lua/<name>.lua`` from the installed package."""
    return resources.files("omniq_tasks").joinpath("lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


def scripts_dir() -> str:
    """The folder holding the scripts (what an official SDK's ``scripts_dir`` wants)."""
    return str(resources.files("omniq_tasks").joinpath("lua"))


class Scripts:
    """One registered Script per protocol script, bound to one Redis client."""

    def __init__(self, redis: Any, names: tuple[str, ...] = ALL_SCRIPTS) -> None:
        self._scripts = {name: redis.register_script(script_source(name)) for name in names}

    def __getitem__(self, name: str) -> Any:
        return self._scripts[name]
