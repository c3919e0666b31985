"""omniq-tasks: typed Python tasks on the OmniQ v1 protocol (Redis + Lua)."""

from .app import App
from .arguments import TaskArgumentError, TaskDefinitionError
from .client import OmniqClient, connect
from .ids import new_job_id
from .context import JobContext
from .errors import (
    AlreadyInitializedError, BackendError, BadArgsError, BadExpectedError, BadJobIdError, BadLaneError,
    BatchTooLargeError, ChildRequiredError, InvalidNameError, JobActiveError, LaneMismatchError,
    LeaseLostError, NoCounterError, NoExpectedError, NoJobError, NotActiveError, NotFailedError,
    InvalidOptionError, NotInLaneError, OmniqConnectionError, OmniqError, OmniqTimeoutError,
    PayloadError, PayloadTooLargeError, ProtocolError, RedisCommandError, RedisFullError,
    TokenMismatchError, TokenRequiredError, UnexpectedReplyError,
)
from .models import (
    AckFailResult, BatchItem, JobInfo, Published, QueueEmpty, QueuePaused, QueueStats,
    ReservedJob, ReserveResult,
)
from .registry import DuplicateTaskError
from .results import JobHandle
from .scripts import scripts_dir
from .task import Task
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    # tasks
    "App", "Task", "JobContext", "JobHandle", "Worker",
    "TaskArgumentError", "TaskDefinitionError", "DuplicateTaskError",
    # client
    "OmniqClient", "connect", "new_job_id", "scripts_dir",
    # results
    "AckFailResult", "BatchItem", "JobInfo", "Published", "QueueEmpty", "QueuePaused",
    "QueueStats", "ReservedJob", "ReserveResult",
    # errors
    "OmniqError", "InvalidNameError", "PayloadError", "PayloadTooLargeError", "ProtocolError",
    "UnexpectedReplyError", "LeaseLostError", "TokenRequiredError", "TokenMismatchError",
    "NotActiveError", "NoJobError", "NotFailedError", "JobActiveError", "LaneMismatchError",
    "NotInLaneError", "BatchTooLargeError", "BadArgsError", "BadLaneError", "BadJobIdError",
    "NoExpectedError", "BadExpectedError", "AlreadyInitializedError", "ChildRequiredError",
    "NoCounterError", "InvalidOptionError", "BackendError", "OmniqConnectionError",
    "OmniqTimeoutError", "RedisFullError", "RedisCommandError",
    "__version__",
]
