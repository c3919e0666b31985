"""The task envelope: the stable JSON shape of a task job's payload.

    {"task": "<name>", "args": [...], "kwargs": {...}, "meta": {...}}

``task`` names the registered task; ``args`` are positional and ``kwargs`` named
arguments (our publisher sends every argument by name, other producers may use
either); ``meta`` is optional framework data (``expires_ms``: the epoch-ms
deadline after which the job is not started). A payload counts as an envelope
when it is a JSON object with a string ``task`` and an ``args`` or ``kwargs``
member; anything else is a raw payload for the queue's raw handler. Unknown
top-level members are ignored, so later versions may add fields.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import msgspec

from .errors import PayloadError
from .protocol.payload import MAX_NESTING, too_deep

_encode = msgspec.json.Encoder().encode



class Envelope(msgspec.Struct, frozen=True):
    """A decoded envelope; ``args`` and ``kwargs`` stay undecoded JSON until the task is known."""

    task: str
    args: msgspec.Raw = msgspec.Raw()
    kwargs: msgspec.Raw = msgspec.Raw()
    meta: dict[str, Any] = {}


_decode_envelope = msgspec.json.Decoder(Envelope).decode


@lru_cache(maxsize=1024)
def _prefix(task: str) -> bytes:
    return b'{"task":' + _encode(task) + b',"args":[],"kwargs":'


def build_envelope(task: str, kwargs_json: bytes, meta: dict[str, Any] | None = None) -> bytes:
    """The payload for a call of ``task`` whose named arguments are ``kwargs_json``."""
    if meta:
        return _prefix(task) + kwargs_json + b',"meta":' + _encode(meta) + b"}"
    return _prefix(task) + kwargs_json + b"}"


def read_envelope(payload: bytes | str) -> Envelope | None:
    """The envelope in a payload, or None when the payload is raw (not an envelope).

    Raises PayloadError for a payload nested too deep to decode safely.
    """
    data = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    if too_deep(data):
        raise PayloadError(f"payload nests arrays/objects deeper than {MAX_NESTING} levels")
    try:
        envelope = _decode_envelope(data)
    except msgspec.DecodeError:
        return None
    except RecursionError:  # deep inside an already deep call stack
        raise PayloadError("payload nests arrays/objects too deep to decode") from None
    if not envelope.args and not envelope.kwargs:
        return None
    return envelope
