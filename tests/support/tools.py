"""External tools some tests drive for real (pgbouncer, promtool).

`make test` installs them when it can (tests/support/install-test-tools.sh). Where it
could not, those tests skip and say why; under CI=true (the CI runner) a missing tool
fails the run instead, so CI never passes without them.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def tool_missing(reason: str) -> NoReturn:
    """Skip (on a developer's machine) or fail (in CI) a test whose tool is absent."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (required in CI: tests/support/install-test-tools.sh)")
    pytest.skip(f"{reason}; `make test` installs it where apt-get runs as root")
