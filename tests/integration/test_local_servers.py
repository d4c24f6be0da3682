"""Throwaway servers for the demo and the test session: started when nothing answers."""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import subprocess
import sys

import psycopg
import pytest
import redis

from control_plane.local_services import (
    free_port,
    local_postgres,
    local_redis,
    postgres_binaries,
    private_postgres,
    redis_server_binary,
)
from tests.support.pool import ROOT

pytestmark = pytest.mark.integration


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_an_answering_redis_and_postgres_are_used_as_they_are(
    redis_url: str, pg_admin_dsn: str
) -> None:
    with contextlib.ExitStack() as stack:
        r = local_redis(stack, redis_url)
        p = local_postgres(stack, pg_admin_dsn)
    assert (r.url, p.url) == (redis_url, pg_admin_dsn)
    assert " at 127.0.0.1:" in r.description and "throwaway" not in r.description
    assert p.description.startswith("PostgreSQL ") and "throwaway" not in p.description


def test_nothing_answering_starts_throwaway_servers_stopped_with_the_stack() -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    dead_pg = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with contextlib.ExitStack() as stack:
        r = local_redis(stack, dead_redis)
        p = local_postgres(stack, dead_pg)
        assert r.url != dead_redis and p.url != dead_pg
        assert "throwaway" in r.description and redis_server_binary().label in r.description
        assert "throwaway" in p.description and postgres_binaries().label in p.description
        client = redis.Redis.from_url(r.url)
        assert client.eval("return redis.call('SET', KEYS[1], ARGV[1])", 1, "k", "v") == b"OK"
        client.close()
        with psycopg.connect(p.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        ports = [
            int(r.url.rsplit(":", 1)[1].split("/")[0]),
            int(p.url.rsplit(":", 1)[1].split("/")[0]),
        ]
        assert all(_listening(port) for port in ports)
    assert not any(_listening(port) for port in ports), "a throwaway server outlived its stack"


def test_a_machine_without_a_postgres_account_runs_the_cluster_as_nobody() -> None:
    """As root (PostgreSQL refuses root) the cluster runs as `nobody`; else as the caller."""
    expected = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    with private_postgres(run_as="nobody") as server:
        with psycopg.connect(server.dsn()) as conn:
            row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        assert row is not None
        assert pwd.getpwuid(os.stat(row[0]).st_uid).pw_name == expected
        server.restart()
        with psycopg.connect(server.dsn()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_needed_prints_nothing_on_a_machine_that_has_the_servers() -> None:
    """This machine runs the suite, so it has servers or binaries: nothing to install."""
    result = subprocess.run(
        [sys.executable, "-m", "control_plane.local_services", "needed", "test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
