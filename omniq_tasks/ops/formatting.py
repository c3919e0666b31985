"""Times and durations as people read them: UTC clock times, "3.2 s", "4 min ago"."""

from __future__ import annotations

from datetime import datetime, timezone


def utc(ms: int | None) -> str:
    """``2026-05-01 12:00:03.120 UTC``, or "" for None/0."""
    if not ms:
        return ""
    try:
        moment = datetime.fromtimestamp(ms / 1000, timezone.utc)
    except (OverflowError, OSError, ValueError):  # a time another client wrote that is out of range
        return f"{ms} ms"
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"


def duration(ms: int | float | None) -> str:
    """A length of time: "120 ms", "3.2 s", "4 min 5 s", "2 h 10 min", "3 d 4 h"; "" for None."""
    if ms is None:
        return ""
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    if ms < 1000:
        return f"{sign}{ms:.0f} ms"
    s = ms / 1000
    if s < 60:
        return f"{sign}{s:.1f} s"
    if s < 3600:
        return f"{sign}{int(s // 60)} min {int(s % 60)} s"
    if s < 86400:
        return f"{sign}{int(s // 3600)} h {int(s % 3600 // 60)} min"
    return f"{sign}{int(s // 86400)} d {int(s % 86400 // 3600)} h"


def ago(ms: int | None, now_ms: int) -> str:
    """Short and relative to ``now_ms``: "5s", "12m", "3h", "4d", "in 5s" for a time ahead; "-" for None/0."""
    if not ms:
        return "-"
    delta = (now_ms - ms) / 1000
    ahead = delta < 0
    delta = abs(delta)
    if delta < 60:
        text = f"{delta:.0f}s"
    elif delta < 3600:
        text = f"{delta / 60:.0f}m"
    elif delta < 86400:
        text = f"{delta / 3600:.0f}h"
    else:
        text = f"{delta / 86400:.0f}d"
    return f"in {text}" if ahead else text


def count(n: int) -> str:
    """A counter for a narrow column: exact below a million, then "1.2M", "3.4G"."""
    if n < 1_000_000:
        return str(n)
    if n < 1_000_000_000:
        return f"{n / 1_000_000:.1f}M"
    return f"{n / 1_000_000_000:.1f}G"
