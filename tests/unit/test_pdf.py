"""PDF inspection and splitting: page counts, chunks, and a precise error for each bad kind."""

from __future__ import annotations

import io

import pytest
from pypdf import PdfReader, PdfWriter

from control_plane.errors import PermanentError
from control_plane.queue.pdf import DocumentError, inspect_pdf, split_pdf
from control_plane.samples import make_pdf

pytestmark = pytest.mark.unit


def pages(n: int) -> bytes:
    return make_pdf([f"page {i + 1}" for i in range(n)])


def encrypted(data: bytes, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(
        user_password=user_password,
        owner_password="owner-pw",  # noqa: S106 - test PDF
        algorithm="AES-128",
    )
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_inspect_counts_pages() -> None:
    assert inspect_pdf(pages(3), max_pages=10) == 3


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty document (0 bytes)"),
        (
            b"<!DOCTYPE html><html>Access denied</html>",
            "not a PDF (an HTML page)",  # nothing of the body itself (issue 12)
        ),
        (b"PK\x03\x04 a zip file", "not a PDF (a ZIP archive (or an Office document))"),
        (b"\x1f\x8b\x08\x00 gzip", "not a PDF (gzip-compressed data)"),
        (b"secret-token-1234 plain text", "not a PDF (text, 28 bytes)"),
        (pages(4)[:300], "corrupt PDF: truncated (no %%EOF marker at the end of 300 bytes)"),
        (b"%PDF-1.7\n" + b"\x00garbage" * 50 + b"\n%%EOF\n", "corrupt PDF"),
        (encrypted(pages(2), "user-secret"), "encrypted PDF (a password is required)"),
        (pages(5), "too many pages: 5 > OCR_MAX_PAGES=4"),
    ],
    ids=[
        "empty",
        "html",
        "zip",
        "gzip",
        "text",
        "truncated",
        "garbage",
        "encrypted",
        "too-many-pages",
    ],
)
def test_bad_documents_give_a_precise_permanent_error(data: bytes, message: str) -> None:
    with pytest.raises(DocumentError) as info:
        inspect_pdf(data, max_pages=4)
    assert str(info.value).startswith(message)
    assert isinstance(info.value, PermanentError)
    assert b"secret-token" not in str(info.value).encode()


def test_split_gives_ordered_page_ranges_with_the_right_pages() -> None:
    chunks = split_pdf(pages(45), 20)
    assert [(c.first_page, c.last_page, c.total_pages) for c in chunks] == [
        (1, 20, 45),
        (21, 40, 45),
        (41, 45, 45),
    ]
    assert [inspect_pdf(c.data, max_pages=100) for c in chunks] == [20, 20, 5]
    last = PdfReader(io.BytesIO(chunks[2].data))
    assert "page 41" in last.pages[0].extract_text()
    assert "page 45" in last.pages[-1].extract_text()


def test_a_document_that_fits_one_chunk_is_passed_through_untouched() -> None:
    data = pages(3)
    (chunk,) = split_pdf(data, 20)
    assert chunk.data is data and (chunk.first_page, chunk.last_page, chunk.pages) == (1, 3, 3)


def test_owner_password_only_pdf_opens_and_chunks_are_not_encrypted() -> None:
    data = encrypted(pages(3), "")
    assert inspect_pdf(data, max_pages=10) == 3
    (chunk,) = split_pdf(data, 20)
    reader = PdfReader(io.BytesIO(chunk.data))
    assert not reader.is_encrypted and "page 2" in reader.pages[1].extract_text()


def test_split_refuses_a_zero_chunk_size() -> None:
    with pytest.raises(ValueError, match="pages_per_chunk"):
        split_pdf(pages(1), 0)
