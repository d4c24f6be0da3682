"""The document host's breaker closes when its probe gets an answer, even a "no" (attack
a2 on issue 11). Real Redis (the shared breakers), real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from control_plane.breakers import Breakers
from control_plane.config import Settings
from control_plane.errors import DependencyPausedError, TransientError
from control_plane.keys import Keys
from control_plane.queue.documents import DocumentError, DocumentFetcher
from control_plane.queue.models import ClaimedDocument
from control_plane.samples import make_pdf

pytestmark = pytest.mark.integration


def _load_dependencies() -> Any:
    """actors/dependencies.py without the `actors` package, whose import builds the
    Dramatiq broker from the environment (a worker process's boot)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "actors" / "dependencies.py"
    spec = importlib.util.spec_from_file_location("a2_actors_dependencies", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fetch_through_breaker = _load_dependencies().fetch_through_breaker
PDF = make_pdf(["a page"])
PROBE_MS = 300


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        data = PDF if self.path == "/ok.pdf" else b""
        self.send_response(200 if data else 404)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def doc(url: str) -> ClaimedDocument:
    from datetime import UTC, datetime

    return ClaimedDocument("dev", 1, "index", url, "token", datetime.now(UTC), 1)


def test_a_probe_answered_with_404_resumes_the_host_for_the_other_documents(
    redis_client: redis.Redis, keys: Keys
) -> None:
    """After an outage of a document server, the probe landed on a document the server
    answers 404 for: that document fails (its fault), but the host's breaker stayed open
    although the server answers, so its good documents waited another probe interval,
    and one per interval while probes kept landing on missing documents."""
    port = free_port()
    settings = Settings(
        _env_file=None,
        ocr_document_allowed_hosts="127.0.0.1",  # type: ignore[call-arg]
        ocr_breaker_probe_ms=PROBE_MS,
        ocr_document_fetch_timeout_ms=3000,
    )
    rt = SimpleNamespace(
        settings=settings,
        fetcher=DocumentFetcher(settings),
        breakers=Breakers(redis_client, keys),
        stop_event=threading.Event(),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with pytest.raises((DependencyPausedError, TransientError)):
            fetch_through_breaker(rt, doc(f"{base}/ok.pdf"))  # server down: 3 failures
        assert f"document_host:127.0.0.1:{port}" in rt.breakers.open_breakers()
        httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            time.sleep(PROBE_MS / 1000 + 0.1)  # the next probe is due
            with pytest.raises(DocumentError, match="HTTP 404"):
                fetch_through_breaker(rt, doc(f"{base}/missing.pdf"))  # the probe
            assert fetch_through_breaker(rt, doc(f"{base}/ok.pdf")) == PDF
            assert f"document_host:127.0.0.1:{port}" not in rt.breakers.open_breakers()
        finally:
            httpd.shutdown()
            httpd.server_close()
    finally:
        rt.fetcher.close()
