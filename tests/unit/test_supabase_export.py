"""supabase/migrations is generated from control_plane/sql (one source; issue 12)."""

from __future__ import annotations

import pytest

from control_plane.queue.migrate import REPEATABLE, SqlFile, sql_files
from control_plane.queue.supabase_export import export, read_folder, supabase_text

pytestmark = pytest.mark.unit


def test_supabase_migrations_are_up_to_date() -> None:
    current = read_folder()
    wanted = export(sql_files(), current)
    stale = sorted(n for n in wanted if current.get(n) != wanted[n])
    assert not stale, (
        f"supabase/migrations out of date ({stale}): run "
        "`python -m control_plane.queue.supabase_export` and commit the result"
    )


def test_every_shipped_file_is_exported_without_concurrently() -> None:
    folder = read_folder()
    for f in sql_files():
        assert supabase_text(f) in folder.values(), f.name
    for name, text in folder.items():
        for line in text.splitlines():
            assert (
                not line.strip()
                .upper()
                .startswith(("CREATE INDEX CONCURRENTLY", "DROP INDEX CONCURRENTLY"))
            ), f"{name}: the Supabase CLI runs migrations in a transaction"


def test_export_assigns_versions_and_appends_function_revisions() -> None:
    files = [SqlFile("001_schema.sql", "S1"), SqlFile(REPEATABLE, "F1")]
    first = export(files, {})
    assert sorted(first) == [
        "20250601000001_ocr_queue_schema.sql",
        "20250601000002_ocr_queue_functions.sql",
    ]
    assert export(files, first) == first  # up to date: nothing new
    # a new versioned file and changed functions: both after everything shipped
    files = [
        SqlFile("001_schema.sql", "S1"),
        SqlFile("010_fencing.sql", "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a);"),
        SqlFile(REPEATABLE, "F2"),
    ]
    second = export(files, first)
    assert sorted(set(second) - set(first)) == [
        "20250601000003_ocr_queue_fencing.sql",
        "20250601000004_ocr_queue_functions_r2.sql",
    ]
    assert second["20250601000002_ocr_queue_functions.sql"].endswith("F1")  # history kept
    assert second["20250601000004_ocr_queue_functions_r2.sql"].endswith("F2")
    assert second["20250601000003_ocr_queue_fencing.sql"].endswith(
        "CREATE INDEX IF NOT EXISTS i ON t (a);"
    )
    assert export(files, second) == second
    # an edited versioned file keeps its version (its text is refreshed)
    files[0] = SqlFile("001_schema.sql", "S1 fixed")
    third = export(files, second)
    assert third["20250601000001_ocr_queue_schema.sql"].endswith("S1 fixed")
    assert len(third) == len(second)
