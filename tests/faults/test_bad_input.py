"""A bad-input corpus mixed with good documents, through the real pool.

Every unusable document ends in status 4 with its own precise `error_message`
(no attempt wasted on retries); the good ones, including a 1,000-page document at
OCR_MAX_PAGES=1000, all complete; the workers carry on. A row of another
component's `document_source` is accepted by the table and never touched by the pool
(issue 12). An http document on a refused address fails with "address not allowed".
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pypdf import PdfReader, PdfWriter

from control_plane.samples import make_pdf, sample_document
from tests.support import fault_fixtures
from tests.support.emulator import EmulatorProcess
from tests.support.fault_fixtures import DONE, ERROR, figures, threads_heartbeating
from tests.support.pool import PoolHarness, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

fx_emulator = fault_fixtures.fx_emulator
fx_pool = fault_fixtures.fx_pool

THREADS = 4
MAX_PAGES = 1000
MAX_MB = 1


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """Serve `directory` over HTTP on a free port (404 for anything missing)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def encrypted_pdf() -> bytes:
    """A PDF that needs a user password to open."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(["confidential"]))))
    writer.encrypt(user_password="open-sesame", owner_password="owner", algorithm="AES-128")  # noqa: S106
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def pages_pdf(count: int) -> bytes:
    return make_pdf([f"Registre page {n} of {count}" for n in range(1, count + 1)])


def insert(conn: psycopg.Connection[Any], source: str, path: str) -> int:
    row = conn.execute(
        "INSERT INTO extraction_queue (document_source, storage_path, status_id) "
        "VALUES (%s, %s, 3) RETURNING id",
        (source, path),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_bad_documents_each_fail_with_their_own_message_and_the_pool_carries_on(
    fx_pool: PoolHarness, fx_emulator: EmulatorProcess, report: Any, tmp_path: Path
) -> None:
    docs = fx_pool.docs_dir
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "elsewhere.pdf").write_bytes(make_pdf(["not yours"]))
    served = tmp_path / "served"
    served.mkdir()
    good = sample_document("index", 900)
    (served / "good.pdf").write_bytes(good.pdf)
    big = pages_pdf(MAX_PAGES)
    files = {
        "zero.pdf": b"",
        "truncated.pdf": make_pdf(["cut short"] * 3)[:300],
        "encrypted.pdf": encrypted_pdf(),
        "notapdf.pdf": b"<html><body>login required</body></html>\n",
        "thousand.pdf": big,
        "toomany.pdf": pages_pdf(MAX_PAGES + 1),
        "oversized.pdf": b"%PDF-1.7\n" + b"0" * int(1.5 * MAX_MB * 1024 * 1024) + b"\n%%EOF\n",
    }
    for name, data in files.items():
        (docs / name).write_bytes(data)
    (docs / "link.pdf").symlink_to(outside / "elsewhere.pdf")

    with http_server(served) as base, psycopg.connect(fx_pool.dsn, autocommit=True) as conn:
        # (document_source, storage_path, expected error_message as a regex; None = completes)
        cases: dict[str, tuple[str, str, str | None]] = {
            "zero-byte": ("index", (docs / "zero.pdf").as_uri(), r"^empty document \(0 bytes\)$"),
            "truncated": (
                "acte",
                (docs / "truncated.pdf").as_uri(),
                r"^corrupt PDF: truncated \(no %%EOF marker at the end of 300 bytes\)$",
            ),
            "encrypted": (
                "acte",
                (docs / "encrypted.pdf").as_uri(),
                r"^encrypted PDF \(a password is required\)$",
            ),
            "not a PDF": (
                "index",
                (docs / "notapdf.pdf").as_uri(),
                r"^not a PDF \(an HTML page\)$",
            ),
            "1,000 pages (allowed)": ("acte", (docs / "thousand.pdf").as_uri(), None),
            "1,001 pages": (
                "acte",
                (docs / "toomany.pdf").as_uri(),
                rf"^too many pages: 1001 > OCR_MAX_PAGES={MAX_PAGES}$",
            ),
            "oversized": (
                "index",
                (docs / "oversized.pdf").as_uri(),
                rf"^too large: 1\.5 MB > limit {MAX_MB} MB \(OCR_MAX_DOCUMENT_MB\)$",
            ),
            "http 404": (
                "index",
                f"{base}/missing.pdf",
                rf"^HTTP 404 fetching {re.escape(base)}/missing\.pdf$",
            ),
            "http good": ("index", f"{base}/good.pdf?token=SIGNEDTOKEN123", None),
            "address not allowed": (
                "index",
                base.replace("127.0.0.1", "127.0.0.2") + "/good.pdf",
                r"^address not allowed: http://127\.0\.0\.2:\d+/good\.pdf: 127\.0\.0\.2 is "
                r"loopback \(not in OCR_DOCUMENT_ALLOWED_HOSTS\)$",
            ),
            "NUL byte in the path": (
                "acte",
                f"{docs.as_uri()}/a%00b.pdf",
                r"^invalid storage_path: embedded null byte$",
            ),
            "outside the directory": (
                "index",
                "file:///etc/hostname",
                r"^path outside OCR_LOCAL_DOCUMENTS_DIR refused: "
                r"/etc/hostname$",
            ),
            "../ traversal": (
                "index",
                f"{docs.as_uri()}/../outside/elsewhere.pdf",
                r"^path outside OCR_LOCAL_DOCUMENTS_DIR refused: "
                rf"{re.escape(str(docs))}/\.\./outside/elsewhere\.pdf$",
            ),
            "symlink out": (
                "index",
                (docs / "link.pdf").as_uri(),
                rf"^path outside OCR_LOCAL_DOCUMENTS_DIR refused: "
                rf"{re.escape(str(docs))}/link\.pdf$",
            ),
            "missing file": (
                "acte",
                (docs / "gone.pdf").as_uri(),
                rf"^file not found: {re.escape(str(docs))}/gone\.pdf$",
            ),
            "empty path": ("index", "", r"^empty storage_path$"),
            "unknown scheme": (
                "index",
                "ftp://archive.example/a.pdf",
                r"^unsupported storage_path scheme 'ftp'$",
            ),
            "storage without Supabase": (
                "acte",
                "scans/2024/a.pdf",
                r"^storage path scans/2024/a\.pdf needs Supabase Storage, "
                r"but environment 'dev' has no Supabase URL and service "
                r"key$",
            ),
        }
        ids = {name: insert(conn, source, path) for name, (source, path, _) in cases.items()}
        # Another component's type: accepted by the table, never touched by the pool.
        registre = insert(conn, "registre", (docs / "thousand.pdf").as_uri())
        expected_good = fx_pool.seed(index=6, acte=4, start=1)

        env = {
            "OCR_MAX_PAGES": MAX_PAGES,
            "OCR_MAX_DOCUMENT_MB": MAX_MB,
            "OCR_PAGES_PER_CHUNK": 100,
            "GEMINI_TPM_LIMIT": 300_000,
        }
        fx_emulator.configure(tpm_limit=320_000)
        fx_pool.scheduler(**env)
        workers = fx_pool.workers(processes=1, threads=THREADS, **env)
        total = len(ids) + len(expected_good)  # the registre row stays at 3
        wait_until(
            lambda: sum(fx_pool.status_counts().get(s, 0) for s in (DONE, ERROR)) == total,
            60,
            message=lambda: (
                f"every document final: {fx_pool.status_counts()}\n{workers.log()[-3000:]}"
            ),
        )

    rows = {r["id"]: r for r in fx_pool.rows()}
    for name, (_, _, pattern) in cases.items():
        row = rows[ids[name]]
        if pattern is None:
            assert row["status_id"] == DONE, (name, row["error_message"])
        else:
            assert row["status_id"] == ERROR, (name, row)
            assert re.match(pattern, row["error_message"] or ""), (name, row["error_message"])
            assert row["attempts"] <= 1, f"{name}: a bad document is not retried"
    messages = [rows[ids[n]]["error_message"] for n, c in cases.items() if c[2] is not None]
    assert len(set(messages)) == len(messages), "each bad document has its own message"
    thousand = rows[ids["1,000 pages (allowed)"]]["file_content"]
    assert "Registre page 1 of 1000" in thousand and "Registre page 1000 of 1000" in thousand
    assert good.text.split()[0] in rows[ids["http good"]]["file_content"]
    for doc_id in expected_good:
        assert rows[doc_id]["status_id"] == DONE, rows[doc_id]
    assert (rows[registre]["status_id"], rows[registre]["attempts"]) == (3, 0), "not ours"
    assert threads_heartbeating(fx_pool, THREADS) and workers.alive()
    assert "Traceback" not in workers.log(), workers.log()[-3000:]
    assert "SIGNEDTOKEN123" not in workers.log(), (
        "a signed URL's query string stays out of the logs"
    )
    bad = sum(1 for c in cases.values() if c[2] is not None)
    row = report(
        **figures(
            "bad input corpus (16 kinds) + good documents",
            fx_pool,
            fx_emulator,
            faulty=set(),
            errors_expected=bad,
            notes="each error has its own message; 1,000 pages processed",
        )
    )
    assert row.errors == bad and row.completed == total - bad and row.duplicates == 0
    assert workers.stop() == 0
