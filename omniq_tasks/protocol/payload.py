"""Checks on JSON that crosses Redis: nesting depth, numbers JSON cannot hold, and
whether a value comes back from JSON unchanged. Used when publishing (so that what a
worker decodes is what was sent) and when decoding a job.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec

# How deep arrays and objects may nest in a payload. msgspec recurses on the C stack
# and gives up near Python's recursion limit (~1000 levels, less inside a deep call
# stack), so a fixed, lower bound makes "will the worker decode it?" predictable.
MAX_NESTING = 256
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Leaves msgspec.to_builtins should keep as they are, so a comparison sees them.
_LEAVES = (bytes, bytearray, memoryview, datetime, date, time, timedelta, UUID, Decimal)


def too_deep(data: bytes, limit: int = MAX_NESTING) -> bool:
    """True when arrays/objects in the JSON ``data`` nest deeper than ``limit``.

    Counting brackets is enough for almost every payload; only one with more
    brackets than the limit gets the exact (slower) scan, strings left out.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for byte in _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS):
        if byte == 91 or byte == 123:  # [ {
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def to_plain(value: Any) -> Any:
    """``value`` as dicts, lists and leaves (bytes, datetimes, ... kept as they are)."""
    return msgspec.to_builtins(value, builtin_types=_LEAVES)


def _join(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else part


def find_nonfinite(plain: Any, path: str = "") -> tuple[str, float] | None:
    """The path and value of the first NaN or infinity in a :func:`to_plain` tree."""
    stack: list[tuple[str, Any]] = [(path, plain)]
    while stack:  # no recursion: the tree may be deep
        where, value = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                return where, value
        elif isinstance(value, dict):
            stack += [(_join(where, str(k)), v) for k, v in reversed(value.items())]
        elif isinstance(value, (list, tuple)):
            stack += [(_join(where, i), v) for i, v in reversed(list(enumerate(value)))]
    return None


def first_difference(sent: Any, got: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """Where a decoded :func:`to_plain` tree ``got`` lost or changed what ``sent`` held.

    Returns (path, sent value, got value), or None. What the decoder may do is fine:
    parse text into the annotated type (a str for a UUID, an enum's value), fill in
    defaults, take a tuple as a list. What it must not: turn bytes into base64 text,
    a NaN or infinity into null, or a number into another number (a big int into a
    float).
    """
    stack: list[tuple[str, Any, Any]] = [(path, sent, got)]
    while stack:
        where, a, b = stack.pop()
        if isinstance(a, dict) and isinstance(b, dict):
            stack += [(_join(where, str(k)), v, b[k]) for k, v in reversed(a.items()) if k in b]
        elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            if len(a) != len(b):
                return where, a, b
            stack += [(_join(where, i), x, y) for i, (x, y) in reversed(list(enumerate(zip(a, b))))]
        elif a is b or a == b:
            continue
        elif isinstance(a, (bytes, bytearray, memoryview)):
            return where, a, b  # b is not equal bytes: it became text
        elif isinstance(a, float) and not math.isfinite(a):
            return where, a, b
        elif _is_number(a) and _is_number(b):
            return where, a, b
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def describe_difference(where: str, sent: Any, got: Any) -> str:
    """Why a value would not arrive as it was sent, naming where it is."""
    if isinstance(sent, float) and not math.isfinite(sent):
        return f"argument {where} is {sent}: JSON has no NaN or Infinity, it would arrive as null"
    if isinstance(sent, (bytes, bytearray, memoryview)):
        return (f"argument {where} is {type(sent).__name__} where {type(got).__name__} is expected: "
                f"it would arrive as base64 text; decode it first or annotate it bytes")
    return (f"argument {where} would arrive as {type(got).__name__} {_short(got)}, "
            f"not as the {type(sent).__name__} {_short(sent)} given")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
