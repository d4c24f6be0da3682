"""WorkerRegistry on the real Redis: gemini:workers heartbeats and stale cleanup."""

from __future__ import annotations

import json
import time

import pytest

from control_plane.workers import WorkerRegistry

pytestmark = pytest.mark.integration


def test_heartbeat_records_state_with_server_time(redis_client, keys):
    registry = WorkerRegistry(redis_client, keys)
    sec, usec = redis_client.time()
    before = int(sec) * 1000 + int(usec) // 1000
    beat = registry.heartbeat(
        "host-a:123:1", host="host-a", pid=123, mode="index", document="dev:42", threads=8
    )
    raw = json.loads(redis_client.hget(keys.workers, "host-a:123:1"))
    assert raw["host"] == "host-a" and raw["pid"] == 123 and raw["mode"] == "index"
    assert raw["document"] == "dev:42" and raw["threads"] == 8
    assert raw["last_heartbeat_ms"] == beat and beat >= before
    assert raw["last_heartbeat"].endswith("Z")
    registry.heartbeat("host-a:123:1", host="host-a", pid=123, mode=None, document=None)
    assert registry.get("host-a:123:1")["mode"] is None  # type: ignore[index]
    assert list(registry.all()) == ["host-a:123:1"]
    with pytest.raises(ValueError):
        registry.heartbeat("w", host="h", pid=1, mode=None, document=None, last_heartbeat_ms=0)


def test_reap_stale_drops_only_silent_workers(redis_client, keys):
    registry = WorkerRegistry(redis_client, keys)
    registry.heartbeat("silent", host="h", pid=1, mode="acte", document="d")
    redis_client.hset(keys.workers, "corrupt", "not json")
    time.sleep(0.4)
    registry.heartbeat("alive", host="h", pid=2, mode="index", document=None)
    assert registry.all()["corrupt"] == {"invalid": True}
    assert sorted(registry.reap_stale(200)) == ["corrupt", "silent"]
    assert list(registry.all()) == ["alive"]
    assert registry.reap_stale(60_000) == []
    registry.remove("alive")
    assert registry.all() == {}
