"""A task's life options: retries and backoff, time limits, expiry, results, callbacks.

One :class:`Policy` per App (its defaults) and one per task (the App's, with what
``@app.task(...)`` sets). The keyword names follow Celery where the meaning is the
same, so a Celery user's hands know them; :class:`LifeOptions` lists them for
type checkers. Everything is checked here, when the App or the task is defined.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, TypedDict

from typing_extensions import Unpack

from .errors import InvalidOptionError

# Defaults, in seconds (Celery's units).
RETRY_BACKOFF_MAX_S = 600.0
RESULT_TTL_S = 86_400.0

Callback = Callable[..., Any]


class LifeOptions(TypedDict, total=False):
    """The options of :class:`Policy`, as keywords of ``App(...)`` and ``@app.task(...)``."""

    retry_backoff: bool | float
    retry_backoff_max: float
    retry_jitter: bool
    autoretry_for: tuple[type[BaseException], ...]
    dont_retry_for: tuple[type[BaseException], ...]
    time_limit: float | None
    soft_time_limit: float | None
    expires: float | None
    store_result: bool
    result_ttl: float
    on_success: Optional[Callback]
    on_failure: Optional[Callback]
    on_retry: Optional[Callback]


@dataclasses.dataclass(frozen=True)
class Policy:
    """What happens around a task's runs; see docs/tasks.md.

    Retries (a run that raises, up to the job's ``max_attempts``):

    * ``retry_backoff``: False waits the job's fixed ``backoff_ms`` before each retry
      (the protocol's own backoff); True doubles it from ``backoff_ms`` on each
      attempt; a number doubles it from that many seconds.
    * ``retry_backoff_max``: the longest exponential wait, in seconds.
    * ``retry_jitter``: with exponential backoff, wait a random time between 0 and
      the computed one ("full jitter"), so failures do not retry in lockstep.
    * ``autoretry_for``: only these exceptions retry (default: every Exception);
      ``dont_retry_for``: these fail at once, before ``autoretry_for`` is asked.

    ``time_limit`` / ``soft_time_limit``: seconds a run may take (None: no limit).
    ``expires``: a job that has not started this many seconds after it was
    published is not run (it fails with reason "expired").
    ``store_result``: keep the return value (not None) for ``result_ttl`` seconds.
    ``on_success(job, result)``, ``on_failure(job, error)``, ``on_retry(job, error)``:
    called in the worker after the run, once per outcome.
    """

    retry_backoff: bool | float = False
    retry_backoff_max: float = RETRY_BACKOFF_MAX_S
    retry_jitter: bool = True
    autoretry_for: tuple[type[BaseException], ...] = (Exception,)
    dont_retry_for: tuple[type[BaseException], ...] = ()
    time_limit: float | None = None
    soft_time_limit: float | None = None
    expires: float | None = None
    store_result: bool = True
    result_ttl: float = RESULT_TTL_S
    on_success: Optional[Callback] = None
    on_failure: Optional[Callback] = None
    on_retry: Optional[Callback] = None

    def __post_init__(self) -> None:
        if not isinstance(self.retry_backoff, bool):
            _seconds("retry_backoff", self.retry_backoff, positive=True)
        _seconds("retry_backoff_max", self.retry_backoff_max, positive=True)
        _flag("retry_jitter", self.retry_jitter)
        _flag("store_result", self.store_result)
        _exceptions("autoretry_for", self.autoretry_for)
        _exceptions("dont_retry_for", self.dont_retry_for)
        for name in ("time_limit", "soft_time_limit", "expires"):
            value = getattr(self, name)
            if value is not None:
                _seconds(name, value, positive=True)
        if (self.time_limit is not None and self.soft_time_limit is not None
                and self.soft_time_limit >= self.time_limit):
            raise InvalidOptionError(
                f"soft_time_limit ({self.soft_time_limit} s) must be below time_limit ({self.time_limit} s)")
        _seconds("result_ttl", self.result_ttl, positive=True)
        for name in ("on_success", "on_failure", "on_retry"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise InvalidOptionError(f"{name} must be callable, not {type(value).__name__}")

    def merged(self, **options: Unpack[LifeOptions]) -> Policy:
        """This policy with ``options`` set on top (each checked)."""
        unknown = set(options) - {f.name for f in dataclasses.fields(self)}
        if unknown:  # only reachable without a type checker
            raise InvalidOptionError(f"unknown option(s): {', '.join(sorted(unknown))}")
        if "autoretry_for" in options or "dont_retry_for" in options:
            options = {**options}  # a list or a single class is accepted too
            for name in ("autoretry_for", "dont_retry_for"):
                if name in options:
                    options[name] = _as_tuple(options[name])
        return dataclasses.replace(self, **options) if options else self


LIFE_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(Policy))


def _as_tuple(value: Any) -> Any:
    if isinstance(value, type):
        return (value,)
    if isinstance(value, list):
        return tuple(value)
    return value


def _seconds(name: str, value: Any, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidOptionError(f"{name} must be seconds (int or float), not {type(value).__name__}")
    if not math.isfinite(value) or (value <= 0 if positive else value < 0):
        raise InvalidOptionError(f"{name} must be a finite number of seconds above 0, got {value!r}")


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InvalidOptionError(f"{name} must be True or False, not {type(value).__name__}")


def _exceptions(name: str, value: Any) -> None:
    if not isinstance(value, tuple) or not all(
            isinstance(cls, type) and issubclass(cls, BaseException) for cls in value):
        raise InvalidOptionError(f"{name} must be a tuple of exception classes, got {value!r}")
