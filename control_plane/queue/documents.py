"""Fetching a claimed document's bytes: http(s), file:// under one directory, Supabase Storage.

`storage_path` (DESIGN.md section 6) is an `http(s)://` URL, a `file://` URL that
must resolve (symlinks included) under `OCR_LOCAL_DOCUMENTS_DIR`, or `bucket/path`
in the environment's Supabase Storage. Network trouble is a `TransientError`; a
missing, forbidden, empty, oversized or refused document is a `DocumentError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import httpx

from control_plane.errors import TransientError
from control_plane.queue.models import ClaimedDocument
from control_plane.queue.pdf import DocumentError, PdfChunk, inspect_pdf, split_pdf
from control_plane.urls import describe_url

if TYPE_CHECKING:
    from control_plane.config import Settings
    from control_plane.queue.environments import Environments

__all__ = [
    "DocumentError",
    "DocumentFetcher",
    "DocumentLocation",
    "PdfChunk",
    "inspect_pdf",
    "local_path",
    "locate",
    "split_pdf",
]

_PERMANENT_HTTP = {400, 401, 403, 404, 405, 406, 410, 411, 414, 415, 451}
_READ_BLOCK = 1 << 16


@dataclass(frozen=True)
class DocumentLocation:
    """Where a document lives: kind is 'http', 'file' or 'storage'."""

    kind: str
    target: str  # the URL, or the object path inside the bucket
    bucket: str = ""


def safe_url(url: str) -> str:
    """A URL for messages: no credentials, no query string (signed URLs carry tokens)."""
    return describe_url(url)  # the one URL parser (control_plane.urls)


def locate(storage_path: str) -> DocumentLocation:
    """Classify a `storage_path` (pure)."""
    path = storage_path.strip()
    if not path:
        raise DocumentError("empty storage_path")
    scheme = urlsplit(path).scheme.lower() if "://" in path or path.startswith("file:") else ""
    if scheme in ("http", "https"):
        return DocumentLocation("http", path)
    if scheme == "file":
        return DocumentLocation("file", path)
    if scheme:
        raise DocumentError(f"unsupported storage_path scheme {scheme!r}")
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket or not key:
        raise DocumentError(f"storage_path {path!r} is not a URL nor bucket/path")
    return DocumentLocation("storage", key, bucket)


def local_path(url: str, root: Path | None) -> Path:
    """The real path of a file:// URL, refused unless it resolves under `root` (pure but fs)."""
    if root is None:
        raise DocumentError("file:// documents are disabled: OCR_LOCAL_DOCUMENTS_DIR is not set")
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise DocumentError(f"file:// URL with a remote host refused: {parts.netloc!r}")
    raw = unquote(parts.path)
    if not raw.startswith("/"):
        raise DocumentError(f"file:// URL must hold an absolute path: {url!r}")
    # resolve() follows every symlink and collapses '..', so the check sees the real target.
    resolved = Path(raw).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise DocumentError(f"path outside OCR_LOCAL_DOCUMENTS_DIR refused: {raw}")
    return resolved


class DocumentFetcher:
    """Fetches documents within the size limit; one instance per process (it pools HTTP)."""

    def __init__(
        self,
        settings: Settings,
        environments: Environments | None = None,
        *,
        timeout_s: float = 60.0,
    ) -> None:
        self._max_bytes = int(settings.ocr_max_document_mb * 1024 * 1024)
        self._max_mb = settings.ocr_max_document_mb
        root = settings.ocr_local_documents_dir
        self._root = Path(root).resolve() if root else None
        self._environments = environments
        self._http = httpx.Client(
            http2=False, timeout=httpx.Timeout(timeout_s, connect=10.0), follow_redirects=True
        )

    def fetch(self, doc: ClaimedDocument) -> bytes:
        """The document's bytes, or TransientError / DocumentError."""
        where = locate(doc.storage_path)
        if where.kind == "http":
            data = self._fetch_http(where.target)
        elif where.kind == "file":
            data = self._read_file(local_path(where.target, self._root))
        else:
            data = self._fetch_storage(doc.environment, where.bucket, where.target)
        if not data:
            raise DocumentError("empty document (0 bytes)")
        self._check_size(len(data))
        return data

    def _check_size(self, size: int) -> None:
        if size > self._max_bytes:
            raise DocumentError(
                f"too large: {size / 1048576:.1f} MB > limit {self._max_mb:g} MB"
                " (OCR_MAX_DOCUMENT_MB)"
            )

    def _fetch_http(self, url: str) -> bytes:
        shown = safe_url(url)
        try:
            with self._http.stream("GET", url) as response:
                status = response.status_code
                if status in (408, 425, 429) or status >= 500:
                    raise TransientError(f"HTTP {status} fetching {shown}")
                if status >= 300:
                    kind = "" if status in _PERMANENT_HTTP else " (unexpected status)"
                    raise DocumentError(f"HTTP {status} fetching {shown}{kind}")
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit():
                    self._check_size(int(declared))
                body = bytearray()
                for block in response.iter_bytes(_READ_BLOCK):
                    body += block
                    self._check_size(len(body))  # stop early on a lying server
                return bytes(body)
        except httpx.TooManyRedirects:
            raise DocumentError(f"too many redirects fetching {shown}") from None
        except httpx.UnsupportedProtocol:
            raise DocumentError(f"unsupported URL {shown}") from None
        except httpx.HTTPError as exc:
            raise TransientError(f"network error fetching {shown}: {type(exc).__name__}") from exc

    def _read_file(self, path: Path) -> bytes:
        try:
            # The real size for the message: the read below stops just past the limit, and
            # "1.0 MB > limit 1 MB" would hide what the file weighs.
            self._check_size(path.stat().st_size)
            with path.open("rb") as handle:
                data = handle.read(self._max_bytes + 1)
        except FileNotFoundError:
            raise DocumentError(f"file not found: {path}") from None
        except IsADirectoryError:
            raise DocumentError(f"not a file: {path}") from None
        except PermissionError:
            raise DocumentError(f"permission denied reading {path}") from None
        except OSError as exc:  # EIO, stale NFS handle...: maybe better later
            raise TransientError(f"cannot read {path}: {exc.strerror}") from exc
        return data

    def _fetch_storage(self, environment: str, bucket: str, key: str) -> bytes:
        client = self._environments.storage(environment) if self._environments else None
        if client is None:
            raise DocumentError(
                f"storage path {bucket}/{key} needs Supabase Storage, but environment "
                f"{environment!r} has no Supabase URL and service key"
            )
        return client.download(bucket, key)

    def close(self) -> None:
        self._http.close()
