"""The leader fence is closed to Supabase's API roles (issue 10 attack, security).

`ocr_leader_fence` (010_delivery_fencing.sql) was created without the lock-down the
other queue tables get: on Supabase the project's default privileges left it open to
`anon` (the public anon key, through the REST API) and `authenticated`. Anyone with the
public key could raise the fence to the largest bigint: every claim and reap of every
scheduler was then refused as "stale", the leader stepped down, and the epoch it needed
to come back above the fence does not fit in a bigint: the pool was stopped for good.
(Or delete the row: the fence restarts at 0 and stale leaders are no longer fenced.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from psycopg import errors as pg_errors

from control_plane.queue.migrate import apply_schema
from control_plane.queue.postgres import PostgresStore
from control_plane.queue.security import check_security
from tests.support.pg_server import PrivatePostgres, private_postgres
from tests.support.queue_fixtures import add_ready
from tests.support.supabase_roles import (
    API_ROLES,
    as_role,
    create_supabase_roles,
    prepare_supabase_database,
)

pytestmark = pytest.mark.integration

ATTEMPTS = {
    "raise": "UPDATE ocr_leader_fence SET epoch = 9223372036854775807",
    "reset": "DELETE FROM ocr_leader_fence",
    "read": "SELECT epoch, owner FROM ocr_leader_fence",
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        create_supabase_roles(server.dsn())
        yield server


def test_api_roles_can_neither_read_nor_move_the_leader_fence(cluster: PrivatePostgres) -> None:
    dsn = cluster.create_database("fence")
    prepare_supabase_database(dsn)
    apply_schema(dsn)
    add_ready(dsn, 2)
    for role in API_ROLES:
        for what, statement in ATTEMPTS.items():
            with as_role(dsn, role) as conn, pytest.raises(pg_errors.InsufficientPrivilege):
                conn.execute(statement.encode())
                pytest.fail(f"{role} may {what} the leader fence")
    assert check_security(dsn) == []
    # The pool (service role) still fences: a claim raises the fence, an older epoch is
    # refused.
    service = f"postgresql://service_role@127.0.0.1:{cluster.port}/{dsn.rsplit('/', 1)[1]}"
    store = PostgresStore("dev", service)
    try:
        assert len(store.claim("index", 1, "leader-b", 60_000, epoch=20)) == 1
        assert store.leader_fence(20, "leader-b") == 20
        from control_plane.errors import LeaderFencedError

        with pytest.raises(LeaderFencedError):
            store.claim("index", 1, "leader-a", 60_000, epoch=10)
    finally:
        store.close()
