"""One active scheduler: a lock in Redis with a TTL, renewed while we live.

A standby polls the lock; when the leader dies its lock lapses after
LEADER_LOCK_TTL_MS and the first standby to try takes it (and a new epoch).

Fencing (issue 10). A leader stalled past its TTL (a paused process, a slow
database call, Redis retries) must not act once a standby has taken over:

- `acting()` is true only until a local monotonic deadline: the start of the
  last successful renewal + TTL - LEADER_SAFETY_MARGIN_MS. The lock cannot lapse
  before that deadline, so a leader that cannot renew stops acting before any
  standby can start. The scheduler checks it before each claim, enqueue, publish
  and reap step.
- Writes are also fenced where they happen, for a leader paused between that
  check and the write: the allocation publish and the enqueue scripts check the
  lock owner and epoch in Lua; ocr_claim / ocr_reap carry the epoch and each
  database refuses an epoch below the highest it has seen (ocr_leader_fence).
- The epoch never goes backwards: leader_acquire.lua takes max(counter + 1, Redis
  TIME in milliseconds, `min_epoch`), and `min_epoch` is lifted above any higher
  epoch a database fence reports (a Redis flush without persistence and a clock
  behind). Epochs stay below 2**53 / VERSION_STRIDE for millennia.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

import redis

from control_plane.keys import LEADER_LOCK_TTL_MS, Keys
from control_plane.scripts import ScriptSet

# A leader stops acting this long before its lock could lapse (renewal runs every 2 s).
LEADER_SAFETY_MARGIN_MS = 3_000


def instance_id() -> str:
    """host:pid:random, unique per scheduler process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def lease_deadline(renewal_started: float, ttl_ms: int, margin_ms: int) -> float:
    """Pure: the monotonic time until which a leader renewed at `renewal_started` may act."""
    return renewal_started + max(ttl_ms - margin_ms, 0) / 1000


class LeaderLock:
    """Acquire/renew/release the scheduler leadership."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        owner: str,
        ttl_ms: int = LEADER_LOCK_TTL_MS,
        margin_ms: int = LEADER_SAFETY_MARGIN_MS,
    ) -> None:
        self._client = client
        self._scripts = ScriptSet(client)
        self._keys = keys
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.margin_ms = min(margin_ms, ttl_ms // 2)
        self.epoch = 0
        self.min_epoch = 0  # the next epoch we take is at least this (fences seen)
        self.is_leader = False
        self.valid_until = 0.0  # monotonic; see acting()

    def try_acquire(self) -> bool:
        """Take the lock if free, renew it if ours; returns whether we lead now."""
        started = time.monotonic()
        status, epoch = self._scripts.run(
            "leader_acquire",
            [self._keys.leader, self._keys.leader_epoch],
            [self.owner, self.ttl_ms, max(self.min_epoch, self.epoch + 1 if self.epoch else 0)],
        )
        status = int(status)
        if status == 1 or (status == 2 and int(epoch) != self.epoch):
            self.epoch = int(epoch)
        self.is_leader = status in (1, 2)
        if self.is_leader:
            self.valid_until = lease_deadline(started, self.ttl_ms, self.margin_ms)
        else:
            self.valid_until = 0.0
        return self.is_leader

    def acting(self) -> bool:
        """True while we lead and our lease cannot have lapsed (checked before each action)."""
        return self.is_leader and time.monotonic() < self.valid_until

    def step_down(self, min_epoch: int = 0) -> None:
        """Stop acting now (a fence refused us); the next acquire takes a higher epoch."""
        self.min_epoch = max(self.min_epoch, min_epoch)
        self.valid_until = 0.0
        try:
            self.release()
        except redis.RedisError:
            self.is_leader = False

    def release(self) -> None:
        if self.is_leader:
            self._scripts.run("leader_release", [self._keys.leader], [self.owner])
        self.is_leader = False
        self.valid_until = 0.0

    def holder(self) -> str | None:
        """Who leads now (None when nobody does)."""
        value = self._client.get(self._keys.leader)
        return None if value is None else str(value)
