"""The doctor's decisions: values in, ✔/✘ lines out (table tests)."""

from __future__ import annotations

import pytest

from control_plane.console import checks as c

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("policy", "aof", "rdb", "cluster", "expected"),
    [
        ("noeviction", False, "", False, ["ok", "ok", "ok"]),
        ("allkeys-lru", True, "", False, ["fail", "ok", "ok"]),
        ("volatile-ttl", False, "3600 1", False, ["fail", "ok", "ok"]),
        ("noeviction", True, "", True, ["ok", "ok", "fail"]),
        (None, None, None, False, ["skip", "skip", "ok"]),
    ],
)
def test_redis_setup(
    policy: str | None, aof: bool | None, rdb: str | None, cluster: bool, expected: list[str]
) -> None:
    found = c.redis_setup_checks("7.2.4", policy, aof, rdb, cluster)
    assert [x.status for x in found] == expected


def test_persistence_detail_names_what_is_on() -> None:
    found = c.redis_setup_checks("7", "noeviction", True, "3600 1", False)
    assert found[1].detail == "AOF, RDB"
    assert "appendonly yes" in c.redis_setup_checks("7", "noeviction", False, "", False)[1].detail


def test_expected_schema_reads_the_shipped_sql() -> None:
    functions, tables = c.expected_schema(
        [
            "CREATE OR REPLACE FUNCTION ocr_claim(\n p integer)",
            "create or replace function OCR_Errors()",
            "CREATE TABLE IF NOT EXISTS ocr_error_history (id bigint)",
        ]
    )
    assert functions == {"ocr_claim", "ocr_errors"} and tables == {"ocr_error_history"}


@pytest.mark.parametrize(
    ("functions", "tables", "status", "missing"),
    [
        ({"ocr_claim", "ocr_doctor"}, {"extraction_queue"}, "ok", ""),
        ({"ocr_claim"}, {"extraction_queue"}, "fail", "missing ocr_doctor"),
        ({"ocr_claim", "ocr_doctor"}, set(), "fail", "missing extraction_queue"),
    ],
)
def test_migrations(functions: set[str], tables: set[str], status: str, missing: str) -> None:
    present = {"function": functions, "table": tables}
    check = c.migrations_check("dev", present, {"ocr_claim", "ocr_doctor"}, {"extraction_queue"})
    assert check.status == status and missing in check.detail


@pytest.mark.parametrize(
    ("exposed", "roles", "status"),
    [
        ([], False, "ok"),
        ([], True, "ok"),
        (["anon SELECT extraction_queue"], True, "fail"),
        (["authenticated EXECUTE ocr_claim"], True, "fail"),
    ],
)
def test_table_security(exposed: list[str], roles: bool, status: str) -> None:
    check = c.security_check("prod", exposed, roles)
    assert check.status == status
    if status == "fail":
        assert exposed[0] in check.detail and "REVOKE" in check.fix


@pytest.mark.parametrize(
    ("ready", "with_worker", "statuses"),
    [
        ({"index": 3}, {}, ["ok"]),
        ({"index": 3}, {"index": 1}, ["fail"]),
        ({"index": 3, "registre": 2}, {}, ["ok", "fail"]),
    ],
)
def test_ready_rows(
    ready: dict[str, int], with_worker: dict[str, int], statuses: list[str]
) -> None:
    assert [x.status for x in c.ready_rows_checks("dev", ready, with_worker)] == statuses


SLOTS = {"ocr-worker-1": "index", "ocr-worker-2": "acte"}
ANY = {"w1": {"types": None}}


@pytest.mark.parametrize(
    ("ready", "assignments", "workers", "expected"),
    [
        ({"index": 0, "acte": 0}, {}, {}, ["ok", "ok"]),
        ({"index": 5, "acte": 2}, SLOTS, ANY, ["ok", "ok"]),
        ({"index": 5, "acte": 2}, {}, ANY, ["fail", "fail"]),
        ({"index": 5, "acte": 2}, {"ocr-worker-1": "index"}, ANY, ["ok", "fail"]),
        ({"index": 5, "acte": 2}, SLOTS, {"w1": {"types": ["index"]}}, ["ok", "fail"]),
        ({"index": 5, "acte": 0}, SLOTS, {"w1": {"types": ["acte"]}}, ["fail", "ok"]),
        ({"index": 5, "acte": 2}, SLOTS, {}, ["fail", "fail"]),
    ],
)
def test_coverage(
    ready: dict[str, int],
    assignments: dict[str, str],
    workers: dict[str, dict[str, object]],
    expected: list[str],
) -> None:
    assert [x.status for x in c.coverage_checks(ready, assignments, workers)] == expected


@pytest.mark.parametrize(
    ("registered", "status"), [(0, "fail"), (3, "fail"), (4, "ok"), (6, "ok"), (10, "ok")]
)
def test_threads(registered: int, status: str) -> None:
    assert c.threads_check(4, 1, registered).status == status


def test_clock_skews_keep_the_worst_per_host() -> None:
    workers = {
        "a1": {"host": "a", "clock_ms": 1_000, "last_heartbeat_ms": 1_010},
        "a2": {"host": "a", "clock_ms": 5_000, "last_heartbeat_ms": 1_000},
        "b1": {"host": "b", "clock_ms": 1_000, "last_heartbeat_ms": 1_000},
        "old": {"host": "c", "last_heartbeat_ms": 1_000},  # no clock: an older worker
    }
    assert c.clock_skews(workers) == {"a": 4_000, "b": 0}


@pytest.mark.parametrize(
    ("skews", "status"),
    [({}, "ok"), ({"a": 150, "b": -900}, "ok"), ({"a": 150, "b": -2_500}, "fail")],
)
def test_clock_check(skews: dict[str, int], status: str) -> None:
    check = c.clock_check(skews)
    assert check.status == status
    if status == "fail":
        assert "b -2.5s" in check.detail and "NTP" in check.fix


def test_headroom_at_the_seeds_80_percent() -> None:
    found = c.headroom_checks((12, 1600), (180_000, 6_400_000), 0, (5.5, 6.4), (3.25, 12.8))
    statuses = {x.name: x.status for x in found}
    assert statuses == {
        "Gemini RPM headroom": "ok",
        "Gemini TPM headroom": "ok",
        "CPU headroom": "fail",  # 85.9%: the seed's own example is above its alert line
        "RAM headroom": "ok",
        "Gemini cooldown": "ok",
    }
    tpm = next(x for x in found if x.name == "Gemini TPM headroom")
    assert tpm.detail == "180,000 / 6,400,000 (2.8%)"
    cooling = c.headroom_checks((0, 1), (0, 1), 4_000, (0, 1), (0, 1))
    assert cooling[-1].status == "fail" and "4.0s" in cooling[-1].detail


@pytest.mark.parametrize(
    ("status", "message", "verdict", "word"),
    [
        (200, "", "ok", "answered"),
        (None, "ConnectError", "fail", "unreachable"),
        (400, "API key not valid. Please pass a valid API key.", "fail", "key refused"),
        (403, "Method doesn't allow unregistered callers", "fail", "key refused"),
        (404, "models/x is not found", "fail", "not found"),
        (500, "internal", "fail", "HTTP 500"),
    ],
)
def test_gemini(status: int | None, message: str, verdict: str, word: str) -> None:
    check = c.gemini_check("gemini-x", status, message)
    assert check.status == verdict and word in check.detail


def test_lines_and_exit() -> None:
    good, bad, skipped = c.ok("a", "fine"), c.fail("b", "broken", "do this"), c.skip("c", "n/a")
    assert good.line() == "✔ a: fine"
    assert bad.line() == "✘ b: broken\n    fix: do this"
    assert skipped.line() == "- c: n/a"
    assert c.passed([good, skipped]) and not c.passed([good, bad])
