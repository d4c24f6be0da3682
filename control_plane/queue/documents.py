"""Fetching a claimed document's bytes: http(s), file:// under one directory, Supabase Storage.

`storage_path` (DESIGN.md section 6) is an `http(s)://` URL, a `file://` URL that
must resolve (symlinks included) under `OCR_LOCAL_DOCUMENTS_DIR`, or `bucket/path`
in the environment's Supabase Storage. Network trouble is a `TransientError`; a
missing, forbidden, empty, oversized or refused document is a `DocumentError`, and
so is a malformed path (a ValueError, a NUL byte): failed at once, not retried.
HTTP goes through `http_fetch.GuardedFetcher` (issue 12: address policy
`OCR_DOCUMENT_ALLOWED_HOSTS`, deadline `OCR_DOCUMENT_FETCH_TIMEOUT_MS`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from control_plane.errors import TransientError
from control_plane.queue.fetch_policy import AllowedHosts
from control_plane.queue.http_fetch import (
    CredentialsRefused,
    GuardedFetcher,
    HttpStatusError,
    safe_url,
)
from control_plane.queue.models import ClaimedDocument
from control_plane.queue.pdf import DocumentError, PdfChunk, inspect_pdf, split_pdf

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
    "safe_url",
    "split_pdf",
]


@dataclass(frozen=True)
class DocumentLocation:
    """Where a document lives: kind is 'http', 'file' or 'storage'."""

    kind: str
    target: str  # the URL, or the object path inside the bucket
    bucket: str = ""


def locate(storage_path: str) -> DocumentLocation:
    """Classify a `storage_path` (pure)."""
    path = storage_path.strip()
    if not path:
        raise DocumentError("empty storage_path")
    scheme = urlsplit(path).scheme.lower() if "://" in path or path.startswith("file:") else ""
    if scheme in ("http", "https"):
        parts = urlsplit(path)
        _ = parts.port  # ValueError on a port out of range: failed at once, not retried
        if not parts.hostname:
            raise DocumentError("storage_path URL without a host")
        return DocumentLocation("http", path)
    if scheme == "file":
        return DocumentLocation("file", path)
    if scheme:
        raise DocumentError(f"unsupported storage_path scheme {scheme!r}")
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket or not key:
        raise DocumentError(f"storage_path {path!r} is not a URL nor bucket/path")
    if any(part in (".", "..") for part in (bucket, *key.split("/"))):
        # The URL would be normalised to another endpoint of the project (PostgREST,
        # auth admin...) and the service-role key would go with it (same origin).
        raise DocumentError("storage_path with '.' or '..' segments refused")
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
    """Fetches documents within the size limit; one instance per process (it pools HTTP).

    http(s) URLs from rows and Supabase Storage objects both go through the guarded
    client (`http_fetch.py`: address policy on every hop, manual redirects, credentials
    only to their origin, no decompression, one deadline per document).
    """

    def __init__(
        self,
        settings: Settings,
        environments: Environments | None = None,
    ) -> None:
        self._max_bytes = int(settings.ocr_max_document_mb * 1024 * 1024)
        self._max_mb = settings.ocr_max_document_mb
        root = settings.ocr_local_documents_dir
        self._root = Path(root).resolve() if root else None
        self._environments = environments
        trusted = []  # the operator's own Supabase projects (host, port), not from rows
        urls = [e.supabase_url for e in settings.environments if e.supabase_url]
        urls += environments.storage_urls() if environments else []
        for url in urls:
            parts = urlsplit(url)
            default = 443 if parts.scheme == "https" else 80
            trusted.append(((parts.hostname or "").lower(), parts.port or default))
        self._http = GuardedFetcher(
            AllowedHosts.parse(settings.ocr_document_allowed_hosts),
            trusted=trusted,
            max_bytes=self._max_bytes,
            max_mb=self._max_mb,
            deadline_s=settings.ocr_document_fetch_timeout_ms / 1000,
        )

    def fetch(self, doc: ClaimedDocument) -> bytes:
        """The document's bytes, or TransientError / DocumentError."""
        try:
            where = locate(doc.storage_path)
            if where.kind == "http":
                data = self._http.get(where.target)
            elif where.kind == "file":
                data = self._read_file(local_path(where.target, self._root))
            else:
                data = self._fetch_storage(doc.environment, where.bucket, where.target)
        except ValueError as exc:  # a malformed URL or path (NUL byte...): never better later
            raise DocumentError(f"invalid storage_path: {_describe_value_error(exc)}") from None
        if not data:
            raise DocumentError("empty document (0 bytes)")
        self._check_size(len(data))
        return data

    def _check_size(self, size: int) -> None:
        if size > self._max_bytes:
            raise self._http.too_large(size)

    def _read_file(self, path: Path) -> bytes:
        try:
            # The real size for the message: the read below stops just past the limit, and
            # "1.0 MB > limit 1 MB" would hide what the file weighs.
            self._check_size(path.stat().st_size)
            with path.open("rb") as handle:
                data = handle.read(self._max_bytes + 1)
        except FileNotFoundError:
            if self._root_is_gone():  # the share is out, not the document missing
                raise TransientError(
                    f"OCR_LOCAL_DOCUMENTS_DIR {self._root} is missing or empty (a share not "
                    f"mounted?): cannot read {path}"
                ) from None
            raise DocumentError(f"file not found: {path}") from None
        except IsADirectoryError:
            raise DocumentError(f"not a file: {path}") from None
        except PermissionError:
            raise DocumentError(f"permission denied reading {path}") from None
        except OSError as exc:  # EIO, stale NFS handle...: maybe better later
            raise TransientError(f"cannot read {path}: {exc.strerror}") from exc
        return data

    def _root_is_gone(self) -> bool:
        """OCR_LOCAL_DOCUMENTS_DIR missing or empty: an unmounted share (its mount point
        left empty) or a vanished volume, an outage of every file:// document at once."""
        if self._root is None:
            return False
        try:
            with os.scandir(self._root) as entries:
                return next(entries, None) is None
        except FileNotFoundError:
            return True
        except OSError:  # unreadable, stale handle...: not a missing document either
            return True

    def _fetch_storage(self, environment: str, bucket: str, key: str) -> bytes:
        client = self._environments.storage(environment) if self._environments else None
        if client is None:
            raise DocumentError(
                f"storage path {bucket}/{key} needs Supabase Storage, but environment "
                f"{environment!r} has no Supabase URL and service key"
            )
        url, credentials = client.storage_request(bucket, key)
        try:
            return self._http.get(url, credentials)
        except CredentialsRefused as exc:  # our key, not the document: an outage of ours
            raise TransientError(
                f"{exc} ({bucket}/{key} from {environment} storage): Supabase Storage "
                f"refused the service key; check {environment.upper()}_SUPABASE_SERVICE_KEY"
            ) from None
        except HttpStatusError as exc:  # keeps its type: the host answered (breakers)
            raise HttpStatusError(
                f"{exc} ({bucket}/{key} from {environment} storage)", exc.status
            ) from None
        except DocumentError as exc:
            raise DocumentError(f"{exc} ({bucket}/{key} from {environment} storage)") from None
        except TransientError as exc:
            raise TransientError(f"{exc} ({bucket}/{key} from {environment} storage)") from None

    def close(self) -> None:
        self._http.close()


def _describe_value_error(exc: ValueError) -> str:
    """A ValueError's text without control characters (a NUL byte in a path...)."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(exc))
    return text[:200] or type(exc).__name__
