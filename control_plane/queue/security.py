"""Is the queue open to Supabase's API roles? The check `migrate` and the doctor run.

On Supabase, `anon` (the public key) and `authenticated` reach every table of `public`
through the REST API, and the project's default privileges grant them ALL on new tables.
The migration locks down the tables it creates (001_schema.sql). On a table that existed
before, it changes nothing of the owner's choices: `check_security` lists the exact
statements that would close it, and `migrate` prints them as warnings.

`security_statements` is the pure decision; `check_security` reads the catalog.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from control_plane.errors import PermanentError, TransientError
from control_plane.queue.pooler import check_dsn, libpq_dsn, safe_db_error

API_ROLES = ("anon", "authenticated")
TABLES = ("extraction_queue", "ocr_status", "ocr_schema_migrations", "ocr_leader_fence")
FUNCTIONS = (
    "ocr_claim",
    "ocr_start",
    "ocr_renew",
    "ocr_complete",
    "ocr_fail",
    "ocr_release",
    "ocr_reap",
    "ocr_counts",
)


@dataclass(frozen=True)
class TableFacts:
    """What the catalog says about one table."""

    name: str
    rls_enabled: bool
    roles_with_privileges: tuple[str, ...] = ()  # API roles holding any privilege
    sequences_open: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (sequence, roles)


@dataclass(frozen=True)
class SecurityFacts:
    tables: tuple[TableFacts, ...] = ()
    # function signature -> API roles (or PUBLIC) that may execute it
    functions_open: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def security_statements(facts: SecurityFacts) -> list[str]:
    """Pure: the statements that close the queue to the API roles (empty = closed)."""
    out: list[str] = []
    for t in facts.tables:
        if not t.rls_enabled:
            out.append(f"ALTER TABLE public.{t.name} ENABLE ROW LEVEL SECURITY;")
        if t.roles_with_privileges:
            out.append(
                f"REVOKE ALL ON TABLE public.{t.name} FROM {_grantees(t.roles_with_privileges)};"
            )
        for seq, roles in t.sequences_open:
            out.append(f"REVOKE ALL ON SEQUENCE {seq} FROM {_grantees(roles)};")
    for signature, roles in sorted(facts.functions_open.items()):
        out.append(f"REVOKE ALL ON FUNCTION public.{signature} FROM {_grantees(roles)};")
    return out


def _grantees(roles: Iterable[str]) -> str:
    """PUBLIC first: a privilege granted to PUBLIC reaches every role."""
    return ", ".join(["PUBLIC", *roles])


def _present_roles(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(API_ROLES),)
    ).fetchall()
    return [r for r in API_ROLES if (r,) in rows]


_PRIVILEGE_CHECKS = {
    "table": "has_table_privilege(%s, %s, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES')",
    "sequence": "has_sequence_privilege(%s, %s, 'USAGE,SELECT,UPDATE')",
}


def _privileged(
    conn: psycopg.Connection[Any], obj: str, roles: Iterable[str], kind: str
) -> tuple[str, ...]:
    check = _PRIVILEGE_CHECKS[kind]
    found = []
    for role in roles:
        if conn.execute(f"SELECT {check}", (role, obj)).fetchone() == (True,):
            found.append(role)
    return tuple(found)


def read_facts(conn: psycopg.Connection[Any]) -> SecurityFacts:
    """The catalog facts of the queue's tables and functions (thin shell)."""
    roles = _present_roles(conn)
    tables: list[TableFacts] = []
    for name in TABLES:
        row = conn.execute(
            "SELECT c.oid::regclass::text, c.relrowsecurity FROM pg_class c"
            " WHERE c.oid = to_regclass(%s)",
            (name,),
        ).fetchone()
        if row is None:
            continue
        seqs = []
        owned = conn.execute(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(s.relname)"
            " FROM pg_depend d JOIN pg_class s ON s.oid = d.objid"
            " JOIN pg_namespace n ON n.oid = s.relnamespace"
            " WHERE d.refobjid = to_regclass(%s) AND d.classid = 'pg_class'::regclass"
            " AND s.relkind = 'S' AND d.deptype IN ('a', 'i') ORDER BY 1",
            (name,),
        ).fetchall()
        for (seq,) in owned:
            open_roles = _privileged(conn, seq, roles, "sequence")
            if open_roles:
                seqs.append((seq, open_roles))
        tables.append(
            TableFacts(name, bool(row[1]), _privileged(conn, name, roles, "table"), tuple(seqs))
        )
    functions: dict[str, tuple[str, ...]] = {}
    fn_rows = conn.execute(
        "SELECT p.oid, p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'"
        " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'public' AND p.proname = ANY(%s)",
        (list(FUNCTIONS),),
    ).fetchall()
    for oid, signature in fn_rows:
        fn_roles = [
            r
            for r in roles
            if conn.execute(
                "SELECT has_function_privilege(%s, %s::oid, 'EXECUTE')", (r, oid)
            ).fetchone()
            == (True,)
        ]
        if fn_roles:
            functions[str(signature)] = tuple(fn_roles)
    return SecurityFacts(tuple(tables), functions)


def check_security(dsn: str) -> list[str]:
    """The statements to run so that anon/authenticated cannot reach the queue ([] = fine).

    Only meaningful where the Supabase API roles exist: elsewhere (plain PostgreSQL) it
    returns [] without looking further.
    """
    check_dsn(dsn)
    try:
        with psycopg.connect(libpq_dsn(dsn), connect_timeout=10, prepare_threshold=None) as conn:
            if not _present_roles(conn):
                return []
            return security_statements(read_facts(conn))
    except psycopg.OperationalError as exc:
        raise TransientError(f"database unreachable: {safe_db_error(exc, dsn)}") from exc
    except psycopg.Error as exc:
        raise PermanentError(f"security check failed: {safe_db_error(exc, dsn)}") from exc
