"""One URL parser for descriptions and scrubbing: every form of credentials is found."""

from __future__ import annotations

import pytest

from control_plane.urls import describe_url, parse_url, redact_text, url_secrets

pytestmark = pytest.mark.unit

# (url, password found, secrets, description)
CASES = [
    ("redis://localhost:6379", None, [], "redis://localhost:6379"),
    (
        "redis://:s3cretPW@cache.example:6380/2",
        "s3cretPW",
        ["s3cretPW"],
        "redis://cache.example:6380/2",
    ),
    (
        "rediss://default:s3cretPW@cache.example:6380/0",
        "s3cretPW",
        ["s3cretPW"],
        "rediss://cache.example:6380/0",
    ),
    (
        "redis://cache.example:6379/0?password=s3cretPW",
        None,
        ["s3cretPW"],
        "redis://cache.example:6379/0",
    ),
    (
        "redis://:p@ss@word!@cache.example:6379",
        "p@ss@word!",
        ["p@ss@word!"],
        "redis://cache.example:6379",
    ),
    (
        "postgresql://ocr:pa:ss/wd@db.example:5432/ocr?sslmode=require",
        "pa:ss/wd",
        ["pa:ss/wd"],
        "postgresql://db.example:5432/ocr",
    ),
    (
        "postgresql://ocr:p%40ss@db.example/ocr",
        "p%40ss",
        ["p%40ss", "p@ss"],
        "postgresql://db.example/ocr",
    ),
    (
        "postgresql://db.example/ocr?user=ocr&password=s3cretPW&sslmode=require",
        None,
        ["s3cretPW"],
        "postgresql://db.example/ocr",
    ),
    ("unix:///run/redis.sock?password=s3cretPW", None, ["s3cretPW"], "unix:///run/redis.sock"),
    ("abc.supabase.co", None, [], "abc.supabase.co"),
]


@pytest.mark.parametrize(("url", "password", "secrets", "shown"), CASES)
def test_every_credential_form(url, password, secrets, shown) -> None:
    assert parse_url(url).password == password
    assert sorted(url_secrets(url)) == sorted(secrets)
    assert describe_url(url) == shown
    for secret in secrets:
        assert secret not in redact_text(f"connecting to {url} failed"), (url, secret)


def test_scheme_is_empty_when_missing() -> None:
    assert not parse_url("abc.supabase.co").has_scheme
    assert parse_url("https://abc.supabase.co").has_scheme


def test_redact_text_keeps_what_is_not_secret() -> None:
    text = "Error 111 connecting to redis://:hunter22@10.0.0.5:6379/0. Connection refused."
    assert redact_text(text) == (
        "Error 111 connecting to redis://:***@10.0.0.5:6379/0. Connection refused."
    )
    assert redact_text("GET https://x.example/doc.pdf?token=abc&page=2") == (
        "GET https://x.example/doc.pdf?token=***&page=2"
    )


def test_banner_and_describe_helpers_hide_every_form() -> None:
    from control_plane.config import load_settings
    from control_plane.redis_conn import describe_redis
    from control_plane.scheduler.banner import render_banner

    settings = load_settings(
        _env_file=None,
        redis_url="redis://:p@ss@word-REDIS@cache.example:6380/0?password=QUERY-secret",
        dev_database_url="postgresql://ocr@db.example/ocr?password=DB-secret",
        dev_supabase_url="https://user:SUPA-pw@abc.supabase.co",
        dev_supabase_service_key="SERVICE-key-0123456789",
        gemini_base_url="http://127.0.0.1:8090/?key=GEMKEY-in-url",
        gemini_api_key="GEMKEY-0123456789",
    )
    text = render_banner(settings, owner="h:1:x", allocation=None, assignments={}, leading=True)
    text += describe_redis(settings.redis_url.get_secret_value())
    text += "".join(e.describe() for e in settings.environments)
    for secret in (
        "p@ss@word-REDIS",
        "word-REDIS",
        "QUERY-secret",
        "DB-secret",
        "SUPA-pw",
        "SERVICE-key",
        "GEMKEY",
    ):
        assert secret not in text, (secret, text)
    assert "cache.example:6380/0" in text and "abc.supabase.co" in text
