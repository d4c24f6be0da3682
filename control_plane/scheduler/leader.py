"""One active scheduler: a lock in Redis with a TTL, renewed while we live.

A standby polls the lock; when the leader dies its lock lapses after
LEADER_LOCK_TTL_MS and the first standby to try takes it (and a new epoch).
"""

from __future__ import annotations

import os
import socket
import uuid

import redis

from control_plane.keys import LEADER_LOCK_TTL_MS, Keys
from control_plane.scripts import ScriptSet


def instance_id() -> str:
    """host:pid:random, unique per scheduler process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class LeaderLock:
    """Acquire/renew/release the scheduler leadership."""

    def __init__(
        self, client: redis.Redis, keys: Keys, owner: str, ttl_ms: int = LEADER_LOCK_TTL_MS
    ) -> None:
        self._client = client
        self._scripts = ScriptSet(client)
        self._keys = keys
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.epoch = 0
        self.is_leader = False

    def try_acquire(self) -> bool:
        """Take the lock if free, renew it if ours; returns whether we lead now."""
        status, epoch = self._scripts.run(
            "leader_acquire",
            [self._keys.leader, self._keys.leader_epoch],
            [self.owner, self.ttl_ms],
        )
        if int(status) == 1:
            self.epoch = int(epoch)
        self.is_leader = int(status) in (1, 2)
        return self.is_leader

    def release(self) -> None:
        if self.is_leader:
            self._scripts.run("leader_release", [self._keys.leader], [self.owner])
        self.is_leader = False

    def holder(self) -> str | None:
        """Who leads now (None when nobody does)."""
        value = self._client.get(self._keys.leader)
        return None if value is None else str(value)
