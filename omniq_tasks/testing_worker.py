"""A real worker in a thread, for an application's own tests (docs/testing.md).

::

    from omniq_tasks.testing_worker import run_worker

    def test_signup_sends_the_welcome_mail():
        with run_worker(app) as worker:      # a throwaway redis-server, a worker thread
            signup("ada@example.com")        # publishes send_welcome.delay(...)
            worker.drain()                   # until nothing waits, runs or is delayed
            assert worker.stats("emails").failed == 0

The jobs go through Redis and the worker exactly as in production (payload
checks, retries with their backoff, groups, middleware, callbacks); only the
Redis is a throwaway one unless ``redis_url`` says otherwise.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator, Sequence

from .app import App
from .middleware import TaskCallbacks
from .protocol.models import QueueStats
from .testing import RedisServer
from .worker import Worker


class TestWorker:
    """The worker ``run_worker`` started: :meth:`drain` waits for its queues to empty."""

    __test__ = False  # not a pytest test class

    def __init__(self, app: App, worker: Worker, thread: threading.Thread, server: RedisServer | None) -> None:
        self.app = app
        self.worker = worker
        self.thread = thread
        self.server = server
        self.error: BaseException | None = None

    @property
    def queues(self) -> list[str]:
        return self.worker.queues

    def stats(self, queue: str) -> QueueStats:
        """The queue's counters now (waiting, active, delayed, failed, completed_kept, ...)."""
        return self.app.client.stats(queue)

    def drain(self, timeout: float = 30.0) -> None:
        """Return once no job of the worker's queues waits, runs or is delayed (a retry's
        backoff included), and the task callbacks of what ran have been called.

        Raises TimeoutError (with the queues' counters) after ``timeout`` seconds,
        and re-raises what stopped the worker thread, if anything did.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._raise_if_dead()
            busy = [s for s in (self.stats(q) for q in self.queues)
                    if s.waiting_total or s.group_waiting or s.active or s.delayed]
            if not busy and not self.worker.running:
                break
            if time.monotonic() >= deadline:
                raise TimeoutError(f"queues not drained after {timeout} s: {busy}")
            time.sleep(0.02)
        for mw in self.app.middleware:
            if isinstance(mw, TaskCallbacks) and not mw.flush(max(deadline - time.monotonic(), 0.1)):
                raise TimeoutError(f"task callbacks still running after {timeout} s")

    def _raise_if_dead(self) -> None:
        if self.error is not None:
            raise RuntimeError("the test worker stopped on an error") from self.error
        if not self.thread.is_alive():
            raise RuntimeError("the test worker stopped")


@contextmanager
def run_worker(app: App, queues: Sequence[str] | None = None, *, redis_url: str | None = None,
               concurrency: int = 4, grace_s: float = 10.0) -> Iterator[TestWorker]:
    """Run a worker for ``app`` in a thread for the ``with`` block, then stop it.

    Without ``redis_url`` the app is pointed at a throwaway redis-server
    (:class:`omniq_tasks.testing.RedisServer`, needs ``redis-server`` on PATH) for
    the block and back at its own afterwards; ``redis_url="app"`` keeps the app's own
    Redis. ``queues`` defaults to every queue of the app's tasks. Leaving the block
    stops the worker (running jobs get ``grace_s`` to finish); it does not drain:
    call :meth:`TestWorker.drain` for that.
    """
    server: RedisServer | None = None
    saved = (app.redis_url, app._redis)
    if redis_url != "app":
        app.close()
        if redis_url is None:
            server = RedisServer()
            redis_url = server.url
        app.redis_url, app._redis = redis_url, None
    try:
        worker = Worker(app, queues, concurrency=concurrency, pool="threads", grace_s=grace_s,
                        poll_interval_s=0.05, maintenance_interval_s=0.05, paused_backoff_s=0.1)
        thread = threading.Thread(target=lambda: _run(tester), name="omniq-test-worker", daemon=True)
        tester = TestWorker(app, worker, thread, server)
        thread.start()
        try:
            yield tester
        finally:
            worker.stop()
            thread.join(grace_s + 10)
        if tester.error is not None:
            raise RuntimeError("the test worker stopped on an error") from tester.error
    finally:
        if redis_url != "app" or server is not None:
            app.close()
            app.redis_url, app._redis = saved
        if server is not None:
            server.stop()


def _run(tester: TestWorker) -> None:
    try:
        tester.worker.run()
    except BaseException as exc:  # shown by drain() and when the block ends
        tester.error = exc
