"""What the seed's screens share: the rule, emoji or plain marks, number formats.

Emoji go to a terminal; anything else (a log file, a pipe, `docker logs`) gets
the same lines with the emoji dropped, so a grep for a label works either way.
"""

from __future__ import annotations

from typing import TextIO

RULE = "=" * 60


def wants_emoji(stream: TextIO | None) -> bool:
    """Emoji only when the stream is a terminal."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):
        return False


def mark(symbol: str, text: str, emoji: bool) -> str:
    """`symbol text` on a terminal, `text` elsewhere (the seed's spacing kept)."""
    return f"{symbol} {text}" if emoji else text


def pct(used: float, limit: float) -> str:
    """The seed's percentages: one decimal, `0.8%`."""
    return f"{(100.0 * used / limit) if limit else 0.0:.1f}%"


def amount(value: float) -> str:
    """The seed's CPU/RAM figures: up to two decimals, no trailing zeros (5.5, 3.25, 12.8)."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text
