"""PDF inspection and splitting (pypdf): page counts, page-range chunks, precise errors.

Every way a document can be unusable ends in a `DocumentError` whose message says
which: empty, not a PDF, truncated or corrupt, encrypted, too many pages.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from pypdf import PasswordType, PdfReader, PdfWriter

from control_plane.errors import PermanentError

_HEADER_WINDOW = 1024  # the PDF spec tolerates a little junk before %PDF-
_EOF_WINDOW = 2048  # %%EOF must sit near the end; a cut download loses it


class DocumentError(PermanentError):
    """The document itself is unusable; retrying cannot help."""


@dataclass(frozen=True)
class PdfChunk:
    """Pages `first_page`..`last_page` (1-based, inclusive) of a `total_pages` document."""

    first_page: int
    last_page: int
    total_pages: int
    data: bytes

    @property
    def pages(self) -> int:
        return self.last_page - self.first_page + 1


_SIGNATURES = (
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"GIF8", "a GIF image"),
    (b"{\\rtf", "an RTF document"),
    (b"\xd0\xcf\x11\xe0", "an old Office document"),
)


def content_kind(data: bytes) -> str:
    """Pure: what the bytes look like, in words (issue 12: nothing of the body itself)."""
    for magic, kind in _SIGNATURES:
        if data.startswith(magic):
            return kind
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "an HTML page"
    if head.startswith(b"<?xml") or head.startswith(b"<"):
        return "XML or markup"
    if head.startswith((b"{", b"[")):
        return "JSON or text"
    try:
        data[:512].decode("utf-8")
    except UnicodeDecodeError:
        return f"binary data, {len(data)} bytes"
    return f"text, {len(data)} bytes"


def check_pdf_bytes(data: bytes) -> None:
    """Cheap checks before parsing: empty, wrong magic, truncated."""
    if not data:
        raise DocumentError("empty document (0 bytes)")
    if b"%PDF-" not in data[:_HEADER_WINDOW]:
        raise DocumentError(f"not a PDF ({content_kind(data)})")
    if b"%%EOF" not in data[-_EOF_WINDOW:]:
        raise DocumentError(
            f"corrupt PDF: truncated (no %%EOF marker at the end of {len(data)} bytes)"
        )


def _open(data: bytes) -> PdfReader:
    """A reader over `data`, decrypted when only an empty user password protects it."""
    check_pdf_bytes(data)
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
    except Exception as exc:  # pypdf raises many types on malformed input
        raise DocumentError(f"corrupt PDF: {type(exc).__name__}: {exc}") from None
    if reader.is_encrypted:
        try:
            # Owner-password-only PDFs (print/copy restrictions) open with "".
            opened = reader.decrypt("")
        except Exception as exc:
            raise DocumentError(f"encrypted PDF (cannot decrypt: {exc})") from None
        if opened == PasswordType.NOT_DECRYPTED:
            raise DocumentError("encrypted PDF (a password is required)")
    return reader


def _page_count(reader: PdfReader) -> int:
    try:
        count = len(reader.pages)
    except Exception as exc:
        raise DocumentError(f"corrupt PDF: page tree unreadable: {exc}") from None
    if count == 0:
        raise DocumentError("corrupt PDF: no pages")
    return count


def inspect_pdf(data: bytes, *, max_pages: int) -> int:
    """The page count of a usable PDF, or DocumentError saying why it is not."""
    count = _page_count(_open(data))
    if count > max_pages:
        raise DocumentError(f"too many pages: {count} > OCR_MAX_PAGES={max_pages}")
    return count


def split_pdf(data: bytes, pages_per_chunk: int) -> list[PdfChunk]:
    """Page-range chunks of at most `pages_per_chunk` pages, in order.

    A document that fits in one chunk is passed through untouched (no re-encoding);
    an encrypted one is always rewritten so the chunks carry no encryption.
    """
    if pages_per_chunk < 1:
        raise ValueError("pages_per_chunk must be at least 1")
    reader = _open(data)
    total = _page_count(reader)
    if total <= pages_per_chunk and not reader.is_encrypted:
        return [PdfChunk(1, total, total, data)]
    chunks = []
    for first in range(0, total, pages_per_chunk):
        last = min(first + pages_per_chunk, total)
        writer = PdfWriter()
        try:
            for index in range(first, last):
                writer.add_page(reader.pages[index])
            out = io.BytesIO()
            writer.write(out)
        except Exception as exc:
            raise DocumentError(
                f"corrupt PDF: pages {first + 1}-{last} unreadable: {exc}"
            ) from None
        chunks.append(PdfChunk(first + 1, last, total, out.getvalue()))
    return chunks
