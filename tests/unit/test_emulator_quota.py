"""The emulator's sliding windows (time passed in): enforcement and the peak it reports."""

from __future__ import annotations

import pytest

from control_plane.emulator.config import EmulatorConfig
from control_plane.emulator.quota import QuotaWindows, WindowPeak

pytestmark = pytest.mark.unit


def test_rpm_refuses_the_extra_request_and_says_when_the_oldest_leaves() -> None:
    q = QuotaWindows(rpm_limit=3, tpm_limit=0, window_s=60)
    assert [q.admit(t, 10) for t in (0.0, 1.0, 2.0)] == [None, None, None]
    refusal = q.admit(30.0, 10)
    assert refusal is not None and refusal.dimension == "requests" and refusal.limit == 3
    assert refusal.retry_after_s == pytest.approx(30.0)
    assert q.admit(60.0, 10) is None  # the call at t=0 has left the window


def test_tpm_counts_input_tokens_and_refused_calls_do_not_count() -> None:
    q = QuotaWindows(rpm_limit=0, tpm_limit=1000, window_s=60)
    assert q.admit(0.0, 600) is None
    refusal = q.admit(10.0, 500)
    assert refusal is not None and refusal.dimension == "tokens"
    assert refusal.retry_after_s == pytest.approx(50.0)
    assert q.usage(10.0) == (1, 600)
    assert q.admit(11.0, 400) is None


def test_a_call_larger_than_the_whole_budget_is_always_refused() -> None:
    q = QuotaWindows(rpm_limit=0, tpm_limit=100, window_s=60)
    refusal = q.admit(0.0, 101)
    assert refusal is not None and refusal.retry_after_s == 60.0


def test_peak_finds_the_busiest_window_among_all_calls() -> None:
    peak = WindowPeak(window_s=10)
    for t, tokens in [(0, 5), (1, 5), (9.5, 5), (10.5, 50), (25, 1)]:
        peak.record(t, tokens)
    assert peak.max_requests == 3  # (1, 9.5, 10.5) or (0, 1, 9.5)
    assert peak.max_tokens == 60  # 1 + 9.5 + 10.5


@pytest.mark.parametrize(
    "changes",
    [
        {"rpm_limit": -1},
        {"fault_rates": {"boom": 0.1}},
        {"fault_rates": {"500": 0.7, "503": 0.7}},
        {"script": ["nope"]},
        {"window_s": 0},
        {"no_such_setting": 1},
    ],
)
def test_bad_config_changes_are_refused_and_leave_the_config_alone(changes: dict) -> None:
    config = EmulatorConfig(rpm_limit=5)
    with pytest.raises(ValueError):
        config.update(changes)
    assert config.rpm_limit == 5 and config.fault_rates == {} and config.script == []


def test_public_config_never_shows_the_key() -> None:
    assert "s3cret-key" not in repr(EmulatorConfig(api_key="s3cret-key").public())
