"""`.env.example` lists every setting, nothing else, each with the setting's own default."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from control_plane.config import Settings

pytestmark = pytest.mark.unit

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")
# Derived, so a field added to Settings without a line here fails the tests.
FIELDS = {name.upper() for name in Settings.model_fields}


def parse_env_example() -> list[tuple[int, str, str]]:
    """(line number, name, value) for every assignment; fails on a malformed line."""
    entries = []
    for number, raw in enumerate(ENV_EXAMPLE.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        assert match, f".env.example:{number}: not NAME=value: {raw!r}"
        entries.append((number, match.group(1), match.group(2)))
    return entries


def test_every_variable_is_a_setting() -> None:
    unknown = sorted({name for _, name, _ in parse_env_example()} - FIELDS)
    assert not unknown, f"in .env.example but not read by Settings: {unknown}"


def test_every_setting_is_listed() -> None:
    missing = sorted(FIELDS - {name for _, name, _ in parse_env_example()})
    assert not missing, f"Settings fields missing from .env.example: {missing}"


def test_each_variable_once_with_a_comment_above() -> None:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    seen: set[str] = set()
    for number, name, _ in parse_env_example():
        assert name not in seen, f".env.example:{number}: {name} is listed twice"
        seen.add(name)
        above = lines[number - 2].strip() if number >= 2 else ""
        assert above.startswith("# "), f".env.example:{number}: {name} has no comment line above"


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting from the process environment or a stray .env may leak in."""
    for name in list(os.environ):
        if name.upper() in FIELDS:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("clean_environment")
def test_loading_the_example_gives_the_defaults() -> None:
    # Loaded through pydantic-settings itself, so quoting and empty values are read
    # exactly as a user's .env would be.
    from_example = Settings(_env_file=ENV_EXAMPLE)  # type: ignore[call-arg]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    differing = {
        name.upper(): (_plain(getattr(from_example, name)), _plain(getattr(defaults, name)))
        for name in Settings.model_fields
        if _plain(getattr(from_example, name)) != _plain(getattr(defaults, name))
    }
    assert not differing, f".env.example value vs Settings default: {differing}"


def test_secrets_are_placeholders() -> None:
    secret_fields = {
        name.upper()
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    }
    for number, name, value in parse_env_example():
        if name in secret_fields:
            # REDIS_URL's default carries no credentials; every other secret is empty.
            assert value == "" or "@" not in value, (
                f".env.example:{number}: {name} must be a placeholder, not a credential"
            )


def _plain(value: object) -> object:
    return value.get_secret_value() if isinstance(value, SecretStr) else value
