"""Event logging with loguru: stable event names, structured fields, no secrets.

Every event is `log_event("name", field=value, ...)`; the name goes in the
`action` field so logs can be searched and counted. Human output (the banner,
the status block) is printed separately. Every sink scrubs known secret values.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from loguru import logger

_SECRETS: list[str] = []
REDACTED = "***"
_LINE = "_line"  # the extra field carrying the formatted line (see _as_field)


def scrub(text: str) -> str:
    """Replace every registered secret in `text`."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def register_secrets(values: Iterable[str]) -> None:
    """Remember secret values so no sink ever writes them."""
    for value in values:
        if value and len(value) >= 4 and value not in _SECRETS:
            _SECRETS.append(value)
    _SECRETS.sort(key=len, reverse=True)


def _human_format(record: Any) -> str:
    extra = {k: v for k, v in record["extra"].items() if k not in ("action", _LINE)}
    action = record["extra"].get("action", "")
    fields = " ".join(f"{k}={_fmt(v)}" for k, v in extra.items())
    line = (
        f"{record['time']:%Y-%m-%d %H:%M:%S.%f} {record['level'].name:<7} {record['process'].id} "
    )
    line += f"{action or record['name']} {record['message']} {fields}".rstrip()
    return _as_field(record, scrub(line))


def _json_format(record: Any) -> str:
    payload = {
        "ts": record["time"].isoformat(),
        "level": record["level"].name,
        "pid": record["process"].id,
        "action": record["extra"].get("action"),
        "message": record["message"],
        **{k: v for k, v in record["extra"].items() if k not in ("action", _LINE)},
    }
    text = scrub(json.dumps(payload, default=str, ensure_ascii=False))
    return _as_field(record, text)


def _as_field(record: Any, text: str) -> str:
    """A format that prints `text` as is: loguru parses a returned format for `{}` fields
    and `<color>` markup, so a message quoting a document (`not a PDF (starts with
    b'<html>...')`) broke the sink; a field's value is never parsed."""
    record["extra"][_LINE] = text
    return "{extra[" + _LINE + "]}\n{exception}"


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
    logger.remove()
    logger.add(
        sys.stderr,
        level=level.upper(),
        format=_json_format if json_lines else _human_format,
        backtrace=False,
        diagnose=False,  # diagnose would print local variables, secrets included
        enqueue=False,
    )


def log_event(action: str, message: str = "", *, level: str = "INFO", **fields: Any) -> None:
    """Log one named event with structured fields."""
    logger.bind(action=action, **fields).opt(depth=1).log(level, message)
