"""Configuration that cannot work, refused at start (issue 11): pure checks of relations
between settings and of URL schemes. Each problem is one line that starts with the
variable to change."""

from __future__ import annotations

from typing import TYPE_CHECKING

from control_plane.urls import parse_url

if TYPE_CHECKING:
    from control_plane.config import Settings

_URL_SCHEMES: dict[str, tuple[str, ...]] = {
    "supabase_url": ("https", "http"),
    "database_url": ("postgresql", "postgres"),
}


def relation_problem(s: Settings) -> str | None:
    """The first setting that contradicts another, as one line naming it; None if fine."""
    heartbeat, ttl, lease = s.ocr_heartbeat_interval_ms, s.ocr_slot_ttl_ms, s.ocr_lease_ms
    if heartbeat >= ttl:
        return (
            f"OCR_HEARTBEAT_INTERVAL_MS={heartbeat} must be below OCR_SLOT_TTL_MS={ttl}: "
            "every busy slot would lapse between two renewals"
        )
    if ttl >= lease:
        return (
            f"OCR_SLOT_TTL_MS={ttl} must be below OCR_LEASE_MS={lease}: a crashed worker's "
            "document would come back before its slot"
        )
    if s.ocr_job_time_limit_ms < s.gemini_timeout_ms:
        return (
            f"OCR_JOB_TIME_LIMIT_MS={s.ocr_job_time_limit_ms} is below GEMINI_TIMEOUT_MS="
            f"{s.gemini_timeout_ms}: a job could not wait for one Gemini call"
        )
    if s.ocr_retry_base_ms > s.ocr_retry_max_ms:
        return (
            f"OCR_RETRY_BASE_MS={s.ocr_retry_base_ms} is above OCR_RETRY_MAX_MS="
            f"{s.ocr_retry_max_ms}"
        )
    return capacity_problem(s)


def capacity_problem(s: Settings) -> str | None:
    """A type with a minimum whose slots cannot fit this host's budget (it would silently
    get no slot here), or minimums that together do not fit."""
    cpu_budget, ram_budget = s.cpu_budget, s.ram_budget
    total_cpu = total_ram = 0.0
    for kind, minimum in s.minimums.items():
        cpu, ram = s.slot_costs[kind]
        var = f"OCR_{kind.upper()}"
        if minimum > 0 and cpu > cpu_budget:
            return (
                f"{var}_CPU={cpu:g} is above this host's CPU budget ({cpu_budget:g} vCPU = "
                "SERVER_MAX_CPU less SERVER_RESERVE_CPU_PERCENT): no "
                f"{kind} slot could ever run, despite OCR_MIN_{kind.upper()}_WORKERS={minimum}"
            )
        if minimum > 0 and ram > ram_budget:
            return (
                f"{var}_RAM_GB={ram:g} is above this host's RAM budget ({ram_budget:g} GB = "
                "SERVER_MAX_RAM less SERVER_RESERVE_RAM_PERCENT): no "
                f"{kind} slot could ever run, despite OCR_MIN_{kind.upper()}_WORKERS={minimum}"
            )
        total_cpu += minimum * cpu
        total_ram += minimum * ram
    if total_cpu > cpu_budget + 1e-9:
        return (
            f"SERVER_MAX_CPU: the minimum slots (OCR_MIN_*_WORKERS x OCR_*_CPU = "
            f"{total_cpu:g} vCPU) do not fit this host's CPU budget ({cpu_budget:g} vCPU)"
        )
    if total_ram > ram_budget + 1e-9:
        return (
            f"SERVER_MAX_RAM: the minimum slots (OCR_MIN_*_WORKERS x OCR_*_RAM_GB = "
            f"{total_ram:g} GB) do not fit this host's RAM budget ({ram_budget:g} GB)"
        )
    return None


def url_problem(s: Settings) -> str | None:
    """A URL without a scheme, or with one its client cannot use, as one line."""
    checks: list[tuple[str, str | None, tuple[str, ...]]] = [
        ("GEMINI_BASE_URL", s.gemini_base_url, ("https", "http")),
    ]
    for env in ("dev", "staging", "prod"):
        for suffix, schemes in _URL_SCHEMES.items():
            raw = getattr(s, f"{env}_{suffix}")
            value = raw if isinstance(raw, str) or raw is None else raw.get_secret_value()
            checks.append((f"{env.upper()}_{suffix.upper()}", value, schemes))
    redis_problem = _redis_url_problem(s.redis_url.get_secret_value())
    if redis_problem:
        return redis_problem
    for variable, value, schemes in checks:
        if not value:
            continue
        parsed = parse_url(value)
        secret = variable.endswith("_DATABASE_URL")
        if not parsed.has_scheme and secret and _is_libpq_keywords(value):
            continue  # libpq's "host=... dbname=..." form: psycopg takes it as is
        if not parsed.has_scheme:
            if secret:  # never echo a value that may hold a password
                return f"{variable} has no scheme: write it as {schemes[0]}://user:password@host/db"
            return (
                f"{variable} has no scheme: write it as {schemes[0]}://"
                f"{parsed.host or '...'}{parsed.path}"
            )
        if parsed.scheme not in schemes:
            return (
                f"{variable} must start with "
                + " or ".join(f"{x}://" for x in schemes)
                + f" (not {parsed.scheme}://)"
            )
        if not parsed.host and parsed.scheme != "unix":
            return f"{variable} has no host"
    return None


def _is_libpq_keywords(value: str) -> bool:
    """A libpq key=value connection string (`host=db dbname=ocr user=ocr`)."""
    import psycopg.conninfo

    if "=" not in value:
        return False
    try:
        return bool(psycopg.conninfo.conninfo_to_dict(value))
    except psycopg.ProgrammingError:
        return False


def _redis_url_problem(url: str) -> str | None:
    """A REDIS_URL redis-py cannot parse (a port out of range, `db` not a number, an
    unclosed IPv6 bracket...), as one line: it raised a traceback at start (attack a2).
    redis-py's message never holds the URL; it is scrubbed all the same."""
    from redis.connection import parse_url as redis_parse_url

    from control_plane.urls import redact_text

    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None  # Settings says which schemes are accepted
    try:
        redis_parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        said = " ".join(redact_text(str(exc)).split())[:200]
        if " as '" in said:  # urllib quotes the text it could not read as a port
            said = "its port is not a number"
        return f"REDIS_URL is not a valid Redis URL: {said}"
    return None
