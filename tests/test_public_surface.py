"""The top level exports what an application uses; every exception lives in omniq_tasks.errors."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import warnings

import pytest

import omniq_tasks
from omniq_tasks import errors
from omniq_tasks.results import JobStatus


def test_top_level_is_small_and_complete() -> None:
    assert sorted(omniq_tasks.__all__) == sorted([
        "App", "Task", "JobContext", "JobHandle", "JobStatus", "Worker",
        "OmniqClient", "JobSpec", "job_spec",
        "OmniqError", "ProtocolError", "BackendError", "PayloadError", "TaskArgumentError",
        "InvalidNameError", "OmniqConnectionError", "RedisFullError",
        "Retry", "PermanentError",
        "Signature", "Chain", "chain", "ChildResult", "ChainHandle", "FanoutHandle",
        "__version__",
    ])
    for name in omniq_tasks.__all__:
        assert hasattr(omniq_tasks, name), name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec("from omniq_tasks import *", {})  # nothing in __all__ goes through the old-name path


def test_every_exception_is_defined_in_errors() -> None:
    for info in pkgutil.iter_modules(omniq_tasks.__path__):
        if info.name in ("__main__", "demo", "cli"):
            continue
        module = importlib.import_module(f"omniq_tasks.{info.name}")
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__.startswith("omniq_tasks"):
                assert value.__module__ == "omniq_tasks.errors", f"{info.name}.{name} is defined in {value.__module__}"
                assert getattr(errors, name) is value
    for name in ("TaskArgumentError", "TaskDefinitionError", "DuplicateTaskError"):
        assert issubclass(getattr(errors, name), errors.OmniqError)


def test_old_import_paths_still_work() -> None:
    from omniq_tasks.arguments import TaskArgumentError, TaskDefinitionError
    from omniq_tasks.registry import DuplicateTaskError
    assert TaskArgumentError is errors.TaskArgumentError
    assert TaskDefinitionError is errors.TaskDefinitionError
    assert DuplicateTaskError is errors.DuplicateTaskError
    with pytest.warns(DeprecationWarning, match="omniq_tasks.errors"):
        from omniq_tasks import LeaseLostError
    assert LeaseLostError is errors.LeaseLostError
    with pytest.warns(DeprecationWarning, match="omniq_tasks.protocol.models"):
        from omniq_tasks import ReservedJob  # noqa: F401
    with pytest.raises(ImportError):
        from omniq_tasks import NoSuchThing  # noqa: F401


def test_job_status_is_an_enum_that_compares_as_the_state_word() -> None:
    assert [s.value for s in JobStatus] == ["wait", "delayed", "active", "completed", "failed", "unknown"]
    assert JobStatus("wait") is JobStatus.WAITING and JobStatus.WAITING == "wait"
    assert JobStatus("something-new") is JobStatus.UNKNOWN
    assert str(JobStatus.FAILED) == "failed" and f"{JobStatus.ACTIVE}" == "active"


def test_handle_status_is_a_job_status(redis_server) -> None:
    app = omniq_tasks.App("surface", redis_url=redis_server.url)

    @app.task(queue="surface")
    def noop(n: int) -> None: ...

    handle = noop.apply_async((1,), countdown=60)
    assert handle.status() is JobStatus.DELAYED
    app.client.remove_job("surface", handle.id, "delayed")
    assert handle.status() is JobStatus.UNKNOWN  # gone, with no stored result
    app.close()


def test_task_encode_call_names_what_it_does() -> None:
    app = omniq_tasks.App("surface")

    @app.task(queue="surface", max_attempts=5)
    def add(x: int, y: int = 0) -> int:
        return x + y

    spec = add.encode_call((1,), {"y": 2}, timeout_ms=7)
    assert isinstance(spec, omniq_tasks.JobSpec)
    assert (spec.max_attempts, spec.timeout_ms) == (5, 7)
    assert not hasattr(add, "prepare")
