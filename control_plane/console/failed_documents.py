"""`python scheduler.py errors` and `python scheduler.py requeue` (thin shells).

Both work on every configured environment, over direct Postgres or the Supabase
transport alike (the same SQL functions, `ocr_errors` and `ocr_requeue`).
"""

from __future__ import annotations

import getpass
import json
import socket
import sys
from dataclasses import asdict
from typing import Any, TextIO

from control_plane.config import DOCUMENT_TYPES, Settings
from control_plane.errors import OcrPoolError
from control_plane.logs import log_event
from control_plane.queue.environments import store_for
from control_plane.queue.failures import (
    ErrorGroup,
    RequeueFilter,
    RequeueRow,
    render_errors,
    render_requeue,
)


class UsageError(Exception):
    """A bad filter on the command line (exit 2)."""


def selected_environments(settings: Settings, wanted: str | None) -> list[Any]:
    """The environments a command applies to; an unknown name is a usage error."""
    envs = settings.environments
    if wanted is None:
        return list(envs)
    chosen = [e for e in envs if e.name == wanted.lower()]
    if not chosen:
        known = ", ".join(e.name for e in envs)
        raise UsageError(f"--env {wanted}: not a configured environment (configured: {known})")
    return chosen


def _check_type(document_type: str | None) -> None:
    if document_type is not None and document_type not in DOCUMENT_TYPES:
        raise UsageError(f"--type {document_type}: expected one of {', '.join(DOCUMENT_TYPES)}")


def _json_default(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def run_errors(
    settings: Settings,
    *,
    env: str | None,
    document_type: str | None,
    as_json: bool,
    samples: int = 5,
    out: TextIO = sys.stdout,
) -> int:
    """Print the documents in ERREUR grouped by reason; 1 when an environment failed."""
    _check_type(document_type)
    groups: list[ErrorGroup] = []
    unreachable: dict[str, str] = {}
    for env_config in selected_environments(settings, env):
        store = store_for(env_config)
        try:
            found = store.errors(samples)  # type: ignore[attr-defined]
        except OcrPoolError as exc:
            unreachable[env_config.name] = str(exc)[:200]
            continue
        finally:
            store.close()
        groups += [g for g in found if document_type in (None, g.document_source)]
    if as_json:
        payload = {"groups": [asdict(g) for g in groups], "unavailable": unreachable}
        print(json.dumps(payload, default=_json_default, indent=2), file=out)
    else:
        print(render_errors(groups, unreachable), file=out)
    return 1 if unreachable else 0


def run_requeue(
    settings: Settings,
    *,
    env: str | None,
    document_type: str | None,
    reason: str | None,
    ids: list[int] | None,
    everything: bool,
    apply: bool,
    out: TextIO = sys.stdout,
) -> int:
    """List (dry run) or apply the requeue; 1 when an environment failed, 2 on bad filters."""
    _check_type(document_type)
    selection = RequeueFilter(
        document_source=document_type,
        reason=reason if reason else None,
        ids=tuple(ids) if ids else None,
    )
    if selection.is_empty() and env is None and not everything:
        raise UsageError(
            "requeue needs a filter (--env, --type, --reason, --id) or --all for every "
            "document in ERREUR"
        )
    by = f"{socket.gethostname()}:{_user()}"
    changed: list[RequeueRow] = []
    failed: dict[str, str] = {}
    for env_config in selected_environments(settings, env):
        store = store_for(env_config)
        try:
            rows = store.requeue(selection, apply=apply, requeued_by=by)  # type: ignore[attr-defined]
        except OcrPoolError as exc:
            failed[env_config.name] = str(exc)[:200]
            continue
        finally:
            store.close()
        changed += rows
        if apply and rows:
            log_event(
                "queue.requeued",
                f"{len(rows)} document(s) in ERREUR back to ready",
                environment=env_config.name,
                count=len(rows),
                document_source=document_type or "any",
                reason=reason or "any",
            )
    print(render_requeue(changed, applied=apply), file=out)
    for name, why in sorted(failed.items()):
        print(f"{name}: unavailable ({why})", file=out)
    return 1 if failed else 0


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
