"""The running job in log records: a contextvar set around each task body, and a logging filter.

While a task's body runs, :data:`current_job` holds a :class:`JobLogContext`
(job id, task name, attempt, queue). It is a ``contextvars.ContextVar``: set in
the thread, the asyncio Task or the child process that runs the body, so
concurrent jobs never see each other's. :class:`JobLogFilter`, put on a
handler, copies it onto every record that handler gets, from any logger (the
application's own too), as ``record.job_id``, ``record.task_name`` and
``record.attempt`` (None outside a job), so a format can use
``%(job_id)s``. :class:`JsonFormatter` writes one JSON object per line;
:class:`TextFormatter` appends ``[task=... job=... attempt=N]`` to lines made in
a job. ``omniq-tasks worker`` installs the filter on the root logger's handlers
(see docs/workers.md, "Logs").
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import Any, Iterator, NamedTuple, Optional
from contextlib import contextmanager


class JobLogContext(NamedTuple):
    """The job a piece of code runs for."""

    job_id: str
    task_name: str
    attempt: int
    queue: str


current_job: contextvars.ContextVar[Optional[JobLogContext]] = contextvars.ContextVar(
    "omniq_current_job", default=None)


@contextmanager
def job_scope(job_id: str, task_name: str, attempt: int, queue: str) -> Iterator[None]:
    """Sets :data:`current_job` for the ``with`` block (the task's body)."""
    token = current_job.set(JobLogContext(job_id, task_name, attempt, queue))
    try:
        yield
    finally:
        current_job.reset(token)


class JobLogFilter(logging.Filter):
    """Adds ``job_id``, ``task_name`` and ``attempt`` to each record (None outside a job); never drops one.

    Values a record already has (``extra={"job_id": ...}``) are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        job = current_job.get()
        if job is None:
            if not hasattr(record, "job_id"):
                record.job_id = record.task_name = record.attempt = None
        elif getattr(record, "job_id", None) is None:
            record.job_id = job.job_id
            record.task_name = job.task_name
            record.attempt = job.attempt
        return True


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT`` lines; a record made in a job ends with ``[task=... job=... attempt=N]``."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        job_id = getattr(record, "job_id", None)
        if job_id is None:
            return line
        suffix = f" [task={getattr(record, 'task_name', None)} job={job_id} attempt={getattr(record, 'attempt', None)}]"
        head, nl, rest = line.partition("\n")  # before a traceback, if any
        return head + suffix + nl + rest


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601 with ms), level, logger, message,
    and ``job_id``, ``task``, ``attempt`` when the record was made in a job; ``exc``
    holds a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            data["job_id"] = job_id
            data["task"] = getattr(record, "task_name", None)
            data["attempt"] = getattr(record, "attempt", None)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc"] = record.exc_text
        return json.dumps(data, ensure_ascii=False, default=str)


def install_filter(logger: logging.Logger | None = None) -> None:
    """Put one :class:`JobLogFilter` on each handler of ``logger`` (default: the root logger)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, JobLogFilter) for f in handler.filters):
            handler.addFilter(JobLogFilter())
