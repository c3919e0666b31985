"""Job ids: ULIDs (python-ulid), sortable by creation time, in monotonic runs.

python-ulid makes a ULID in about 6 µs, most of it base32 text; publishing wants
less. So within one millisecond ids count up from the last ULID python-ulid made
(the ULID spec's monotonic mode: same timestamp, randomness + 1), and the text is
written with a 1024-entry table: about 1 µs an id.
"""

from __future__ import annotations

import os
import threading
import time

try:
    from ulid import ULID
except ImportError as exc:  # pragma: no cover - an environment problem, said clearly
    raise ImportError(
        "omniq-tasks needs python-ulid ('pip install python-ulid'); if ulid-py is installed "
        "too, they share the import name 'ulid': reinstall python-ulid last") from exc

if not hasattr(ULID, "from_int"):  # pragma: no cover
    raise ImportError("the 'ulid' module is not python-ulid (ulid-py shadows it): "
                      "run 'pip install --force-reinstall --no-deps python-ulid'")

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32, as ULIDs use it
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # 10 bits -> 2 chars


_lock = threading.Lock()
_last_ms = -1
_last = 0


def _reserve(count: int) -> int:
    """The first of ``count`` consecutive ULID values, after every value handed out so far."""
    global _last_ms, _last
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms != _last_ms or (_last & ((1 << 80) - 1)) > (1 << 80) - count - 2:
            _last_ms = now_ms
            _last = int(ULID()) - 1
        start = _last + 1
        _last += count
        return start


def _forget_after_fork() -> None:
    # A forked child must not count on from its parent's last id: both would hand
    # out the same ids in the same millisecond.
    global _last_ms, _lock
    _last_ms = -1
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def new_job_id() -> str:
    """A new ULID job id, greater than every id this process made before in the same ms."""
    return ulid_text(_reserve(1))


def ulid_text(value: int) -> str:
    """The 26-char ULID text of a 128-bit integer (what ``str(ULID.from_int(value))`` gives)."""
    pairs = _PAIRS
    # 26 chars hold 130 bits: the first char carries the top 3 bits (two are padding).
    return "".join([
        pairs[(value >> 120) & 0x3FF], pairs[(value >> 110) & 0x3FF], pairs[(value >> 100) & 0x3FF],
        pairs[(value >> 90) & 0x3FF], pairs[(value >> 80) & 0x3FF], pairs[(value >> 70) & 0x3FF],
        pairs[(value >> 60) & 0x3FF], pairs[(value >> 50) & 0x3FF], pairs[(value >> 40) & 0x3FF],
        pairs[(value >> 30) & 0x3FF], pairs[(value >> 20) & 0x3FF], pairs[(value >> 10) & 0x3FF],
        pairs[value & 0x3FF],
    ])


def new_job_ids(count: int) -> list[str]:
    """``count`` new ULID job ids in increasing order (monotonic within one millisecond)."""
    if count <= 0:
        return []
    start = _reserve(count)
    ids = []
    block = prefix = None
    for value in range(start, start + count):
        if value >> 10 != block:  # the first 24 chars change once per 1024 ids
            block = value >> 10
            prefix = ulid_text(value)[:24]
        ids.append(f"{prefix}{_PAIRS[value & 0x3FF]}")
    return ids
