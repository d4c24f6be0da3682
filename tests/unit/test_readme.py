"""The README stays true: every setting documented, the test command is CI's."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.config import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_documented(field: str) -> None:
    assert f"`{field.upper()}`" in README, f"{field.upper()} is missing from the README"


def test_quick_start_is_two_commands_and_ci_runs_the_test_one() -> None:
    quick = README.split("## Quick start", 1)[1].split("```", 2)[1]
    commands = [
        ln.split("#")[0].strip()
        for ln in quick.splitlines()
        if ln.strip() and not ln.startswith("sh")
    ]
    assert commands == ["make demo", "make test"], commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci


@pytest.mark.parametrize(
    "key",
    [
        "gemini:rpm:current",
        "gemini:tpm:current",
        "gemini:workers",
        "worker_pool:allocation",
        "worker_pool:assignments",
        "server:cpu:allocated",
        "server:ram:allocated",
    ],
)
def test_contract_keys_are_documented(key: str) -> None:
    assert key in README
