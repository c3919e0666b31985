"""A queue's groups page by page (inflight / limit / waiting), and a group's limit.

The protocol keeps no list of a queue's groups, only their keys (``{Q}:g:<gid>:wait``,
``:inflight``, ``:limit``). :class:`GroupFinder` finds them with one paged SCAN of
``{Q}:g:*`` kept for ``ttl_s``; a group shows while any of its keys exists (its limit
key stays once set). Each page is then read in one pipelined round trip.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import msgspec

from ..defaults import READ_PAGE
from ..protocol import keys
from ..protocol.client import OmniqClient, as_text, redis_errors
from ..protocol.models import GroupLimitChange
from .jobs import check_page, read_int
from .queues import ScanCache

SCAN_TTL_S = 30.0
_PARTS = (":wait", ":inflight", ":limit")


class GroupFinder:
    """The gids of each queue, from a cached paged SCAN of ``{Q}:g:*``."""

    def __init__(self, client: OmniqClient, *, ttl_s: float = SCAN_TTL_S, page: int = READ_PAGE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.page = page
        self._cache: ScanCache[list[str]] = ScanCache(ttl_s, clock)

    def gids(self, queue: str) -> list[str]:
        """The queue's gids, sorted."""
        return self._cache.get(queue, lambda: self._scan(queue))

    def _scan(self, queue: str) -> list[str]:
        prefix = keys.queue_base(queue) + ":g:"
        found: set[str] = set()
        with redis_errors(self.client.url):
            for raw in self.client.redis.scan_iter(match=keys.group_pattern(queue), count=self.page):
                key = as_text(raw)
                for part in _PARTS:
                    if key.startswith(prefix) and key.endswith(part) and len(key) > len(prefix) + len(part):
                        found.add(key[len(prefix):-len(part)])
                        break
        return sorted(found)

    def invalidate(self, queue: str | None = None) -> None:
        """Scan ``queue`` (every queue when None) again at its next :meth:`gids`."""
        if queue is None:
            self._cache.invalidate()
        else:
            self._cache.invalidate(queue)


class GroupRow(msgspec.Struct, frozen=True):
    """One group: running jobs, the limit in force (a missing or <= 0 limit means 1),
    the limit as stored (None: never set), waiting jobs, and whether it may dispatch now."""

    gid: str
    inflight: int
    limit: int
    limit_set: Optional[int]
    waiting: int
    ready: bool


class GroupPage(msgspec.Struct, frozen=True):
    queue: str
    total: int
    offset: int
    limit: int
    groups: list[GroupRow]


def group_page(client: OmniqClient, queue: str, *, limit: int = 50, offset: int = 0,
               finder: GroupFinder | None = None) -> GroupPage:
    """Groups ``offset`` .. ``offset + limit - 1`` of the queue, by gid."""
    keys.validate_queue(queue)
    check_page(limit, offset)
    gids = (finder or GroupFinder(client)).gids(queue)
    page = gids[offset:offset + limit]
    rows: list[GroupRow] = []
    if page:
        ready_key = keys.groups_ready_key(queue)
        with redis_errors(client.url):
            pipe = client.redis.pipeline(transaction=False)
            for gid in page:
                pipe.get(keys.group_key(queue, gid, "inflight", found=True))
                pipe.get(keys.group_key(queue, gid, "limit", found=True))
                pipe.llen(keys.group_key(queue, gid, "wait", found=True))
                pipe.zscore(ready_key, gid)
            replies = pipe.execute()
        for n, gid in enumerate(page):
            inflight, stored, waiting, ready = replies[n * 4:n * 4 + 4]
            limit_set = read_int(stored)
            rows.append(GroupRow(gid=gid, inflight=read_int(inflight) or 0,
                                 limit=limit_set if limit_set and limit_set > 0 else 1,
                                 limit_set=limit_set, waiting=int(waiting), ready=ready is not None))
    return GroupPage(queue=queue, total=len(gids), offset=offset, limit=limit, groups=rows)


def set_group_limit(client: OmniqClient, queue: str, gid: str, limit: int) -> GroupLimitChange:
    """Set the group's limit whatever it was; its waiting jobs start at once if it now has room."""
    return client.set_group_limit(queue, gid, limit)
