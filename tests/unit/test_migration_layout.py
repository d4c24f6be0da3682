"""Migration layout (issue 12): statement splitting, what runs outside a transaction,
which files are pending, and the Supabase export (tables of cases)."""

from __future__ import annotations

import pytest

from control_plane.queue.migrate import (
    REPEATABLE,
    SqlFile,
    batches,
    changed_after_applied,
    is_concurrent,
    pending,
    split_statements,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT 1; SELECT 2;", ["SELECT 1", "SELECT 2"]),
        ("SELECT 1", ["SELECT 1"]),
        ("-- only a comment\n", []),
        ("SELECT ';' AS semi; SELECT 2", ["SELECT ';' AS semi", "SELECT 2"]),
        ("SELECT 'it''s; fine'; SELECT 3", ["SELECT 'it''s; fine'", "SELECT 3"]),
        ('SELECT 1 AS "a;b"; SELECT 2', ['SELECT 1 AS "a;b"', "SELECT 2"]),
        ("-- a; comment\nSELECT 1;", ["-- a; comment\nSELECT 1"]),
        (
            "/* a; /* nested; */ b; */ SELECT 1; SELECT 2",
            ["/* a; /* nested; */ b; */ SELECT 1", "SELECT 2"],
        ),
        (
            "DO $$ BEGIN PERFORM 1; PERFORM 2; END $$; SELECT 3;",
            ["DO $$ BEGIN PERFORM 1; PERFORM 2; END $$", "SELECT 3"],
        ),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $fn$ SELECT 1; $fn$; SELECT 4",
            ["CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $fn$ SELECT 1; $fn$", "SELECT 4"],
        ),
        ("SELECT $1::int; SELECT 5", ["SELECT $1::int", "SELECT 5"]),  # a parameter, not a tag
        ("SELECT 1;\n-- trailing comment\n", ["SELECT 1"]),
    ],
)
def test_split_statements(text: str, expected: list[str]) -> None:
    assert split_statements(text) == expected


@pytest.mark.parametrize(
    ("statement", "concurrent"),
    [
        ("CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a)", True),
        ("create unique index concurrently i on t (a)", True),
        ("-- why\nCREATE INDEX CONCURRENTLY i ON t (a)", True),
        ("DROP INDEX CONCURRENTLY IF EXISTS i", True),
        ("REINDEX INDEX CONCURRENTLY i", True),
        ("CREATE INDEX IF NOT EXISTS i ON t (a)", False),
        ("DO $$ BEGIN EXECUTE 'CREATE INDEX CONCURRENTLY i ON t (a)'; END $$", False),
        ("ALTER TABLE t ADD COLUMN c int", False),
    ],
)
def test_is_concurrent(statement: str, concurrent: bool) -> None:
    assert is_concurrent(statement) is concurrent


def test_batches_group_ordinary_statements_and_isolate_concurrent_ones() -> None:
    stmts = [
        "A",
        "B",
        "CREATE INDEX CONCURRENTLY i ON t (a)",
        "C",
        "DROP INDEX CONCURRENTLY j",
        "D",
    ]
    assert batches(stmts) == [
        (False, ["A", "B"]),
        (True, ["CREATE INDEX CONCURRENTLY i ON t (a)"]),
        (False, ["C"]),
        (True, ["DROP INDEX CONCURRENTLY j"]),
        (False, ["D"]),
    ]


def test_transaction_control_in_a_file_is_left_to_the_runner() -> None:
    stmts = ["BEGIN", "A", "commit", "-- done\nEND TRANSACTION", "START TRANSACTION", "B"]
    assert batches(stmts) == [(False, ["A", "B"])]
    assert batches(["BEGIN ATOMIC SELECT 1"]) == [(False, ["BEGIN ATOMIC SELECT 1"])]


def _files() -> list[SqlFile]:
    return [
        SqlFile("014_history.sql", "h"),
        SqlFile("001_schema.sql", "s"),
        SqlFile(REPEATABLE, "f"),
        SqlFile("010_fencing.sql", "x"),
    ]


@pytest.mark.parametrize(
    ("applied", "expected"),
    [
        ({}, ["001_schema.sql", "010_fencing.sql", "014_history.sql", REPEATABLE]),
        (
            {"001_schema.sql": SqlFile("", "s").checksum},
            ["010_fencing.sql", "014_history.sql", REPEATABLE],
        ),
        (
            {
                "001_schema.sql": "old",  # changed after it was applied: not re-run
                "010_fencing.sql": SqlFile("", "x").checksum,
                "014_history.sql": SqlFile("", "h").checksum,
                REPEATABLE: SqlFile("", "f").checksum,
            },
            [],
        ),
        (
            {
                "001_schema.sql": SqlFile("", "s").checksum,
                "010_fencing.sql": SqlFile("", "x").checksum,
                "014_history.sql": SqlFile("", "h").checksum,
                REPEATABLE: "an older version",
            },
            [REPEATABLE],
        ),
        (
            {"001_schema.sql": "s", REPEATABLE: SqlFile("", "f").checksum},
            ["010_fencing.sql", "014_history.sql"],
        ),
    ],
)
def test_pending_versioned_once_in_name_order_then_repeatable_on_change(
    applied: dict[str, str], expected: list[str]
) -> None:
    assert [f.name for f in pending(_files(), applied)] == expected


def test_a_changed_versioned_file_is_reported() -> None:
    applied = {
        "001_schema.sql": "old",
        "010_fencing.sql": SqlFile("", "x").checksum,
        REPEATABLE: "z",
    }
    assert changed_after_applied(_files(), applied) == ["001_schema.sql"]
