"""Errors of the client libraries at start, as the one line a configuration error gets
(issue 11): `VARIABLE: what went wrong`, scrubbed, never a traceback.

Used where a process builds its clients (the scheduler before it runs, a worker process
at boot): redis-py, psycopg and supabase-py raise their own types with messages that
may quote the URL; this names the variable to check instead.
"""

from __future__ import annotations

from control_plane.errors import ConfigError
from control_plane.urls import redact_text


def _module(exc: BaseException) -> str:
    return type(exc).__module__.split(".")[0]


def start_error_line(exc: BaseException, *, environment: str | None = None) -> str:
    """One line naming the variable for an error raised while building clients (pure)."""
    said = " ".join(redact_text(str(exc)).split())[:300] or type(exc).__name__
    env = (environment or "DEV").upper()
    library = _module(exc)
    if isinstance(exc, ConfigError):
        return str(exc)
    if library == "redis":
        name = type(exc).__name__
        if name == "NoPermissionError":
            return (
                f"REDIS_URL: the Redis user is not allowed what the pool needs ({said}); "
                "grant it +@all on the pool's keys, or at least +@scripting +@read +@write"
            )
        if name == "AuthenticationError":
            return f"REDIS_URL: authentication refused ({said})"
        return f"REDIS_URL: Redis refused the pool at start: {name}: {said}"
    if library in ("psycopg", "psycopg_pool"):
        return f"{env}_DATABASE_URL: {type(exc).__name__}: {said}"
    if library in ("supabase", "postgrest", "storage3", "supabase_auth", "gotrue"):
        return f"{env}_SUPABASE_URL / {env}_SUPABASE_SERVICE_KEY: supabase-py refused them: {said}"
    return f"could not start: {type(exc).__name__}: {said}"


# The library errors a start may raise (anything else is a bug and keeps its traceback).
def start_error_types() -> tuple[type[BaseException], ...]:
    import psycopg
    import redis
    from supabase._sync.client import SupabaseException

    return (ConfigError, redis.RedisError, psycopg.Error, SupabaseException)
