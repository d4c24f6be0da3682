"""Supabase's roles and default privileges, recreated on a local PostgreSQL (issue 12).

What a Supabase project has, and what makes a new table in `public` reachable through
its REST API (PostgREST logs in as `authenticator` and switches to `anon` for the public
key, `authenticated` for a user's JWT, `service_role` for the service key):

    CREATE ROLE anon NOLOGIN NOINHERIT;
    CREATE ROLE authenticated NOLOGIN NOINHERIT;
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    CREATE ROLE authenticator LOGIN NOINHERIT;
    GRANT anon, authenticated, service_role TO authenticator;
    -- per database:
    GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
    ALTER DEFAULT PRIVILEGES IN SCHEMA public
        GRANT ALL ON TABLES TO anon, authenticated, service_role;     -- and SEQUENCES, FUNCTIONS

Roles are cluster-wide, so the tests do this on a private cluster (tests/support/pg_server),
never on the shared server. For the tests `service_role` may also log in (`login=True`), so
the pool's PostgresStore and the PostgREST stand-in can connect as it directly.
"""

from __future__ import annotations

import psycopg

API_ROLES = ("anon", "authenticated")
ROLES_SQL = """
CREATE ROLE anon NOLOGIN NOINHERIT;
CREATE ROLE authenticated NOLOGIN NOINHERIT;
CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
CREATE ROLE authenticator LOGIN NOINHERIT;
GRANT anon, authenticated, service_role TO authenticator;
"""
DATABASE_SQL = """
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
"""


def create_supabase_roles(admin_dsn: str, *, service_login: bool = True) -> None:
    """The cluster-wide roles (once per private cluster)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(ROLES_SQL.encode())
        if service_login:
            conn.execute(b"ALTER ROLE service_role LOGIN")


def prepare_supabase_database(dsn: str) -> None:
    """Schema usage and the default privileges, in one database (run as its owner)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(DATABASE_SQL.encode())


def as_role(dsn: str, role: str) -> psycopg.Connection:  # type: ignore[type-arg]
    """A connection acting as `role`, the way PostgREST switches role per request."""
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(f"SET ROLE {role}".encode())
    return conn
