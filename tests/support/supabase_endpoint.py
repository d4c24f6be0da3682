"""A small local stand-in for Supabase's REST and Storage APIs, for tests.

`POST /rest/v1/rpc/{fn}` runs `fn(arg => value, ...)` on a real PostgreSQL with the
arguments cast to the function's declared types (as PostgREST does) and answers
with PostgREST's JSON shapes and error mapping. `GET /storage/v1/object/{bucket}/{path}`
serves a file from a directory. Both check the `apikey` and `Authorization` headers.
`inject(status, code, count)` makes the next calls fail, for error-mapping tests.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

_FN_RE = re.compile(r"^/rest/v1/rpc/([a-z_][a-z0-9_]*)$")
_STORAGE_PREFIX = "/storage/v1/object/"


def http_status_for_sqlstate(code: str) -> int:
    """PostgREST's SQLSTATE -> HTTP status mapping (the parts tests rely on)."""
    exact = {
        "P0001": 400,
        "23505": 409,
        "23503": 409,
        "25006": 405,
        "42883": 404,
        "42P01": 404,
        "42501": 403,
    }
    if code in exact:
        return exact[code]
    prefixes = {
        "08": 503,
        "53": 503,
        "54": 413,
        "57": 500,
        "40": 500,
        "25": 500,
        "XX": 500,
        "P0": 500,
        "28": 403,
        "0L": 403,
        "0P": 403,
    }
    return prefixes.get(code[:2], 400)


def _arg(value: Any, declared: str) -> str | None:
    """A JSON argument as PostgREST passes it: a JSON array becomes a SQL array."""
    if value is None:
        return None
    if isinstance(value, list) and declared.endswith("[]"):
        return "{" + ",".join(json.dumps(v) if isinstance(v, str) else str(v) for v in value) + "}"
    if isinstance(value, dict | list):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without NODELAY, Nagle plus the
        # client's delayed ACK adds ~40 ms to every call.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send_json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        key = self.server.service_key
        ok = (
            self.headers.get("apikey") == key
            and self.headers.get("Authorization") == f"Bearer {key}"
        )
        if not ok:
            self._send_json(
                401,
                {"code": "PGRST301", "message": "Invalid API key", "details": None, "hint": None},
            )
        return ok

    def _injected(self) -> bool:
        fault = self.server.take_fault()
        if fault is None:
            return False
        status, code = fault
        self._send_json(
            status,
            {"code": code, "message": f"injected fault {code}", "details": None, "hint": None},
        )
        return True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.server.requests += 1
        if not self._authorized() or self._injected():
            return
        match = _FN_RE.match(self.path.split("?", 1)[0])
        if not match:
            self._send_json(
                404, {"code": "PGRST125", "message": "Invalid path", "details": None, "hint": None}
            )
            return
        try:
            args = json.loads(raw or b"{}")
        except ValueError:
            self._send_json(
                400,
                {
                    "code": "PGRST102",
                    "message": "Empty or invalid json",
                    "details": None,
                    "hint": None,
                },
            )
            return
        status, payload = self.server.call(match.group(1), args)
        self._send_json(status, payload)

    def do_GET(self) -> None:
        self.server.requests += 1
        if not self._authorized() or self._injected():
            return
        path = self.path.split("?", 1)[0]
        if not path.startswith(_STORAGE_PREFIX) or self.server.storage_dir is None:
            self._send_json(
                404, {"statusCode": "404", "error": "not_found", "message": "Not found"}
            )
            return
        root = self.server.storage_dir.resolve()
        target = (root / path[len(_STORAGE_PREFIX) :]).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            # Supabase Storage answers a missing object with 400 and statusCode "404".
            self._send_json(
                400, {"statusCode": "404", "error": "not_found", "message": "Object not found"}
            )
            return
        body = target.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/pdf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, dsn: str, service_key: str, storage_dir: Path | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.service_key = service_key
        self.storage_dir = storage_dir
        self.requests = 0
        self._faults: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._signatures: dict[str, tuple[dict[str, str], bool]] = {}
        self.pool = ConnectionPool(
            dsn,
            min_size=0,
            max_size=24,
            open=False,
            timeout=3.0,
            kwargs={"autocommit": True, "connect_timeout": 3},
        )
        self.pool.open(wait=False)

    def take_fault(self) -> tuple[int, str] | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def inject(self, status: int, code: str, count: int = 1) -> None:
        with self._lock:
            self._faults.extend([(status, code)] * count)

    def _signature(self, conn: psycopg.Connection[Any], fn: str) -> tuple[dict[str, str], bool]:
        """Argument name -> type, and whether the function returns rows (setof/table)."""
        if fn not in self._signatures:
            row = conn.execute(
                "SELECT p.proargnames, p.proargmodes,"
                " array(SELECT format_type(t, NULL) FROM unnest(p.proallargtypes) t),"
                " array(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) t),"
                " p.proretset"
                " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname = 'public' AND p.proname = %s",
                (fn,),
            ).fetchone()
            if row is None:
                raise LookupError(fn)
            names, modes, all_types, in_types, retset = row
            names = names or []
            types = all_types if modes else in_types
            modes = modes or ["i"] * len(names)
            args = {n: t for n, t, m in zip(names, types, modes, strict=False) if m in ("i", "b")}
            self._signatures[fn] = (args, bool(retset))
        return self._signatures[fn]

    def call(self, fn: str, args: dict[str, Any]) -> tuple[int, Any]:
        try:
            with self.pool.connection() as conn:
                try:
                    declared, returns_rows = self._signature(conn, fn)
                except LookupError:
                    return 404, {
                        "code": "PGRST202",
                        "message": f"Could not find the function public.{fn}",
                        "details": None,
                        "hint": None,
                    }
                unknown = set(args) - set(declared)
                if unknown:
                    return 404, {
                        "code": "PGRST202",
                        "message": f"Could not find the function "
                        f"public.{fn}({', '.join(sorted(args))})",
                        "details": None,
                        "hint": None,
                    }
                parts = [
                    sql.SQL("{} => {}::{}").format(
                        sql.Identifier(name), sql.Placeholder(), sql.SQL(declared[name])
                    )
                    for name in args
                ]
                values = [_arg(v, declared[name]) for name, v in args.items()]
                call = sql.SQL("{}({})").format(sql.Identifier(fn), sql.SQL(", ").join(parts))
                if returns_rows:
                    query = sql.SQL(
                        "SELECT coalesce(jsonb_agg(to_jsonb(t)), '[]'::jsonb) FROM {} t"
                    ).format(call)
                else:
                    query = sql.SQL("SELECT to_jsonb({})").format(call)
                result = conn.execute(query, values).fetchone()
                return 200, result[0] if result else None
        except PoolTimeout:
            return 503, {
                "code": "PGRST001",
                "message": "Database client error. Retrying the connection.",
                "details": None,
                "hint": None,
            }
        except psycopg.Error as exc:
            code = exc.sqlstate
            if not code:
                self.pool.check()
                return 503, {
                    "code": "PGRST001",
                    "message": "Database client error. Retrying the connection.",
                    "details": str(exc),
                    "hint": None,
                }
            diag = exc.diag
            return http_status_for_sqlstate(code), {
                "code": code,
                "message": diag.message_primary or str(exc),
                "details": diag.message_detail,
                "hint": diag.message_hint,
            }


class SupabaseEndpoint:
    """A running endpoint: `url`, `service_key`, `inject(...)`, `requests`."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        host, port = server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self.service_key = server.service_key

    def inject(self, status: int, code: str, count: int = 1) -> None:
        """Make the next `count` requests answer `status` with PostgREST error `code`."""
        self._server.inject(status, code, count)

    @property
    def requests(self) -> int:
        return self._server.requests


@contextmanager
def supabase_endpoint(
    dsn: str, *, service_key: str = "test-service-key", storage_dir: Path | None = None
) -> Iterator[SupabaseEndpoint]:
    """Serve the endpoint in a background thread for the duration of the block."""
    server = _Server(dsn, service_key, storage_dir)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="supabase-endpoint",
        daemon=True,
    )
    thread.start()
    try:
        yield SupabaseEndpoint(server)
    finally:
        server.shutdown()
        server.server_close()
        server.pool.close()
        thread.join(timeout=5)
