"""The doctor's decisions, as pure functions of what it read: values in, `Check`s out.

Each check is one line of `python scheduler.py doctor`: passed or not, what was
seen, and the fix. The thin shell that gathers the values is `doctor.py`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from control_plane.config import DOCUMENT_TYPES

OK, FAIL, SKIP = "ok", "fail", "skip"
MARKS = {OK: "✔", FAIL: "✘", SKIP: "-"}
CLOCK_SKEW_LIMIT_MS = 2_000  # leases and heartbeats tolerate far more; logs stop lining up
USAGE_ALERT_PERCENT = 80.0  # the seed's recommendation for API, CPU and RAM
SAFE_EVICTION = "noeviction"


@dataclass(frozen=True)
class Check:
    """One line of the doctor: `status` is ok, fail or skip (skip does not fail the run)."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{MARKS[self.status]} {self.name}: {self.detail}"
        if self.status == FAIL and self.fix:
            text += f"\n    fix: {self.fix}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def passed(checks: Iterable[Check]) -> bool:
    """The doctor's exit status: every check passed or was skipped."""
    return all(c.status != FAIL for c in checks)


def ok(name: str, detail: str) -> Check:
    return Check(name, OK, detail)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, FAIL, detail, fix)


def skip(name: str, detail: str) -> Check:
    return Check(name, SKIP, detail)


# --- Redis ---


def redis_setup_checks(
    version: str, policy: str | None, aof: bool | None, rdb: str | None, cluster: bool
) -> list[Check]:
    """Eviction policy, persistence and cluster mode of the Redis the pool uses.

    `policy` / `aof` / `rdb` are None when CONFIG GET is refused (managed Redis).
    """
    checks: list[Check] = []
    if policy is None:
        checks.append(
            skip(
                "Redis eviction policy",
                "CONFIG GET not allowed here; make sure maxmemory-policy is noeviction",
            )
        )
    elif policy == SAFE_EVICTION:
        checks.append(ok("Redis eviction policy", "noeviction"))
    else:
        checks.append(
            fail(
                "Redis eviction policy",
                f"{policy}: under memory pressure Redis would silently drop queued messages, "
                "slot leases or the leader lock",
                "redis-cli CONFIG SET maxmemory-policy noeviction (and in redis.conf)",
            )
        )
    if aof is None and rdb is None:
        checks.append(skip("Redis persistence", "CONFIG GET not allowed here"))
    else:
        kinds = [k for k, on in (("AOF", bool(aof)), ("RDB", bool(rdb))) if on]
        detail = (
            ", ".join(kinds)
            if kinds
            else "none: fine (Redis holds soft state only), but after a restart the queued "
            "messages are gone and their documents wait for their lease (OCR_LEASE_MS) to be "
            "reaped; appendonly yes avoids that"
        )
        checks.append(ok("Redis persistence", detail))
    if cluster:
        checks.append(
            fail(
                "Redis mode",
                "cluster mode: the control plane's Lua scripts touch several keys that a "
                "cluster spreads over slots",
                "use a standalone Redis (or a primary with replicas / Sentinel), not a cluster",
            )
        )
    else:
        checks.append(ok("Redis mode", f"standalone, Redis {version}"))
    return checks


# --- schema and security ---

_FUNCTION_RE = re.compile(r"CREATE\s+OR\s+REPLACE\s+FUNCTION\s+(\w+)", re.I)
_TABLE_RE = re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.I)


def expected_schema(sql_texts: Iterable[str]) -> tuple[set[str], set[str]]:
    """(functions, tables) the shipped SQL files create."""
    functions: set[str] = set()
    tables: set[str] = set()
    for text in sql_texts:
        functions.update(m.lower() for m in _FUNCTION_RE.findall(text))
        tables.update(m.lower() for m in _TABLE_RE.findall(text))
    return functions, tables


def migrations_check(
    env: str, present: Mapping[str, set[str]], functions: set[str], tables: set[str]
) -> Check:
    """Every function and table of the shipped SQL exists in the environment's database."""
    missing = sorted(
        (functions - present.get("function", set())) | (tables - present.get("table", set()))
    )
    if not missing:
        return ok(f"{env}: migrations", f"{len(functions)} functions, {len(tables)} tables")
    return fail(
        f"{env}: migrations",
        f"missing {', '.join(missing)}",
        "python scheduler.py migrate (with *_DATABASE_URL) or apply supabase/migrations "
        "with the Supabase CLI (supabase db push)",
    )


def security_check(env: str, exposed: Iterable[str], api_roles: bool) -> Check:
    """Supabase's API roles must not reach the queue (tables without RLS, functions)."""
    found = sorted(exposed)
    if found:
        shown = ", ".join(found[:6]) + (f" (+{len(found) - 6} more)" if len(found) > 6 else "")
        return fail(
            f"{env}: table security",
            f"reachable with the public keys: {shown}",
            "REVOKE ALL ON extraction_queue FROM anon, authenticated; ALTER TABLE "
            "extraction_queue ENABLE ROW LEVEL SECURITY; then python scheduler.py migrate "
            "(revokes the ocr_* functions)",
        )
    if not api_roles:
        return ok(f"{env}: table security", "no anon/authenticated roles (plain PostgreSQL)")
    return ok(f"{env}: table security", "anon and authenticated cannot reach the queue")


def ready_rows_checks(
    env: str, ready: Mapping[str, int], with_worker: Mapping[str, int]
) -> list[Check]:
    """Ready rows that the seed's rules would leave alone: a worker_id set, an unknown type."""
    checks: list[Check] = []
    held = {t: n for t, n in with_worker.items() if n}
    if held:
        total = sum(held.values())
        per = ", ".join(f"{t} {n}" for t, n in sorted(held.items()))
        checks.append(
            fail(
                f"{env}: ready documents with a worker_id",
                f"{total} ready document(s) carry a worker_id ({per}): another system may "
                "still hold them",
                "once nothing else works on them: UPDATE extraction_queue SET worker_id = NULL "
                "WHERE status_id = 3 AND worker_id IS NOT NULL",
            )
        )
    else:
        checks.append(ok(f"{env}: ready documents with a worker_id", "none"))
    unknown = {t: n for t, n in ready.items() if t not in DOCUMENT_TYPES and n}
    if unknown:
        per = ", ".join(f"{t!r} {n}" for t, n in sorted(unknown.items()))
        checks.append(
            fail(
                f"{env}: ready documents of an unknown type",
                f"{per}: no worker mode takes them (the reaper moves them to ERREUR)",
                "fix document_source at the producer: it must be 'index' or 'acte'",
            )
        )
    return checks


# --- workers and allocation ---


def coverage_checks(
    ready: Mapping[str, int],
    assignments: Mapping[str, str],
    workers: Mapping[str, Mapping[str, Any]],
) -> list[Check]:
    """Per type with ready documents: a slot of that mode and a worker consuming its queue."""
    checks: list[Check] = []
    for t in DOCUMENT_TYPES:
        waiting = ready.get(t, 0)
        name = f"{t} documents can be taken"
        if waiting <= 0:
            checks.append(ok(name, f"no ready {t} document"))
            continue
        slots = sum(1 for mode in assignments.values() if mode == t)
        consumers = sum(1 for w in workers.values() if t in worker_types(w))
        if not assignments:
            checks.append(
                fail(
                    name,
                    f"{waiting:,} ready, but no allocation is published: no slot of any mode",
                    "start python scheduler.py (it publishes the allocation)",
                )
            )
        elif slots == 0:
            checks.append(
                fail(
                    name,
                    f"{waiting:,} ready, but no slot has mode {t} (allocation gives it 0)",
                    f"set OCR_MIN_{t.upper()}_WORKERS >= 1, and make sure python scheduler.py "
                    "runs (it publishes the allocation)",
                )
            )
        elif consumers == 0:
            checks.append(
                fail(
                    name,
                    f"{waiting:,} ready, {slots} slot(s) of mode {t}, but no registered worker "
                    f"thread consumes the ocr-{t} queue",
                    f"start dramatiq actors (without -Q, or with -Q ocr-{t}) with the same "
                    "REDIS_URL and OCR_REDIS_PREFIX",
                )
            )
        else:
            checks.append(
                ok(name, f"{waiting:,} ready, {slots} slot(s), {consumers} worker thread(s)")
            )
    return checks


def worker_types(worker: Mapping[str, Any]) -> list[str]:
    """The types a registered thread takes (heartbeats without the field: every type)."""
    types = worker.get("types")
    if isinstance(types, list) and types:
        return [str(t) for t in types]
    return list(DOCUMENT_TYPES)


def threads_check(pool_size: int, lookahead: int, registered: int) -> Check:
    """Enough worker threads registered for the pool (plus the feed's look-ahead)."""
    wanted = pool_size + 2 * lookahead
    name = "worker threads"
    if registered >= wanted:
        return ok(name, f"{registered} registered for a pool of {pool_size}")
    if registered >= pool_size:
        return ok(
            name,
            f"{registered} registered for a pool of {pool_size} (the feed's look-ahead wants "
            f"{wanted})",
        )
    return fail(
        name,
        f"{registered} registered for a pool of {pool_size}",
        f"start more: dramatiq actors -p P -t T with P x T >= {wanted} across hosts, same "
        "REDIS_URL and OCR_REDIS_PREFIX",
    )


def leader_check(holder: str | None, epoch: int | None) -> Check:
    if holder:
        return ok("scheduler leader", f"{holder} (epoch {epoch if epoch is not None else '?'})")
    return fail(
        "scheduler leader",
        "no scheduler leads: nothing is claimed or rebalanced",
        "start python scheduler.py (run two on two hosts for a hot standby)",
    )


def clock_skews(
    workers: Mapping[str, Mapping[str, Any]],
) -> dict[str, int]:
    """Per host: its clock minus Redis TIME at its last heartbeat (ms), largest per host."""
    skews: dict[str, int] = {}
    for w in workers.values():
        host, clock, server = w.get("host"), w.get("clock_ms"), w.get("last_heartbeat_ms")
        if host is None or clock is None or server is None:
            continue
        skew = int(clock) - int(server)
        if abs(skew) > abs(skews.get(str(host), 0)):
            skews[str(host)] = skew
        skews.setdefault(str(host), skew)
    return skews


def clock_check(skews: Mapping[str, int], limit_ms: int = CLOCK_SKEW_LIMIT_MS) -> Check:
    """Hosts whose clock is more than `limit_ms` off Redis TIME."""
    off = {h: s for h, s in skews.items() if abs(s) > limit_ms}
    name = "host clocks vs Redis TIME"
    if off:
        per = ", ".join(f"{h} {s / 1000:+.1f}s" for h, s in sorted(off.items()))
        return fail(
            name,
            f"off by more than {limit_ms / 1000:g}s: {per} (the limiter uses Redis TIME, but "
            "logs, Postgres lease times and metrics no longer line up)",
            "run NTP on every host (timedatectl set-ntp true, or chrony)",
        )
    if not skews:
        return ok(name, "no host heartbeat carries its clock yet")
    worst = max(skews.values(), key=abs)
    return ok(name, f"{len(skews)} host(s), worst {worst / 1000:+.3f}s")


def headroom_checks(
    rpm: tuple[int, int],
    tpm: tuple[int, int],
    cooldown_ms: int,
    cpu: tuple[float, float],
    ram: tuple[float, float],
    limit_percent: float = USAGE_ALERT_PERCENT,
) -> list[Check]:
    """API, CPU and RAM usage under the seed's 80%, and no Gemini cooldown."""

    def usage(name: str, used: float, limit: float, unit: str, fix: str) -> Check:
        percent = 100.0 * used / limit if limit else 0.0
        detail = f"{_figure(used)} / {_figure(limit)}{unit} ({percent:.1f}%)"
        if percent > limit_percent:
            return fail(name, f"{detail}, above {limit_percent:g}%", fix)
        return ok(name, detail)

    reduce = "reduce OCR_WORKER_POOL_SIZE"
    checks = [
        usage(
            "Gemini RPM headroom",
            rpm[0],
            rpm[1],
            "",
            f"{reduce}, or raise GEMINI_RPM_LIMIT if the project's quota allows",
        ),
        usage(
            "Gemini TPM headroom",
            tpm[0],
            tpm[1],
            "",
            f"{reduce}, or raise GEMINI_TPM_LIMIT if the project's quota allows",
        ),
        usage(
            "CPU headroom",
            cpu[0],
            cpu[1],
            " vCPUs",
            f"{reduce} or raise SERVER_RESERVE_CPU_PERCENT; check OCR_INDEX_CPU / OCR_ACTE_CPU",
        ),
        usage(
            "RAM headroom",
            ram[0],
            ram[1],
            " GB",
            f"{reduce} or raise SERVER_RESERVE_RAM_PERCENT; check OCR_*_RAM_GB",
        ),
    ]
    if cooldown_ms > 0:
        checks.append(
            fail(
                "Gemini cooldown",
                f"every worker paused for {cooldown_ms / 1000:.1f}s more after a 429",
                "lower GEMINI_RPM_LIMIT / GEMINI_TPM_LIMIT under the project's real quota; "
                "check that nothing else uses the same Google Cloud project",
            )
        )
    else:
        checks.append(ok("Gemini cooldown", "none"))
    return checks


def _figure(value: float) -> str:
    """1,600 / 6,400,000 for counts, 5.5 / 12.8 for vCPUs and GB."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.2f}".rstrip("0").rstrip(".")


# --- Gemini ---


def gemini_check(model: str, status: int | None, message: str) -> Check:
    """The answer of models.get (HTTP status, None when unreachable) as the key/model line."""
    name = "Gemini API key and model"
    if status == 200:
        return ok(name, f"{model} answered (models.get, no generation quota used)")
    if status is None:
        return fail(
            name,
            f"endpoint unreachable: {message}",
            "check GEMINI_BASE_URL and the network (proxy, firewall) from this host",
        )
    if status in (401, 403) or (status == 400 and "key" in message.lower()):
        return fail(
            name,
            f"key refused ({status}): {message}",
            "set GEMINI_API_KEY to a valid key of the project (aistudio.google.com/apikey)",
        )
    if status == 404:
        return fail(
            name,
            f"model {model} not found ({message})",
            "set GEMINI_MODEL to a model the key can use (e.g. gemini-2.5-flash)",
        )
    return fail(name, f"HTTP {status}: {message}", "retry later; check GEMINI_BASE_URL")
