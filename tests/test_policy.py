"""A task's life options: App defaults, task overrides, and refusals of bad values."""

from __future__ import annotations

import pytest

from omniq_tasks import App
from omniq_tasks.errors import InvalidOptionError
from omniq_tasks.policy import Policy


def test_app_defaults_and_task_overrides() -> None:
    app = App("pol", "redis://localhost:1/0", retry_backoff=True, result_ttl=60, time_limit=30)

    @app.task
    def plain() -> None: ...

    @app.task(retry_backoff=False, time_limit=5, soft_time_limit=4, autoretry_for=[KeyError])
    def custom() -> None: ...

    assert plain.policy == app.policy == Policy(retry_backoff=True, result_ttl=60, time_limit=30)
    assert custom.policy.retry_backoff is False and custom.policy.result_ttl == 60
    assert (custom.policy.time_limit, custom.policy.soft_time_limit) == (5, 4)
    assert custom.policy.autoretry_for == (KeyError,)


@pytest.mark.parametrize("options, message", [
    ({"retry_backoff": -1}, "retry_backoff"),
    ({"retry_backoff_max": float("inf")}, "retry_backoff_max"),
    ({"retry_jitter": 1}, "retry_jitter"),
    ({"autoretry_for": (ValueError, "x")}, "autoretry_for"),
    ({"dont_retry_for": 3}, "dont_retry_for"),
    ({"time_limit": 0}, "time_limit"),
    ({"time_limit": 5, "soft_time_limit": 5}, "soft_time_limit"),
    ({"expires": float("nan")}, "expires"),
    ({"store_result": "yes"}, "store_result"),
    ({"result_ttl": True}, "result_ttl"),
    ({"on_success": "print"}, "on_success"),
    ({"no_such_option": 1}, "no_such_option"),
])
def test_bad_values_are_refused_when_the_task_is_defined(options: dict, message: str) -> None:  # type: ignore[type-arg]
    app = App("pol", "redis://localhost:1/0")
    with pytest.raises(InvalidOptionError, match=message):
        app.task(**options)(lambda: None)
    with pytest.raises(InvalidOptionError, match=message):
        App("pol", "redis://localhost:1/0", **options)
