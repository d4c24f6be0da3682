"""Fixtures for end-to-end runs: a fresh database, a Gemini emulator, a pool harness."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.emulator import EmulatorProcess
from tests.support.pool import PoolHarness, fresh_pool, quota_emulator


@pytest.fixture
def emulator() -> Iterator[EmulatorProcess]:
    with quota_emulator(latency_ms=80, latency_jitter_ms=20) as emu:
        yield emu


@pytest.fixture
def pool(
    pg_database_factory: Callable[[str], str],
    redis_url: str,
    emulator: EmulatorProcess,
    tmp_path: Path,
) -> Iterator[PoolHarness]:
    with fresh_pool(pg_database_factory("e2e"), redis_url, emulator.url, tmp_path) as harness:
        yield harness
