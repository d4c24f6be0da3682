"""Fetching documents over http(s), file:// (one directory only) and Supabase Storage.

Each bad kind ends in a PermanentError with a precise message; network trouble in
a TransientError.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from control_plane.config import Settings
from control_plane.errors import PermanentError, TransientError
from control_plane.queue.documents import DocumentError, DocumentFetcher, inspect_pdf
from control_plane.queue.environments import Environments
from control_plane.queue.models import ClaimedDocument
from control_plane.queue.supabase import SupabaseStore
from control_plane.samples import make_pdf
from tests.support.supabase_endpoint import supabase_endpoint

pytestmark = pytest.mark.integration

PDF = make_pdf(["page one", "page two"])


def doc(path: str, environment: str = "dev") -> ClaimedDocument:
    return ClaimedDocument(environment, 1, "index", path, "token", datetime.now(UTC), 1)


class _Files(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, bytes]] = {
        "/ok.pdf": (200, PDF),
        "/big.pdf": (200, b"%PDF-1.7\n" + b"0" * 300_000),
        "/empty.pdf": (200, b""),
        "/forbidden.pdf": (403, b"no"),
        "/boom.pdf": (503, b"busy"),
    }

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        status, body = self.routes.get(path, (404, b"not found"))
        self.send_response(status)
        if path == "/big.pdf":
            self.send_header("Connection", "close")  # no Content-Length: must stop early
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def docs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "documents"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.pdf").write_bytes(PDF)
    (root / "empty.pdf").write_bytes(b"")
    (root / "big.pdf").write_bytes(b"%PDF-1.7\n" + b"0" * 300_000)
    (tmp_path / "secret.pdf").write_bytes(PDF)
    (root / "escape.pdf").symlink_to(tmp_path / "secret.pdf")
    (root / "inside.pdf").symlink_to(root / "sub" / "ok.pdf")
    return root


@pytest.fixture
def fetcher(docs_dir: Path) -> Iterator[DocumentFetcher]:
    settings = Settings(
        _env_file=None,
        ocr_local_documents_dir=str(docs_dir),  # type: ignore[call-arg]
        ocr_max_document_mb=0.25,
        ocr_document_allowed_hosts="127.0.0.1",  # the test server (issue 12)
        ocr_document_fetch_timeout_ms=5000,
    )
    fetcher = DocumentFetcher(settings)
    yield fetcher
    fetcher.close()


def test_fetches_over_http_and_from_the_documents_dir(
    fetcher: DocumentFetcher, http_base: str, docs_dir: Path
) -> None:
    assert fetcher.fetch(doc(f"{http_base}/ok.pdf?token=abc")) == PDF
    assert fetcher.fetch(doc(f"file://{docs_dir}/sub/ok.pdf")) == PDF
    assert fetcher.fetch(doc(f"file://{docs_dir}/inside.pdf")) == PDF, "symlink inside is fine"
    assert fetcher.fetch(doc(f"file://localhost{docs_dir}/sub/../sub/ok.pdf")) == PDF


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (
            "{http}/missing.pdf?token=s3cret",
            "HTTP 404 fetching http://127.0.0.1:{port}/missing.pdf",
        ),
        ("{http}/forbidden.pdf", "HTTP 403 fetching"),
        ("{http}/empty.pdf", "empty document (0 bytes)"),
        ("{http}/big.pdf", "too large: 0.3 MB > limit 0.25 MB"),
        ("file://{dir}/big.pdf", "too large: 0.3 MB > limit 0.25 MB"),
        ("file://{dir}/empty.pdf", "empty document (0 bytes)"),
        ("file://{dir}/nope.pdf", "file not found"),
        ("file://{dir}/sub", "not a file"),
        ("file://{dir}/../secret.pdf", "path outside OCR_LOCAL_DOCUMENTS_DIR refused"),
        ("file://{dir}/sub/%2e%2e/%2e%2e/secret.pdf", "path outside OCR_LOCAL_DOCUMENTS_DIR"),
        ("file://{dir}/escape.pdf", "path outside OCR_LOCAL_DOCUMENTS_DIR refused"),
        ("file:///etc/passwd", "path outside OCR_LOCAL_DOCUMENTS_DIR refused: /etc/passwd"),
        ("file://evil.host/etc/passwd", "file:// URL with a remote host refused"),
        ("ftp://x.test/a.pdf", "unsupported storage_path scheme 'ftp'"),
        ("bucket/a.pdf", "needs Supabase Storage"),
    ],
)
def test_bad_locations_give_precise_permanent_errors(
    fetcher: DocumentFetcher, http_base: str, docs_dir: Path, path: str, message: str
) -> None:
    port = http_base.rsplit(":", 1)[1]
    with pytest.raises(DocumentError) as info:
        fetcher.fetch(doc(path.format(http=http_base, dir=docs_dir)))
    assert message.format(port=port) in str(info.value)
    assert "s3cret" not in str(info.value), "query strings may hold tokens"


def test_file_urls_are_refused_when_no_documents_dir_is_set() -> None:
    fetcher = DocumentFetcher(Settings(_env_file=None))  # type: ignore[call-arg]
    try:
        with pytest.raises(DocumentError, match="OCR_LOCAL_DOCUMENTS_DIR is not set"):
            fetcher.fetch(doc("file:///tmp/a.pdf"))
    finally:
        fetcher.close()


def test_server_errors_and_network_failures_are_transient(
    fetcher: DocumentFetcher, http_base: str
) -> None:
    with pytest.raises(TransientError, match="HTTP 503"):
        fetcher.fetch(doc(f"{http_base}/boom.pdf"))
    with pytest.raises(
        TransientError, match=re.escape("network error fetching http://127.0.0.1:1/a.pdf")
    ):  # allowed (OCR_DOCUMENT_ALLOWED_HOSTS), nothing listening
        fetcher.fetch(doc("http://127.0.0.1:1/a.pdf"))


def test_supabase_storage_download_and_missing_object(
    pg_database_factory: Any, tmp_path: Path
) -> None:
    (tmp_path / "actes" / "2024").mkdir(parents=True)
    (tmp_path / "actes" / "2024" / "a.pdf").write_bytes(PDF)
    (tmp_path / "actes" / "bad.pdf").write_bytes(b"<html>oops</html>")
    with supabase_endpoint(pg_database_factory("storage"), storage_dir=tmp_path) as endpoint:
        client = SupabaseStore("prod", endpoint.url, endpoint.service_key)
        envs = Environments({"prod": client}, storage={"prod": client})
        fetcher = DocumentFetcher(Settings(_env_file=None), envs)  # type: ignore[call-arg]
        try:
            assert fetcher.fetch(doc("actes/2024/a.pdf", "prod")) == PDF
            with pytest.raises(PermanentError, match=r"^HTTP 404 fetching .*/actes/nope\.pdf") as e:
                fetcher.fetch(doc("actes/nope.pdf", "prod"))
            assert str(e.value).endswith("(actes/nope.pdf from prod storage)")
            with pytest.raises(DocumentError, match="not a PDF"):
                inspect_pdf(fetcher.fetch(doc("actes/bad.pdf", "prod")), max_pages=10)
            endpoint.inject(503, "503")
            with pytest.raises(TransientError):
                fetcher.fetch(doc("actes/2024/a.pdf", "prod"))
        finally:
            fetcher.close()
            envs.close()


def test_settings_storage_client_is_built_next_to_a_postgres_queue(
    pg_database_factory: Any, tmp_path: Path
) -> None:
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "p.pdf").write_bytes(PDF)
    dsn = pg_database_factory("mixed")
    with supabase_endpoint(dsn, storage_dir=tmp_path) as endpoint:
        settings = Settings(
            _env_file=None,
            dev_database_url=SecretStr(dsn),  # type: ignore[call-arg]
            dev_supabase_url=endpoint.url,
            dev_supabase_service_key=SecretStr(endpoint.service_key),
        )
        envs = Environments.from_settings(settings)
        fetcher = DocumentFetcher(settings, envs)
        try:
            assert fetcher.fetch(doc("index/p.pdf")) == PDF
        finally:
            fetcher.close()
            envs.close()


@pytest.mark.parametrize("how", ["removed", "emptied"])
def test_a_vanished_documents_dir_is_an_outage_not_missing_documents(
    docs_dir: Path, fetcher: DocumentFetcher, how: str
) -> None:
    """Attack (a2): when the share behind OCR_LOCAL_DOCUMENTS_DIR goes away (unmounted: the
    mount point is left empty, or the directory is gone), every file:// document said
    "file not found" (a DocumentError: status 4 at once, at the claim rate). With the
    directory itself missing or empty it is the document store that is out: transient,
    so the `file` breaker pauses those documents with no attempt counted."""
    import shutil

    from control_plane.errors import TransientError

    moved = docs_dir.with_name(docs_dir.name + "-away")
    shutil.move(docs_dir, moved)
    if how == "emptied":
        docs_dir.mkdir()  # what an unmounted mount point looks like
    with pytest.raises(TransientError, match="OCR_LOCAL_DOCUMENTS_DIR"):
        fetcher.fetch(doc(f"file://{docs_dir}/sub/ok.pdf"))
    if docs_dir.exists():
        docs_dir.rmdir()
    shutil.move(moved, docs_dir)
    assert fetcher.fetch(doc(f"file://{docs_dir}/sub/ok.pdf")) == PDF
    with pytest.raises(DocumentError, match="file not found"):  # a real missing document
        fetcher.fetch(doc(f"file://{docs_dir}/nope.pdf"))
