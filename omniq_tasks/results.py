"""The handle returned by ``task.delay()``: the job's id and queue, and its state."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from .protocol.models import JobInfo

if TYPE_CHECKING:
    from .protocol.client import OmniqClient


class JobStatus(str, enum.Enum):
    """Where a job stands. The values are the protocol's ``state`` words, so
    ``handle.status() == "wait"`` holds for ``JobStatus.WAITING``."""

    WAITING = "wait"
    DELAYED = "delayed"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    # A state word this version does not know (another producer's, or a newer protocol).
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def _missing_(cls, value: object) -> JobStatus:
        return cls.UNKNOWN


class JobHandle:
    """A published job. ``existed`` is True when the id was already queued."""

    __slots__ = ("id", "queue", "existed", "_client")

    def __init__(self, client: OmniqClient, queue: str, job_id: str, existed: bool = False) -> None:
        self._client = client
        self.id = job_id
        self.queue = queue
        self.existed = existed

    def info(self) -> JobInfo | None:
        """The job hash now; None once it is gone (removed, or trimmed from completed)."""
        return self._client.job(self.queue, self.id)

    def status(self) -> JobStatus | None:
        """The job's :class:`JobStatus` now; None once the job hash is gone."""
        info = self.info()
        return JobStatus(info.state) if info else None

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r}, queue={self.queue!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobHandle) and (other.id, other.queue) == (self.id, self.queue)

    def __hash__(self) -> int:
        return hash((self.id, self.queue))
