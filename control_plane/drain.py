"""Pure decisions of a worker's stop: when a job may not make its next Gemini call.

Used by `actors.runtime` (issue 10, points 5 and 7): a job whose slot or lease is
lost stops before its next call; on SIGTERM/Ctrl+C a job that has paid for no call
yet gives its document back at once, one in progress finishes all its chunks
within OCR_SHUTDOWN_GRACE_MS.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from control_plane.gemini.engine import OcrInterrupted

# Dramatiq's own default for --worker-shutdown-timeout (ms): past it, it abandons jobs.
DRAMATIQ_SHUTDOWN_TIMEOUT_MS = 600_000


class JobStopped(OcrInterrupted):
    """The job must not make another Gemini call (slot or lease lost, worker stopping)."""


def stop_reason(
    *, abort_reason: str, stopping: bool, calls: int, drain_expired: bool
) -> str | None:
    """Pure: why a job may not make its next Gemini call, or None to go on.

    A job told to stop (slot or lease lost) stops. While the worker drains, a job
    that has paid for no call yet gives its document back at once; one in progress
    finishes every chunk, unless the drain's grace has run out."""
    if abort_reason:
        return abort_reason
    if stopping and drain_expired:
        return "OCR_SHUTDOWN_GRACE_MS passed while stopping; the document goes back to ready"
    if stopping and calls == 0:
        return "worker stopping before the document's first Gemini call"
    return None


def shutdown_timeout_ms(argv: Sequence[str]) -> int:
    """Pure: dramatiq's --worker-shutdown-timeout from its command line (ms)."""
    for i, arg in enumerate(argv):
        match = re.fullmatch(r"--worker-shutdown-timeout(?:=(\d+))?", arg)
        if match:
            value = match.group(1) or (argv[i + 1] if i + 1 < len(argv) else "")
            if value.isdigit():
                return int(value)
    return DRAMATIQ_SHUTDOWN_TIMEOUT_MS
