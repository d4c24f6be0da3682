"""The one URL parser for descriptions and secret scrubbing (issue 11).

Users write credentials in URLs in every form: `redis://user:pass@host`,
`redis://:pass@host`, `postgresql://host/db?password=pass`, and passwords that contain
`@`, `:` or `/` without percent-encoding them. Everything that shows a URL (banners,
status, describe_* helpers, error messages) or scrubs secrets from logs goes through
`parse_url`, which reads such URLs the way their libraries do: the credentials run to
the LAST `@`, so a password containing `@` is never mistaken for a host. Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

REDACTED = "***"
# Query parameters that carry a secret (libpq's password/sslpassword, tokens, keys).
SECRET_PARAMS = frozenset(
    {
        "password",
        "pass",
        "passwd",
        "pwd",
        "sslpassword",
        "secret",
        "token",
        "access_token",
        "apikey",
        "api_key",
        "key",
        "sig",
        "signature",
    }
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# In free text: a URL's credentials (up to the last @ of the word) and secret parameters.
_TEXT_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^\s/@:]*):(\S*)@")
_TEXT_PARAMS = re.compile(
    r"([?&;](?:" + "|".join(sorted(SECRET_PARAMS)) + r")=)([^&\s#'\"]*)", re.IGNORECASE
)


@dataclass(frozen=True)
class ParsedUrl:
    """A URL cut the way connection libraries cut it (credentials up to the last `@`)."""

    scheme: str  # "" when the text has no scheme://
    username: str
    password: str | None
    host: str  # host[:port], as written
    path: str  # from the first "/" after the host, query excluded
    query: str  # without the "?"

    @property
    def has_scheme(self) -> bool:
        return bool(self.scheme)


def parse_url(url: str) -> ParsedUrl:
    """Split a URL; never raises (a value that is not a URL comes back as a bare host)."""
    text = url.strip()
    found = _SCHEME.match(text)
    scheme = found.group(1).lower() if found else ""
    rest = text[found.end() :] if found else text
    username, password = "", None
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        username, sep, secret = userinfo.partition(":")
        password = secret if sep else None
    rest, _, query = rest.partition("?")
    slash = rest.find("/")
    host, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    return ParsedUrl(scheme, username, password, host, path, query)


def query_secrets(query: str) -> list[str]:
    """Values of the secret parameters of a query string."""
    values: list[str] = []
    for pair in query.split("&"):
        name, sep, value = pair.partition("=")
        if sep and name.lower() in SECRET_PARAMS and value:
            values.extend({value, unquote(value)})
    return values


def url_secrets(url: str) -> list[str]:
    """Every secret a URL carries: its password (as written and decoded), secret params."""
    parsed = parse_url(url)
    found: list[str] = []
    if parsed.password:
        found.extend({parsed.password, unquote(parsed.password)})
    found.extend(query_secrets(parsed.query))
    return found


def describe_url(url: str, *, default_host: str = "") -> str:
    """host[:port][/path] for banners and messages: no user, password or query string."""
    parsed = parse_url(url)
    shown = f"{parsed.host or default_host}{parsed.path}"
    return f"{parsed.scheme}://{shown}" if parsed.scheme else shown


def redact_text(text: str) -> str:
    """Mask URL credentials and secret query parameters anywhere in free text."""
    text = _TEXT_CREDENTIALS.sub(lambda m: f"{m.group(1)}{m.group(2)}:{REDACTED}@", text)
    return _TEXT_PARAMS.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
