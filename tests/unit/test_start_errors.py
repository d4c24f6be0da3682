"""Library errors at start become one line naming the variable, without secrets."""

from __future__ import annotations

import psycopg
import pytest
import redis
from supabase._sync.client import SupabaseException

from control_plane.start_errors import start_error_line

pytestmark = pytest.mark.unit

CASES = [
    (
        redis.exceptions.NoPermissionError(
            "this user has no permissions to run the 'evalsha' command"
        ),
        None,
        "REDIS_URL: the Redis user is not allowed",
        "evalsha",
    ),
    (
        redis.AuthenticationError("invalid username-password pair"),
        None,
        "REDIS_URL: authentication refused",
        "invalid username-password pair",
    ),
    (
        redis.ConnectionError("Error 111 connecting to redis://:S3CRET-pw@h:6379"),
        None,
        "REDIS_URL: Redis refused the pool at start: ConnectionError",
        "redis://:***@h:6379",
    ),
    (
        psycopg.OperationalError('connection to "postgresql://u:S3CRET-pw@db/x" failed'),
        "prod",
        "PROD_DATABASE_URL: OperationalError",
        "u:***@db",
    ),
    (
        SupabaseException("Invalid URL"),
        "staging",
        "STAGING_SUPABASE_URL / STAGING_SUPABASE_SERVICE_KEY: supabase-py refused them",
        "Invalid URL",
    ),
]


@pytest.mark.parametrize(("exc", "env", "starts", "holds"), CASES)
def test_start_errors_name_the_variable(exc, env, starts, holds) -> None:
    line = start_error_line(exc, environment=env)
    assert line.startswith(starts), line
    assert holds in line, line
    assert "S3CRET" not in line and "\n" not in line
