"""Configuration that cannot work is refused at start with one line naming the variable
(issue 11): timing relations, slot costs against the host's budget, URL schemes."""

from __future__ import annotations

import pytest

from control_plane.config import load_settings
from control_plane.errors import ConfigError

pytestmark = pytest.mark.unit
DB = {"dev_database_url": "postgresql://ocr@db.example/ocr"}

# (overrides, the line starts with, and holds)
REFUSED = [
    (
        {"ocr_heartbeat_interval_ms": 60_000, "ocr_slot_ttl_ms": 1_000},
        "OCR_HEARTBEAT_INTERVAL_MS=60000",
        "below OCR_SLOT_TTL_MS=1000",
    ),
    (
        {"ocr_slot_ttl_ms": 30_000, "ocr_lease_ms": 1_000},
        "OCR_SLOT_TTL_MS=30000",
        "below OCR_LEASE_MS=1000",
    ),
    (
        {"ocr_job_time_limit_ms": 1_000},
        "OCR_JOB_TIME_LIMIT_MS=1000",
        "below GEMINI_TIMEOUT_MS=300000",
    ),
    (
        {"ocr_retry_base_ms": 10_000, "ocr_retry_max_ms": 1_000},
        "OCR_RETRY_BASE_MS=10000",
        "above OCR_RETRY_MAX_MS=1000",
    ),
    ({"ocr_acte_cpu": 9.0}, "OCR_ACTE_CPU=9", "no acte slot could ever run"),
    ({"ocr_index_ram_gb": 20.0}, "OCR_INDEX_RAM_GB=20", "no index slot could ever run"),
    ({"server_max_cpu": 2.0}, "SERVER_MAX_CPU", "minimum slots"),
    (
        {"ocr_min_acte_workers": 3, "ocr_worker_pool_size": 8, "server_max_ram": 4.0},
        "SERVER_MAX_RAM",
        "minimum slots",
    ),
    (
        {"dev_supabase_url": "abc.supabase.co", "dev_supabase_service_key": "k" * 20},
        "DEV_SUPABASE_URL has no scheme",
        "https://abc.supabase.co",
    ),
    (
        {"dev_supabase_url": "ftp://abc.supabase.co", "dev_supabase_service_key": "k" * 20},
        "DEV_SUPABASE_URL must start with https:// or http://",
        "not ftp://",
    ),
    (
        {"dev_database_url": "mysql://ocr:pw@db/ocr"},
        "DEV_DATABASE_URL must start with postgresql://",
        "not mysql://",
    ),
    ({"prod_database_url": "db.example:5432/ocr"}, "PROD_DATABASE_URL has no scheme", ""),
    ({"dev_database_url": "ocr:pw@db.example/ocr"}, "DEV_DATABASE_URL has no scheme", "user:"),
    ({"gemini_base_url": "127.0.0.1:8090"}, "GEMINI_BASE_URL has no scheme", "https://"),
    # Attack (a2): REDIS_URLs redis-py cannot parse ended the start with a traceback.
    ({"redis_url": "redis://:pw@127.0.0.1:99999/0"}, "REDIS_URL is not a valid", "Port"),
    ({"redis_url": "redis://127.0.0.1/0?password=pw&db=x"}, "REDIS_URL is not a valid", "db"),
    ({"redis_url": "redis://:pw@[::1/0"}, "REDIS_URL is not a valid", "IPv6"),
    ({"redis_url": "redis://cache:pw-as-port/0"}, "REDIS_URL is not a valid", "port is not"),
]


@pytest.mark.parametrize(("overrides", "starts", "holds"), REFUSED)
def test_configuration_that_cannot_work_is_refused(overrides, starts, holds) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, **{**DB, **overrides})
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith(starts), line
    assert holds in line, line
    assert "pw@" not in line and "k" * 20 not in line, "never the secret"


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # the defaults
        {"ocr_heartbeat_interval_ms": 500, "ocr_slot_ttl_ms": 3000, "ocr_lease_ms": 8000},
        {"ocr_min_acte_workers": 0, "ocr_acte_cpu": 99.0},  # no minimum: nothing promised
        {"dev_supabase_url": "http://127.0.0.1:54321", "dev_supabase_service_key": "k" * 20},
        {"redis_url": "unix:///run/redis.sock", "dev_database_url": "postgres://h/db"},
        {"dev_database_url": "host=127.0.0.1 dbname=ocr user=ocr password=pw"},  # libpq form
    ],
)
def test_configurations_that_work_are_accepted(overrides) -> None:
    load_settings(_env_file=None, **{**DB, **overrides})
