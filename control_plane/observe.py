"""Measurement hooks: what the OCR path reports, without knowing who listens.

The engine and the job call these functions; by default nothing listens. A
worker process installs an observer (actors/metrics.py) that feeds its
Prometheus series and the shared counters in Redis. A hook never raises: a
metrics failure must not fail a document.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from control_plane.logs import log_event


class Observer(Protocol):
    def gemini_call(self, document_type: str, seconds: float, outcome: str) -> None:
        """One generate_content call ended: its latency and outcome (ok, 429, 500, ...)."""

    def limiter_wait(self, document_type: str, seconds: float) -> None:
        """A call waited this long for the shared limiter's grant."""

    def document(self, environment: str, document_type: str, outcome: str) -> None:
        """A document ended: completed or failed."""


class _Nobody:
    def gemini_call(self, document_type: str, seconds: float, outcome: str) -> None:
        return None

    def limiter_wait(self, document_type: str, seconds: float) -> None:
        return None

    def document(self, environment: str, document_type: str, outcome: str) -> None:
        return None


_observer: Observer = _Nobody()
_warned = False


def install(observer: Observer | None) -> None:
    """Listen with `observer` from now on (None: stop listening)."""
    global _observer
    _observer = observer if observer is not None else _Nobody()


def call_outcome(exc: BaseException | None) -> str:
    """The outcome label of a Gemini call: ok, the HTTP status, timeout or error."""
    if exc is None:
        return "ok"
    code = getattr(exc, "code", None)
    if isinstance(code, int) and 100 <= code <= 599:
        return str(code)
    name = type(exc).__name__.lower()
    return "timeout" if "timeout" in name else "error"


def _safely(what: str, fn: object, *args: object) -> None:
    global _warned
    try:
        fn(*args)  # type: ignore[operator]
    except Exception as exc:  # a metric must never fail a document
        if not _warned:
            _warned = True
            log_event(
                "metrics.observe_failed",
                f"{what} not recorded",
                level="WARNING",
                error=type(exc).__name__,
            )


def gemini_call(document_type: str, seconds: float, exc: BaseException | None) -> None:
    _safely("gemini call", _observer.gemini_call, document_type, seconds, call_outcome(exc))


def limiter_wait(document_type: str, seconds: float) -> None:
    _safely("limiter wait", _observer.limiter_wait, document_type, seconds)


def document(environment: str, document_type: str, outcome: str) -> None:
    _safely("document outcome", _observer.document, environment, document_type, outcome)


# Gemini answers in 1-60 s per chunk; limiter waits from nothing to a whole window.
CALL_BUCKETS = (0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, float("inf"))
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, float("inf"))


class PrometheusObserver:
    """The hooks -> a worker process's Prometheus series (installed by actors/metrics.py).

    prometheus_client is imported on first use: Dramatiq's middleware points it at its
    multiprocess directory at process boot, and the value class is chosen at import,
    so an earlier import would keep these values out of the workers' exposition.
    """

    def __init__(self, *, count_429: Callable[[], None] | None = None) -> None:
        self._series: dict[str, Any] | None = None
        self._count_429 = count_429

    def metrics(self) -> dict[str, Any]:
        """The series, created on first use."""
        if self._series is None:
            import prometheus_client as prom

            self._series = {
                "calls": prom.Histogram(
                    "ocr_gemini_call_seconds",
                    "Latency of one Gemini generate_content call",
                    ["type", "outcome"],
                    buckets=CALL_BUCKETS,
                ),
                "waits": prom.Histogram(
                    "ocr_limiter_wait_seconds",
                    "Time a call waited for the shared limiter's grant",
                    ["type"],
                    buckets=WAIT_BUCKETS,
                ),
                "responses": prom.Counter(
                    "ocr_gemini_responses",
                    "Gemini calls by outcome (ok, 429, 500, 503, timeout, error)",
                    ["type", "outcome"],
                ),
                "documents": prom.Counter(
                    "ocr_worker_documents",
                    "Documents this worker finished, per environment, type and outcome",
                    ["environment", "type", "outcome"],
                ),
            }
        return self._series

    def gemini_call(self, document_type: str, seconds: float, outcome: str) -> None:
        m = self.metrics()
        m["calls"].labels(type=document_type, outcome=outcome).observe(seconds)
        m["responses"].labels(type=document_type, outcome=outcome).inc()
        if outcome == "429" and self._count_429 is not None:
            self._count_429()

    def limiter_wait(self, document_type: str, seconds: float) -> None:
        self.metrics()["waits"].labels(type=document_type).observe(seconds)

    def document(self, environment: str, document_type: str, outcome: str) -> None:
        self.metrics()["documents"].labels(
            environment=environment, type=document_type, outcome=outcome
        ).inc()
