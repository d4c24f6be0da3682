"""The worker registry: `gemini:workers`, worker id -> JSON state (DESIGN.md section 5).

Each worker heartbeats its host, pid, mode and current document; the heartbeat
time is Redis `TIME` (set inside the script), so stale detection does not depend
on any host's clock. `reap_stale` drops workers that stopped heartbeating.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from control_plane.keys import Keys
from control_plane.logs import log_event
from control_plane.scripts import ScriptSet

_SERVER_FIELDS = frozenset({"last_heartbeat", "last_heartbeat_ms"})


class WorkerRegistry:
    """Heartbeats and stale-worker cleanup for `gemini:workers`."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys
        self._scripts = ScriptSet(client)

    def heartbeat(
        self,
        worker_id: str,
        *,
        host: str,
        pid: int,
        mode: str | None,
        document: str | None,
        **extra: Any,
    ) -> int:
        """Record the worker's state; returns the heartbeat time (Redis-time ms)."""
        if not worker_id:
            raise ValueError("worker_id must not be empty")
        clash = _SERVER_FIELDS.intersection(extra)
        if clash:
            raise ValueError(f"{sorted(clash)} are set from the server's clock")
        state = {"host": host, "pid": pid, "mode": mode, "document": document, **extra}
        beat = self._scripts.run(
            "workers_heartbeat", [self._keys.workers], [worker_id, json.dumps(state, default=str)]
        )
        return int(beat)

    def remove(self, worker_id: str) -> None:
        """Forget a worker (clean shutdown)."""
        self._client.hdel(self._keys.workers, worker_id)

    def get(self, worker_id: str) -> dict[str, Any] | None:
        """One worker's last recorded state, or None."""
        raw = self._client.hget(self._keys.workers, worker_id)
        return None if raw is None else dict(json.loads(raw))

    def all(self) -> dict[str, dict[str, Any]]:
        """Every registered worker: id -> state (host, pid, mode, document, last_heartbeat...)."""
        out: dict[str, dict[str, Any]] = {}
        for key, raw in self._client.hgetall(self._keys.workers).items():
            wid = key.decode() if isinstance(key, bytes) else str(key)
            try:
                out[wid] = dict(json.loads(raw))
            except (ValueError, TypeError):  # a foreign or corrupt entry must not break status
                out[wid] = {"invalid": True}
        return dict(sorted(out.items()))

    def reap_stale(self, max_age_ms: int) -> list[str]:
        """Drop workers whose last heartbeat is older than `max_age_ms`; return their ids."""
        if max_age_ms < 0:
            raise ValueError(f"max_age_ms must be >= 0, got {max_age_ms}")
        removed = self._scripts.run("workers_reap", [self._keys.workers], [max_age_ms])
        ids = [r.decode() if isinstance(r, bytes) else str(r) for r in removed]
        for wid in ids:
            log_event("workers.stale_removed", "no heartbeat", worker=wid, max_age_ms=max_age_ms)
        return ids
