"""Pure parts of issue 12: security statements, pooler detection, secret-free DB errors."""

from __future__ import annotations

import pytest

from control_plane.errors import PermanentError
from control_plane.queue.pooler import (
    check_dsn,
    is_transaction_pooler,
    libpq_dsn,
    safe_db_error,
)
from control_plane.queue.security import SecurityFacts, TableFacts, security_statements

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (SecurityFacts(), []),
        (SecurityFacts((TableFacts("extraction_queue", True),)), []),
        (
            SecurityFacts((TableFacts("extraction_queue", False),)),
            ["ALTER TABLE public.extraction_queue ENABLE ROW LEVEL SECURITY;"],
        ),
        (
            SecurityFacts(
                (
                    TableFacts(
                        "extraction_queue",
                        False,
                        ("anon", "authenticated"),
                        (("public.extraction_queue_id_seq", ("anon",)),),
                    ),
                ),
                {"ocr_counts()": ("anon",)},
            ),
            [
                "ALTER TABLE public.extraction_queue ENABLE ROW LEVEL SECURITY;",
                "REVOKE ALL ON TABLE public.extraction_queue FROM PUBLIC, anon, authenticated;",
                "REVOKE ALL ON SEQUENCE public.extraction_queue_id_seq FROM PUBLIC, anon;",
                "REVOKE ALL ON FUNCTION public.ocr_counts() FROM PUBLIC, anon;",
            ],
        ),
        (
            SecurityFacts((TableFacts("ocr_status", True, ("authenticated",)),)),
            ["REVOKE ALL ON TABLE public.ocr_status FROM PUBLIC, authenticated;"],
        ),
    ],
)
def test_security_statements(facts: SecurityFacts, expected: list[str]) -> None:
    assert security_statements(facts) == expected


@pytest.mark.parametrize(
    ("dsn", "pooler"),
    [
        ("postgresql://u:p@aws-0-eu.pooler.supabase.com:6543/postgres", True),
        ("postgresql://u:p@aws-0-eu.pooler.supabase.com:5432/postgres", False),
        ("postgresql://u:p@db.abcd.supabase.co/postgres", False),
        ("postgresql://u:p@127.0.0.1:6432/db?pool_mode=transaction", True),
        ("postgresql://u:p@127.0.0.1:6432/db?pool_mode=session", False),
        ("host=127.0.0.1 port=6543 dbname=x", True),
        ("host=127.0.0.1 port=5432 dbname=x", False),
    ],
)
def test_transaction_pooler_detection(dsn: str, pooler: bool) -> None:
    assert is_transaction_pooler(dsn) is pooler


def test_pool_mode_parameter_never_reaches_libpq() -> None:
    assert libpq_dsn("postgresql://u@h:6432/db?pool_mode=transaction&sslmode=require") == (
        "postgresql://u@h:6432/db?sslmode=require"
    )


@pytest.mark.parametrize(
    "dsn",
    ["postgresql://u:se%zzcret@h/db", "postgresql://u:secret%@h/db", "postgresql://u%q:pw@h/db"],
)
def test_a_bad_percent_escape_is_refused_without_showing_it(dsn: str) -> None:
    with pytest.raises(PermanentError) as info:
        check_dsn(dsn, "DEV_DATABASE_URL")
    assert "cret" not in str(info.value) and "%zz" not in str(info.value)
    assert "DEV_DATABASE_URL" in str(info.value)


def test_good_escapes_pass() -> None:
    check_dsn("postgresql://u:p%40ss%25w@h:5432/db")


def test_safe_db_error_hides_the_password_and_quoted_tokens() -> None:
    dsn = "postgresql://u:Sup3r%2Fsecret@h/db"
    text = safe_db_error('FATAL: bad thing near "Sup3r/secret" and Sup3r%2Fsecret', dsn)
    assert "Sup3r" not in text
    assert "(hidden)" in safe_db_error('invalid percent-encoded token: "se%zzcret"')
    assert "zzcret" not in safe_db_error('invalid percent-encoded token: "se%zzcret"\n')
