"""Several script calls in one round trip, for the worker's hot path.

redis-py's Script in a pipeline first asks SCRIPT EXISTS (a second round trip),
so this calls EVALSHA directly and, for any call answered NOSCRIPT (after a
SCRIPT FLUSH or a server restart), loads the script and repeats just that call.
"""

from __future__ import annotations

from typing import Any, Sequence

from redis.exceptions import NoScriptError

from .client import OmniqClient

ScriptCall = tuple[str, str, Sequence[Any]]  # script name, anchor, ARGV


def call_many(client: OmniqClient, calls: Sequence[ScriptCall]) -> list[Any]:
    """Run the calls in order in one non-transactional pipeline; returns their replies.

    A reply is the script's answer or the exception it raised (never raised here,
    except NOSCRIPT, which is retried).
    """
    if len(calls) == 1:
        name, anchor, args = calls[0]
        return [client.scripts[name](keys=[anchor], args=args)]
    pipe = client.redis.pipeline(transaction=False)
    for name, anchor, args in calls:
        pipe.evalsha(client.scripts[name].sha, 1, anchor, *args)
    replies: list[Any] = pipe.execute(raise_on_error=False)
    for i, reply in enumerate(replies):
        if isinstance(reply, NoScriptError):
            name, anchor, args = calls[i]
            replies[i] = client.scripts[name](keys=[anchor], args=args)  # loads, then EVALSHA
    return replies
