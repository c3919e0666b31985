"""How a run of a job ended: what the worker acks, and what middleware sees."""

from __future__ import annotations

from typing import Optional

import msgspec


class Outcome(msgspec.Struct, frozen=True):
    """How a run ended, with the task name ("" when no task was found).

    - ok: ``result`` is the return value as msgspec JSON (b"" when it returned None);
    - failed: ``error`` says why; ``final`` when a retry cannot help, else it is
      retried (``retry``) after the job's backoff, or at ``retry_at_ms`` (epoch ms)
      when that is set;
    - ``duration_ms``: how long the task's body ran (0 when it never started).

    Two outcomes are equal when they say the same about how the run ended: the
    result and the duration (what it produced, how long it took) are not compared.
    """

    ok: bool
    task: str = ""
    error: str = ""
    final: bool = False
    result: bytes = b""
    retry_at_ms: Optional[int] = None
    duration_ms: float = 0.0

    @property
    def retry(self) -> bool:
        """True when the job runs again (failed, not final)."""
        return not self.ok and not self.final

    def _verdict(self) -> tuple[bool, str, str, bool, int | None]:
        return (self.ok, self.task, self.error, self.final, self.retry_at_ms)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Outcome):
            return NotImplemented
        return self._verdict() == other._verdict()

    def __hash__(self) -> int:
        return hash(self._verdict())
