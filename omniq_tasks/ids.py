"""Job ids: ULIDs (python-ulid), sortable by creation time, and monotonic runs of them.

Bulk publishing needs thousands of ids at once; python-ulid makes each in about
6 µs, most of it base32 text. :func:`new_job_ids` takes one ULID from python-ulid
and counts up from it (the ULID spec's monotonic mode: same millisecond,
randomness + 1), writing the text with a 1024-entry table, about 1 µs an id.
"""

from __future__ import annotations

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


def new_job_id() -> str:
    """A new ULID job id."""
    return str(ULID())


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
    start = int(ULID())
    # Keep clear of the randomness overflowing into the timestamp (p ~ count / 2**80).
    if (start & ((1 << 80) - 1)) > (1 << 80) - count - 1:
        start -= count
    return [ulid_text(start + i) for i in range(count)]
