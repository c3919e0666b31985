"""Handles of workflows: a chain's (ChainHandle) and a fan-out's (FanoutHandle).

Like a task's JobHandle they answer ``status()``, ``ready()`` and ``get(timeout)``
with the final result. A chain's final result is its last step's return value; a
fan-out's is its callback's, or (no callback) the list of its children's
ChildResult. Waiting blocks on the step's own notification where there is one
(JobHandle.get) and otherwise reads again with a growing pause (20 ms to 0.5 s):
never a busy loop.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence

import msgspec

from .errors import ResultMissingError, ResultTimeoutError
from .results import JobHandle, JobStatus
from .signature import SigSpec, step_job_id

if TYPE_CHECKING:
    from .app import App
    from .fanout import ChildResult
    from .protocol.client import OmniqClient
    from .task import Task

_FIRST_PAUSE_S = 0.02
_MAX_PAUSE_S = 0.5
_read_spec = msgspec.json.Decoder(SigSpec).decode


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class ChainHandle:
    """The handle of ``chain(...).delay()``: each step's job id is ``<id>.<n>``."""

    def __init__(self, client: OmniqClient, chain_id: str, steps: Sequence[tuple[str, Task[Any, Any] | None]]) -> None:
        self._client = client
        self.id = chain_id
        self.steps = [JobHandle(client, queue, step_job_id(chain_id, n), task=task)
                      for n, (queue, task) in enumerate(steps)]

    def _reached(self) -> tuple[int, JobStatus]:
        """The last step that exists (or kept a result), and its status; (-1, UNKNOWN) if none."""
        for n in range(len(self.steps) - 1, -1, -1):
            status = self.steps[n].status()
            if status is not JobStatus.UNKNOWN:
                return n, status
        return -1, JobStatus.UNKNOWN

    def status(self) -> JobStatus:
        """FAILED when a step failed for good (the chain stopped there), the last step's
        status once it is published, else the running step's (a step that completed
        while its successor is being published counts as ACTIVE)."""
        n, status = self._reached()
        if n == len(self.steps) - 1 or status in (JobStatus.FAILED, JobStatus.UNKNOWN):
            return status
        return JobStatus.ACTIVE if status is JobStatus.COMPLETED else status

    def ready(self) -> bool:
        return self.status() in (JobStatus.COMPLETED, JobStatus.FAILED)

    def failed_step(self) -> JobHandle | None:
        """The step that failed for good (where the chain stopped), or None."""
        n, status = self._reached()
        return self.steps[n] if status is JobStatus.FAILED else None

    def get(self, timeout: float | None = None) -> Any:
        """The last step's return value, waiting up to ``timeout`` seconds for the whole chain.

        Raises TaskFailed for the step that failed for good (its job id, task and
        error), ResultTimeoutError when ``timeout`` passes first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last = len(self.steps) - 1
        for n, step in enumerate(self.steps):
            if n < last and self.steps[n + 1].status() is not JobStatus.UNKNOWN:
                continue  # the next step exists: this one succeeded
            try:
                value = step.get(_remaining(deadline))
            except ResultMissingError:
                if n < last and self.steps[n + 1].status() is not JobStatus.UNKNOWN:
                    continue
                raise
            except ResultTimeoutError:
                raise ResultTimeoutError(f"chain {self.id} did not finish within {timeout} s "
                                         f"(step {n}, job {step.id}, is {step.status()})") from None
            if n == last:
                return value
        raise AssertionError("unreachable")

    def __repr__(self) -> str:
        return f"ChainHandle(id={self.id!r}, steps={len(self.steps)})"


class FanoutHandle:
    """The handle of ``app.fanout(...)`` (or ``app.fanout_handle(key)``)."""

    def __init__(self, app: App, key: str) -> None:
        self._app = app
        self._client = app.client
        self.key = key

    def info(self) -> dict[str, str]:
        """The fan-out's record: n, state (open, closed, fired), failed, ...; {} once it expired."""
        return self._client.fanout_info(self.key)

    def callback(self) -> JobHandle | None:
        """The handle of the callback that was (or will be) published: ``on_error`` when a
        child failed and there is one, else ``then``; None without a callback (or once gone)."""
        return self._callback_of(self.info())

    def _callback_of(self, info: dict[str, str]) -> JobHandle | None:
        """callback() for a record read already."""
        chosen = info.get("on_error") if int(info.get("failed") or 0) and info.get("on_error") else info.get("then")
        if not chosen:
            return None
        from .fanout import CALLBACK_STEP

        spec = _read_spec(chosen)
        return JobHandle(self._client, spec.queue, step_job_id(self.key, CALLBACK_STEP),
                         task=self._app.registry.get(spec.task))

    def status(self) -> JobStatus:
        """ACTIVE while children run (or the callback is being published), then the
        callback's status (COMPLETED without one); UNKNOWN once the fan-out expired."""
        info = self.info()
        state = info.get("state")
        if state is None:
            return JobStatus.UNKNOWN
        if state != "fired":
            return JobStatus.ACTIVE
        callback = self._callback_of(info)
        return callback.status() if callback is not None else JobStatus.COMPLETED

    def ready(self) -> bool:
        return self.status() in (JobStatus.COMPLETED, JobStatus.FAILED)

    def results(self) -> list[ChildResult[Any]]:
        """Every child's outcome in order (a child not counted yet: ok False, error "not counted")."""
        from .fanout import load_child_results

        return load_child_results(self._client, self.key, self._app.registry.get)

    def get(self, timeout: float | None = None) -> Any:
        """The callback's return value (or, without a callback, ``results()``), waiting up
        to ``timeout`` seconds; raises TaskFailed when the callback failed for good,
        ResultTimeoutError when ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = _FIRST_PAUSE_S
        while True:
            info = self.info()
            state = info.get("state")
            if state == "fired" or state is None:
                break
            left = _remaining(deadline)
            if left is not None and left <= 0:
                raise ResultTimeoutError(f"fan-out {self.key} did not finish within {timeout} s (it is {state})")
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, _MAX_PAUSE_S)
        if state is None:
            raise ResultMissingError(f"fan-out {self.key} is gone: its TTL passed, or it never opened")
        callback = self._callback_of(info)
        if callback is None:
            return self.results()
        return callback.get(_remaining(deadline))

    def __repr__(self) -> str:
        return f"FanoutHandle(key={self.key!r})"
