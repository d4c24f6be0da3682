"""The status block says which documents wait to retry and what is paused (issue 11),
below the seed's sections."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from control_plane.scheduler.status import StatusSnapshot, render_status

pytestmark = pytest.mark.unit


def _snap(**extra: object) -> StatusSnapshot:
    base = dict(
        taken_at=datetime(2026, 11, 29, 19, 49, 7, tzinfo=UTC),
        pool_size=4,
        allocation={"index": 3, "acte": 1, "total": 4},
        assignments={},
        busy={},
        registered_threads=8,
        workers_by_mode={},
        external={},
        rpm_used=0,
        tpm_used=0,
        rpm_limit=300,
        tpm_limit=1_000_000,
        cooldown_ms=0,
        cpu_used=0.0,
        ram_used=0.0,
        cpu_budget=6.4,
        ram_budget=12.8,
    )
    base.update(extra)
    return StatusSnapshot(**base)  # type: ignore[arg-type]


def test_nothing_added_when_all_is_well() -> None:
    text = render_status(
        _snap(queue={"index": {"ready": 5, "in_flight": 1, "waiting_retry": 0}}), emoji=False
    )
    assert "Waiting to retry" not in text and "Circuit breakers" not in text


def test_waiting_documents_and_open_breakers_are_shown_below_the_seed_lines() -> None:
    text = render_status(
        _snap(
            queue={
                "index": {"ready": 412, "in_flight": 3, "waiting_retry": 12},
                "acte": {"ready": 40, "in_flight": 1, "waiting_retry": 0},
            },
            circuit_breakers={
                "gemini:configuration": {
                    "state": "open",
                    "why": "Gemini configuration problem: ...; check X",
                }
            },
        ),
        emoji=False,
    )
    lines = text.splitlines()
    seed_end = next(i for i, ln in enumerate(lines) if ln.strip() == "- Acte OCR: 0")
    queue = next(i for i, ln in enumerate(lines) if ln.strip() == "Index: 412 / 3 (enqueued 0)")
    waiting = next(i for i, ln in enumerate(lines) if "Waiting to retry" in ln)
    assert seed_end < queue < waiting, "our additions come after the seed's sections"
    assert lines[waiting].strip() == "Waiting to retry: index 12, acte 0"
    assert "gemini:configuration: open (why Gemini configuration problem: ...; check X)" in text
