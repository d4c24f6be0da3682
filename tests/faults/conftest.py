"""Fixtures for fault-injection runs: a pool on chosen services, an audit of writes, a report.

Each case builds a `PoolHarness` on a fresh database (the shared PostgreSQL, or a
private cluster it may stop) and a Redis (the shared one, or a private
redis-server it may restart or flush), with short leases and slot TTLs so that
recovery happens within seconds. `audit(dsn)` installs, in the test database
only, a trigger that records every write of a result, so "written once" is
checked on what the database saw. Every case records a row (fault, documents
in/completed, errors, duplicates, quota windows exceeded, recovery seconds) that
is printed as a table at the end of the session and written to
`.pytest_cache/faults-report.json`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.faults.checks import install_audit
from tests.support.emulator import EmulatorProcess
from tests.support.pool import PoolHarness, fresh_pool, quota_emulator

# Short leases so a killed holder's documents come back within seconds.
FAULT_ENV = {
    "OCR_LEASE_MS": "8000",
    "OCR_SLOT_TTL_MS": "3000",
    "OCR_HEARTBEAT_INTERVAL_MS": "500",
    "OCR_FEED_INTERVAL_MS": "200",
    "OCR_REBALANCE_INTERVAL_MS": "1000",
    "OCR_STATUS_INTERVAL_MS": "30000",
}


@dataclass
class FaultReport:
    """One row of the fault table."""

    fault: str
    documents_in: int = 0
    completed: int = 0
    errors: int = 0
    errors_expected: int = 0
    duplicates: int = 0
    quota_windows_exceeded: int = 0
    extra_gemini_calls: int = 0
    extra_calls_allowed: int = 0
    recovery_s: float = 0.0
    notes: str = ""


_REPORTS: list[FaultReport] = []

Reporter = Callable[..., FaultReport]
FaultPool = Callable[[str, str], AbstractContextManager[PoolHarness]]


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[Reporter]:
    """`report(fault=..., ...)` records this case's figures for the session table."""
    made: list[FaultReport] = []

    def make(**fields: Any) -> FaultReport:
        row = FaultReport(**fields)
        made.append(row)
        _REPORTS.append(row)
        print(f"\nFAULT REPORT {json.dumps(asdict(row))}")
        return row

    yield make


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _REPORTS:
        return
    cols = [
        "fault",
        "in",
        "done",
        "errors(exp)",
        "dup",
        "quota>",
        "extra calls(allowed)",
        "recovery s",
        "notes",
    ]
    lines = [
        [
            r.fault,
            str(r.documents_in),
            str(r.completed),
            f"{r.errors}({r.errors_expected})",
            str(r.duplicates),
            str(r.quota_windows_exceeded),
            f"{r.extra_gemini_calls}({r.extra_calls_allowed})",
            f"{r.recovery_s:.1f}",
            r.notes,
        ]
        for r in _REPORTS
    ]
    widths = [max(len(c), *(len(row[i]) for row in lines)) for i, c in enumerate(cols)]
    terminalreporter.section("fault-injection figures")
    terminalreporter.write_line("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in lines:
        terminalreporter.write_line("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    out = Path(config.rootpath) / ".pytest_cache" / "faults-report.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps([asdict(r) for r in _REPORTS], indent=2))


@pytest.fixture
def emulator() -> Iterator[EmulatorProcess]:
    """The emulator with a latency long enough to catch jobs mid-call."""
    with quota_emulator(latency_ms=900, latency_jitter_ms=100) as emu:
        yield emu


@pytest.fixture
def fault_pool(emulator: EmulatorProcess, tmp_path: Path) -> FaultPool:
    """`with fault_pool(dsn, redis_url) as pool:` schema, write audit, short leases."""

    @contextmanager
    def make(dsn: str, redis_url: str) -> Iterator[PoolHarness]:
        with fresh_pool(dsn, redis_url, emulator.url, tmp_path, **FAULT_ENV) as harness:
            install_audit(dsn)
            yield harness

    return make
