"""Configuration: the seed's defaults, validation with one clear line, no secrets."""

from __future__ import annotations

import pytest

from control_plane.config import load_settings
from control_plane.errors import ConfigError

pytestmark = pytest.mark.unit

DB = {"DEV_DATABASE_URL": "postgresql://ocr:hunter2secret@db.example/ocr"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    for name in list(os.environ):
        if name.startswith(("OCR_", "GEMINI_", "SERVER_", "REDIS_", "DEV_", "STAGING_", "PROD_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def set_env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_seed_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, DB)
    s = load_settings()
    assert (s.ocr_worker_pool_size, s.ocr_min_index_workers, s.ocr_min_acte_workers) == (4, 1, 1)
    assert s.ocr_rebalance_interval_ms == 30_000
    assert s.redis_url.get_secret_value() == "redis://localhost:6379"
    assert (s.server_max_cpu, s.server_max_ram) == (8, 16)
    assert (s.gemini_rpm_limit, s.gemini_tpm_limit) == (1600, 6_400_000)
    assert s.cpu_budget == pytest.approx(6.4)
    assert s.ram_budget == pytest.approx(12.8)
    assert [e.name for e in s.environments] == ["dev"]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OCR_WORKER_POOL_SIZE": "-3"}, "OCR_WORKER_POOL_SIZE"),
        ({"OCR_WORKER_POOL_SIZE": "four"}, "OCR_WORKER_POOL_SIZE"),
        ({"OCR_MIN_INDEX_WORKERS": "9"}, "OCR_MIN_INDEX_WORKERS"),
        ({"OCR_MIN_ACTE_WORKERS": "-1"}, "OCR_MIN_ACTE_WORKERS"),
        ({"OCR_MIN_INDEX_WORKERS": "3", "OCR_MIN_ACTE_WORKERS": "3"}, "OCR_MIN_ACTE_WORKERS"),
        ({"SERVER_RESERVE_CPU_PERCENT": "100"}, "SERVER_RESERVE_CPU_PERCENT"),
        ({"GEMINI_RPM_LIMIT": "0"}, "GEMINI_RPM_LIMIT"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL"),
        ({"OCR_LEASE_MS": "10"}, "OCR_LEASE_MS"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str
) -> None:
    set_env(monkeypatch, {**DB, **env})
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert variable in message, message
    assert "\n" not in message


def test_no_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="no environment configured"):
        load_settings()


def test_supabase_url_without_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, {"STAGING_SUPABASE_URL": "https://x.supabase.co"})
    with pytest.raises(ConfigError, match="STAGING_SUPABASE_SERVICE_KEY"):
        load_settings()


def test_secrets_never_in_repr_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        {
            **DB,
            "GEMINI_API_KEY": "AIzaTopSecretKey123",
            "REDIS_URL": "redis://:redispass99@cache:6379/0",
            "PROD_SUPABASE_URL": "https://p.supabase.co",
            "PROD_SUPABASE_SERVICE_KEY": "service-role-jwt-xyz",
        },
    )
    s = load_settings()
    text = repr(s) + str(s) + " ".join(e.describe() for e in s.environments)
    for secret in ("AIzaTopSecretKey123", "redispass99", "service-role-jwt-xyz", "hunter2secret"):
        assert secret not in text
        assert any(secret in v for v in s.secrets)
    set_env(monkeypatch, {"GEMINI_RPM_LIMIT": "AIzaTopSecretKey123"})
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "AIzaTopSecretKey123" not in str(info.value)
