"""Fixtures for end-to-end runs: a fresh database, a Gemini emulator, a pool harness."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.queue.migrate import apply_schema
from tests.support.emulator import EmulatorProcess, start_emulator
from tests.support.pool import TEST_API_KEY, PoolHarness, pool_harness

# The pool's limiter runs a little under the emulator's quota: grants leave Redis
# and reach the emulator a few milliseconds apart, as with the real API.
WINDOW_MS = 2000
POOL_RPM, POOL_TPM = 30, 60_000
EMULATOR_RPM, EMULATOR_TPM = 32, 64_000


@pytest.fixture
def emulator() -> Iterator[EmulatorProcess]:
    with start_emulator(
        api_key=TEST_API_KEY,
        rpm_limit=EMULATOR_RPM,
        tpm_limit=EMULATOR_TPM,
        window_s=WINDOW_MS / 1000,
        latency_ms=80,
        latency_jitter_ms=20,
    ) as emu:
        yield emu


@pytest.fixture
def pool(
    pg_database_factory,
    redis_url: str,
    emulator: EmulatorProcess,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> Iterator[PoolHarness]:
    dsn = pg_database_factory("e2e")
    apply_schema(dsn)
    with pool_harness(dsn, redis_url, emulator.url, tmp_path) as harness:
        harness.settings_env.update(
            {
                "GEMINI_RATE_WINDOW_MS": str(WINDOW_MS),
                "GEMINI_RPM_LIMIT": str(POOL_RPM),
                "GEMINI_TPM_LIMIT": str(POOL_TPM),
            }
        )
        yield harness
