"""What Redis refuses the worker now (a full Redis, a busy one): one warning per episode."""

from __future__ import annotations

import logging

log = logging.getLogger("omniq_tasks.worker")


class Troubles:
    """Kinds of trouble going on; each is warned about when it starts and noted when it ends."""

    def __init__(self) -> None:
        self.now: set[str] = set()

    def start(self, kind: str, message: str) -> None:
        """Warn once per episode of trouble of one kind, not on every pass."""
        if kind not in self.now:
            self.now.add(kind)
            log.warning("%s", message)

    def over(self, kind: str) -> None:
        if kind in self.now:
            self.now.discard(kind)
            log.info("%s works again", kind)
