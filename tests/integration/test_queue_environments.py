"""Several environments: fair claims, summed counts, outages of one; and `migrate`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from control_plane.config import Settings
from control_plane.errors import TransientError
from control_plane.queue.environments import Environments
from control_plane.queue.migrate import apply_schema, migrate
from control_plane.queue.models import QueueCounts
from control_plane.queue.postgres import PostgresStore
from control_plane.queue.supabase import SupabaseStore
from tests.support.queue_fixtures import add_ready, sql
from tests.support.supabase_endpoint import supabase_endpoint

pytestmark = pytest.mark.integration
LEASE = 60_000

# Every shipped file, in the order a first migrate applies them (versioned, then functions).
ALL_FILES = [
    "001_schema.sql",
    "010_delivery_fencing.sql",
    "010b_leader_fence_closed.sql",
    "011_retry_not_before.sql",
    "012_good_neighbour.sql",
    "014_error_history.sql",
    "002_functions.sql",
]


@pytest.fixture
def three_envs(pg_database_factory) -> Iterator[tuple[Environments, dict[str, str]]]:  # type: ignore[no-untyped-def]
    """dev (Postgres), staging (Supabase transport), prod (Postgres): backlogs 200 / 20 / 2."""
    dsns = {name: pg_database_factory(name) for name in ("dev", "staging", "prod")}
    for name, backlog in (("dev", 200), ("staging", 20), ("prod", 2)):
        apply_schema(dsns[name])
        add_ready(dsns[name], backlog, prefix=name)
    with supabase_endpoint(dsns["staging"]) as endpoint:
        envs = Environments(
            {
                "dev": PostgresStore("dev", dsns["dev"]),
                "staging": SupabaseStore("staging", endpoint.url, endpoint.service_key),
                "prod": PostgresStore("prod", dsns["prod"]),
            }
        )
        try:
            yield envs, dsns
        finally:
            envs.close()


def test_a_backlog_cannot_starve_the_other_environments(three_envs) -> None:  # type: ignore[no-untyped-def]
    envs, _ = three_envs
    first = envs.claim_fair("index", 6, "w1", LEASE)
    assert Counter(d.environment for d in first) == {"dev": 2, "staging": 2, "prod": 2}
    second = envs.claim_fair("index", 6, "w1", LEASE)
    # prod ran dry: its unused share goes to the others, nobody is left idle
    assert len(second) == 6
    assert Counter(d.environment for d in second)["staging"] >= 2
    got = [*first, *second]
    while batch := envs.claim_fair("index", 6, "w1", LEASE):
        got.extend(batch)
    per_env = Counter(d.environment for d in got)
    assert per_env == {"dev": 200, "staging": 20, "prod": 2}
    assert len({(d.environment, d.id) for d in got}) == len(got), "no document twice"
    # staging's 20 documents were all claimed within the first ~10 calls, not after dev's 200
    staging_positions = [i for i, d in enumerate(got) if d.environment == "staging"]
    assert max(staging_positions) < 70


def test_single_claims_rotate_across_environments(three_envs) -> None:  # type: ignore[no-untyped-def]
    envs, _ = three_envs
    order = [envs.claim_fair("index", 1, "w1", LEASE)[0].environment for _ in range(6)]
    assert sorted(order[:3]) == ["dev", "prod", "staging"]
    assert sorted(order[3:5]) == ["dev", "staging"], "prod is empty after one document"


def test_counts_are_summed_and_claims_carry_their_environment(three_envs) -> None:  # type: ignore[no-untyped-def]
    envs, dsns = three_envs
    assert envs.counts()["index"] == QueueCounts(ready=222, in_flight=0)
    docs = envs.claim_fair("index", 3, "w1", LEASE)
    assert envs.counts()["index"] == QueueCounts(ready=219, in_flight=3)
    for doc in docs:  # the result goes back to the right database
        assert envs.store(doc.environment).complete(doc.id, doc.lease_token, doc.environment, 1, 1)
    for name, dsn in dsns.items():
        assert sql(dsn, "SELECT file_content FROM extraction_queue WHERE status_id = 5") == [
            (name,)
        ]
    assert set(envs.counts_by_environment()) == {"dev", "staging", "prod"}


def test_an_unreachable_environment_does_not_stop_the_others(pg_database_factory) -> None:  # type: ignore[no-untyped-def]
    dsn = pg_database_factory("alive")
    apply_schema(dsn)
    add_ready(dsn, 4)
    down = PostgresStore("prod", "postgresql://postgres@127.0.0.1:1/x", pool_timeout_s=0.5)
    envs = Environments({"dev": PostgresStore("dev", dsn), "prod": down})
    try:
        assert len(envs.claim_fair("index", 4, "w1", LEASE)) == 4
        assert envs.counts()["index"] == QueueCounts(ready=0, in_flight=4)
        assert list(envs.reap(3)) == ["dev"]
    finally:
        envs.close()
    only_down = Environments(
        {"prod": PostgresStore("prod", "postgresql://postgres@127.0.0.1:1/x", pool_timeout_s=0.5)}
    )
    try:
        with pytest.raises(TransientError, match="no environment reachable"):
            only_down.claim_fair("index", 1, "w1", LEASE)
    finally:
        only_down.close()


def test_from_settings_picks_postgres_when_a_database_url_is_set(pg_database_factory) -> None:  # type: ignore[no-untyped-def]
    dsn = pg_database_factory("settings")
    settings = Settings(
        _env_file=None,
        dev_database_url=SecretStr(dsn),  # type: ignore[call-arg]
        staging_supabase_url="http://127.0.0.1:9",
        staging_supabase_service_key=SecretStr("k"),
    )
    envs = Environments.from_settings(settings)
    try:
        assert envs.names == ["dev", "staging"]
        assert isinstance(envs.store("dev"), PostgresStore)
        assert isinstance(envs.store("staging"), SupabaseStore)
        assert envs.storage("dev") is None and envs.storage("staging") is not None
        with pytest.raises(KeyError, match="prod"):
            envs.store("prod")
    finally:
        envs.close()


def test_migrate_is_idempotent_and_keeps_rows(pg_database_factory) -> None:  # type: ignore[no-untyped-def]
    dev, prod = pg_database_factory("mig_dev"), pg_database_factory("mig_prod")
    settings = Settings(
        _env_file=None,
        dev_database_url=SecretStr(dev),  # type: ignore[call-arg]
        prod_database_url=SecretStr(prod),
        staging_supabase_url="http://127.0.0.1:9",
        staging_supabase_service_key=SecretStr("k"),
    )
    first = migrate(settings)
    assert [r.environment for r in first] == ["dev", "prod"]
    assert first[0].applied == ALL_FILES
    add_ready(dev, 3)
    again = migrate(settings)
    assert [(r.environment, r.applied) for r in again] == [("dev", []), ("prod", [])]
    assert sql(dev, "SELECT count(*) FROM extraction_queue WHERE status_id = 3") == [(3,)]
    assert sql(prod, "SELECT name FROM ocr_status ORDER BY id") == [
        ("EN_ATTENTE",),
        ("EN_TRAITEMENT",),
        ("COMPLETE",),
        ("ERREUR",),
        ("EXTRACTION_COMPLETE",),
    ]
    functions = sql(prod, "SELECT proname FROM pg_proc WHERE proname LIKE 'ocr\\_%' ORDER BY 1")
    assert [f for (f,) in functions] == [
        "ocr_claim",
        "ocr_complete",
        "ocr_counts",
        "ocr_doctor",
        "ocr_errors",
        "ocr_fail",
        "ocr_fence_check",
        "ocr_leader_fence",
        "ocr_reap",
        "ocr_release",
        "ocr_renew",
        "ocr_requeue",
        "ocr_start",
    ]


def test_claims_are_fair_per_environment_and_type(pg_database_factory) -> None:  # type: ignore[no-untyped-def]
    """Issue 12: one rotation per type. With a shared counter, alternating index and acte
    claims took every index from one environment and every acte from the other."""
    dsns = {name: pg_database_factory(f"fair_{name}") for name in ("staging", "prod")}
    for dsn in dsns.values():
        apply_schema(dsn)
        add_ready(dsn, 50, "index")
        add_ready(dsn, 50, "acte")
    envs = Environments({name: PostgresStore(name, dsn) for name, dsn in dsns.items()})
    try:
        taken: dict[str, Counter[str]] = {"index": Counter(), "acte": Counter()}
        for _ in range(40):
            for source in ("index", "acte"):
                (doc,) = envs.claim_fair(source, 1, "w1", LEASE)
                taken[source][doc.environment] += 1
    finally:
        envs.close()
    assert taken == {
        "index": Counter({"staging": 20, "prod": 20}),
        "acte": Counter({"staging": 20, "prod": 20}),
    }


def test_a_broken_environment_never_stops_the_others(pg_database_factory) -> None:  # type: ignore[no-untyped-def]
    """Issue 12: a permanent error (never migrated) of one environment: the others are fed,
    counted and reaped in the same pass, and its state says why."""
    dev = pg_database_factory("iso_dev")
    apply_schema(dev)
    add_ready(dev, 3)
    broken = pg_database_factory("iso_broken")  # no schema
    envs = Environments({"prod": PostgresStore("prod", broken), "dev": PostgresStore("dev", dev)})
    try:
        docs = envs.claim_fair("index", 3, "w1", LEASE)
        assert [d.environment for d in docs] == ["dev"] * 3
        assert envs.counts()["index"] == QueueCounts(ready=0, in_flight=3)
        sql(dev, "UPDATE extraction_queue SET lease_expires_at = now() - interval '1 s'")
        assert envs.reap(3)["dev"].requeued == 3
        states = {s.name: s for s in envs.states()}
        assert states["dev"].describe() == "dev ok"
        assert states["prod"].state == "broken"
        assert "run python scheduler.py migrate" in states["prod"].error
    finally:
        envs.close()
