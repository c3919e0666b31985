"""Redis URLs as they may be shown: in reprs, log lines, error messages and the CLI.

A URL can hold a secret in two places: the password of ``user:pass@host`` and
query parameters such as ``?password=...`` (redis-py reads those for ``unix://``
URLs). :func:`redact_url` masks both; everything that prints a URL goes through it.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit

MASK = "***"
# Query parameters whose value is a secret: password, ssl_password, token, auth, ...
_SECRET_WORDS = ("pass", "token", "secret", "auth", "key")


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def redact_url(url: str) -> str:
    """``url`` with its password and secret query values replaced by ``***``.

    Never raises: a value that does not parse as a URL is shown as a placeholder,
    since it might be nothing but a secret.
    """
    try:
        parts = urlsplit(str(url))
        netloc = parts.netloc
        # The host follows the last "@": a password may itself hold "@" or ":".
        userinfo, at, host = netloc.rpartition("@")
        if at:
            user, colon, _password = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{host}" if colon else f"{user}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, MASK if _is_secret(k) else v) for k, v in pairs], safe="*/:")
        if not parts.scheme and not netloc:
            return "<not a URL>"
        # Not urlunsplit: it would turn unix:///path into unix:/path.
        return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
    except Exception:  # whatever it is, it must not reach a log line unmasked
        return "<not a URL>"


_URL_IN_TEXT = re.compile(r"\b(?:rediss?|unix|redis\+sentinel)://[^\s'\"<>]+", re.IGNORECASE)


def redact_text(text: str) -> str:
    """``text`` with every Redis URL in it redacted (for messages built from other errors)."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
