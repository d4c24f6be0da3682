"""Token estimates and the tokens-per-page learning arithmetic (pure)."""

from __future__ import annotations

import pytest

from control_plane.gemini.estimate import (
    MAX_TOKENS_PER_PAGE,
    estimate_prompt_tokens,
    estimate_tokens,
    ewma,
    per_page_sample,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("pages", "per_page", "prompt", "expected"),
    [
        (1, 258.0, 300, 558),
        (20, 258.0, 300, 5460),
        (3, 560.0, 0, 1680),
        (3, 258.5, 10, 786),
        (0, 258.0, 300, 300),
    ],
)
def test_estimate_is_pages_times_per_page_plus_prompt(pages, per_page, prompt, expected) -> None:
    assert estimate_tokens(pages, per_page, prompt) == expected


def test_estimate_rejects_negative_inputs() -> None:
    with pytest.raises(ValueError):
        estimate_tokens(-1, 258.0, 0)


@pytest.mark.parametrize(
    ("text", "expected"), [("", 0), ("abcd", 1), ("abcde", 2), ("x" * 1200, 300)]
)
def test_prompt_tokens_are_a_quarter_of_the_characters(text: str, expected: int) -> None:
    assert estimate_prompt_tokens(text) == expected


@pytest.mark.parametrize(
    ("pages", "prompt_text", "actual", "document", "expected"),
    [
        (2, 300, 816, None, 258.0),  # total minus the prompt's estimated share
        (2, 300, 816, 1120, 560.0),  # the DOCUMENT modality count wins when present
        (4, 300, 300, None, None),  # no document tokens at all: not a sample
        (0, 300, 816, None, None),  # no pages
        (1, 300, 250, None, None),  # negative: the prompt estimate was high, say nothing
        (1, 0, int(MAX_TOKENS_PER_PAGE) + 1, None, None),  # absurd: ignored
        (1, 300, 310, 0, None),  # zero DOCUMENT count: fall back; 10/page is below the floor
    ],
)
def test_per_page_sample(pages, prompt_text, actual, document, expected) -> None:
    assert per_page_sample(pages, prompt_text, actual, document) == expected


def test_first_sample_replaces_the_default_then_ewma_moves_gradually() -> None:
    first = ewma(None, 560.0, default=258.0)
    assert first == 560.0
    second = ewma(first, 600.0, default=258.0, weight=0.25)
    assert second == pytest.approx(570.0)


def test_ewma_converges_to_a_steady_sample() -> None:
    value: float | None = None
    for _ in range(30):
        value = ewma(value, 300.0, default=258.0)
    assert value == pytest.approx(300.0)
