"""Guarded HTTP downloads of documents (issue 12): the I/O shell over `fetch_policy`.

- Every TCP connection goes through `GuardedBackend`: the host name is resolved here,
  every address it resolves to is checked (`fetch_policy.refusal`), and the connection
  is made to the checked address (no second resolution). This holds for the first
  request and every redirect hop, which are followed by hand (at most MAX_REDIRECTS).
  Hosts the operator configured (the Supabase project URLs, host and port) are trusted.
- Credentials (Supabase Storage's `apikey` / `Authorization`) are sent only to the
  origin they were meant for: a redirect to another scheme/host/port drops them.
- `Accept-Encoding: identity` and raw reads: nothing is decompressed, the size limit
  holds on the bytes that arrive; a compressed answer is refused.
- One total deadline per document (`OCR_DOCUMENT_FETCH_TIMEOUT_MS`), checked between
  reads and bounding each network wait.
- Proxies from the environment are ignored (a proxy would hide the real address).
Error messages name the URL without query string or credentials and never include
anything of a refused or failed answer's body.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpcore
import httpx

from control_plane.errors import TransientError
from control_plane.queue.fetch_policy import (
    REDIRECT_STATUSES,
    AllowedHosts,
    IpAddress,
    next_hop,
    refusal,
    same_origin,
)
from control_plane.queue.pdf import DocumentError
from control_plane.urls import describe_url

MAX_REDIRECTS = 5
_PERMANENT_HTTP = {400, 401, 403, 404, 405, 406, 410, 411, 414, 415, 451}
CREDENTIAL_HEADERS = ("authorization", "apikey", "cookie", "proxy-authorization")


class AddressNotAllowed(DocumentError):
    """A connection would reach a non-public address that is not allowed."""


class HttpStatusError(DocumentError):
    """The server answered with a status that ends the document (`status` says which)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class CredentialsRefused(DocumentError):
    """401/403 to a request that carried our credentials (Supabase Storage's service
    key): about the key, not the document; the caller decides (documents.py: transient)."""


def _resolve(host: str, port: int) -> list[IpAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror}") from None
    seen: list[IpAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in seen:
            seen.append(address)
    return seen


def _inner_status(response: httpx.Response) -> int | None:
    """Supabase Storage answers errors with HTTP 400 and {"statusCode": "404", ...}: that
    number (only it: nothing of the body goes into a message). None if absent."""
    if "json" not in response.headers.get("Content-Type", ""):
        return None
    raw = b""
    for block in response.iter_raw():
        raw += block
        if len(raw) > 4096:
            return None
    try:
        value = json.loads(raw).get("statusCode")
        code = int(value)
    except (ValueError, TypeError, AttributeError):
        return None
    return code if 100 <= code <= 599 else None


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, connecting only to addresses the policy allows."""

    def __init__(self, allowed: AllowedHosts, trusted: Iterable[tuple[str, int]] = ()) -> None:
        self._inner = httpcore.SyncBackend()
        self._allowed = allowed
        self._trusted = {(h.lower(), p) for h, p in trusted}

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = _resolve(host, port)
        if (host.lower(), port) not in self._trusted:
            for address in addresses:
                why = refusal(host, address, self._allowed)
                if why:
                    raise AddressNotAllowed(why)
        last: Exception | None = None
        for address in addresses:
            try:
                return self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last or httpcore.ConnectError(f"no address for {host}")

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for documents")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport with the guarded backend (TLS still verifies the host name)."""

    def __init__(self, backend: GuardedBackend, max_connections: int = 16) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=5.0,
            network_backend=backend,
        )


def safe_url(url: str) -> str:
    """A URL for messages: no credentials, no query string (signed URLs carry tokens)."""
    return describe_url(url)  # the one URL parser (control_plane.urls)


class GuardedFetcher:
    """GET with manual redirects, raw bounded reads and a total deadline."""

    def __init__(
        self,
        allowed: AllowedHosts,
        *,
        trusted: Iterable[tuple[str, int]] = (),
        max_bytes: int,
        max_mb: float,
        deadline_s: float,
    ) -> None:
        self._client = httpx.Client(
            transport=GuardedTransport(GuardedBackend(allowed, trusted)),
            follow_redirects=False,
            trust_env=False,
        )
        self._max_bytes = max_bytes
        self._max_mb = max_mb
        self._deadline_s = deadline_s

    def too_large(self, size: int) -> DocumentError:
        return DocumentError(
            f"too large: {size / 1048576:.1f} MB > limit {self._max_mb:g} MB (OCR_MAX_DOCUMENT_MB)"
        )

    def get(self, url: str, credentials: Mapping[str, str] | None = None) -> bytes:
        """The body of `url` (following redirects), or DocumentError / TransientError."""
        deadline = time.monotonic() + self._deadline_s
        origin = url
        shown = safe_url(url)
        for _hop in range(MAX_REDIRECTS + 1):
            headers = {"Accept-Encoding": "identity"}
            if credentials and same_origin(origin, url):
                headers.update(credentials)
            try:
                status, location, body = self._one(url, headers, deadline, shown)
            except HttpStatusError as exc:
                if exc.status in (401, 403) and credentials and same_origin(origin, url):
                    raise CredentialsRefused(str(exc)) from None
                raise
            if status in REDIRECT_STATUSES:
                try:
                    url = next_hop(url, location)
                except ValueError as exc:
                    raise DocumentError(f"bad redirect from {shown}: {exc}") from None
                shown = f"{safe_url(origin)} (redirected to {safe_url(url)})"
                continue
            assert body is not None
            return body
        raise DocumentError(f"too many redirects fetching {safe_url(origin)}")

    def _remaining(self, deadline: float, shown: str) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransientError(
                f"download of {shown} took longer than OCR_DOCUMENT_FETCH_TIMEOUT_MS "
                f"({self._deadline_s:g} s)"
            )
        return left

    def _one(
        self, url: str, headers: Mapping[str, str], deadline: float, shown: str
    ) -> tuple[int, str | None, bytes | None]:
        left = self._remaining(deadline, shown)
        timeout = httpx.Timeout(min(left, 30.0), connect=min(left, 10.0))
        try:
            with self._client.stream("GET", url, headers=headers, timeout=timeout) as response:
                status = response.status_code
                if status in REDIRECT_STATUSES:
                    return status, response.headers.get("Location"), None
                if status == 400:
                    status = _inner_status(response) or status
                if status in (408, 425, 429) or status >= 500:
                    raise TransientError(f"HTTP {status} fetching {shown}")
                if status >= 300:
                    kind = "" if status in _PERMANENT_HTTP else " (unexpected status)"
                    raise HttpStatusError(f"HTTP {status} fetching {shown}{kind}", status)
                encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise DocumentError(
                        f"compressed answer refused (Content-Encoding: {encoding[:20]}) "
                        f"fetching {shown}: documents must be served uncompressed"
                    )
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > self._max_bytes:
                    raise self.too_large(int(declared))
                body = bytearray()
                for block in response.iter_raw():  # as it arrives (a chunk size would buffer)
                    body += block
                    if len(body) > self._max_bytes:
                        raise self.too_large(len(body))  # stop early on a lying server
                    self._remaining(deadline, shown)
                return status, None, bytes(body)
        except AddressNotAllowed as exc:
            raise AddressNotAllowed(
                f"address not allowed: {shown}: {exc} (not in OCR_DOCUMENT_ALLOWED_HOSTS)"
            ) from None
        except httpx.TimeoutException:
            self._remaining(deadline, shown)  # the deadline's message when it is the cause
            raise TransientError(f"network timeout fetching {shown}") from None
        except httpx.UnsupportedProtocol:
            raise DocumentError(f"unsupported URL {shown}") from None
        except httpx.InvalidURL:
            raise DocumentError(f"invalid URL {shown}") from None
        except httpx.HTTPError as exc:
            raise TransientError(f"network error fetching {shown}: {type(exc).__name__}") from None

    def close(self) -> None:
        self._client.close()
