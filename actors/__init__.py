"""`dramatiq actors`: set the Redis broker first, then declare the actors.

Dramatiq binds an actor to `get_broker()` when it is decorated, so the broker
(with our middleware) must be set before `actors.ocr` is imported.
"""

from __future__ import annotations

import logging
import sys

import dramatiq
from dramatiq.middleware import Retries, TimeLimit

from control_plane.config import load_settings
from control_plane.dispatch import make_broker
from control_plane.errors import ConfigError
from control_plane.logs import setup_logging
from control_plane.redis_conn import check_redis

try:
    _settings = load_settings()
    if _settings.gemini_api_key is None:
        raise ConfigError("GEMINI_API_KEY: not set (needed to call Gemini or the emulator)")
    # Refused here, once: otherwise every consumer thread logs a connection error every
    # 3 s forever and the worker never says which setting is wrong.
    _url = _settings.redis_url.get_secret_value()
    check_redis(_url)
except ConfigError as _exc:
    print(f"configuration error: {_exc}", file=sys.stderr)
    raise SystemExit(2) from None

setup_logging(_settings.ocr_log_level, json_lines=_settings.ocr_log_json, secrets=_settings.secrets)
# Dramatiq configures the root logger at INFO; the SDK's per-request lines drown our events.
for _name in ("google_genai", "httpx", "httpx2", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

broker = make_broker(_settings.redis_url.get_secret_value(), _settings.ocr_dramatiq_namespace)
for _mw in list(broker.middleware):
    # Leases, not broker retries, bring a document back; a rate-limit wait must never
    # consume a retry. Long actes need more than the default 10-minute time limit.
    if isinstance(_mw, Retries):
        _mw.max_retries = 0
    if isinstance(_mw, TimeLimit):
        _mw.time_limit = _settings.ocr_job_time_limit_ms

from actors.runtime import OcrRuntime  # noqa: E402 - after the broker exists

broker.add_middleware(OcrRuntime())
if _settings.ocr_worker_metrics_port > 0:
    from actors.metrics import WorkerMetrics

    broker.add_middleware(WorkerMetrics())
dramatiq.set_broker(broker)

from actors.metrics import install_observer  # noqa: E402

install_observer()  # issue 14: Gemini latency, limiter waits, 429s, documents per environment

from actors import ocr  # noqa: E402,F401 - declares the actors on the broker above
