"""`supabase/migrations` generated from `control_plane/sql` (one source; issue 12).

    python -m control_plane.queue.supabase_export          # write the files
    python -m control_plane.queue.supabase_export --check  # exit 1 if out of date

The Supabase CLI applies each migration file once, in version order, inside a
transaction. So:
- each versioned `NNN_<stem>.sql` becomes `<version>_ocr_queue_<stem>.sql`; a file already
  exported keeps its version (its text is refreshed), a new one gets the next version;
- the repeatable `002_functions.sql` is exported as a new file
  `<version>_ocr_queue_functions_r<k>.sql` each time its text changes (the CLI would not
  re-run an applied version), always after every versioned file;
- `CREATE/DROP INDEX CONCURRENTLY` lose `CONCURRENTLY` (not allowed in a transaction).
  On a large busy table prefer `python scheduler.py migrate`, which builds them
  concurrently.
`tests/unit/test_supabase_export.py` fails when the folder is not what this writes.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from control_plane.queue.migrate import SqlFile, sql_files

PREFIX = "ocr_queue_"
FIRST_VERSION = 20250601000001
FUNCTIONS_STEM = "functions"
HEADER = (
    "-- GENERATED from control_plane/sql/{source} by "
    "`python -m control_plane.queue.supabase_export`; do not edit.\n"
)
_NAME_RE = re.compile(r"^(\d+)_" + PREFIX + r"(.+)\.sql$")
_CONCURRENTLY = re.compile(
    r"(\b(?:CREATE\s+(?:UNIQUE\s+)?INDEX|DROP\s+INDEX))\s+CONCURRENTLY\b", re.I
)
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "supabase" / "migrations"


def stem(sql_name: str) -> str:
    """`001_schema.sql` -> `schema`."""
    return sql_name.removesuffix(".sql").split("_", 1)[1]


def supabase_text(f: SqlFile) -> str:
    """The file's SQL as a Supabase migration (no CONCURRENTLY, a generated-by header)."""
    return HEADER.format(source=f.name) + _CONCURRENTLY.sub(r"\1", f.text)


def export(files: Sequence[SqlFile], existing: Mapping[str, str]) -> dict[str, str]:
    """Pure: the whole folder ({file name: text}) for these SQL files and the current folder.

    `existing` is the folder now; files not produced by us (other names) are kept.
    """
    out = dict(existing)
    versions: dict[str, int] = {}  # stem -> version, for exported files
    for name in existing:
        m = _NAME_RE.match(name)
        if m:
            versions[m.group(2)] = int(m.group(1))
    top = max([FIRST_VERSION - 1, *versions.values()])
    for f in sorted(files, key=lambda f: f.name):
        if f.repeatable:
            continue
        s = stem(f.name)
        if s in versions:
            name = f"{versions[s]}_{PREFIX}{s}.sql"
        else:
            top += 1
            versions[s] = top
            name = f"{top}_{PREFIX}{s}.sql"
        out[name] = supabase_text(f)
    for f in files:
        if not f.repeatable:
            continue
        revisions = sorted(
            (v, s) for s, v in versions.items() if re.fullmatch(rf"{FUNCTIONS_STEM}(_r\d+)?", s)
        )
        text = supabase_text(f)
        if revisions:
            latest_version, latest_stem = revisions[-1]
            if out.get(f"{latest_version}_{PREFIX}{latest_stem}.sql") == text:
                continue
        s = FUNCTIONS_STEM if not revisions else f"{FUNCTIONS_STEM}_r{len(revisions) + 1}"
        top = max(versions.values(), default=FIRST_VERSION - 1) + 1
        versions[s] = top
        out[f"{top}_{PREFIX}{s}.sql"] = text
    return out


def read_folder(folder: Path = MIGRATIONS_DIR) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.sql"))}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    current = read_folder()
    wanted = export(sql_files(), current)
    stale = sorted(n for n in wanted if current.get(n) != wanted[n])
    if "--check" in args:
        if stale:
            print(
                "supabase/migrations is out of date for: " + ", ".join(stale) + "; run "
                "python -m control_plane.queue.supabase_export",
                file=sys.stderr,
            )
            return 1
        return 0
    MIGRATIONS_DIR.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (MIGRATIONS_DIR / name).write_text(wanted[name], encoding="utf-8")
        print(f"wrote supabase/migrations/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
