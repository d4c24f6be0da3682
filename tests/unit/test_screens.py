"""The seed's screens, line for line: the seed's own examples are the fixtures.

tests/unit/fixtures/seed_*.txt are copied verbatim from the seed's "What You'll
See" and "Stopping the Worker Pool" sections. Our additions come after them.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from control_plane.config import load_settings
from control_plane.scheduler.banner import render_banner, render_shutdown
from control_plane.scheduler.screens import RULE, amount, pct, wants_emoji
from control_plane.scheduler.status import StatusSnapshot, render_status

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8").rstrip("\n")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("OCR_", "GEMINI_", "SERVER_", "REDIS_", "DEV_", "STAGING_", "PROD_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEV_DATABASE_URL", "postgresql://ocr:hunter2secret@db.example/ocr")
    monkeypatch.setenv("GEMINI_API_KEY", "AIzaSECRETSECRET")


def seed_snapshot(**extra: object) -> StatusSnapshot:
    """The numbers of the seed's status example (pool 4, default budget 6.4 vCPU / 12.8 GB)."""
    snap = StatusSnapshot(
        taken_at=datetime(2026, 11, 29, 19, 49, 7, tzinfo=UTC),
        pool_size=4,
        allocation={"index": 3, "acte": 1, "total": 4, "reason": "queue shares 91%/9%"},
        assignments={
            "ocr-worker-1": "index",
            "ocr-worker-2": "index",
            "ocr-worker-3": "acte",
            "ocr-worker-4": "index",
        },
        busy={"index": 3, "acte": 1},
        registered_threads=8,
        workers_by_mode={"index": 3, "acte": 1},
        external={},
        rpm_used=12,
        tpm_used=180_000,
        rpm_limit=1600,
        tpm_limit=6_400_000,
        cooldown_ms=0,
        cpu_used=5.5,
        ram_used=3.25,
        cpu_budget=6.4,
        ram_budget=12.8,
        queue={"index": {"ready": 412, "in_flight": 3}, "acte": {"ready": 40, "in_flight": 1}},
        leader="host-a:2187:380465",
        leader_epoch=7,
        queue_by_environment={
            "dev": {"index": {"ready": 400, "in_flight": 3}, "acte": {"ready": 40, "in_flight": 1}},
            "prod": {"index": {"ready": 12, "in_flight": 0}, "acte": {"ready": 0, "in_flight": 0}},
        },
    )
    for name, value in extra.items():
        setattr(snap, name, value)
    return snap


def seed_part(rendered: str, golden: str) -> tuple[str, str]:
    """Split a rendered screen into the golden's length and what follows."""
    lines = rendered.split("\n")
    n = len(golden.split("\n"))
    return "\n".join(lines[:n]), "\n".join(lines[n:])


def test_status_block_is_the_seeds_example_then_our_additions() -> None:
    golden = fixture("seed_status.txt")
    seed_without_closing_rule = golden.rsplit("\n", 1)[0]
    text = render_status(seed_snapshot(), emoji=True)
    head, rest = seed_part(text, seed_without_closing_rule)
    assert head == seed_without_closing_rule
    assert text.endswith("\n" + RULE)
    # Our additions, below the seed's sections.
    for needle in (
        "Queue (ready / in flight):",
        "   Index: 412 / 3 (enqueued 0)",
        "     - dev: index 400 / 3, acte 40 / 1",
        "     - prod: index 12 / 0, acte 0 / 0",
        "   1:index  2:index  3:acte  4:index",
        "   Threads registered: 8 (index 3, acte 1)",
        "   Leader: host-a:2187:380465 (epoch 7)",
        "   Limiter cooldown: none",
        "   Reason: queue shares 91%/9%",
    ):
        assert needle in rest, f"{needle!r} not in our additions:\n{rest}"
    # Nothing of a feature that is not there yet.
    assert "Circuit breakers" not in text and "Autopilot" not in text and "Hosts:" not in text


def test_status_block_plain_is_the_seed_without_emoji() -> None:
    golden = fixture("seed_status.txt")
    plain_golden = "\n".join(
        line.split(" ", 1)[1] if line[:1] and line[0] in "📊🎯📡💾" else line
        for line in golden.splitlines()
    )
    text = render_status(seed_snapshot(), emoji=False)
    head, _ = seed_part(text, plain_golden.rsplit("\n", 1)[0])
    assert head == plain_golden.rsplit("\n", 1)[0]
    assert not any(ord(ch) > 0x2000 for ch in text), "no emoji in plain output"


def test_status_block_renders_optional_sections_when_present() -> None:
    text = render_status(
        seed_snapshot(
            circuit_breakers={"gemini": "open", "env:prod": {"state": "half_open", "failures": 3}},
            hosts={"host-a": {"cpu_used": 3, "cpu_budget": 6.4, "ram_used": 2, "ram_budget": 12.8}},
            environments=["dev ok", "prod UNREACHABLE (connection refused; retry in 4s)"],
            autopilot={"pool_size": 6},
            cooldown_ms=12_300,
            cooldown_reason="429 from Gemini",
        ),
        emoji=False,
    )
    for needle in (
        "Circuit breakers:",
        "   gemini: open",
        "   env:prod: half_open (failures 3)",
        "   host-a: CPU 3 / 6.4 vCPUs, RAM 2 / 12.8 GB",
        "     - prod: index 12 / 0, acte 0 / 0",
        "Environments:",
        "   prod UNREACHABLE (connection refused; retry in 4s)",
        "Autopilot:",
        "   pool_size: 6",
        "   Limiter cooldown: 12.3s (429 from Gemini)",
    ):
        assert needle in text, f"{needle!r} missing:\n{text}"


def test_status_block_before_any_allocation_and_with_thin_pool() -> None:
    text = render_status(
        seed_snapshot(allocation=None, assignments={}, registered_threads=1, leader=None),
        emoji=False,
    )
    assert "   Index workers: -\n   Acte workers: -\n   Active workers: 0" in text
    assert "   Allocation: not published yet (pool 4)" in text
    assert "   Leader: none (start python scheduler.py)" in text
    assert "WARNING: 1 worker thread(s) registered for a pool of 4" in text


def test_banner_is_the_seeds_startup_screen_then_our_configuration() -> None:
    settings = load_settings()
    golden = fixture("seed_banner.txt")
    text = render_banner(
        settings,
        owner="host-a:1:abc",
        allocation={"index": 2, "acte": 2, "total": 4, "reason": "no queue seen yet"},
        assignments={
            "ocr-worker-3": "acte",
            "ocr-worker-1": "index",
            "ocr-worker-4": "acte",
            "ocr-worker-2": "index",
        },
        leading=True,
        emoji=True,
    )
    head, rest = seed_part(text, golden)
    assert head == golden
    assert rest.endswith(RULE)
    assert "   Scheduler: host-a:1:abc (leader)" in rest
    assert "   Gemini: " in rest and "API key set" in rest
    assert "AIzaSECRETSECRET" not in text and "hunter2secret" not in text


def test_banner_orders_ten_slots_by_number() -> None:
    assignments = {f"ocr-worker-{i}": "index" for i in range(1, 11)}
    text = render_banner(
        load_settings(),
        owner="o",
        allocation=None,
        assignments=assignments,
        leading=False,
        emoji=False,
    )
    started = [ln for ln in text.splitlines() if ln.startswith("Started ")]
    assert started[0] == "Started ocr-worker-1 (mode: index)"
    assert started[-1] == "Started ocr-worker-10 (mode: index)"
    assert "   Index workers: -" in text and "(standby)" in text


def test_shutdown_block_is_the_seeds() -> None:
    assert render_shutdown(emoji=True) == fixture("seed_shutdown.txt")
    plain = render_shutdown(emoji=False)
    assert (
        "SHUTTING DOWN WORKER POOL\n" in plain and "\nWORKER POOL STOPPED SUCCESSFULLY\n" in plain
    )
    assert not any(ord(ch) > 0x2000 for ch in plain)


@pytest.mark.parametrize(
    ("used", "limit", "expected"),
    [(12, 1600, "0.8%"), (180_000, 6_400_000, "2.8%"), (5.5, 6.4, "85.9%"), (1, 0, "0.0%")],
)
def test_percentages(used: float, limit: float, expected: str) -> None:
    assert pct(used, limit) == expected


@pytest.mark.parametrize(
    ("value", "expected"), [(5.5, "5.5"), (3.25, "3.25"), (12.8, "12.8"), (8.0, "8"), (0.0, "0")]
)
def test_amounts(value: float, expected: str) -> None:
    assert amount(value) == expected


def test_emoji_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert wants_emoji(Tty()) is True
    assert wants_emoji(io.StringIO()) is False
    assert wants_emoji(None) is False
