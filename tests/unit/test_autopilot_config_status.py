"""Issue 15: OCR_WORKER_POOL_SIZE=auto in the configuration, the status line, learned costs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from control_plane.autopilot_runtime import host_loads, window_scale
from control_plane.config import load_settings
from control_plane.errors import ConfigError
from control_plane.scheduler.status import StatusSnapshot, render_status

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("OCR_", "GEMINI_", "SERVER_", "DEV_", "STAGING_", "PROD_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(str(tmp_path))


@pytest.mark.parametrize("raw", ["auto", "AUTO", " Auto "])
def test_auto_is_opt_in_and_holds_the_maximum(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("OCR_WORKER_POOL_SIZE", raw)
    monkeypatch.setenv("OCR_WORKER_POOL_MAX", "12")
    s = load_settings(require_environment=False)
    assert s.autopilot
    assert s.ocr_worker_pool_size == 12
    assert s.pool_minimum == 2
    assert s.capacity_costs == "learned"  # DESIGN.md's default, with the autopilot


@pytest.mark.parametrize(
    ("size", "setting", "mode"),
    [
        ("auto", None, "learned"),
        ("auto", "declared", "declared"),
        ("6", None, "declared"),
        ("6", "learned", "learned"),
    ],
)
def test_capacity_costs_default_follows_the_pool_mode(
    monkeypatch: pytest.MonkeyPatch, size: str, setting: str | None, mode: str
) -> None:
    monkeypatch.setenv("OCR_WORKER_POOL_SIZE", size)
    if setting is not None:
        monkeypatch.setenv("OCR_CAPACITY_COSTS", setting)
    assert load_settings(require_environment=False).capacity_costs == mode


def test_fixed_size_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCR_WORKER_POOL_SIZE", "6")
    monkeypatch.setenv("OCR_WORKER_POOL_MAX", "3")  # ignored with a fixed size
    s = load_settings(require_environment=False)
    assert not s.autopilot
    assert s.ocr_worker_pool_size == 6
    assert s.capacity_costs == "declared"
    assert not load_settings(require_environment=False, ocr_worker_pool_size=4).autopilot


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OCR_WORKER_POOL_MIN": "9", "OCR_WORKER_POOL_MAX": "8"}, "OCR_WORKER_POOL_MIN=9"),
        (
            {"OCR_MIN_INDEX_WORKERS": "9", "OCR_WORKER_POOL_MAX": "8", "OCR_INDEX_CPU": "0.1"},
            "is above OCR_WORKER_POOL_MAX=8",
        ),
        ({"OCR_WORKER_POOL_MAX": "1"}, "OCR_WORKER_POOL"),
        ({"OCR_AUTOPILOT_API_TARGET": "150"}, "OCR_AUTOPILOT_API_TARGET"),
        ({"OCR_CAPACITY_COSTS": "guessed"}, "OCR_CAPACITY_COSTS"),
    ],
)
def test_bad_auto_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    monkeypatch.setenv("OCR_WORKER_POOL_SIZE", "auto")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=message):
        load_settings(require_environment=False)


def test_pool_minimum_makes_room_for_the_type_minimums(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCR_WORKER_POOL_SIZE", "auto")
    monkeypatch.setenv("OCR_MIN_INDEX_WORKERS", "2")
    monkeypatch.setenv("OCR_MIN_ACTE_WORKERS", "2")
    monkeypatch.setenv("OCR_WORKER_POOL_MIN", "1")
    assert load_settings(require_environment=False).pool_minimum == 4


def snapshot(**extra: object) -> StatusSnapshot:
    base: dict[str, object] = {
        "taken_at": datetime(2026, 1, 1, tzinfo=UTC),
        "pool_size": 12,
        "allocation": None,
        "assignments": {},
        "busy": {},
        "registered_threads": 40,
        "workers_by_mode": {},
        "external": {},
        "rpm_used": 0,
        "tpm_used": 0,
        "rpm_limit": 100,
        "tpm_limit": 1000,
        "cooldown_ms": 0,
        "cpu_used": 0.0,
        "ram_used": 0.0,
        "cpu_budget": 6.4,
        "ram_budget": 12.8,
    }
    base.update(extra)
    return StatusSnapshot(**base)  # type: ignore[arg-type]


def test_status_says_the_size_and_the_binding_constraint() -> None:
    text = render_status(
        snapshot(
            autopilot={
                "line": "pool 12, limited by API usage 78% (target 80%)",
                "range": "2..32",
            }
        ),
        emoji=False,
    )
    assert "Autopilot: pool 12, limited by API usage 78% (target 80%)" in text
    assert "   range: 2..32" in text
    assert "line:" not in text


def test_status_shows_learned_costs_on_the_host_line() -> None:
    host = {"cpu_used": 1, "cpu_budget": 6.4, "ram_used": 2, "ram_budget": 12.8}
    text = render_status(
        snapshot(hosts={"a": {**host, "learned": {"index": (0.3, 0.12)}}, "b": host}),
        emoji=False,
    )
    assert "   a: CPU 1 / 6.4 vCPUs, RAM 2 / 12.8 GB, learned index 0.3 vCPU / 0.12 GB" in text
    assert "   b: CPU 1 / 6.4 vCPUs, RAM 2 / 12.8 GB\n" in text


@pytest.mark.parametrize(
    ("budgets", "usage", "expected"),
    [
        ({"a": (4.0, 8.0)}, {"a": (2.0, 2.0)}, {"a": (0.5, 0.25)}),
        ({"a": (4.0, 8.0)}, {}, {"a": (0.0, 0.0)}),
        ({"a": (0.0, 8.0)}, {"a": (1.0, 0.0)}, {"a": (1.0, 0.0)}),  # zero budget, in use: full
    ],
)
def test_host_loads(
    budgets: dict[str, tuple[float, float]],
    usage: dict[str, tuple[float, float]],
    expected: dict[str, tuple[float, float]],
) -> None:
    assert host_loads(budgets, usage) == expected


@pytest.mark.parametrize(
    ("measured", "window", "scale"),
    [(60, 60, 1.0), (120, 60, 1.0), (30, 60, 2.0), (6, 60, 10.0), (0, 60, 10.0), (5, 0, 1.0)],
)
def test_window_scale(measured: float, window: float, scale: float) -> None:
    assert window_scale(measured, window) == pytest.approx(scale)
