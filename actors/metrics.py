"""Worker metrics: Dramatiq's Prometheus middleware on OCR_WORKER_METRICS_PORT.

Dramatiq's exposition server runs in a forked process that imports only its own
module, so it would read `dramatiq_prom_port` from the master's environment and
ignore our setting. Our fork function reads the setting itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from http.server import HTTPServer

from dramatiq.middleware.prometheus import Prometheus


class WorkerMetrics(Prometheus):
    """Dramatiq's series (messages, errors, durations, in progress) on our port."""

    @property
    def forks(self) -> list[Callable[[], int]]:
        return [serve_worker_metrics]


def serve_worker_metrics() -> int:
    """Fork process: serve the multiprocess metrics on OCR_WORKER_METRICS_PORT."""
    from dramatiq.middleware import prometheus

    port = int(os.environ.get("OCR_WORKER_METRICS_PORT", "9191"))
    host = os.environ.get("dramatiq_prom_host", "0.0.0.0")  # noqa: S104 - scraped by Prometheus
    server = HTTPServer((host, port), prometheus._metrics_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()
    return 0


# --- issue 14: our own series (control_plane.observe.PrometheusObserver) ---


def install_observer() -> None:
    """Feed this process's series (Gemini latency, limiter waits, responses, documents)
    from the OCR path; a 429 is also counted in Redis (`gemini:stats` responses_429) so
    the scheduler's `ocr_gemini_429_total` counts answers, not cooldowns."""
    from control_plane import observe

    def count_429() -> None:
        from actors.runtime import runtime

        rt = runtime()
        rt.client.hincrby(rt.keys.stats, "responses_429", 1)

    observe.install(observe.PrometheusObserver(count_429=count_429))
