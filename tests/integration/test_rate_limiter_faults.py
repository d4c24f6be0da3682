"""The limiter survives SCRIPT FLUSH and a Redis restart (on a private redis-server)."""

from __future__ import annotations

import threading
import time

import pytest

from control_plane.keys import Keys
from control_plane.rate_limiter import GeminiRateLimiter, peak_window_load
from control_plane.redis_conn import redis_client
from tests.support.redis_server import private_redis

pytestmark = [pytest.mark.integration, pytest.mark.faults]

WINDOW_MS = 1_000
RPM = 40


def test_callers_ride_through_script_flush_and_restart_without_errors() -> None:
    keys = Keys(prefix="faults:")
    with private_redis() as server:
        stop = threading.Event()
        grants: list[tuple[int, int]] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def worker() -> None:
            client = redis_client(server.url)
            limiter = GeminiRateLimiter(
                client, rpm_limit=RPM, tpm_limit=1_000_000, window_ms=WINDOW_MS, keys=keys
            )
            try:
                while not stop.is_set():
                    grant = limiter.acquire(10, timeout=30)
                    limiter.settle(grant, 12)
                    with lock:
                        grants.append((grant.granted_at_us, 1))
            except BaseException as exc:  # the test's point: nothing may surface here
                errors.append(exc)
            finally:
                client.close()

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        admin = redis_client(server.url)
        time.sleep(1.5 * WINDOW_MS / 1000)
        admin.script_flush()
        time.sleep(0.5 * WINDOW_MS / 1000)
        flushed_at = len(grants)
        server.stop()
        # Same host, same clock as Redis TIME: grants stamped after this come from the new server.
        restarted_us = int(time.time() * 1_000_000)
        time.sleep(0.3)
        server.start()
        time.sleep(2.5 * WINDOW_MS / 1000)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        admin.close()

    assert not errors, f"errors reached the callers: {errors!r}"
    assert flushed_at > 0 and len(grants) > flushed_at, "grants continued after the faults"
    after = [event for event in grants if event[0] >= restarted_us]
    assert after, "no grant after the restart"
    first_after = min(at for at, _ in after)
    assert first_after >= restarted_us + WINDOW_MS * 1000, (
        "limiters that had seen live state must pause a whole window after losing it, "
        f"but granted {(first_after - restarted_us) / 1000:.0f} ms after the restart"
    )
    # Across the loss too, no sliding window ever held more than the limit.
    peak, _ = peak_window_load(grants, WINDOW_MS * 1000)
    assert peak <= RPM, f"{peak} grants in one window across the restart (limit {RPM})"
