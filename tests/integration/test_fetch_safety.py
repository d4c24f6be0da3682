"""Safe fetching of `storage_path` URLs (issue 12), all on 127.0.0.1.

Real HTTP servers on loopback play every part: the document host, a redirect to a
refused address, a gzip bomb, a slow drip, a Supabase Storage that redirects to
another host. `localhost` (a name) and `127.0.0.1` (an address) are different entries
for OCR_DOCUMENT_ALLOWED_HOSTS, which lets one machine play an allowed host and a
refused one.
"""

from __future__ import annotations

import gzip
import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from control_plane.config import Settings
from control_plane.errors import TransientError
from control_plane.queue.documents import DocumentError, DocumentFetcher
from control_plane.queue.environments import Environments
from control_plane.queue.models import ClaimedDocument
from control_plane.queue.supabase import SupabaseStore
from control_plane.samples import make_pdf

pytestmark = pytest.mark.integration
PDF = make_pdf(["a page"])
BOMB_MB = 64
BOMB = gzip.compress(b"\0" * (BOMB_MB << 20), compresslevel=9)


def doc(path: str, environment: str = "dev") -> ClaimedDocument:
    return ClaimedDocument(environment, 1, "index", path, "token", datetime.now(UTC), 1)


Route = Callable[[BaseHTTPRequestHandler], None]


@contextmanager
def server(routes: dict[str, Route]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """A loopback HTTP server; yields its port and the log of requests it saw."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(
                {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
            )
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            try:
                route(self)
            except (BrokenPipeError, ConnectionResetError):
                pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield httpd.server_address[1], seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def body(data: bytes, status: int = 200, **headers: str) -> Route:
    def send(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            h.send_header(k.replace("_", "-"), v)
        h.end_headers()
        h.wfile.write(data)

    return send


def redirect(location: str, status: int = 302) -> Route:
    def send(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return send


def drip(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", str(10_000))
    h.end_headers()
    for _ in range(10_000):
        h.wfile.write(b"%")
        h.wfile.flush()
        time.sleep(0.05)


def fetcher_for(
    allowed: str, *, timeout_ms: int = 10_000, envs: Environments | None = None, max_mb: float = 1.0
) -> DocumentFetcher:
    settings = Settings(
        _env_file=None,
        ocr_document_allowed_hosts=allowed,  # type: ignore[call-arg]
        ocr_document_fetch_timeout_ms=timeout_ms,
        ocr_max_document_mb=max_mb,
    )
    return DocumentFetcher(settings, envs)


@pytest.mark.parametrize(
    ("allowed", "url_host", "fetched"),
    [
        ("", "127.0.0.1", False),
        ("", "localhost", False),
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.0/8", "127.0.0.1", True),
        ("localhost", "localhost", True),
        ("localhost", "127.0.0.1", False),
        ("10.0.0.0/8, files.example", "127.0.0.1", False),
    ],
)
def test_loopback_is_refused_unless_allowed(allowed: str, url_host: str, fetched: bool) -> None:
    with server({"/a.pdf": body(PDF)}) as (port, seen):
        fetcher = fetcher_for(allowed)
        try:
            url = f"http://{url_host}:{port}/a.pdf?sig=SECRET"
            if fetched:
                assert fetcher.fetch(doc(url)) == PDF
                assert len(seen) == 1
            else:
                with pytest.raises(DocumentError) as info:
                    fetcher.fetch(doc(url))
                assert str(info.value).startswith("address not allowed: ")
                assert "is loopback" in str(info.value) and "SECRET" not in str(info.value)
                assert seen == [], "refused before any connection"
        finally:
            fetcher.close()


def test_a_redirect_to_a_refused_address_is_refused_and_never_requested() -> None:
    with server({"/private": body(b"internal secret page " * 50)}) as (inner, inner_seen):
        routes = {
            "/doc.pdf": redirect(f"http://127.0.0.1:{inner}/private"),
            "/hop.pdf": redirect("/doc.pdf", 301),  # relative, same host: followed
        }
        with server(routes) as (outer, _):
            fetcher = fetcher_for("localhost")
            try:
                with pytest.raises(DocumentError) as info:
                    fetcher.fetch(doc(f"http://localhost:{outer}/hop.pdf"))
            finally:
                fetcher.close()
    message = str(info.value)
    assert message.startswith("address not allowed: ")
    assert f"redirected to http://127.0.0.1:{inner}/private" in message
    assert "internal secret" not in message
    assert inner_seen == []


def test_too_many_redirects_and_bad_redirects() -> None:
    routes = {"/loop": redirect("/loop"), "/ftp": redirect("ftp://localhost/x")}
    with server(routes) as (port, _):
        fetcher = fetcher_for("localhost")
        try:
            with pytest.raises(DocumentError, match="too many redirects"):
                fetcher.fetch(doc(f"http://localhost:{port}/loop"))
            with pytest.raises(DocumentError, match="unsupported scheme 'ftp'"):
                fetcher.fetch(doc(f"http://localhost:{port}/ftp"))
        finally:
            fetcher.close()


def test_a_gzip_bomb_is_not_decompressed() -> None:
    routes = {
        "/bomb.pdf": body(BOMB, Content_Encoding="gzip", Content_Type="application/pdf"),
        "/raw.pdf": body(BOMB, Content_Type="application/pdf"),  # no header: bytes as sent
    }
    with server(routes) as (port, seen):
        fetcher = fetcher_for("127.0.0.1", max_mb=1.0)
        try:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            with pytest.raises(DocumentError) as info:
                fetcher.fetch(doc(f"http://127.0.0.1:{port}/bomb.pdf"))
            assert "compressed answer refused (Content-Encoding: gzip)" in str(info.value)
            raw = fetcher.fetch(doc(f"http://127.0.0.1:{port}/raw.pdf"))
            grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        finally:
            fetcher.close()
    assert raw == BOMB, "read as sent: the size limit holds on the bytes read"
    assert seen[0]["headers"].get("accept-encoding") == "identity"
    print(f"\ngzip bomb ({len(BOMB)} bytes -> {BOMB_MB} MB): peak RSS grew {grown_mb:.1f} MB")
    assert grown_mb < BOMB_MB / 2


def test_a_slow_drip_ends_at_the_fetch_deadline() -> None:
    def silent(h: BaseHTTPRequestHandler) -> None:
        time.sleep(5)

    with server({"/drip.pdf": drip, "/silent.pdf": silent}) as (port, _):
        fetcher = fetcher_for("127.0.0.1", timeout_ms=1000)
        try:
            for name in ("drip.pdf", "silent.pdf"):
                started = time.monotonic()
                with pytest.raises(TransientError) as info:
                    fetcher.fetch(doc(f"http://127.0.0.1:{port}/{name}"))
                took = time.monotonic() - started
                assert "took longer than OCR_DOCUMENT_FETCH_TIMEOUT_MS (1 s)" in str(info.value)
                assert took < 4.5, f"{name}: bounded by the deadline, not the server ({took:.1f}s)"
        finally:
            fetcher.close()


def test_storage_credentials_never_follow_a_redirect_to_another_host() -> None:
    with server({"/cdn/a.pdf": body(PDF)}) as (cdn, cdn_seen):
        routes = {
            "/storage/v1/object/actes/a.pdf": redirect("/storage/v1/object/actes/b.pdf"),
            "/storage/v1/object/actes/b.pdf": redirect(f"http://localhost:{cdn}/cdn/a.pdf"),
        }
        with server(routes) as (project, project_seen):
            store = SupabaseStore("prod", f"http://127.0.0.1:{project}", "service-role-KEY-123")
            envs = Environments({"prod": store}, storage={"prod": store})
            fetcher = fetcher_for("localhost", envs=envs)
            try:
                assert fetcher.fetch(doc("actes/a.pdf", "prod")) == PDF
            finally:
                fetcher.close()
                envs.close()
    # The project's own host (trusted, configured) got the key on both same-origin hops.
    assert [r["headers"].get("apikey") for r in project_seen] == ["service-role-KEY-123"] * 2
    assert cdn_seen and all(
        "apikey" not in r["headers"] and "authorization" not in r["headers"] for r in cdn_seen
    )


@pytest.mark.parametrize(
    "path",
    ["http://[::1/a.pdf", "file:///docs/a\x00b.pdf", "http://127.0.0.1:99999/a.pdf"],
)
def test_bad_paths_fail_at_once(path: str, tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,
        ocr_local_documents_dir=str(tmp_path),  # type: ignore[call-arg]
        ocr_document_allowed_hosts="127.0.0.1",
    )
    fetcher = DocumentFetcher(settings)
    try:
        with pytest.raises(DocumentError) as info:
            fetcher.fetch(doc(path))
        assert "\x00" not in str(info.value)
    finally:
        fetcher.close()


@pytest.mark.parametrize(
    "path",
    [
        "actes/../../../../rest/v1/extraction_queue",
        "actes/./../../../../auth/v1/admin/users",
        "../storage/v1/bucket",
        "actes/x/../../../../../rest/v1/rpc/ocr_counts",
    ],
)
def test_a_storage_path_cannot_climb_out_of_the_object_api_with_the_key(path: str) -> None:
    """Attack (a2): `bucket/path` with `..` segments made httpx normalise the Storage URL
    to another endpoint of the project (PostgREST, auth admin), and the service-role key
    went with it (same origin). Dot segments are refused before any request."""
    routes = {
        "/rest/v1/extraction_queue": body(b'[{"ocr_text": "secret"}]', Content_Type="json"),
        "/auth/v1/admin/users": body(b'{"users": []}', Content_Type="json"),
        "/rest/v1/rpc/ocr_counts": body(b"[]", Content_Type="json"),
        "/storage/v1/bucket": body(b"[]", Content_Type="json"),
    }
    with server(routes) as (project, project_seen):
        store = SupabaseStore("prod", f"http://127.0.0.1:{project}", "service-role-KEY-123")
        envs = Environments({"prod": store}, storage={"prod": store})
        fetcher = fetcher_for("", envs=envs)
        try:
            with pytest.raises(DocumentError) as info:
                fetcher.fetch(doc(path, "prod"))
        finally:
            fetcher.close()
            envs.close()
    assert "'.' or '..'" in str(info.value)
    assert project_seen == [], "no request (and no key) left for another endpoint"


@pytest.mark.parametrize(
    "route",
    [
        body(
            b'{"statusCode":"403","error":"Unauthorized","message":"invalid signature"}',
            400,
            Content_Type="application/json",
        ),
        body(b'{"message":"Invalid JWT"}', 401, Content_Type="application/json"),
        body(b"", 403),
    ],
    ids=["storage-400-403", "http-401", "http-403"],
)
def test_a_refused_service_key_is_a_storage_outage_not_a_document_fault(route: Route) -> None:
    """Attack (a2): a rotated or wrong service key made Supabase Storage refuse every
    object (401/403, or 400 {"statusCode": "403"}), and each storage document went to
    status 4 as if it were its fault, at the claim rate. With the service key, a refusal
    is about our credentials: transient (the `storage:<env>` breaker pauses the documents
    with no attempt counted), naming the variable to check."""
    with server({"/storage/v1/object/actes/a.pdf": route}) as (project, _):
        store = SupabaseStore("prod", f"http://127.0.0.1:{project}", "service-role-KEY-123")
        envs = Environments({"prod": store}, storage={"prod": store})
        fetcher = fetcher_for("", envs=envs)
        try:
            with pytest.raises(TransientError) as info:
                fetcher.fetch(doc("actes/a.pdf", "prod"))
        finally:
            fetcher.close()
            envs.close()
    assert "PROD_SUPABASE_SERVICE_KEY" in str(info.value)
    assert "service-role-KEY-123" not in str(info.value)
