"""The engine's use of the limiter (issue 10 point 8): one FIFO place per chunk call, however long
the wait, and a settle that fails in Redis never fails a chunk Gemini already answered."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from control_plane.config import Settings
from control_plane.gemini.engine import GeminiOcrEngine, make_client
from control_plane.gemini.estimate import TokensPerPage
from control_plane.gemini.prompts import split_pages
from control_plane.keys import Keys
from control_plane.local_services import free_port
from control_plane.queue.pdf import PdfChunk
from control_plane.rate_limiter import GeminiRateLimiter, Grant
from control_plane.samples import sample_document
from tests.support.emulator import DEFAULT_TEST_KEY, EmulatorProcess, emulator_fixture
from tests.support.limiter_load import LoadSpec, run_load

pytestmark = pytest.mark.integration

emulator = emulator_fixture(scope="module")

WINDOW_MS = 1_500
TPM = 1_000


def _settings(**overrides: object) -> Settings:
    values: dict[str, object] = dict(
        gemini_api_key=DEFAULT_TEST_KEY,
        gemini_base_url="http://127.0.0.1:9",  # never called by the FIFO test
        gemini_rpm_limit=1_000,
        gemini_tpm_limit=TPM,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_a_large_request_behind_a_stream_of_small_ones_keeps_its_place_across_slices(
    redis_url: str, redis_client: redis.Redis, keys: Keys
) -> None:
    """A stream of small requests (2 OS processes and 16 threads asking for 50 tokens back to
    back) and the engine asking for 600 with 0.2 s wait slices: granted within about two windows,
    over several slices. (The old engine gave its place up at every slice and rejoined behind
    the stream: with this stream it is not granted within those two windows.)"""
    start = time.time() + 2.0  # spawned children import first
    end = start + 4 * WINDOW_MS / 1000 + 1
    spec = LoadSpec(redis_url, keys.prefix, 1_000, TPM, WINDOW_MS, start, end, (50,))
    stream: list[list[tuple[int, int]]] = []
    loader = threading.Thread(target=lambda: stream.extend(run_load([(spec, s) for s in range(2)])))
    loader.start()
    small = GeminiRateLimiter(
        redis_client, rpm_limit=1_000, tpm_limit=TPM, window_ms=WINDOW_MS, keys=keys
    )

    def small_stream() -> None:
        granted: list[tuple[int, int]] = []
        time.sleep(max(0.0, start - time.time()))
        while time.time() < end:
            granted.append((small.acquire(50, timeout=end - time.time() + 1).granted_at_us, 50))
        stream.append(granted)

    threads = [threading.Thread(target=small_stream) for _ in range(16)]
    for thread in threads:
        thread.start()
    settings = _settings()
    limiter = _CountingLimiter(
        redis_client, rpm_limit=1_000, tpm_limit=TPM, window_ms=WINDOW_MS, keys=keys
    )
    engine = GeminiOcrEngine(
        settings,
        limiter,
        TokensPerPage(redis_client, keys, default=258.0),
        client=make_client(settings),
        wait_slice_s=0.2,
    )
    try:
        # Mid-window: the stream has filled it, and its tokens leave only as it ends.
        time.sleep(max(0.0, start + 1.3 * WINDOW_MS / 1000 - time.time()))
        asked = time.monotonic()
        grant: Any = engine._acquire(600, "pages 1-1", None)
        waited = time.monotonic() - asked
        slices = limiter.cooldown_checks[1:]  # one before the wait, one at every slice
    finally:
        loader.join(timeout=60)
        for thread in threads:
            thread.join(timeout=60)
        engine.close()
    assert stream and sum(len(part) for part in stream) > 20, "the stream was running"
    assert len(slices) >= 2, f"the wait crossed only {len(slices)} slices: not the case under test"
    assert waited <= 2.2 * WINDOW_MS / 1000, f"600 tokens granted after {waited:.2f}s"
    assert isinstance(grant, Grant) and grant.tokens == 600
    assert redis_client.zcard(keys.limiter_waiting) <= 18, "no reservation left behind by slices"


class _CountingLimiter(GeminiRateLimiter):
    """The real limiter, noting when the engine looks at the cooldown (once per wait slice)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cooldown_checks: list[float] = []

    def cooldown_remaining_ms(self) -> int:
        self.cooldown_checks.append(time.monotonic())
        return super().cooldown_remaining_ms()


class _SettleOnDeadRedis(GeminiRateLimiter):
    """The real limiter, but its settle talks to a port where no Redis listens."""

    def settle(self, grant: Grant, actual_tokens: int) -> None:
        dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
        try:
            GeminiRateLimiter(
                dead, rpm_limit=self.rpm_limit, tpm_limit=self.tpm_limit, keys=self.keys
            ).settle(grant, actual_tokens)
        finally:
            dead.close()


def test_a_failed_settle_does_not_fail_an_answered_chunk(
    emulator: EmulatorProcess, redis_client: redis.Redis, keys: Keys
) -> None:
    emulator.reset()
    settings = _settings(gemini_base_url=emulator.url, gemini_tpm_limit=5_000_000)
    limiter = _SettleOnDeadRedis(redis_client, rpm_limit=1_000, tpm_limit=5_000_000, keys=keys)
    with pytest.raises(redis.ConnectionError):  # the failure is real
        limiter.settle(Grant("x", 1, 0), 2)
    engine = GeminiOcrEngine(settings, limiter, TokensPerPage(redis_client, keys, default=258.0))
    doc = sample_document("acte", 7, pages=2)
    try:
        result = engine.ocr_chunks("acte", [PdfChunk(1, 2, 2, doc.pdf)])
    finally:
        engine.close()
    assert list(split_pages(result.text)) == [1, 2]
    assert result.calls == 1, "answered once, not retried because of the settle"
    assert limiter.usage()[0] == 1
