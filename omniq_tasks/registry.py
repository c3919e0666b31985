"""Which task runs a job: task names to tasks, queues to their tasks. Nothing about Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from .errors import DuplicateTaskError

if TYPE_CHECKING:
    from .task import Task

__all__ = ["DuplicateTaskError", "Registry"]


class Registry:
    """The tasks of one App, by name and by queue (in registration order)."""

    def __init__(self) -> None:
        self._by_name: dict[str, Task[Any, Any]] = {}
        self._raw_by_queue: dict[str, Task[Any, Any]] = {}
        self._queues: dict[str, None] = {}

    def add(self, task: Task[Any, Any]) -> None:
        """Register a task; names (and raw handlers per queue) must be unique."""
        existing = self._by_name.get(task.name)
        if existing is not None:
            raise DuplicateTaskError(
                f"task name {task.name!r} is already registered (by {existing.fn.__module__}."
                f"{existing.fn.__qualname__}); pass name=... to one of them")
        if task.raw:
            other = self._raw_by_queue.get(task.queue)
            if other is not None:
                raise DuplicateTaskError(
                    f"queue {task.queue!r} already has a raw handler: {other.name}")
            self._raw_by_queue[task.queue] = task
        self._by_name[task.name] = task
        self._queues.setdefault(task.queue, None)

    def get(self, name: str) -> Task[Any, Any] | None:
        """The task registered under ``name``."""
        return self._by_name.get(name)

    def raw_handler(self, queue: str) -> Task[Any, Any] | None:
        """The task declared with ``raw=True`` for ``queue``."""
        return self._raw_by_queue.get(queue)

    def names(self) -> list[str]:
        """Every registered task name, sorted."""
        return sorted(self._by_name)

    def queues(self) -> list[str]:
        """Every queue some task is bound to, in the order first registered."""
        return list(self._queues)

    def tasks_for(self, queue: str) -> list[Task[Any, Any]]:
        """The tasks bound to ``queue``."""
        return [t for t in self._by_name.values() if t.queue == queue]

    def __iter__(self) -> Iterator[Task[Any, Any]]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)
