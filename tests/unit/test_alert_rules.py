"""docker/alerts.yml: the rules load, use only served series, and fire on recorded series.

`promtool test rules docker/alerts.test.yml` replays series that must fire each rule
(and some that must not). promtool comes with Prometheus (Debian/Ubuntu: the
`prometheus` package; `apt-get download prometheus && dpkg -x` gives it without
installing the server); set OCR_PROMTOOL to its path if it is not on the PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from control_plane.observe import PrometheusObserver, call_outcome
from control_plane.scheduler.metrics import (
    SchedulerMetrics,
    breaker_level,
    documents_by_environment,
)
from tests.support.tools import tool_missing

pytestmark = pytest.mark.unit

DOCKER = Path(__file__).resolve().parents[2] / "docker"
RULES = yaml.safe_load((DOCKER / "alerts.yml").read_text(encoding="utf-8"))
ALERTS = {r["alert"]: r for g in RULES["groups"] for r in g["rules"]}
WORKER_SERIES = {
    "ocr_gemini_call_seconds",
    "ocr_limiter_wait_seconds",
    "ocr_gemini_responses_total",
    "ocr_worker_documents_total",
}


def served_by_scheduler() -> set[str]:
    names = set()
    for family in SchedulerMetrics().registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def test_every_rule_is_complete() -> None:
    assert set(ALERTS) == {
        "OcrGeminiRpmHigh",
        "OcrGeminiTpmHigh",
        "OcrCpuHigh",
        "OcrRamHigh",
        "OcrNoLeader",
        "OcrFeedStalled",
        "OcrErrorRateHigh",
    }
    for name, rule in ALERTS.items():
        assert rule["expr"].strip() and rule["for"], name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


@pytest.mark.parametrize(
    "name", ["OcrGeminiRpmHigh", "OcrGeminiTpmHigh", "OcrCpuHigh", "OcrRamHigh"]
)
def test_the_seeds_thresholds_80_percent_for_5_minutes(name: str) -> None:
    rule = ALERTS[name]
    assert rule["for"] == "5m"
    assert re.search(r">\s*0\.8\s*$", rule["expr"].strip()), rule["expr"]


def test_rules_query_only_series_the_pool_serves() -> None:
    served = served_by_scheduler() | WORKER_SERIES
    for name, rule in ALERTS.items():
        used = set(re.findall(r"\bocr_[a-z0-9_]+", rule["expr"]))
        assert used, name
        assert used <= served, f"{name}: {used - served} not served"


def test_the_dashboard_shows_the_alerts() -> None:
    dashboard = (DOCKER / "grafana-dashboard.json").read_text(encoding="utf-8")
    assert 'ALERTS{alertname=~\\"Ocr.*\\"}' in dashboard
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text(encoding="utf-8"))
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_worker_series_names_match_the_observer() -> None:
    from prometheus_client import REGISTRY

    seen: list[str] = []
    observer = PrometheusObserver(count_429=lambda: seen.append("429"))
    series = observer.metrics()
    try:
        observer.limiter_wait("index", 0.5)
        observer.document("dev", "index", "completed")
        observer.gemini_call("acte", 2.0, "ok")
        observer.gemini_call("acte", 0.1, "429")
        names = {m._name + ("_total" if m._type == "counter" else "") for m in series.values()}
        assert names == WORKER_SERIES
        get = REGISTRY.get_sample_value
        assert get("ocr_limiter_wait_seconds_count", {"type": "index"}) == 1
        assert get("ocr_gemini_responses_total", {"type": "acte", "outcome": "429"}) == 1
        assert get("ocr_gemini_call_seconds_count", {"type": "acte", "outcome": "ok"}) == 1
        assert seen == ["429"], "a 429 answer is counted for the scheduler's gauge"
    finally:
        for metric in series.values():
            REGISTRY.unregister(metric)


class _ApiError(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class ReadTimeout(Exception):
    pass


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (None, "ok"),
        (_ApiError(429), "429"),
        (_ApiError(503), "503"),
        (ReadTimeout(), "timeout"),
        (ValueError("x"), "error"),
    ],
)
def test_call_outcomes(exc: BaseException | None, outcome: str) -> None:
    assert call_outcome(exc) == outcome


@pytest.mark.parametrize(
    ("state", "level"),
    [("closed", 0), ("half_open", 1), ("open", 2), ({"state": "half-open", "n": 3}, 1), ("?", 2)],
)
def test_breaker_levels(state: object, level: int) -> None:
    assert breaker_level(state) == level


def test_documents_by_environment() -> None:
    fields = {"completed:index": 9, "completed:dev:index": 7, "failed:prod:acte": 2, "x:y:z": 1}
    assert documents_by_environment(fields) == {
        ("dev", "index", "completed"): 7,
        ("prod", "acte", "failed"): 2,
    }


def promtool() -> str | None:
    return os.environ.get("OCR_PROMTOOL") or shutil.which("promtool")


def test_promtool_checks_and_replays_the_rules() -> None:
    tool = promtool()
    if tool is None:
        tool_missing("promtool not installed (see this module's docstring); rules checked above")
    check = subprocess.run(
        [tool, "check", "rules", "alerts.yml"], cwd=DOCKER, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 7 rules found" in check.stdout
    replay = subprocess.run(
        [tool, "test", "rules", "alerts.test.yml"], cwd=DOCKER, capture_output=True, text=True
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
