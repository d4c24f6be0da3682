"""Event logging with loguru: stable event names, structured fields, no secrets.

Every event is `log_event("name", field=value, ...)`; the name goes in the
`action` field so logs can be searched and counted. Human output (the banner,
the status block) is printed separately. Every sink scrubs known secret values, and any
URL credentials or secret query parameters (control_plane.urls), exceptions included.

One log stream (issue 11): the standard `logging` of every library (APScheduler,
psycopg_pool, dramatiq, httpx, supabase, google-genai...) is routed into the same loguru
sink, format and scrubber; a library's lines carry its logger name as their action.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import traceback
import warnings
from collections.abc import Iterable
from typing import Any

from loguru import logger

from control_plane.urls import redact_text

_SECRETS: list[str] = []
REDACTED = "***"
_LINE = "_line"  # the extra field carrying the formatted line (see _as_field)


def scrub(text: str) -> str:
    """Replace every registered secret in `text`, and any URL credentials."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return redact_text(text)


def register_secrets(values: Iterable[str]) -> None:
    """Remember secret values so no sink ever writes them."""
    for value in values:
        if not value or len(value) < 4:
            continue
        # The JSON sink scrubs dumped text, where `"`, `\` and control characters are
        # escaped: the escaped form is a secret too.
        escaped = json.dumps(value, ensure_ascii=False)[1:-1]
        for form in {value, escaped}:
            if form not in _SECRETS:
                _SECRETS.append(form)
    _SECRETS.sort(key=len, reverse=True)


def _human_format(record: Any) -> str:
    extra = {k: v for k, v in record["extra"].items() if k not in ("action", _LINE)}
    action = record["extra"].get("action", "")
    fields = " ".join(f"{k}={_fmt(v)}" for k, v in extra.items())
    line = (
        f"{record['time']:%Y-%m-%d %H:%M:%S.%f} {record['level'].name:<7} {record['process'].id} "
    )
    line += f"{action or record['name']} {record['message']} {fields}".rstrip()
    trace = _traceback(record)
    return _as_field(record, scrub(f"{line}\n{trace}".rstrip("\n") if trace else line))


def _json_format(record: Any) -> str:
    payload = {
        "ts": record["time"].isoformat(),
        "level": record["level"].name,
        "pid": record["process"].id,
        "action": record["extra"].get("action"),
        "message": record["message"],
        **{k: v for k, v in record["extra"].items() if k not in ("action", _LINE)},
    }
    trace = _traceback(record)
    if trace:  # inside the object: one JSON object per line, tracebacks included
        payload["exception"] = trace
    text = scrub(json.dumps(payload, default=str, ensure_ascii=False))
    return _as_field(record, text)


def _as_field(record: Any, text: str) -> str:
    """A format that prints `text` as is: loguru parses a returned format for `{}` fields
    and `<color>` markup, so a message quoting a document (`not a PDF (starts with
    b'<html>...')`) broke the sink; a field's value is never parsed."""
    record["extra"][_LINE] = text
    return "{extra[" + _LINE + "]}\n"


def _traceback(record: Any) -> str:
    """The record's traceback as text, formatted here rather than by loguru's {exception}
    so the scrubber sees it."""
    exc = record["exception"]
    if exc is None or exc.type is None:
        return ""
    return "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    text = str(value)
    return json.dumps(text) if " " in text else text


def setup_logging(
    level: str = "INFO", *, json_lines: bool = False, secrets: Iterable[str] = ()
) -> None:
    """Route loguru to stderr with our format; call once per process."""
    register_secrets(secrets)
    # Libraries speak at WARNING and above unless we debug; INFO stays ours (and Dramatiq's).
    route_stdlib_logging("DEBUG" if level.upper() in ("TRACE", "DEBUG") else "INFO")
    logger.remove()
    logger.add(
        sys.stderr,
        level=level.upper(),
        format=_json_format if json_lines else _human_format,
        backtrace=False,
        diagnose=False,  # diagnose would print local variables, secrets included
        enqueue=False,
    )


class _ToLoguru(logging.Handler):
    """Routes a standard `logging` record into loguru (same sink, format, scrubber)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string must not lose the line
            message = str(record.msg)
        logger.bind(action=record.name).opt(exception=record.exc_info or None).log(level, message)


# Libraries that log every request or job run at INFO: kept to their warnings.
_CHATTY = ("apscheduler", "google_genai", "httpx", "httpx2", "httpcore", "hpack")


def route_stdlib_logging(level: str = "INFO") -> None:
    """Send every library's `logging` output to loguru; replaces handlers set before
    (dramatiq's basicConfig in its worker processes, for one)."""
    root = logging.getLogger()
    root.handlers[:] = [_ToLoguru()]
    root.setLevel(level.upper())
    for name in list(logging.root.manager.loggerDict):
        existing = logging.getLogger(name)
        if existing.handlers:
            existing.handlers[:] = []
            existing.propagate = True
    if level.upper() != "DEBUG":
        for name in _CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)
    # Python's own printing bypassed the sink (plain text in a JSON stream, unscrubbed):
    # warnings, and exceptions that escape a thread or the main program.
    warnings.showwarning = _showwarning
    threading.excepthook = _thread_excepthook
    sys.excepthook = _excepthook


def _showwarning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    text = warnings.formatwarning(message, category, filename, lineno, line).strip()
    logger.bind(action="py.warnings").warning(text)


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logger.bind(action="thread.crashed").opt(
        exception=(args.exc_type, args.exc_value, args.exc_traceback)
    ).error(f"uncaught exception in thread {name}")


def _excepthook(exc_type: Any, exc_value: Any, exc_traceback: Any) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc_value, exc_traceback)
        return
    logger.bind(action="process.crashed").opt(
        exception=(exc_type, exc_value, exc_traceback)
    ).critical("uncaught exception")


def log_event(action: str, message: str = "", *, level: str = "INFO", **fields: Any) -> None:
    """Log one named event with structured fields."""
    logger.bind(action=action, **fields).opt(depth=1).log(level, message)
