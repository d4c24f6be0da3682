"""Every configured environment's queue, seen as one: summed counts, fair claims.

Each environment (dev, staging, prod) has its own store: `PostgresStore` when its
`*_DATABASE_URL` is set, else `SupabaseStore`. Claims are spread across
environments round-robin with a rotating start kept per document type, so a large
backlog in one cannot starve another and each type rotates on its own; each claimed
document carries its environment's name so its result goes back to the right database.

Isolation (issue 12): every environment is fed, reaped and counted on its own. Any
error of one (transient or permanent, or an unexpected exception) is recorded in
`health` and puts only that environment in back-off; the others go on in the same
pass. During its back-off an environment is skipped without being tried; an
unreachable one is then probed in a background thread (its connect timeout never
stalls the feed), a broken one (answers at once with an error) is retried inline.
`states()` says what each environment is doing, for the status block.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from control_plane.errors import ConfigError, LeaderFencedError, PermanentError, TransientError
from control_plane.logs import log_event
from control_plane.queue.health import CONNECTING, EnvironmentHealth, EnvironmentState
from control_plane.queue.models import ClaimedDocument, QueueCounts, ReapResult
from control_plane.queue.postgres import PostgresStore
from control_plane.queue.store import QueueStore
from control_plane.queue.supabase import SupabaseStore

if TYPE_CHECKING:
    from control_plane.config import EnvironmentConfig, Settings

# How long a caller waits for an environment's first answer before skipping it for now.
FIRST_CONTACT_WAIT_S = 0.5


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
        self._next_start: dict[str, int] = {}  # per document type
        self._lock = threading.Lock()
        self.health = EnvironmentHealth()
        self._probing: set[str] = set()
        # First contact with each environment runs in the background at once, so a hung
        # server costs callers at most FIRST_CONTACT_WAIT_S, once, instead of a timeout.
        self._first_contact: dict[str, threading.Event] = {}
        self._waited: set[str] = set()
        self._closed = False
        for name in self.names:
            done = threading.Event()
            self._first_contact[name] = done
            threading.Thread(
                target=self._probe, args=(name, done), name=f"first-contact-{name}", daemon=True
            ).start()

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

    def wait_first_contact(self, timeout_s: float) -> None:
        """Wait until every environment answered or failed once (bounded; one-shot commands)."""
        deadline = time.monotonic() + timeout_s
        for event in self._first_contact.values():
            event.wait(max(0.0, deadline - time.monotonic()))

    def storage_urls(self) -> list[str]:
        """The Supabase project URLs documents are fetched from (trusted by the fetcher)."""
        return [client.url for client in self._storage.values()]

    def _failed(self, name: str, exc: BaseException, what: str) -> None:
        if self._closed:
            return
        permanent = not isinstance(exc, TransientError)
        text = (
            str(exc)
            if isinstance(exc, TransientError | PermanentError)
            else (f"unexpected {type(exc).__name__}: {exc}")
        )
        text = " ".join(text.removeprefix(f"{name}: ").split())[:200]
        with self._lock:
            delay = self.health.failed(name, time.monotonic(), text, permanent=permanent)
        log_event(
            f"queue.{what}_unavailable",
            f"{name} skipped for {delay:.0f}s: {text}",
            level="WARNING" if not permanent else "ERROR",
            environment=name,
            permanent=permanent,
        )

    def _reached(self, name: str) -> None:
        with self._lock:
            was_failing = self.health.failing(name)
            self.health.reached(name, time.monotonic())
        if was_failing:
            log_event("queue.environment_back", f"{name} answers again", environment=name)

    def _usable(self, name: str) -> bool:
        """Try `name` now? Starts a background probe when an unreachable one is due."""
        first = self._first_contact.get(name)
        if first is not None and not first.is_set():
            # Not answered yet: skipped, the probe goes on in the background. Only the very
            # first caller waits a little (a healthy database answers well within it).
            with self._lock:
                waited = name in self._waited
                self._waited.add(name)
            if waited or not first.wait(FIRST_CONTACT_WAIT_S):
                return False
        with self._lock:
            decision = self.health.decide(name, time.monotonic())
            if decision == "probe" and name not in self._probing:
                self._probing.add(name)
                threading.Thread(
                    target=self._probe, args=(name,), name=f"probe-{name}", daemon=True
                ).start()
        return decision == "try"

    def _probe(self, name: str, first_contact: threading.Event | None = None) -> None:
        try:
            self._stores[name].counts()
        except Exception as exc:  # any failure: stays in back-off, longer
            self._failed(name, exc, "probe")
        else:
            if first_contact is not None:
                self._reached(name)
            else:
                with self._lock:
                    self.health.probe_answered(name)
        finally:
            with self._lock:
                self._probing.discard(name)
            if first_contact is not None:
                first_contact.set()

    def states(self) -> list[EnvironmentState]:
        """Each environment's state (ok / unreachable / broken, why, next try)."""
        now = time.monotonic()
        with self._lock:
            return [
                self.health.state(name, now)
                if self._first_contact[name].is_set()
                else EnvironmentState(name, CONNECTING, "no answer yet")
                for name in self.names
            ]

    def counts_by_environment(self) -> dict[str, dict[str, QueueCounts]]:
        """Counts per environment; one failing or backing off is left out (see states())."""
        result: dict[str, dict[str, QueueCounts]] = {}
        for name, store in self._stores.items():
            if not self._usable(name):
                continue
            try:
                result[name] = store.counts()
            except Exception as exc:  # any error of one environment stays its own
                self._failed(name, exc, "counts")
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
        self,
        document_source: str,
        limit: int,
        worker_id: str,
        lease_ms: int,
        *,
        epoch: int | None = None,
    ) -> list[ClaimedDocument]:
        """Claim up to `limit` documents spread fairly over environments.

        First each environment gets its share (rotating who gets the remainder, per
        type); what an environment could not fill is offered to the others that still
        had work. A failing environment is skipped (any error of one environment stays
        its own); if none could be asked, or all of those asked failed, TransientError
        (the feed backs off). A newer leader's fence (LeaderFencedError) stops the claim
        at once and gives back what this call had claimed before raising.
        """
        with self._lock:
            start = self._next_start.get(document_source, 0)
            self._next_start[document_source] = (start + 1) % max(len(self.names), 1)
        claimed: list[ClaimedDocument] = []
        rotated = list(self.names[start:] + self.names[:start])
        active = [name for name in rotated if self._usable(name)]
        asked = len(active)
        failures: list[str] = []
        try:
            self._claim_rounds(
                claimed, failures, active, limit, document_source, worker_id, lease_ms, epoch
            )
        except BaseException:
            self.give_back(claimed)
            raise
        if not claimed and limit > 0 and (asked == 0 or len(failures) >= asked):
            states = "; ".join(s.describe() for s in self.states() if s.state != "ok")
            raise TransientError(f"no environment reachable: {states or 'none configured'}")
        return claimed

    def _claim_rounds(
        self,
        claimed: list[ClaimedDocument],
        failures: list[str],
        active: list[str],
        limit: int,
        document_source: str,
        worker_id: str,
        lease_ms: int,
        epoch: int | None,
    ) -> None:
        remaining = limit
        while remaining > 0 and active:
            shares = dict(fair_shares(remaining, active, 0))
            unasked = [name for name in active if name not in shares]
            filled: list[str] = []
            for name, share in shares.items():
                try:
                    got = self._stores[name].claim(
                        document_source, share, worker_id, lease_ms, epoch=epoch
                    )
                except LeaderFencedError:
                    raise
                except Exception as exc:  # any error of one environment stays its own
                    self._failed(name, exc, "claim")
                    failures.append(name)
                    continue
                self._reached(name)
                claimed.extend(got)
                if len(got) == share:
                    filled.append(name)  # may have more
            remaining = limit - len(claimed)
            # Environments not asked this round go first next round (they get the remainder).
            active = unasked + filled

    def give_back(self, docs: Sequence[ClaimedDocument]) -> int:
        """Release claimed documents that never started (best effort: a release that fails
        leaves the lease to lapse, and the reaper counts no attempt for it)."""
        released = 0
        for doc in docs:
            try:
                released += bool(self._stores[doc.environment].release(doc.id, doc.lease_token))
            except Exception as exc:  # any failure: the lease lapses instead
                log_event(
                    "queue.give_back_failed",
                    "claimed document not released; its lease will lapse",
                    level="WARNING",
                    document=f"{doc.environment}/{doc.id}",
                    error=type(exc).__name__,
                )
        return released

    def reap(
        self,
        max_attempts: int,
        *,
        settle_s: float = 0.0,
        epoch: int | None = None,
        after_outage_s: float | None = None,
    ) -> dict[str, ReapResult]:
        """Reap expired leases in every reachable environment, each on its own.

        An environment whose database failed is skipped until it has answered again for
        `settle_s` seconds, or as long as its outage lasted plus `after_outage_s` when that
        is shorter (see EnvironmentHealth.unsettled).
        """
        results: dict[str, ReapResult] = {}
        for name, store in self._stores.items():
            if not self._usable(name):
                continue
            if settle_s > 0 and self.health.unsettled(
                name, settle_s, time.monotonic(), after_outage_s=after_outage_s
            ):
                continue
            try:
                results[name] = store.reap(max_attempts, epoch=epoch)
            except LeaderFencedError:
                raise
            except Exception as exc:  # any error of one environment stays its own
                self._failed(name, exc, "reap")
            else:
                self._reached(name)
        return results

    def leader_fence(self, epoch: int, owner: str) -> dict[str, int]:
        """Announce a leader epoch to every reachable database: name -> highest epoch seen."""
        seen: dict[str, int] = {}
        for name, store in self._stores.items():
            if not self._usable(name):
                continue  # known down: its first claim or reap raises the fence
            try:
                seen[name] = store.leader_fence(epoch, owner)
            except Exception as exc:  # any error of one environment stays its own
                self._failed(name, exc, "fence")
            else:
                self._reached(name)
        return seen

    def close(self) -> None:
        self._closed = True  # a probe still running ends quietly
        seen: set[int] = set()
        for store in [*self._stores.values(), *self._storage.values()]:
            if id(store) not in seen:
                seen.add(id(store))
                store.close()
