"""The emulator's HTTP server: generateContent plus its control endpoints.

A ThreadingHTTPServer (one thread per connection, HTTP/1.1 keep-alive, a deep listen
backlog) handles hundreds of concurrent calls; a call spends its time sleeping
(latency), so threads are cheap here. All shared state sits behind one lock and
the PDF is parsed outside it.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from control_plane.emulator import bodies
from control_plane.emulator.config import FAULTS, EmulatorConfig
from control_plane.emulator.quota import QuotaWindows, WindowPeak

_GENERATE_RE = re.compile(r"^/(v1|v1beta|v1alpha)/models/([^/:]+):generateContent$")
_MODEL_RE = re.compile(r"^/(v1|v1beta|v1alpha)/models/([^/:]+)$")  # models.get (no quota)
_LOG_CAP = 200_000  # per-call log entries kept for /_emulator/stats?log=1


class EmulatorState:
    """Configuration, quota windows and statistics, shared by every request thread."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.lock = threading.Lock()
        self.config = config
        self.shutdown = threading.Event()
        self.in_flight = 0  # survives reset(): calls still running when the counters are cleared
        self.reset()

    def reset(self) -> None:
        """Forget all traffic (windows, counters, the call log); keep the configuration.

        The caller holds `lock` (or is the constructor).
        """
        cfg = self.config
        self.rng = random.Random(cfg.seed)
        self.windows = QuotaWindows(cfg.rpm_limit, cfg.tpm_limit, cfg.window_s)
        self.offered = WindowPeak(cfg.window_s)
        self.admitted_peak = WindowPeak(cfg.window_s)
        self.requests = 0
        self.statuses: Counter[int] = Counter()
        self.faults: Counter[str] = Counter()
        self.sent_429 = 0
        self.sent_429_per_day = 0
        self.documents: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.max_in_flight = self.in_flight
        self.log: list[dict[str, Any]] = []
        self.started = time.time()

    def reconfigure(self, changes: dict[str, Any]) -> None:
        """Apply a config change; limits and windows take effect at once (history kept)."""
        with self.lock:
            self.config.update(changes)
            cfg = self.config
            self.windows.rpm_limit, self.windows.tpm_limit = cfg.rpm_limit, cfg.tpm_limit
            if cfg.window_s != self.windows.window_s:
                self.windows = QuotaWindows(cfg.rpm_limit, cfg.tpm_limit, cfg.window_s)
                self.offered = WindowPeak(cfg.window_s)
                self.admitted_peak = WindowPeak(cfg.window_s)
            if "seed" in changes:
                self.rng = random.Random(cfg.seed)

    def stats(self, *, with_log: bool = False) -> dict[str, Any]:
        """The counters tests and benchmarks read."""
        with self.lock:
            cfg = self.config
            exceeded_requests = bool(cfg.rpm_limit) and self.offered.max_requests > cfg.rpm_limit
            exceeded_tokens = bool(cfg.tpm_limit) and self.offered.max_tokens > cfg.tpm_limit
            data: dict[str, Any] = {
                "requests": self.requests,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "sent_429": self.sent_429,
                "sent_429_per_day": self.sent_429_per_day,
                "faults": dict(self.faults),
                "documents": dict(self.documents),
                "max_calls_per_document": max(self.documents.values(), default=0),
                "prompt_tokens": self.prompt_tokens,
                "output_tokens": self.output_tokens,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "window": {
                    "window_s": cfg.window_s,
                    "rpm_limit": cfg.rpm_limit,
                    "tpm_limit": cfg.tpm_limit,
                    "max_requests_offered": self.offered.max_requests,
                    "max_tokens_offered": self.offered.max_tokens,
                    "max_requests_admitted": self.admitted_peak.max_requests,
                    "max_tokens_admitted": self.admitted_peak.max_tokens,
                    "requests_exceeded": exceeded_requests,
                    "tokens_exceeded": exceeded_tokens,
                },
                "window_exceeded": exceeded_requests or exceeded_tokens,
                "config": cfg.public(),
            }
            if with_log:
                data["log"] = list(self.log)
            return data

    def pick_fault(self) -> str | None:
        """The fault for this call (scripted first, then storms and quotas, then rates)."""
        cfg = self.config
        if cfg.script:
            name = cfg.script.pop(0)
            return None if name == "ok" else name
        if cfg.storm_requests > 0:
            cfg.storm_requests -= 1
            return "storm"
        if cfg.per_day_quota:
            return "429_per_day"
        roll = self.rng.random()
        for name in FAULTS:
            roll -= float(cfg.fault_rates.get(name, 0.0))
            if roll < 0:
                return name
        return None


class EmulatorServer(ThreadingHTTPServer):
    """Threaded HTTP server with a backlog deep enough for hundreds of simultaneous connects."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], state: EmulatorState, *, verbose: bool = False):
        self.state = state
        self.verbose = verbose
        super().__init__(address, EmulatorHandler)


class EmulatorHandler(BaseHTTPRequestHandler):
    """One connection: routes POST generateContent and the /_emulator endpoints."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits for the
    # client's delayed ACK and every call took ~40 ms longer than its configured latency.
    disable_nagle_algorithm = True
    server: EmulatorServer
    error_content_type = "application/json"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    # --- plumbing ---

    def _send_json(self, status: int, payload: Any) -> None:
        self._send_raw(status, json.dumps(payload).encode())

    def _send_raw(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. its timeout): nothing to tell it

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # --- routes ---

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/_emulator/stats":
            with_log = parse_qs(url.query).get("log", ["0"])[0] not in ("0", "")
            self._send_json(200, self.server.state.stats(with_log=with_log))
        elif url.path in ("/_emulator/health", "/"):
            self._send_json(200, {"ok": True})
        elif found := _MODEL_RE.match(url.path):
            self._send_json(*self._model(found.group(1), found.group(2)))
        else:
            self._send_json(404, bodies.error_body(404, "NOT_FOUND", "Not found."))

    def do_POST(self) -> None:
        raw = self._read_body()
        path = urlsplit(self.path).path
        state = self.server.state
        if path == "/_emulator/reset":
            with state.lock:
                state.reset()
            self._send_json(200, {"ok": True})
            return
        if path == "/_emulator/config":
            try:
                state.reconfigure(json.loads(raw or b"{}"))
            except (ValueError, TypeError) as exc:
                self._send_json(400, {"error": str(exc)})
                return
            self._send_json(200, state.config.public())
            return
        found = _GENERATE_RE.match(path)
        if not found:
            self._send_json(404, bodies.error_body(404, "NOT_FOUND", f"Unknown path {path}."))
            return
        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            status, payload = self._generate(found.group(2), raw)
            if isinstance(payload, bytes):
                self._send_raw(status, payload)
            else:
                self._send_json(status, payload)
        finally:
            with state.lock:
                state.in_flight -= 1

    # --- models.get: checks the key and the model, costs no generation quota ---

    def _api_key_refusal(self) -> tuple[int, Any] | None:
        key = (
            self.headers.get("x-goog-api-key")
            or parse_qs(urlsplit(self.path).query).get("key", [""])[0]
        )
        if not key:
            return 403, bodies.MISSING_KEY
        expected = self.server.state.config.api_key
        if expected is not None and key != expected:
            return 400, bodies.INVALID_KEY
        return None

    def _model(self, version: str, model: str) -> tuple[int, Any]:
        refusal = self._api_key_refusal()
        if refusal is not None:
            return refusal
        known = self.server.state.config.known_models
        if known and model not in known:
            return 404, bodies.error_body(
                404,
                "NOT_FOUND",
                f"models/{model} is not found for API version {version}, or is not supported "
                "for generateContent. Call ListModels to see the list of available models.",
            )
        return 200, bodies.model_body(model)

    # --- generateContent ---

    def _generate(self, model: str, raw: bytes) -> tuple[int, Any]:
        state = self.server.state
        cfg = state.config
        key = (
            self.headers.get("x-goog-api-key")
            or parse_qs(urlsplit(self.path).query).get("key", [""])[0]
        )
        if not key:
            return self._count(403, bodies.MISSING_KEY)
        if cfg.api_key is not None and key != cfg.api_key:
            return self._count(400, bodies.INVALID_KEY)
        try:
            request = bodies.parse_request(json.loads(raw))
        except (ValueError, UnicodeDecodeError) as exc:
            return self._count(400, bodies.error_body(400, "INVALID_ARGUMENT", str(exc)))
        prompt_tokens = bodies.text_tokens(request.prompt)
        pages: list[str] | None = None
        if request.pdf is not None and request.mime_type == "application/pdf":
            try:
                pages = bodies.pdf_pages_text(request.pdf)
            except ValueError:
                pages = None
        document_tokens = len(pages) * cfg.tokens_per_page if pages else 0
        tokens = prompt_tokens + document_tokens
        now = time.time()
        with state.lock:
            state.requests += 1
            state.documents[request.document_id] += 1
            state.offered.record(now, tokens)
            fault = state.pick_fault()
            refusal = None
            if fault is None or fault not in ("storm", "429", "429_per_day"):
                refusal = state.windows.admit(now, tokens)
                if refusal is None:
                    state.admitted_peak.record(now, tokens)
            entry = {"t": now, "doc": request.document_id, "tokens": tokens, "fault": fault}
        if fault == "429_per_day":
            return self._count(429, bodies.per_day_quota_error(model), entry, per_day=True)
        if fault in ("storm", "429"):
            delay = None if cfg.omit_retry_info else cfg.storm_retry_delay_s
            body = bodies.per_minute_quota_error(model, "requests", cfg.rpm_limit or 1600, delay)
            return self._count(429, body, entry)
        if refusal is not None:
            delay = cfg.retry_delay_s if cfg.retry_delay_s is not None else refusal.retry_after_s
            body = bodies.per_minute_quota_error(
                model, refusal.dimension, refusal.limit, None if cfg.omit_retry_info else delay
            )
            return self._count(429, body, entry)
        self._sleep_latency(len(pages or ()))
        if fault == "timeout":
            state.shutdown.wait(cfg.timeout_sleep_s)
            return self._count(504, bodies.DEADLINE, entry, fault=fault)
        if fault == "500":
            return self._count(500, bodies.INTERNAL, entry, fault=fault)
        if fault == "503":
            return self._count(503, bodies.UNAVAILABLE, entry, fault=fault)
        if fault == "failed_precondition":
            return self._count(400, bodies.FAILED_PRECONDITION, entry, fault=fault)
        if fault == "pdf_unsupported":
            return self._count(400, bodies.PDF_UNSUPPORTED, entry, fault=fault)
        if not pages:
            if request.mime_type not in (None, "application/pdf"):
                return self._count(
                    400,
                    bodies.error_body(
                        400, "INVALID_ARGUMENT", f"Unsupported MIME type: {request.mime_type}"
                    ),
                    entry,
                )
            return self._count(400, bodies.NO_PAGES, entry)
        if fault == "malformed_json":
            return self._count(
                200, b'{"candidates": [{"content": {"parts": [{"text": "', entry, fault=fault
            )
        return self._answer(model, request, pages, prompt_tokens, document_tokens, fault, entry)

    def _answer(
        self,
        model: str,
        request: bodies.ParsedRequest,
        pages: list[str],
        prompt_tokens: int,
        document_tokens: int,
        fault: str | None,
        entry: dict[str, Any],
    ) -> tuple[int, Any]:
        if fault == "blocked_prompt":
            usage = bodies.usage(prompt_tokens, document_tokens, 0)
            return self._count(200, bodies.blocked_prompt(model, usage), entry, fault=fault)
        if fault in ("safety", "recitation"):
            usage = bodies.usage(prompt_tokens, document_tokens, 0)
            body = bodies.answer(model, None, fault.upper(), usage)
            return self._count(200, body, entry, fault=fault)
        if fault == "empty_stop":
            body = bodies.answer(model, "", "STOP", bodies.usage(prompt_tokens, document_tokens, 0))
            return self._count(200, body, entry, fault=fault)
        if fault == "max_tokens":
            budget = request.max_output_tokens or 65_536
            usage = bodies.usage(prompt_tokens, document_tokens, 0, thoughts=budget)
            return self._count(
                200, bodies.answer(model, None, "MAX_TOKENS", usage), entry, fault=fault
            )
        text = bodies.ocr_text(pages, request.prompt)
        if fault == "max_tokens_cut":  # the output budget ran out halfway through the text
            cut = text[: len(text) // 2]
            usage = bodies.usage(prompt_tokens, document_tokens, bodies.text_tokens(cut))
            return self._count(
                200, bodies.answer(model, cut, "MAX_TOKENS", usage), entry, fault=fault
            )
        output = bodies.text_tokens(text)
        body = bodies.answer(
            model, text, "STOP", bodies.usage(prompt_tokens, document_tokens, output)
        )
        with self.server.state.lock:
            self.server.state.prompt_tokens += prompt_tokens + document_tokens
            self.server.state.output_tokens += output
        return self._count(200, body, entry)

    def _sleep_latency(self, pages: int) -> None:
        state = self.server.state
        cfg = state.config
        with state.lock:
            jitter = state.rng.gauss(0.0, cfg.latency_jitter_ms) if cfg.latency_jitter_ms else 0.0
            alpha = cfg.latency_tail_alpha
            tail = state.rng.paretovariate(alpha) if alpha else 1.0
        delay_ms = (max(0.0, cfg.latency_ms + jitter) + cfg.latency_per_page_ms * pages) * tail
        if delay_ms > 0:
            state.shutdown.wait(delay_ms / 1000)

    def _count(
        self,
        status: int,
        payload: Any,
        entry: dict[str, Any] | None = None,
        *,
        fault: str | None = None,
        per_day: bool = False,
    ) -> tuple[int, Any]:
        state = self.server.state
        with state.lock:
            state.statuses[status] += 1
            if status == 429:
                state.sent_429 += 1
                state.sent_429_per_day += int(per_day)
            if fault:
                state.faults[fault] += 1
            if entry is not None and len(state.log) < _LOG_CAP:
                state.log.append({**entry, "status": status, "done": time.time()})
        return status, payload


def serve(
    config: EmulatorConfig, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False
) -> EmulatorServer:
    """Bind the server (port 0: any free port); call serve_forever() on the result."""
    config.validate()
    return EmulatorServer((host, port), EmulatorState(config), verbose=verbose)


__all__ = ["EmulatorServer", "EmulatorState", "serve"]
