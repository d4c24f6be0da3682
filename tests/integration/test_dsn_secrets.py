"""No password fragment in any message (issue 12): a bad `%` escape in a database URL.

libpq quotes the malformed token of a URL in its error, which for a password holding a
bare `%` is part of the password, and psycopg_pool logged it on every reconnect. The URL
is now refused before any connection, with a message naming the variable only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Zq%zzSECRETpart9"  # noqa: S105 - a fake password under test


@pytest.mark.parametrize("command", ["status", "migrate"])
def test_a_bad_percent_escape_shows_nothing_of_the_password(command: str, redis_url: str) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OCR_", "DEV_", "STAGING_", "PROD_", "REDIS_"))
    }
    env.update(
        DEV_DATABASE_URL=f"postgresql://ocr:{PASSWORD}@127.0.0.1:5432/x",
        REDIS_URL=redis_url,
        OCR_REDIS_PREFIX="test-dsn-secrets:",
        OCR_SCHEDULER_METRICS_PORT="0",
    )
    result = subprocess.run(
        [sys.executable, "scheduler.py", command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "DEV_DATABASE_URL: the user or password holds a '%'" in output, output
    for fragment in ("zzSECRET", "SECRETpart", "Zq%", "part9"):
        assert fragment not in output, output
