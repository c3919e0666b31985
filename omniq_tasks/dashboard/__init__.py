"""The live web dashboard (``omniq-tasks dashboard``): a JSON API under ``/api/``, three
pages of static HTML + JS served from the package, and ``/metrics``.

Built on Starlette (served by uvicorn), an optional extra: ``pip install
'omniq-tasks[dashboard]'``. Every read and action is :mod:`omniq_tasks.ops`; this
package adds the HTTP surface, the in-memory throughput history and the guards (basic
auth, read-only mode, cross-site request refusal):

- :mod:`.web`: :func:`~.web.create_app`, the routes and the JSON they return;
- :mod:`.history`: a background sampler keeping the last minutes of jobs/s per queue;
- :mod:`.guards`: basic auth, Host and cross-site checks, security headers (ASGI middleware);
- ``static/``: the pages (overview, queue, job), ``dashboard.js`` and ``dashboard.css``.
"""

from __future__ import annotations

INSTALL_HINT = "pip install 'omniq-tasks[dashboard]'"


def require_web() -> None:
    """Raise ImportError naming the install when Starlette or uvicorn is missing."""
    missing = []
    for name in ("starlette", "uvicorn"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"the dashboard needs {' and '.join(missing)}: {INSTALL_HINT}")
