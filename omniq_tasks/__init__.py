"""omniq-tasks: typed Python tasks on the OmniQ v1 protocol (Redis + Lua).

The top level holds what an application uses. The rest has one home each:
every exception in :mod:`omniq_tasks.errors`, the low-level client's results in
:mod:`omniq_tasks.protocol.models`, defaults and limits in :mod:`omniq_tasks.defaults`.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from .app import App
from .protocol.client import JobSpec, OmniqClient, job_spec
from .context import JobContext
from .errors import (
    BackendError, InvalidNameError, OmniqConnectionError, OmniqError, PayloadError, PermanentError,
    ProtocolError, RedisFullError, Retry, TaskArgumentError,
)
from .results import JobHandle, JobStatus
from .fanout import ChildResult
from .signature import Chain, Signature, chain
from .workflow_handles import ChainHandle, FanoutHandle
from .task import Task
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    # tasks
    "App", "Task", "JobContext", "JobHandle", "JobStatus", "Worker",
    # the low-level client and what its enqueue_many takes
    "OmniqClient", "JobSpec", "job_spec",
    # the error roots and the errors an application meets most
    "OmniqError", "ProtocolError", "BackendError", "PayloadError", "TaskArgumentError",
    "InvalidNameError", "OmniqConnectionError", "RedisFullError",
    # what a task raises to retry later or to fail at once
    "Retry", "PermanentError",
    # workflows (docs/workflows.md)
    "Signature", "Chain", "chain", "ChildResult", "ChainHandle", "FanoutHandle",
    "__version__",
]

# Names the top level used to export, and the module that holds each now.
_MOVED = {
    **dict.fromkeys(("AckFailResult", "BatchItem", "JobInfo", "Published", "QueueEmpty", "QueuePaused",
                     "QueueStats", "ReservedJob", "ReserveResult"), "protocol.models"),
    "connect": "protocol.client", "new_job_id": "protocol.ids", "scripts_dir": "protocol.scripts",
}


def __getattr__(name: str) -> Any:
    """Old imports (``from omniq_tasks import LeaseLostError``) keep working, with a warning."""
    module = _MOVED.get(name) or ("errors" if name.endswith("Error") else None)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name, None)
        if value is not None:
            warnings.warn(f"import {name} from omniq_tasks.{module}; the top level no longer exports it",
                          DeprecationWarning, stacklevel=2)
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
