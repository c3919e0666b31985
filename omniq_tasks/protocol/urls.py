"""Redis URLs as they may be shown: in reprs, log lines, error messages and the CLI.

A URL can hold a secret in two places: the password of ``user:pass@host`` and
query parameters such as ``?password=...`` (redis-py reads those for ``unix://``
URLs) or ``?sentinel_password=...``. :func:`redact_url` masks both; everything that prints a URL goes through it.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode

MASK = "***"
# Query parameters whose value is a secret: password, ssl_password, token, auth, ...
_SECRET_WORDS = ("pass", "token", "secret", "auth", "key")


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _split_userinfo(rest: str) -> tuple[str, str]:
    """``rest`` (what follows ``scheme://``) as (userinfo, everything after its ``@``).

    The host follows the last "@" before the query; a password may itself hold "@",
    ":", "/" or "#" (and, when no "=" follows, even "?"). An "@" in a query value
    (``?ssl_ca_certs=/a@b``) is not taken for one.
    """
    query_at = rest.find("?")
    head = rest if query_at < 0 else rest[:query_at]
    at = head.rfind("@")
    if at < 0 and query_at >= 0:
        last = rest.rfind("@")
        if last >= 0 and "=" not in rest[last:]:
            at = last
    if at < 0:
        return "", rest
    return rest[:at], rest[at + 1:]


def redact_url(url: str) -> str:
    """``url`` with its password and secret query values replaced by ``***``.

    Works for every scheme omniq-tasks accepts (``redis``, ``rediss``, ``unix``,
    ``redis+sentinel`` with a host list, ``redis+cluster``, their TLS forms,
    ``embedded``): ``user:password@`` keeps the user, and query values whose name
    holds pass/token/secret/auth/key (``password``, ``sentinel_password``,
    ``ssl_password``, ...) are masked. Never raises: a value that does not parse as
    a URL is shown as a placeholder, since it might be nothing but a secret.
    """
    try:
        text = str(url)
        scheme, sep, rest = text.partition("://")
        if not sep or not scheme or not all(c.isalnum() or c in "+-." for c in scheme):
            return "<not a URL>"
        userinfo, rest = _split_userinfo(rest)
        rest = rest.partition("#")[0]
        location, question, query = rest.partition("?")
        if userinfo:
            user, colon, _password = userinfo.partition(":")
            location = f"{user}:{MASK}@{location}" if colon else f"{user}@{location}"
        if question and query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, MASK if _is_secret(k) else v) for k, v in pairs], safe="*/:,")
        return f"{scheme}://{location}" + (f"?{query}" if query else "")
    except Exception:  # whatever it is, it must not reach a log line unmasked
        return "<not a URL>"


_URL_IN_TEXT = re.compile(
    r"\b(?:rediss?(?:\+(?:sentinel|cluster))?|unix|embedded)://[^\s'\"<>]+", re.IGNORECASE)


def redact_text(text: str) -> str:
    """``text`` with every Redis URL in it redacted (for messages built from other errors)."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
