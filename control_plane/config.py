"""Configuration: the seed's environment variables, validated once at start.

Every setting comes from the environment or a `.env` file. A bad value stops the
process with one line naming the variable (`ConfigError`); secrets are held as
`SecretStr` so they never show up in a repr, a log line or an exception.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from control_plane.config_checks import relation_problem, url_problem
from control_plane.errors import ConfigError
from control_plane.urls import describe_url, url_secrets

DOCUMENT_TYPES: tuple[str, ...] = ("index", "acte")
ENVIRONMENT_NAMES: tuple[str, ...] = ("dev", "staging", "prod")

# Google's public endpoint; the SDK uses it when no base URL is given.
DEFAULT_GEMINI_BASE_URL = "https://generativelanguage.googleapis.com"


@dataclass(frozen=True)
class EnvironmentConfig:
    """One Supabase project (dev, staging or prod): where its queue lives."""

    name: str
    supabase_url: str | None
    supabase_service_key: SecretStr | None
    database_url: SecretStr | None

    @property
    def has_supabase(self) -> bool:
        return bool(self.supabase_url and self.supabase_service_key)

    @property
    def has_database(self) -> bool:
        return self.database_url is not None

    def describe(self) -> str:
        """A secret-free one-liner for banners and logs."""
        transports = []
        if self.has_database:
            transports.append("postgres")
        if self.has_supabase:
            transports.append(f"supabase {describe_url(self.supabase_url or '')}")
        return f"{self.name}: {', '.join(transports)}"


class Settings(BaseSettings):
    """All configuration. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        hide_input_in_errors=True,
        # `GEMINI_API_KEY=` (as in .env.example) or compose's `${X:-}` means "not set",
        # not an empty key / an empty directory / an unparsable number.
        env_ignore_empty=True,
    )

    # --- the seed's names and defaults (contract, DESIGN.md section 4) ---
    ocr_worker_pool_size: int = Field(4, ge=2, le=10_000)
    ocr_min_index_workers: int = Field(1, ge=0)
    ocr_min_acte_workers: int = Field(1, ge=0)
    ocr_rebalance_interval_ms: int = Field(30_000, ge=100)
    redis_url: SecretStr = SecretStr("redis://localhost:6379")
    server_max_cpu: float = Field(8.0, gt=0)
    server_max_ram: float = Field(16.0, gt=0)
    server_reserve_cpu_percent: float = Field(20.0, ge=0, lt=100)
    server_reserve_ram_percent: float = Field(20.0, ge=0, lt=100)
    gemini_api_key: SecretStr | None = None

    dev_supabase_url: str | None = None
    dev_supabase_service_key: SecretStr | None = None
    dev_database_url: SecretStr | None = None
    staging_supabase_url: str | None = None
    staging_supabase_service_key: SecretStr | None = None
    staging_database_url: SecretStr | None = None
    prod_supabase_url: str | None = None
    prod_supabase_service_key: SecretStr | None = None
    prod_database_url: SecretStr | None = None

    # --- added by this project (names fixed, defaults tunable) ---
    gemini_model: str = "gemini-3.5-flash"
    gemini_base_url: str = DEFAULT_GEMINI_BASE_URL
    gemini_api_version: str = "v1beta"
    gemini_rpm_limit: int = Field(1600, ge=1)
    gemini_tpm_limit: int = Field(6_400_000, ge=1)
    gemini_rate_window_ms: int = Field(60_000, ge=100)
    gemini_rate_margin_ms: int = Field(1_000, ge=0)
    gemini_timeout_ms: int = Field(300_000, ge=1000)
    gemini_max_output_tokens: int = Field(65_536, ge=256)
    gemini_temperature: float = Field(0.0, ge=0, le=2)
    gemini_tokens_per_page: int = Field(258, ge=1)
    gemini_max_call_attempts: int = Field(4, ge=1, le=20)
    ocr_feed_interval_ms: int = Field(1000, ge=50)
    # Messages per type enqueued beyond the free slots, so a freed slot is refilled at once.
    ocr_feed_lookahead: int = Field(1, ge=0, le=100)
    # Beyond the seed (bench/pipeline.py measures each against the plain rule).
    ocr_allocation_weighting: Literal["count", "time"] = "count"
    ocr_allocation_lend_idle: bool = True
    ocr_allocation_hysteresis: float = Field(0.25, ge=0, le=100)
    ocr_status_interval_ms: int = Field(60_000, ge=100)
    ocr_lease_ms: int = Field(600_000, ge=1000)
    ocr_max_attempts: int = Field(3, ge=1, le=100)
    ocr_index_cpu: float = Field(1.5, ge=0)
    ocr_index_ram_gb: float = Field(0.75, ge=0)
    ocr_acte_cpu: float = Field(1.0, ge=0)
    ocr_acte_ram_gb: float = Field(1.0, ge=0)
    ocr_local_documents_dir: str | None = None
    ocr_max_document_mb: float = Field(50.0, gt=0)
    ocr_max_pages: int = Field(1000, ge=1)
    ocr_pages_per_chunk: int = Field(20, ge=1, le=1000)
    ocr_slot_ttl_ms: int = Field(30_000, ge=1000)
    ocr_heartbeat_interval_ms: int = Field(5_000, ge=100)
    ocr_redis_prefix: str = ""
    ocr_dramatiq_namespace: str = "dramatiq"
    ocr_scheduler_metrics_port: int = Field(9300, ge=0, le=65535)
    ocr_worker_metrics_port: int = Field(9191, ge=0, le=65535)
    ocr_job_time_limit_ms: int = Field(3 * 3_600_000, ge=1000)
    # Checked here: loguru would refuse an unknown level later, with a traceback.
    ocr_log_level: str = Field(
        "INFO", pattern=r"(?i)^(trace|debug|info|success|warning|error|critical)$"
    )
    ocr_log_json: bool = False
    # --- issue 10 (points 6-7): per-host capacity, graceful drain ---
    # This host's name in the capacity registry (server:hosts, per-host counters).
    ocr_host_name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=200)
    # On SIGTERM/Ctrl+C, documents in progress may finish all their chunks for this long (ms).
    ocr_shutdown_grace_ms: int = Field(120_000, ge=0)

    # --- issue 12: safe document fetching ---
    ocr_document_allowed_hosts: str = ""
    ocr_document_fetch_timeout_ms: int = Field(120_000, ge=100)

    @field_validator("ocr_document_allowed_hosts")
    @classmethod
    def _check_allowed_hosts(cls, value: str) -> str:
        from control_plane.queue.fetch_policy import AllowedHosts

        AllowedHosts.parse(value)  # ValueError names the bad entry
        return value

    # --- issue 11: retry timing and circuit breakers ---
    # A document sent back after a transient failure waits base x 2^(attempt-1) (jittered,
    # capped at the max) before it may be claimed again; 0 = at once.
    ocr_retry_base_ms: int = Field(5_000, ge=0)
    ocr_retry_max_ms: int = Field(300_000, ge=0)
    # How often an open circuit breaker (Gemini model, document host) lets one probe through.
    ocr_breaker_probe_ms: int = Field(10_000, ge=100)
    # How often OCR paused by a Gemini configuration error (key, location, model) probes.
    gemini_config_probe_ms: int = Field(60_000, ge=100)

    # --- issue 15: autopilot (OCR_WORKER_POOL_SIZE=auto) and measured slot costs ---
    # With OCR_WORKER_POOL_SIZE=auto the scheduler sizes the pool between these at each
    # rebalance (ocr_worker_pool_size then holds the maximum); a fixed size ignores them.
    ocr_worker_pool_max: int = Field(32, ge=2, le=10_000)
    ocr_worker_pool_min: int = Field(2, ge=1, le=10_000)
    # API usage (requests and tokens of the window vs the limits) the autopilot aims at, in
    # percent (DESIGN.md: the seed's 80% rule).
    ocr_autopilot_api_target: float = Field(80, gt=0, le=100)
    # declared: OCR_INDEX_CPU ... as configured; learned: measured per host and type. Unset:
    # learned with the autopilot (DESIGN.md's default), declared with a fixed pool size, which
    # then behaves exactly as before (issue 15): read it through `capacity_costs`.
    ocr_capacity_costs: Literal["declared", "learned"] | None = None
    _autopilot: bool = PrivateAttr(default=False)

    @property
    def autopilot_api_fraction(self) -> float:
        """OCR_AUTOPILOT_API_TARGET as a fraction of the limits (80 -> 0.8)."""
        return self.ocr_autopilot_api_target / 100

    @model_validator(mode="wrap")
    @classmethod
    def _auto_pool_size(cls, data: Any, handler: ModelWrapValidatorHandler[Settings]) -> Settings:
        """`OCR_WORKER_POOL_SIZE=auto`: the pool size field holds OCR_WORKER_POOL_MAX."""
        auto = False
        if isinstance(data, dict):
            name = next((k for k in data if str(k).lower() == "ocr_worker_pool_size"), None)
            raw = data.get(name) if name is not None else None
            if isinstance(raw, str) and raw.strip().lower() == "auto":
                auto = True
                top = next((k for k in data if str(k).lower() == "ocr_worker_pool_max"), None)
                data = {**data, name: data.get(top, 32) if top is not None else 32}
        settings = handler(data)
        if auto:
            settings._autopilot = True
            mins = settings.ocr_min_index_workers + settings.ocr_min_acte_workers
            if settings.ocr_worker_pool_min > settings.ocr_worker_pool_max:
                raise ValueError(
                    f"OCR_WORKER_POOL_MIN={settings.ocr_worker_pool_min} is above "
                    f"OCR_WORKER_POOL_MAX={settings.ocr_worker_pool_max}"
                )
            if mins > settings.ocr_worker_pool_max:
                raise ValueError(
                    f"OCR_MIN_INDEX_WORKERS + OCR_MIN_ACTE_WORKERS = {mins} is above "
                    f"OCR_WORKER_POOL_MAX={settings.ocr_worker_pool_max}"
                )
        return settings

    @property
    def autopilot(self) -> bool:
        """True when OCR_WORKER_POOL_SIZE=auto (issue 15)."""
        return self._autopilot

    @property
    def capacity_costs(self) -> Literal["declared", "learned"]:
        """OCR_CAPACITY_COSTS, or its default: learned with the autopilot, else declared."""
        if self.ocr_capacity_costs is not None:
            return self.ocr_capacity_costs
        return "learned" if self._autopilot else "declared"

    @property
    def pool_minimum(self) -> int:
        """The smallest size the autopilot may choose: the minimum, and room for the
        per-type minimums."""
        mins = self.ocr_min_index_workers + self.ocr_min_acte_workers
        return min(self.ocr_worker_pool_max, max(self.ocr_worker_pool_min, mins, 1))

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        pool = self.ocr_worker_pool_size
        mins = self.ocr_min_index_workers + self.ocr_min_acte_workers
        if self.ocr_min_index_workers > pool:
            raise ValueError(
                f"OCR_MIN_INDEX_WORKERS={self.ocr_min_index_workers} is above "
                f"OCR_WORKER_POOL_SIZE={pool}"
            )
        if self.ocr_min_acte_workers > pool:
            raise ValueError(
                f"OCR_MIN_ACTE_WORKERS={self.ocr_min_acte_workers} is above "
                f"OCR_WORKER_POOL_SIZE={pool}"
            )
        if mins > pool:
            raise ValueError(
                f"OCR_MIN_INDEX_WORKERS + OCR_MIN_ACTE_WORKERS = {mins} is above "
                f"OCR_WORKER_POOL_SIZE={pool}"
            )
        url = self.redis_url.get_secret_value()
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        # issue 11: relations between settings, URL schemes (control_plane/config_checks.py)
        problem = url_problem(self) or relation_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    # --- derived views ---

    @property
    def environments(self) -> list[EnvironmentConfig]:
        """Configured environments, in dev, staging, prod order."""
        found = []
        for name in ENVIRONMENT_NAMES:
            url = getattr(self, f"{name}_supabase_url")
            key = getattr(self, f"{name}_supabase_service_key")
            db = getattr(self, f"{name}_database_url")
            if url or key or db:
                found.append(EnvironmentConfig(name, url, key, db))
        return found

    @property
    def minimums(self) -> dict[str, int]:
        return {"index": self.ocr_min_index_workers, "acte": self.ocr_min_acte_workers}

    @property
    def slot_costs(self) -> dict[str, tuple[float, float]]:
        """(vCPU, GB) one busy slot of each type costs."""
        return {
            "index": (self.ocr_index_cpu, self.ocr_index_ram_gb),
            "acte": (self.ocr_acte_cpu, self.ocr_acte_ram_gb),
        }

    @property
    def cpu_budget(self) -> float:
        return self.server_max_cpu * (1 - self.server_reserve_cpu_percent / 100)

    @property
    def ram_budget(self) -> float:
        return self.server_max_ram * (1 - self.server_reserve_ram_percent / 100)

    @property
    def secrets(self) -> list[str]:
        """Every secret value, so log sinks can scrub them."""
        values: list[str] = []
        for field in type(self).model_fields:
            value = getattr(self, field)
            if isinstance(value, SecretStr):
                raw = value.get_secret_value()
                values.append(raw)
                values.extend(url_secrets(raw))  # a URL's password, whatever its form
        return [v for v in values if len(v) >= 4]


def _env_name(field: str) -> str:
    return field.upper()


def load_settings(*, require_environment: bool = True, **overrides: Any) -> Settings:
    """Read and validate the configuration; raise ConfigError with one clear line."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    if require_environment and not settings.environments:
        raise ConfigError(
            "no environment configured: set DEV_SUPABASE_URL + DEV_SUPABASE_SERVICE_KEY "
            "or DEV_DATABASE_URL (or the STAGING_/PROD_ equivalents)"
        )
    for env in settings.environments:
        if (env.supabase_url is None) != (env.supabase_service_key is None):
            missing = "SUPABASE_SERVICE_KEY" if env.supabase_service_key is None else "SUPABASE_URL"
            raise ConfigError(
                f"{env.name.upper()}_{missing} is missing: the Supabase URL and service key "
                "go together"
            )
    return settings


def _one_line(exc: ValidationError) -> str:
    """Turn pydantic's report into one line that names the variable, never the value."""
    err = exc.errors(include_input=False, include_url=False)[0]
    loc = err.get("loc") or ()
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if loc:
        return f"{_env_name(str(loc[0]))}: {message}"
    return message  # a relation between settings: the message starts with the variable
