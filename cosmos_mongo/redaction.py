"""Keeping credentials out of text: URLs shown without userinfo or secret query values, and
the secrets a URL carries, so that text quoting them (an error body, a log line) can be
scrubbed."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Sequence
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

MASK: Final = "***"

# Query parameter names that carry a secret: key, api_key, token, access_token, sig,
# signature, password, secret, client_secret, auth, credential, session...
_SECRET_NAME: Final = re.compile(
    r"key|token|sig|secret|pass|pwd|auth|credential|session|code", re.IGNORECASE
)
# ``scheme://user:password@`` (the userinfo up to the last ``@`` before the path).
_USERINFO: Final = re.compile(r"(?<=://)[^/?#\s]+@")
# ``?name=value`` or ``&name=value`` anywhere in text.
_QUERY_PARAMETER: Final = re.compile(
    r"(?P<lead>[?&;](?P<name>[A-Za-z0-9_.\-\[\]%]+)=)(?P<value>[^&#\s\"'<>;,)]*)"
)
# A shorter "secret" would blank out ordinary words in the text it is scrubbed from.
_MIN_SECRET: Final = 4


def is_secret_parameter(name: str) -> bool:
    """Whether a query parameter named ``name`` looks like it carries a secret."""
    return _SECRET_NAME.search(unquote(name)) is not None


def redact_text(text: str) -> str:
    """``text`` with every URL's userinfo replaced by ``***@`` and the values of secret-looking
    query parameters (``?key=...``, ``&token=...``) by ``***``."""
    text = _USERINFO.sub(f"{MASK}@", text)

    def mask(match: re.Match[str]) -> str:
        if is_secret_parameter(match["name"]) and match["value"]:
            return f"{match['lead']}{MASK}"
        return match[0]

    return _QUERY_PARAMETER.sub(mask, text)


def redact_url(url: str) -> str:
    """``url`` as it may be shown: userinfo replaced by ``***@``, secret query values by
    ``***``; everything else as given."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    return redact_text(urlunsplit(parts._replace(netloc=netloc)))


def url_secrets(url: str) -> list[str]:
    """Every form in which ``url``'s credentials may be echoed back: the user name and
    password (as written and decoded), base64 of ``user:password`` (the ``Authorization:
    Basic`` value) and the values of secret-looking query parameters. Values shorter than four
    characters are left out."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found: list[str] = []
    raw_user, _, raw_password = parts.netloc.rpartition("@")[0].partition(":")
    if raw_user or raw_password:
        user, password = unquote(raw_user), unquote(raw_password)
        found += [raw_user, raw_password, user, password]
        for pair in {f"{user}:{password}", f"{raw_user}:{raw_password}"}:
            encoded = base64.b64encode(pair.encode()).decode("ascii")
            found += [encoded, encoded.rstrip("=")]
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if is_secret_parameter(name):
            found += [value, quote(value, safe=""), quote(value)]
    return known_secrets(found)


def known_secrets(candidates: Sequence[str]) -> list[str]:
    """The distinct candidates long enough to scrub, longest first (so a secret that holds
    another is replaced whole)."""
    return sorted({c for c in candidates if len(c) >= _MIN_SECRET}, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***``, then :func:`redact_text`."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    return redact_text(text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message through :func:`redact_text` (and :func:`scrub` of any
    secrets it was given) before a handler sees it. Installed on the ``httpx`` and
    ``httpcore`` loggers, whose ``HTTP Request: POST <url>`` lines quote the URL."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_FILTER: Final = RedactingFilter()
_FILTERED_LOGGERS: Final = ("httpx", "httpcore")


def redact_http_logs(secrets: Sequence[str] = ()) -> None:
    """Install (once) the filter that keeps URL credentials, secret query values and the given
    ``secrets`` out of httpx's and httpcore's log records."""
    _FILTER.secrets = known_secrets([*_FILTER.secrets, *secrets])
    for name in _FILTERED_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
