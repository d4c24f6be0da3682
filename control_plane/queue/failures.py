"""Documents in ERREUR: grouped by reason (`errors`) and put back to ready (`requeue`).

Values and their parsing from `ocr_errors` / `ocr_requeue` rows (psycopg dicts or
PostgREST JSON alike), plus the pure rendering of both commands' output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

REASON_WIDTH = 160  # characters of a reason shown; the full text stays in the row


@dataclass(frozen=True)
class ErrorGroup:
    """Documents of one environment and type in ERREUR with the same message."""

    environment: str
    document_source: str
    reason: str
    documents: int
    oldest: datetime | None
    newest: datetime | None
    sample_ids: tuple[int, ...]


@dataclass(frozen=True)
class RequeueRow:
    """A document in ERREUR that a requeue changes (or would change, in a dry run)."""

    environment: str
    id: int
    document_source: str
    attempts: int
    error_message: str
    failed_at: datetime | None


@dataclass(frozen=True)
class RequeueFilter:
    """What `requeue` selects: every given filter must match (None = any)."""

    document_source: str | None = None
    reason: str | None = None
    ids: tuple[int, ...] | None = None

    def is_empty(self) -> bool:
        return self.document_source is None and self.reason is None and not self.ids


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def error_groups(environment: str, rows: Iterable[Mapping[str, Any]]) -> list[ErrorGroup]:
    """Rows of `ocr_errors` as values."""
    return [
        ErrorGroup(
            environment=environment,
            document_source=str(r["document_source"]),
            reason=str(r["reason"] or ""),
            documents=int(r["documents"]),
            oldest=_time(r["oldest"]),
            newest=_time(r["newest"]),
            sample_ids=tuple(int(i) for i in (r["sample_ids"] or [])),
        )
        for r in rows
    ]


def requeue_rows(environment: str, rows: Iterable[Mapping[str, Any]]) -> list[RequeueRow]:
    """Rows of `ocr_requeue` as values."""
    return [
        RequeueRow(
            environment=environment,
            id=int(r["id"]),
            document_source=str(r["document_source"]),
            attempts=int(r["attempts"]),
            error_message=str(r["error_message"] or ""),
            failed_at=_time(r["failed_at"]),
        )
        for r in rows
    ]


def _short(text: str, width: int = REASON_WIDTH) -> str:
    one_line = " ".join(text.split()) or "(no message)"
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


def _stamp(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def render_errors(groups: Sequence[ErrorGroup], unreachable: Mapping[str, str]) -> str:
    """`python scheduler.py errors`: per environment and type, largest group first."""
    lines: list[str] = []
    total = sum(g.documents for g in groups)
    lines.append(f"Documents in ERREUR (status 4): {total:,}")
    current: tuple[str, str] | None = None
    for g in sorted(groups, key=lambda g: (g.environment, g.document_source, -g.documents)):
        if (g.environment, g.document_source) != current:
            current = (g.environment, g.document_source)
            subtotal = sum(
                x.documents for x in groups if (x.environment, x.document_source) == current
            )
            lines += ["", f"{g.environment} / {g.document_source}: {subtotal:,}"]
        samples = ", ".join(str(i) for i in g.sample_ids)
        more = ", …" if g.documents > len(g.sample_ids) else ""
        lines.append(f"  {g.documents:>6,}  {_short(g.reason)}")
        lines.append(
            f"          oldest {_stamp(g.oldest)}  newest {_stamp(g.newest)}  ids {samples}{more}"
        )
    for env, why in sorted(unreachable.items()):
        lines += ["", f"{env}: unavailable ({why})"]
    if groups:
        lines += [
            "",
            "Put documents back to ready: python scheduler.py requeue --env E --type T "
            "--reason TEXT (dry run; add --yes to apply)",
        ]
    return "\n".join(lines)


def render_requeue(rows: Sequence[RequeueRow], *, applied: bool) -> str:
    """`python scheduler.py requeue`: what changed, or what would change."""
    head = "Requeued" if applied else "Would requeue (dry run, nothing changed)"
    lines = [f"{head}: {len(rows):,} document(s)"]
    for r in rows:
        lines.append(
            f"  {r.environment:<8} {r.id:>10}  {r.document_source:<5}  attempts {r.attempts}  "
            f"failed {_stamp(r.failed_at)}  {_short(r.error_message, 100)}"
        )
    if applied and rows:
        lines.append(
            "Each is ready again (status 3) with its attempts reset; its previous error is "
            "kept in ocr_error_history."
        )
    elif rows:
        lines.append("Run again with --yes to apply.")
    return "\n".join(lines)
