"""``omniq-tasks dashboard``: the live web dashboard (omniq_tasks/dashboard) served by uvicorn.

Needs the ``dashboard`` extra (Starlette, uvicorn): without it the command exits 2
naming the install, before anything else is done. The socket is bound here (so a
taken port is one line and exit 2, and ``--port 0`` prints the port it got).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from ..defaults import REDIS_URL, REDIS_URL_ENV

DEFAULT_PORT = 8765


def add_dashboard_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "dashboard", help="the live web dashboard (needs pip install 'omniq-tasks[dashboard]')",
        description="Serve the live web dashboard: every queue's counts and throughput, lanes, "
                    "groups, jobs, workers, and actions (pause/resume, retry, remove, group limits); "
                    "a JSON API under /api/ and Prometheus queue gauges on /metrics. Binds to "
                    "127.0.0.1 unless --host says otherwise.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", default=None, metavar="URL",
                       help=f"the Redis to show (default: ${REDIS_URL_ENV}, else {REDIS_URL})")
    where.add_argument("--app", default=None, metavar="MODULE:APP",
                       help="use the Redis of this App (imported with the current directory on the path)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1; 0.0.0.0: every interface, use --auth)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 picks a free one")
    parser.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                        help="HTTP basic auth on every page and API call (default: $OMNIQ_DASHBOARD_AUTH, else none)")
    parser.add_argument("--read-only", action="store_true", help="show everything, refuse every action")
    parser.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="default WARNING (INFO: one line per request)")


def run_dashboard(args: argparse.Namespace) -> int:
    from ..dashboard import require_web

    prog = "omniq-tasks dashboard"
    try:
        require_web()
    except ImportError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from ..dashboard.guards import LOOPBACK_HOSTS, host_name, parse_auth
    from ..dashboard.web import create_app
    from ..errors import OmniqError
    from ..protocol.client import OmniqClient
    from ..protocol.urls import redact_text

    auth = None
    auth_text = args.auth if args.auth is not None else os.environ.get("OMNIQ_DASHBOARD_AUTH")
    if auth_text:
        try:
            auth = parse_auth(auth_text)
        except ValueError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 2
    if not 0 <= args.port <= 65535:
        print(f"{prog}: --port must be between 0 and 65535", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.app:
            from ..app import load_app

            try:
                client = load_app(args.app).client
            except Exception as exc:  # whatever the user's module raises on import
                print(f"{prog}: cannot load app {args.app!r}: {redact_text(str(exc))}", file=sys.stderr)
                return 2
        else:
            client = OmniqClient(args.url or os.environ.get(REDIS_URL_ENV) or REDIS_URL)
        client.server_now_ms()  # Redis reachable: say so now rather than on every page
    except (OmniqError, ValueError) as exc:
        print(f"{prog}: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    loopback = host_name(args.host) in LOOPBACK_HOSTS
    if not loopback and auth is None:
        print(f"{prog}: warning: listening on {args.host} without --auth: anyone who reaches it can act "
              f"on your queues (add --auth USER:PASSWORD or --read-only)", file=sys.stderr)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host.strip("[]"), args.port))
    except OSError as exc:
        sock.close()
        print(f"{prog}: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    app = create_app(client, auth=auth, read_only=args.read_only,
                     allowed_hosts=LOOPBACK_HOSTS if loopback else None)
    shown = f"[{args.host.strip('[]')}]" if family == socket.AF_INET6 else args.host
    notes = [n for n in ("read-only" if args.read_only else "", "basic auth" if auth else "") if n]
    print(f"omniq-tasks dashboard on http://{shown}:{port}/" + (f" ({', '.join(notes)})" if notes else ""),
          flush=True)
    config = uvicorn.Config(app, log_level=args.log_level.lower(), access_log=args.log_level in ("DEBUG", "INFO"),
                            lifespan="on", server_header=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        client.close()
    return 0
