"""Every default and limit of omniq-tasks, written once.

The job options (``MAX_ATTEMPTS``, ``TIMEOUT_MS``, ``BACKOFF_MS``) are what a
job gets when neither the App, the task nor the call sets them. The limits the
Lua scripts enforce are restated here only so Python can chunk and check before
calling them; ``tests/test_defaults.py`` reads ``lua_src/`` and fails when the two
disagree.
"""

from __future__ import annotations

from typing import Any

# -- job options ----------------------------------------------------------------
MAX_ATTEMPTS = 3
TIMEOUT_MS = 30_000
BACKOFF_MS = 5_000
QUEUE = "default"

# The last millisecond of year 9999: later due times are surely mistakes (and beyond
# 2**53 the scripts' Lua numbers would lose precision).
MAX_DUE_MS = 253_402_300_799_999

# -- connection -------------------------------------------------------------------
REDIS_URL = "redis://localhost:6379/0"
REDIS_URL_ENV = "OMNIQ_TASKS_REDIS_URL"

# -- publishing -------------------------------------------------------------------
MAX_PAYLOAD_BYTES = 1024 * 1024
# Wake-up tokens kept per queue at most: enough to wake that many idle workers.
WAKE_CAP = 64

# -- what the scripts enforce (checked against lua_src/ by tests/test_defaults.py) ---------
# Jobs, acks or leases per call of enqueue_batch, ack_*_batch, heartbeat_batch, reserve_batch.
MAX_CALL_JOBS = 1000
# Ids per call of retry_failed_batch and remove_jobs_batch (include/batch.lua).
MAX_BATCH = 100
# Bytes of last_error ack_fail keeps.
MAX_ERROR_BYTES = 4096
# Finished ids kept in {Q}:completed (include/lanes.lua).
KEEP_COMPLETED = 100
# The lease length the scripts assume for a job stored without timeout_ms (another producer's).
SCRIPT_TIMEOUT_MS = 60_000
# Jobs promote_delayed / reap_expired move per call when not told.
MAINTENANCE_LIMIT = 1000

# -- reads ------------------------------------------------------------------------
# Ids read per ZRANGE by OmniqClient.iter_ids, keys asked per SCAN by iter_queues.
READ_PAGE = 1000


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum`` (and at most
    ``maximum``), else TypeError/ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value
