"""The limiter under real contention: many OS processes, one Redis, short windows."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from control_plane.keys import Keys
from control_plane.rate_limiter import GeminiRateLimiter, peak_window_load
from control_plane.redis_conn import redis_client
from tests.support.limiter_load import LoadSpec, run_load

pytestmark = pytest.mark.integration

WINDOW_MS = 2_000
WINDOW_US = WINDOW_MS * 1000
SPAWN_LEAD_S = 2.0  # spawned children import the project before the common start time


def _spec(
    url: str, keys: Keys, rpm: int, tpm: int, seconds: float, tokens: tuple[int, ...]
) -> LoadSpec:
    start = time.time() + SPAWN_LEAD_S
    return LoadSpec(url, keys.prefix, rpm, tpm, WINDOW_MS, start, start + seconds, tokens)


def _per_window(events: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(requests, tokens) per whole window from the first grant; the last partial one dropped."""
    first = min(at for at, _ in events)
    last = max(at for at, _ in events)
    windows = []
    k = 0
    while first + (k + 1) * WINDOW_US <= last:
        inside = [
            t for at, t in events if first + k * WINDOW_US <= at < first + (k + 1) * WINDOW_US
        ]
        windows.append((len(inside), sum(inside)))
        k += 1
    return windows


class LogSizeWatcher(threading.Thread):
    """Samples the sliding log's size while the load runs (memory must stay bounded)."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        super().__init__(daemon=True)
        self.client, self.key = client, key
        self.sizes: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.sizes.append(int(self.client.zcard(self.key)))


def test_eight_processes_never_over_admit_either_window(
    redis_url: str, redis_client, keys: Keys
) -> None:
    rpm, tpm = 40, 40_000
    spec = _spec(redis_url, keys, rpm, tpm, 4 * WINDOW_MS / 1000, (50, 200, 500, 1500, 4000))
    watcher = LogSizeWatcher(redis_client, keys.limiter_log)
    watcher.start()
    try:
        results = run_load([(spec, seed) for seed in range(8)])
    finally:
        watcher.done.set()
        watcher.join()
    events = [event for grants in results for event in grants]
    peak_req, peak_tok = peak_window_load(events, WINDOW_US)

    assert sum(1 for grants in results if grants) >= 6, "most processes should have been served"
    assert len(events) >= 2 * rpm, (
        f"the run should span several full windows, got {len(events)} grants"
    )
    assert peak_req <= rpm, f"some {WINDOW_MS} ms window admitted {peak_req} requests > RPM {rpm}"
    assert peak_tok <= tpm, f"some {WINDOW_MS} ms window admitted {peak_tok} tokens > TPM {tpm}"
    assert watcher.sizes and max(watcher.sizes) <= rpm, (
        f"the log held {max(watcher.sizes)} entries, more than the grants one window allows"
    )


@pytest.mark.parametrize(
    ("rpm", "tpm", "tokens", "binding"),
    [
        pytest.param(60, 1_000_000, (10, 20), "rpm", id="small-requests-rpm-binds"),
        pytest.param(10_000, 6_000, (100, 250, 400), "tpm", id="tokens-bind"),
    ],
)
def test_saturated_limiter_uses_its_budget(
    redis_url: str, keys: Keys, rpm: int, tpm: int, tokens: tuple[int, ...], binding: str
) -> None:
    spec = _spec(redis_url, keys, rpm, tpm, 4 * WINDOW_MS / 1000, tokens)
    events = [event for grants in run_load([(spec, seed) for seed in range(8)]) for event in grants]
    # Window 0 runs at the restart fraction (a brand-new limiter has no epoch yet): skip it.
    windows = _per_window(events)[1:]
    assert len(windows) >= 2, f"expected several full windows, got {windows}"
    if binding == "rpm":
        worst = min(requests for requests, _ in windows)
        assert worst >= 0.95 * rpm, (
            f"admitted {worst} requests in a window, below 95% of RPM {rpm}: {windows}"
        )
    else:
        worst = min(used for _, used in windows)
        assert worst >= 0.90 * tpm, (
            f"admitted {worst} tokens in a window, below 90% of TPM {tpm}: {windows}"
        )


def test_large_request_is_not_starved_by_a_stream_of_small_ones(redis_url: str, keys: Keys) -> None:
    rpm, tpm = 10_000, 10_000
    spec = _spec(redis_url, keys, rpm, tpm, 5 * WINDOW_MS / 1000, (100, 200, 300, 400))
    outcome: dict[str, object] = {}

    def large_request() -> None:
        # Join once the small stream has saturated the budget at full (post-restart) limits.
        time.sleep(max(0.0, spec.start_at + 1.5 * WINDOW_MS / 1000 - time.time()))
        client = redis_client(redis_url)
        limiter = GeminiRateLimiter(
            client, rpm_limit=rpm, tpm_limit=tpm, window_ms=WINDOW_MS, keys=keys
        )
        seconds, micros = client.time()
        outcome["asked_us"] = seconds * 1_000_000 + micros
        outcome["usage_when_asked"] = limiter.usage()
        outcome["grant"] = limiter.acquire(int(0.4 * tpm), timeout=4 * WINDOW_MS / 1000)
        client.close()

    big = threading.Thread(target=large_request)
    big.start()
    run_load([(spec, seed) for seed in range(8)])
    big.join()

    grant = outcome.get("grant")
    assert grant is not None, "the large request was never admitted"
    _, used = outcome["usage_when_asked"]  # type: ignore[misc]
    assert used > 0.6 * tpm, f"the small stream should have saturated TPM when asked, used {used}"
    waited_us = grant.granted_at_us - outcome["asked_us"]  # type: ignore[attr-defined,operator]
    assert waited_us <= 2 * WINDOW_US, (
        f"the 40% request waited {waited_us / 1e6:.2f} s > two windows"
    )
