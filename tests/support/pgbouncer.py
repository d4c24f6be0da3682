"""A private PgBouncer in transaction mode in front of a PostgreSQL, for tests (issue 12).

Needs the `pgbouncer` binary (Debian: `apt-get install pgbouncer`); tests that use it fail
loudly with that hint when it is missing. Runs as the `postgres` user when started by root
(PgBouncer refuses to run as root). `pool_mode = transaction` with 2 server connections, so
consecutive transactions of one client land on different server connections, as on
Supabase's port 6543: session state and server-side prepared statements break there.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from control_plane.local_services import free_port
from tests.support.tools import tool_missing

CONFIG = """
[databases]
* = host={host} port={port} user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = 2
max_client_conn = 200
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
logfile = {root}/pgbouncer.log
pidfile = {root}/pgbouncer.pid
"""


@contextmanager
def pgbouncer(host: str = "127.0.0.1", port: int = 5432) -> Iterator[int]:
    """Yields the port of a transaction-mode PgBouncer in front of host:port."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        tool_missing("pgbouncer is not installed (apt-get install pgbouncer)")
    root = Path(tempfile.mkdtemp(prefix="ocr-pgb-"))
    listen = free_port()
    (root / "pgbouncer.ini").write_text(
        CONFIG.format(host=host, port=port, listen=listen, root=root)
    )
    cmd = [binary, str(root / "pgbouncer.ini")]
    if os.geteuid() == 0:
        try:  # pgbouncer refuses to run as root
            user = pwd.getpwnam("postgres")
        except KeyError:
            user = pwd.getpwnam("nobody")
        for path in (root, root / "pgbouncer.ini"):
            os.chown(path, user.pw_uid, user.pw_gid)
        cmd = ["runuser", "-u", user.pw_name, "--", *cmd]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    out = process.stdout.read().decode() if process.stdout else ""
                    log = root / "pgbouncer.log"
                    raise RuntimeError(
                        f"pgbouncer did not start: {out}{log.read_text() if log.exists() else ''}"
                    ) from None
                time.sleep(0.1)
        yield listen
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(root, ignore_errors=True)
