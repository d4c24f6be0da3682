"""`python scheduler.py doctor`: every check of the seed's Troubleshooting section and ours.

A thin shell: it reads Redis, Gemini (models.get: no generation quota) and each
environment's database, and hands the values to `checks.py`. One line per check,
✔ / ✘ (- when it could not be checked, e.g. Redis down), with the fix under a ✘.
Exit 0 only when nothing failed. Nothing here writes to the queue or to Redis
beyond the limiter's own status refresh; secrets never reach the output.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

import httpx
import psycopg
import redis

from control_plane.config import DOCUMENT_TYPES, EnvironmentConfig, Settings, load_settings
from control_plane.console import checks as c
from control_plane.console.checks import Check
from control_plane.errors import ConfigError
from control_plane.keys import Keys
from control_plane.logs import register_secrets, scrub
from control_plane.queue.migrate import schema_files
from control_plane.redis_conn import describe_redis

TIMEOUT_S = 5.0


def run_doctor(*, as_json: bool, out: TextIO = sys.stdout) -> int:
    """Run every check, print them, return the exit status (0 = all passed)."""
    found = diagnose()
    if as_json:
        payload = {"ok": c.passed(found), "checks": [x.as_dict() for x in found]}
        print(scrub(json.dumps(payload, indent=2, ensure_ascii=False)), file=out)
    else:
        print("OCR pool doctor", file=out)
        for check in found:
            print(scrub(check.line()), file=out)
        failed = sum(1 for x in found if x.status == c.FAIL)
        verdict = "all checks passed" if not failed else f"{failed} check(s) failed"
        print(f"{len(found)} checks: {verdict}", file=out)
    return 0 if c.passed(found) else 1


def diagnose() -> list[Check]:
    """Every check, in the order of the seed's Troubleshooting section, then ours."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        return [
            c.fail(
                "configuration",
                str(exc).removeprefix("configuration: "),
                "set the variable it names in the environment or .env (README: Configuration)",
            )
        ]
    register_secrets(settings.secrets)
    found = [
        c.ok(
            "configuration",
            f"valid; environments {', '.join(e.name for e in settings.environments)}; pool "
            f"{settings.ocr_worker_pool_size}",
        )
    ]
    client, redis_checks = _redis(settings)
    found += redis_checks
    found.append(_gemini(settings))
    ready: dict[str, int] = {}
    for env in settings.environments:
        env_checks, env_ready = _environment(env)
        found += env_checks
        for t, n in env_ready.items():
            ready[t] = ready.get(t, 0) + n
    if client is None:
        found.append(c.skip("workers, clocks and headroom", "not checked: Redis unreachable"))
    else:
        try:
            found += _pool(settings, client, ready)
        except redis.RedisError as exc:
            found.append(
                c.fail("pool state in Redis", f"{type(exc).__name__}: {exc}", "check Redis")
            )
        finally:
            client.close()
    return found


# --- Redis ---


def _redis(settings: Settings) -> tuple[redis.Redis | None, list[Check]]:
    url = settings.redis_url.get_secret_value()
    where = describe_redis(url)
    client = redis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=3, socket_timeout=TIMEOUT_S
    )
    try:
        client.ping()
        info = client.info("server")
        cluster = client.info("cluster").get("cluster_enabled", 0)
    except redis.AuthenticationError:
        client.close()
        return None, [
            c.fail(
                "Redis reachable",
                f"authentication refused by {where}",
                "put the password in REDIS_URL: redis://:PASSWORD@host:port/0",
            )
        ]
    except (redis.RedisError, OSError) as exc:
        client.close()
        return None, [
            c.fail(
                "Redis reachable",
                f"cannot reach Redis at {where} ({type(exc).__name__})",
                "start Redis (redis-cli ping must answer PONG) and check REDIS_URL",
            )
        ]
    found = [c.ok("Redis reachable", f"{where} answers PING")]
    found += c.redis_setup_checks(
        str(info.get("redis_version", "?")),
        _config(client, "maxmemory-policy"),
        _flag(_config(client, "appendonly")),
        _config(client, "save"),
        str(cluster) == "1",
    )
    return client, found


def _config(client: redis.Redis, name: str) -> str | None:
    try:
        values = client.config_get(name)
    except redis.ResponseError:  # CONFIG disabled (managed Redis)
        return None
    value = values.get(name)
    return None if value is None else str(value)


def _flag(value: str | None) -> bool | None:
    return None if value is None else value == "yes"


# --- Gemini ---


def _gemini(settings: Settings) -> Check:
    if settings.gemini_api_key is None:
        return c.fail(
            "Gemini API key and model",
            "GEMINI_API_KEY is not set",
            "set GEMINI_API_KEY in the environment or .env (any value for the emulator)",
        )
    from google import genai
    from google.genai import errors, types

    client = genai.Client(
        api_key=settings.gemini_api_key.get_secret_value(),
        http_options=types.HttpOptions(
            base_url=settings.gemini_base_url,
            api_version=settings.gemini_api_version,
            timeout=int(TIMEOUT_S * 2000),
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )
    try:
        client.models.get(model=settings.gemini_model)
    except errors.APIError as exc:
        return c.gemini_check(settings.gemini_model, exc.code, str(exc.message or exc.status))
    except Exception as exc:  # network: refused, DNS, timeout (httpx or the SDK's wrapper)
        return c.gemini_check(settings.gemini_model, None, type(exc).__name__)
    finally:
        client.close()
    return c.gemini_check(settings.gemini_model, 200, "")


# --- environments ---


def _environment(env: EnvironmentConfig) -> tuple[list[Check], dict[str, int]]:
    """Reachable with its credentials, migrations, table security, ready rows."""
    name = env.name
    if env.database_url is not None:
        rows, problem = _postgres_rows(env.database_url.get_secret_value())
        transport = "PostgreSQL"
    else:
        rows, problem = _supabase_rows(env)
        transport = "Supabase"
    found: list[Check] = []
    if problem is not None:
        status, detail, fix = problem
        if status == "unreachable":
            return [c.fail(f"{name}: reachable", detail, fix)], {}
        found.append(c.ok(f"{name}: reachable", f"{transport} answers with these credentials"))
        found.append(c.fail(f"{name}: migrations", detail, fix))
        return found, {}
    found.append(c.ok(f"{name}: reachable", f"{transport} answers with these credentials"))
    if env.database_url is not None and env.supabase_url and env.supabase_service_key:
        storage = _supabase_credentials(env)
        if storage is not None:
            found.append(storage)
    present: dict[str, set[str]] = {"function": set(), "table": set()}
    exposed: list[str] = []
    ready: dict[str, int] = {}
    with_worker: dict[str, int] = {}
    for kind, item, value in rows:
        if kind in present:
            present[kind].add(item)
        elif kind == "exposed":
            exposed.append(item)
        elif kind == "ready":
            ready[item] = value
        elif kind == "ready_with_worker":
            with_worker[item] = value
    functions, tables = c.expected_schema(text for _, text in schema_files())
    found.append(c.migrations_check(name, present, functions, tables))
    found.append(_security(name, exposed, rows))
    found += c.ready_rows_checks(name, ready, with_worker)
    return found, {t: n for t, n in ready.items() if t in DOCUMENT_TYPES}


def _security(name: str, exposed: list[str], rows: list[tuple[str, str, int]]) -> Check:
    """Issue 14's own check of anon/authenticated privileges (ocr_doctor's 'exposed' rows).

    If control_plane.queue.security (issue 13) is merged, its verdict is the one to show:
    the lead wires it here.
    """
    api_roles = any(kind == "exposed" for kind, _, _ in rows) or _has_api_roles(rows)
    return c.security_check(name, exposed, api_roles)


def _has_api_roles(rows: list[tuple[str, str, int]]) -> bool:
    return any(kind == "api_role" for kind, _, _ in rows)


Problem = tuple[str, str, str]  # ("unreachable" | "migrations", detail, fix)


def _postgres_rows(dsn: str) -> tuple[list[tuple[str, str, int]], Problem | None]:
    try:
        conn = psycopg.connect(dsn, connect_timeout=int(TIMEOUT_S), autocommit=True)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [], (
            "unreachable",
            f"cannot connect: {first}",
            "check *_DATABASE_URL (host, port, user, password, database) and that the "
            "database accepts connections from this host",
        )
    try:
        with conn:
            try:
                found = conn.execute("SELECT kind, name, value FROM ocr_doctor()").fetchall()
            except psycopg.errors.UndefinedFunction:
                return [], _missing_schema(conn)
            except psycopg.errors.UndefinedTable:
                return [], _missing_schema(conn)
            roles = conn.execute(
                "SELECT count(*) FROM pg_roles WHERE rolname IN ('anon', 'authenticated')"
            ).fetchone()
    except psycopg.Error as exc:
        return [], (
            "unreachable",
            f"query failed: {exc.sqlstate}: {str(exc).strip().splitlines()[0]}",
            "check the database user's rights",
        )
    rows = [(str(k), str(n), int(v)) for k, n, v in found]
    if roles and roles[0]:
        rows.append(("api_role", "present", 1))
    return rows, None


def _missing_schema(conn: psycopg.Connection[Any]) -> Problem:
    present = {
        str(r[0])
        for r in conn.execute(
            "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = current_schema() AND proname LIKE 'ocr\\_%'"
            " UNION SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
        ).fetchall()
    }
    functions, tables = c.expected_schema(text for _, text in schema_files())
    missing = sorted((functions | tables) - present)
    return (
        "migrations",
        f"missing {', '.join(missing)}",
        "python scheduler.py migrate (with *_DATABASE_URL) or apply supabase/migrations "
        "with the Supabase CLI (supabase db push)",
    )


def _supabase_post(env: EnvironmentConfig, fn: str) -> httpx.Response:
    assert env.supabase_url and env.supabase_service_key is not None
    key = env.supabase_service_key.get_secret_value()
    return httpx.post(
        f"{env.supabase_url.rstrip('/')}/rest/v1/rpc/{fn}",
        json={},
        headers={"apikey": key, "Authorization": f"Bearer {key}"},
        timeout=TIMEOUT_S,
    )


def _supabase_rows(env: EnvironmentConfig) -> tuple[list[tuple[str, str, int]], Problem | None]:
    try:
        response = _supabase_post(env, "ocr_doctor")
    except httpx.HTTPError as exc:
        return [], (
            "unreachable",
            f"cannot reach {env.supabase_url} ({type(exc).__name__})",
            "check *_SUPABASE_URL and the network from this host",
        )
    if response.status_code in (401, 403):
        return [], (
            "unreachable",
            f"credentials refused (HTTP {response.status_code})",
            "set *_SUPABASE_SERVICE_KEY to the project's service_role key (Settings > API)",
        )
    if response.status_code == 404:
        return [], (
            "migrations",
            "function ocr_doctor not found: the queue's migrations are not applied",
            "apply supabase/migrations with the Supabase CLI (supabase db push)",
        )
    if response.status_code >= 400:
        return [], (
            "unreachable",
            f"HTTP {response.status_code}: {response.text[:200]}",
            "check the Supabase project's status",
        )
    rows = [(str(r["kind"]), str(r["name"]), int(r["value"])) for r in response.json() or []]
    # The service role sees the API roles' privileges; Supabase always has both roles.
    rows.append(("api_role", "present", 1))
    return rows, None


def _supabase_credentials(env: EnvironmentConfig) -> Check | None:
    """Queue over Postgres, documents in Supabase Storage: the key must still be right."""
    try:
        response = _supabase_post(env, "ocr_counts")
    except httpx.HTTPError as exc:
        return c.fail(
            f"{env.name}: Supabase credentials",
            f"cannot reach {env.supabase_url} ({type(exc).__name__})",
            "check *_SUPABASE_URL",
        )
    if response.status_code in (401, 403):
        return c.fail(
            f"{env.name}: Supabase credentials",
            f"refused (HTTP {response.status_code})",
            "set *_SUPABASE_SERVICE_KEY to the project's service_role key",
        )
    return c.ok(f"{env.name}: Supabase credentials", "accepted")


# --- the pool's live state ---


def _pool(settings: Settings, client: redis.Redis, ready: dict[str, int]) -> list[Check]:
    from control_plane.capacity import Capacity
    from control_plane.pool import WorkerPool
    from control_plane.rate_limiter import GeminiRateLimiter
    from control_plane.workers import WorkerRegistry

    keys = Keys(prefix=settings.ocr_redis_prefix)
    holder = client.get(keys.leader)
    epoch = client.get(keys.leader_epoch)
    found = [
        c.leader_check(
            None if holder is None else str(holder), int(epoch) if epoch is not None else None
        )
    ]
    workers = WorkerRegistry(client, keys).all()
    found.append(
        c.threads_check(settings.ocr_worker_pool_size, settings.ocr_feed_lookahead, len(workers))
    )
    pool = WorkerPool.from_settings(client, settings, keys)
    found += c.coverage_checks(ready, pool.assignments(), workers)
    skews = c.clock_skews(workers)
    sec, usec = client.time()
    skews["this host (doctor)"] = int(time.time() * 1000) - (int(sec) * 1000 + int(usec) // 1000)
    found.append(c.clock_check(skews))
    limiter = GeminiRateLimiter.from_settings(client, settings, keys)
    rpm, tpm = limiter.usage()
    cpu, ram = Capacity.from_settings(client, settings, keys).usage()
    found += c.headroom_checks(
        (rpm, settings.gemini_rpm_limit),
        (tpm, settings.gemini_tpm_limit),
        limiter.cooldown_remaining_ms(),
        (cpu, settings.cpu_budget),
        (ram, settings.ram_budget),
    )
    return found
