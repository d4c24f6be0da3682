"""Database URLs: transaction-mode poolers, and error messages without secrets (pure).

Supabase's transaction-mode pooler (Supavisor / PgBouncer, port 6543) hands each
transaction to any server connection: session state (`SET`, session advisory locks)
does not follow the client, and server-side prepared statements psycopg makes after
`prepare_threshold` uses break. A URL is treated as such a pooler when its port is 6543,
or when it says so with the query parameter `pool_mode=transaction` (removed before the
URL reaches libpq, which does not know it).

libpq quotes the offending token of a malformed URL in its error ("invalid
percent-encoded token: ..."), which for a password with a bare `%` is part of the
password; psycopg_pool logs such errors on every reconnect. `check_dsn` refuses such a
URL before any connection with a message that shows nothing of it, and `safe_db_error`
removes the password (raw and decoded) and any quoted URL token from a message.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from control_plane.errors import PermanentError

TRANSACTION_POOLER_PORT = 6543
_POOL_MODE_PARAM = "pool_mode"
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_QUOTED_TOKEN = re.compile(r'(invalid [^"]*?token|invalid [^"]*?value)[^"]*"[^"]*"', re.I)


def _is_url(dsn: str) -> bool:
    return dsn.startswith(("postgresql://", "postgres://"))


def is_transaction_pooler(dsn: str) -> bool:
    """True for a URL on port 6543 or with pool_mode=transaction."""
    if not _is_url(dsn):
        return bool(re.search(r"\bport\s*=\s*6543\b", dsn))
    parts = urlsplit(dsn)
    params = dict(parse_qsl(parts.query))
    if params.get(_POOL_MODE_PARAM, "").lower() == "transaction":
        return True
    try:
        return parts.port == TRANSACTION_POOLER_PORT
    except ValueError:
        return False


def libpq_dsn(dsn: str) -> str:
    """The URL libpq gets: without our pool_mode parameter."""
    if not _is_url(dsn):
        return dsn
    parts = urlsplit(dsn)
    params = [(k, v) for k, v in parse_qsl(parts.query) if k != _POOL_MODE_PARAM]
    return urlunsplit(parts._replace(query=urlencode(params)))


def password_of(dsn: str) -> str | None:
    if _is_url(dsn):
        return urlsplit(dsn).password
    m = re.search(r"\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn)
    return m.group(1).strip("'") if m else None


def check_dsn(dsn: str, what: str = "database URL") -> None:
    """Refuse a malformed URL before libpq quotes it (PermanentError, nothing of the URL)."""
    if not _is_url(dsn):
        return
    netloc = urlsplit(dsn).netloc
    userinfo = netloc.rpartition("@")[0]
    if _BAD_ESCAPE.search(userinfo):
        raise PermanentError(
            f"{what}: the user or password holds a '%' that is not a %XX escape "
            "(write a literal % as %25)"
        )
    try:
        urlsplit(dsn).port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise PermanentError(f"{what}: the port is not a number") from None


def safe_db_error(exc: BaseException | str, dsn: str | None = None) -> str:
    """One line of a database error with no password and no quoted URL token."""
    text = " ".join(str(exc).split())
    text = _QUOTED_TOKEN.sub(r"\1 (hidden)", text)
    secret = password_of(dsn) if dsn else None
    if secret:
        for form in {secret, unquote(secret)}:
            if len(form) >= 3:
                text = text.replace(form, "***")
    return text
