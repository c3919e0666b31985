"""The dashboard's routes: the JSON API under ``/api/``, the pages, ``/metrics``.

Reads and actions are :mod:`omniq_tasks.ops` called in Starlette's thread pool (they
are blocking Redis round trips). JSON is msgspec's encoding of the ops Structs, so the
API returns exactly what ``omniq-tasks <command> --json`` prints. Errors are
``{"error": "..."}``: 400 for a wrong request (bad queue name, lane, page, body), 404
for a job that does not exist, 403 for a refused action (guards), 503 when Redis
cannot be read.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Callable, TypeVar

import msgspec
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import OmniqError
from ..ops import actions
from ..ops.groups import GroupFinder, group_page, set_group_limit
from ..ops.jobs import job_detail, lane_page
from ..ops.queues import QueueFinder, QueueRow, queue_row
from ..ops.workers import WorkerInfo, announced_queues, live_workers
from ..protocol import keys
from ..protocol.client import OmniqClient
from ..protocol.urls import redact_text, redact_url
from .guards import Guards
from .history import INTERVAL_S, WINDOW_S, ThroughputHistory

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/": "overview.html", "/queue": "queue.html", "/job": "job.html"}
T = TypeVar("T")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def json_response(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


class Dashboard:
    """What the routes share: the client, the queue and group finders, the history."""

    def __init__(self, client: OmniqClient, *, read_only: bool = False, interval_s: float = INTERVAL_S,
                 window_s: float = WINDOW_S) -> None:
        self.client = client
        self.read_only = read_only
        self.finder = QueueFinder(client)
        self.groups = GroupFinder(client)
        self._lock = threading.Lock()  # the finders' caches are used from the thread pool
        self.history = ThroughputHistory(client, self.rows, interval_s=interval_s, window_s=window_s)

    def queue_names(self, workers: list[WorkerInfo]) -> list[str]:
        with self._lock:
            return self.finder.names(workers)

    def rows(self, workers: list[WorkerInfo] | None = None) -> list[QueueRow]:
        """One row per known queue (ops.queues), the finder's cache shared by every request."""
        workers = live_workers(self.client) if workers is None else workers
        serving = announced_queues(workers)
        return [queue_row(self.client, queue, serving.get(queue, 0)) for queue in self.queue_names(workers)]

    def gids_touched(self, queue: str) -> None:
        with self._lock:
            self.groups.invalidate(queue)


# -- request parsing ------------------------------------------------------------------

def _queue(request: Request) -> str:
    return keys.validate_queue(request.path_params["queue"])


def _int_param(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {text!r}") from None


def _order(request: Request, name: str = "order") -> bool | None:
    text = request.query_params.get(name)
    if text in (None, ""):
        return None
    if text not in ("newest", "oldest"):
        raise ValueError(f"{name} must be newest or oldest, not {text!r}")
    return text == "newest"


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise ValueError("the body must be JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


def _ids(body: dict[str, Any]) -> list[str]:
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise ValueError('give "ids": a non-empty list of job ids')
    return ids


async def _run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await run_in_threadpool(fn, *args, **kwargs)


# -- the routes -----------------------------------------------------------------------

def create_app(client: OmniqClient, *, auth: tuple[str, str] | None = None, read_only: bool = False,
               allowed_hosts: frozenset[str] | None = None, interval_s: float = INTERVAL_S,
               window_s: float = WINDOW_S, sample: bool = True) -> Starlette:
    """The dashboard as an ASGI app on ``client``'s Redis.

    ``auth``: (user, password) for basic auth on every route; ``read_only``: refuse
    every action; ``allowed_hosts``: the Host names answered (None: any); ``sample``:
    run the throughput sampler while the app runs (its lifespan).
    """
    dash = Dashboard(client, read_only=read_only, interval_s=interval_s, window_s=window_s)

    def overview() -> dict[str, Any]:
        workers = live_workers(client)
        rows = dash.rows(workers)
        latest = dash.history.latest()
        queues = [{**msgspec.to_builtins(row),
                   "completed_per_s": latest.completed_per_s.get(row.queue) if latest else None,
                   "failed_per_s": latest.failed_per_s.get(row.queue) if latest else None}
                  for row in rows]
        return {"now_ms": client.server_now_ms(), "read_only": read_only, "queues": queues,
                "workers": msgspec.to_builtins(workers),
                "throughput": {"interval_s": dash.history.interval_s, "window_s": dash.history.window_s,
                               "samples": msgspec.to_builtins(dash.history.samples())}}

    async def api_config(request: Request) -> Response:
        return json_response({"read_only": read_only, "auth": auth is not None,
                              "redis_url": redact_url(client.url),
                              "sample_interval_s": dash.history.interval_s, "window_s": dash.history.window_s})

    async def api_overview(request: Request) -> Response:
        return json_response(await _run(overview))

    async def api_queue(request: Request) -> Response:
        queue = _queue(request)
        lane = request.query_params.get("lane") or "wait"
        limit, offset = _int_param(request, "limit", 20), _int_param(request, "offset", 0)
        glimit, goffset = _int_param(request, "group_limit", 50), _int_param(request, "group_offset", 0)
        newest = _order(request)

        def read() -> dict[str, Any]:
            workers = live_workers(client)
            row = queue_row(client, queue, announced_queues(workers).get(queue, 0))
            page = lane_page(client, queue, lane, limit=limit, offset=offset, newest_first=newest)
            with dash._lock:
                groups = group_page(client, queue, limit=glimit, offset=goffset, finder=dash.groups)
            latest = dash.history.latest()
            rate = None if latest is None or queue not in latest.completed_per_s else {
                "completed_per_s": latest.completed_per_s[queue], "failed_per_s": latest.failed_per_s[queue],
                "backlog_per_s": latest.backlog_per_s[queue]}
            return {"now_ms": client.server_now_ms(), "read_only": read_only, "queue": row, "rate": rate,
                    "lane": page, "groups": groups,
                    "workers": [w for w in workers if queue in w.queues]}

        return json_response(await _run(read))

    async def api_lane(request: Request) -> Response:
        queue = _queue(request)
        page = await _run(lane_page, client, queue, request.query_params.get("lane") or "wait",
                          limit=_int_param(request, "limit", 20), offset=_int_param(request, "offset", 0),
                          newest_first=_order(request))
        return json_response(page)

    async def api_groups(request: Request) -> Response:
        queue = _queue(request)
        limit, offset = _int_param(request, "limit", 50), _int_param(request, "offset", 0)

        def read() -> Any:
            with dash._lock:
                return group_page(client, queue, limit=limit, offset=offset, finder=dash.groups)

        return json_response(await _run(read))

    async def api_job(request: Request) -> Response:
        queue = _queue(request)
        job_id = request.path_params["job_id"]
        detail = await _run(job_detail, client, queue, job_id)
        if detail is None:
            raise ApiError(404, f"no job {job_id!r} in queue {queue}")
        return json_response({**msgspec.to_builtins(detail), "read_only": read_only})

    async def act_pause(request: Request) -> Response:
        queue = _queue(request)
        await _run(actions.pause, client, queue)
        return json_response({"queue": queue, "paused": True})

    async def act_resume(request: Request) -> Response:
        queue = _queue(request)
        was = await _run(actions.resume, client, queue)
        return json_response({"queue": queue, "paused": False, "was_paused": was})

    async def act_retry(request: Request) -> Response:
        queue = _queue(request)
        body = await _body(request)
        if body.get("all_failed") is True:
            if "ids" in body:
                raise ValueError('give "ids" or "all_failed": true, not both')
            return json_response(await _run(actions.retry_all_failed, client, queue))
        return json_response(await _run(actions.retry, client, queue, _ids(body)))

    async def act_remove(request: Request) -> Response:
        queue = _queue(request)
        body = await _body(request)
        lane = body.get("lane")
        if not isinstance(lane, str):
            raise ValueError(f'give "lane": one of {", ".join(actions.REMOVABLE)}')
        return json_response(await _run(actions.remove, client, queue, lane, _ids(body)))

    async def act_group_limit(request: Request) -> Response:
        queue = _queue(request)
        body = await _body(request)
        gid, limit = body.get("gid"), body.get("limit")
        if not isinstance(gid, str) or not gid:
            raise ValueError('give "gid": the group')
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f'"limit" must be a whole number >= 1, not {limit!r}')
        change = await _run(set_group_limit, client, queue, gid, limit)
        dash.gids_touched(queue)
        return json_response(change)

    metrics_body = _metrics(client, lambda: dash.queue_names(live_workers(client)))

    async def metrics(request: Request) -> Response:
        if metrics_body is None:
            return Response("the dashboard's /metrics needs prometheus_client: pip install "
                            "'omniq-tasks[dashboard]'\n", status_code=404, media_type="text/plain")
        payload, content_type = await _run(metrics_body)
        return Response(payload, media_type=content_type)

    def page(name: str) -> Callable[[Request], Any]:
        async def serve(request: Request) -> Response:
            return FileResponse(STATIC / name, media_type="text/html")
        return serve

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ApiError):
            return json_response({"error": str(exc)}, exc.status)
        if isinstance(exc, (ValueError, TypeError)):
            return json_response({"error": redact_text(str(exc))}, 400)
        return json_response({"error": redact_text(f"Redis: {exc}")}, 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if sample:
            dash.history.start()
        try:
            yield
        finally:
            dash.history.stop()

    q = "/api/queues/{queue}"
    routes = [
        Route("/api/config", api_config),
        Route("/api/overview", api_overview),
        Route(q, api_queue),
        Route(f"{q}/jobs", api_lane),
        Route(f"{q}/groups", api_groups),
        Route(q + "/jobs/{job_id:path}", api_job),
        Route(f"{q}/pause", act_pause, methods=["POST"]),
        Route(f"{q}/resume", act_resume, methods=["POST"]),
        Route(f"{q}/retry", act_retry, methods=["POST"]),
        Route(f"{q}/remove", act_remove, methods=["POST"]),
        Route(f"{q}/group-limit", act_group_limit, methods=["POST"]),
        Route("/metrics", metrics),
        *(Route(path, page(name)) for path, name in PAGES.items()),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(Guards, auth=auth, read_only=read_only, allowed_hosts=allowed_hosts)],
                    exception_handlers={ValueError: on_error, TypeError: on_error, OmniqError: on_error,
                                        ApiError: on_error, Exception: on_error})
    app.state.dashboard = dash
    return app


def _metrics(client: OmniqClient, queues: Callable[[], list[str]]) -> Callable[[], tuple[bytes, str]] | None:
    """A function rendering the queue-depth gauges (worker/metrics.py), or None without prometheus_client."""
    from ..worker.metrics import prometheus_available, queue_depth_collector

    if not prometheus_available():
        return None
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(queue_depth_collector(client, queues))
    return lambda: (generate_latest(registry), CONTENT_TYPE_LATEST)
