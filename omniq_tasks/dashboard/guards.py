"""The dashboard's guards, one ASGI middleware in front of every route.

In order: the Host header (a loopback-bound dashboard answers only to loopback names,
so a DNS-rebinding page cannot read it), basic auth (``--auth``), then for every
request that is not GET/HEAD/OPTIONS: the cross-site checks (the custom header
``X-OmniQ-Dashboard: 1`` that only the page's own ``fetch`` sets, since a form or a
cross-site fetch cannot send it without a CORS preflight this server never answers; an
``Origin`` naming another host, or a ``Sec-Fetch-Site`` other than same-origin, is
refused too) and read-only mode (every action is refused with 403). Every response
carries headers that forbid framing (clickjacking of the action buttons) and any
script, style or image not served by the dashboard itself.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSRF_HEADER = "x-omniq-dashboard"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; frame-ancestors 'none'; form-action 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


def parse_auth(text: str) -> tuple[str, str]:
    """``user:password`` → (user, password); ValueError when there is no ':' or no user."""
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise ValueError("--auth must be USER:PASSWORD")
    return user, password


def host_name(host_header: str) -> str:
    """The host of a Host header without its port (``[::1]:8765`` → ``::1``), lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class Guards:
    """ASGI middleware: Host check, basic auth, cross-site refusal, read-only, security headers."""

    def __init__(self, app: ASGIApp, *, auth: tuple[str, str] | None = None, read_only: bool = False,
                 allowed_hosts: frozenset[str] | None = None) -> None:
        self.app = app
        self.auth = auth
        self.read_only = read_only
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self.refusal(scope, headers)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((n, v) for n, v in SECURITY_HEADERS if n not in present)]
            await send(message)

        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def refusal(self, scope: Scope, headers: Headers) -> Response | None:
        """The response refusing this request, or None when it may go on."""
        if self.allowed_hosts is not None and host_name(headers.get("host", "")) not in self.allowed_hosts:
            return JSONResponse({"error": "unexpected Host header"}, status_code=400)
        if self.auth is not None and not self._authorized(headers.get("authorization", "")):
            return JSONResponse({"error": "authentication required"}, status_code=401,
                                headers={"WWW-Authenticate": 'Basic realm="omniq-tasks dashboard", charset="UTF-8"'})
        if scope["method"] in SAFE_METHODS:
            return None
        why = self._cross_site(headers)
        if why is not None:
            return JSONResponse({"error": f"refused: {why}"}, status_code=403)
        if self.read_only:
            return JSONResponse({"error": "read-only dashboard: actions are refused"}, status_code=403)
        return None

    def _authorized(self, header: str) -> bool:
        assert self.auth is not None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        # both compared, always: how long it takes says nothing about which one is wrong
        user_ok = hmac.compare_digest(user.encode(), self.auth[0].encode())
        password_ok = hmac.compare_digest(password.encode(), self.auth[1].encode())
        return bool(sep) and user_ok and password_ok

    @staticmethod
    def _cross_site(headers: Headers) -> str | None:
        """Why this state-changing request may come from another site, or None."""
        if headers.get(CSRF_HEADER) != "1":
            return "actions need the header X-OmniQ-Dashboard: 1 (sent by the dashboard's own pages)"
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return f"cross-site request (Sec-Fetch-Site: {site})"
        origin = headers.get("origin")
        if origin is not None:
            netloc = urlsplit(origin).netloc.lower() if origin != "null" else "null"
            if netloc != headers.get("host", "").strip().lower():
                return f"cross-origin request (Origin: {origin})"
        return None
