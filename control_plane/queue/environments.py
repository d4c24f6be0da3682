"""Every configured environment's queue, seen as one: summed counts, fair claims.

Each environment (dev, staging, prod) has its own store: `PostgresStore` when its
`*_DATABASE_URL` is set, else `SupabaseStore`. Claims are spread across
environments round-robin with a rotating start, so a large backlog in one cannot
starve another; each claimed document carries its environment's name so its
result goes back to the right database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from control_plane.errors import ConfigError, PermanentError, TransientError
from control_plane.logs import log_event
from control_plane.queue.health import EnvironmentHealth
from control_plane.queue.models import ClaimedDocument, QueueCounts, ReapResult
from control_plane.queue.postgres import PostgresStore
from control_plane.queue.store import QueueStore
from control_plane.queue.supabase import SupabaseStore

if TYPE_CHECKING:
    from control_plane.config import EnvironmentConfig, Settings


def fair_shares(limit: int, names: Sequence[str], start: int) -> list[tuple[str, int]]:
    """Split `limit` claims over environments, visiting them from `start` (rotating).

    Every environment gets `limit // n`; the remainder goes one each to the first
    environments in visiting order, so over successive calls it rotates.
    """
    if limit <= 0 or not names:
        return []
    n = len(names)
    order = [names[(start + i) % n] for i in range(n)]
    base, extra = divmod(limit, n)
    shares = [(name, base + (1 if i < extra else 0)) for i, name in enumerate(order)]
    return [(name, share) for name, share in shares if share > 0]


def store_for(env: EnvironmentConfig) -> QueueStore:
    """The store of one environment: direct Postgres when configured, else Supabase."""
    if env.database_url is not None:
        return PostgresStore(env.name, env.database_url.get_secret_value())
    if env.supabase_url and env.supabase_service_key is not None:
        key = env.supabase_service_key.get_secret_value()
        return SupabaseStore(env.name, env.supabase_url, key)
    raise PermanentError(f"{env.name}: neither a database URL nor a Supabase URL and key")


class Environments:
    """All configured stores; the scheduler's single view of the queue."""

    def __init__(
        self,
        stores: Mapping[str, QueueStore],
        storage: Mapping[str, SupabaseStore] | None = None,
    ) -> None:
        self._stores = dict(stores)
        self._storage = dict(storage or {})
        self.names: list[str] = list(self._stores)
        self._next_start = 0
        self._lock = threading.Lock()
        self.health = EnvironmentHealth()

    @classmethod
    def from_settings(cls, settings: Settings) -> Environments:
        """One store per configured environment (Postgres when DATABASE_URL is set)."""
        stores: dict[str, QueueStore] = {}
        storage: dict[str, SupabaseStore] = {}
        from control_plane.start_errors import start_error_line, start_error_types

        for env in settings.environments:
            try:
                store = store_for(env)
            except start_error_types() as exc:  # one line naming the variable (issue 11)
                raise ConfigError(start_error_line(exc, environment=env.name)) from None
            stores[env.name] = store
            if isinstance(store, SupabaseStore):
                storage[env.name] = store
            elif env.supabase_url and env.supabase_service_key is not None:
                # Queue over Postgres, documents still in Supabase Storage.
                storage[env.name] = SupabaseStore(
                    env.name, env.supabase_url, env.supabase_service_key.get_secret_value()
                )
        return cls(stores, storage)

    def store(self, name: str) -> QueueStore:
        """The store of one environment (KeyError names the unknown environment)."""
        try:
            return self._stores[name]
        except KeyError:
            raise KeyError(f"unknown environment {name!r}; configured: {self.names}") from None

    def storage(self, name: str) -> SupabaseStore | None:
        """The Supabase client of an environment, for Storage downloads (None if none)."""
        return self._storage.get(name)

    def _failed(self, name: str) -> None:
        self.health.failed(name, time.monotonic())

    def _reached(self, name: str) -> None:
        self.health.reached(name, time.monotonic())

    def counts_by_environment(self) -> dict[str, dict[str, QueueCounts]]:
        """Counts per environment; an unreachable environment is logged and left out."""
        result: dict[str, dict[str, QueueCounts]] = {}
        for name, store in self._stores.items():
            try:
                result[name] = store.counts()
            except TransientError as exc:
                self._failed(name)
                log_event("queue.counts_unavailable", str(exc), level="WARNING", environment=name)
            else:
                self._reached(name)
        return result

    def counts(self) -> dict[str, QueueCounts]:
        """Ready and in-flight per document type, summed over environments."""
        total: dict[str, QueueCounts] = {}
        for per_type in self.counts_by_environment().values():
            for source, counts in per_type.items():
                total[source] = total.get(source, QueueCounts()) + counts
        return total

    def claim_fair(
        self, document_source: str, limit: int, worker_id: str, lease_ms: int
    ) -> list[ClaimedDocument]:
        """Claim up to `limit` documents spread fairly over environments.

        First each environment gets its share (rotating who gets the remainder);
        what an environment could not fill is offered to the others that still
        had work. An unreachable environment is skipped; if all of them failed,
        TransientError.
        """
        with self._lock:
            start = self._next_start
            self._next_start = (self._next_start + 1) % max(len(self.names), 1)
        claimed: list[ClaimedDocument] = []
        active = list(self.names[start:] + self.names[:start])
        failures: list[TransientError] = []
        remaining = limit
        while remaining > 0 and active:
            shares = dict(fair_shares(remaining, active, 0))
            unasked = [name for name in active if name not in shares]
            filled: list[str] = []
            for name, share in shares.items():
                try:
                    got = self._stores[name].claim(document_source, share, worker_id, lease_ms)
                except TransientError as exc:
                    self._failed(name)
                    failures.append(exc)
                    log_event(
                        "queue.claim_unavailable", str(exc), level="WARNING", environment=name
                    )
                    continue
                self._reached(name)
                claimed.extend(got)
                if len(got) == share:
                    filled.append(name)  # may have more
            remaining = limit - len(claimed)
            # Environments not asked this round go first next round (they get the remainder).
            active = unasked + filled
        if not claimed and failures and len(failures) >= len(self.names):
            raise TransientError(f"no environment reachable: {failures[0]}")
        return claimed

    def reap(self, max_attempts: int, *, settle_s: float = 0.0) -> dict[str, ReapResult]:
        """Reap expired leases in every reachable environment.

        An environment whose database failed is skipped until it has answered again for
        `settle_s` seconds (see EnvironmentHealth.unsettled).
        """
        results: dict[str, ReapResult] = {}
        for name, store in self._stores.items():
            if settle_s > 0 and self.health.unsettled(name, settle_s, time.monotonic()):
                continue
            try:
                results[name] = store.reap(max_attempts)
            except TransientError as exc:
                self._failed(name)
                log_event("queue.reap_unavailable", str(exc), level="WARNING", environment=name)
            else:
                self._reached(name)
        return results

    def close(self) -> None:
        seen: set[int] = set()
        for store in [*self._stores.values(), *self._storage.values()]:
            if id(store) not in seen:
                seen.add(id(store))
                store.close()
