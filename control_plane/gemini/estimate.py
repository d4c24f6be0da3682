"""Input-token estimates before a Gemini call, and the per-page figure learned from answers.

Estimate = pages x tokens-per-page + prompt tokens. Gemini documents 258 tokens
per PDF page, but Gemini 3's default media resolution can count more, so the
per-page figure is learned per document type from each answer's
`usage_metadata` and kept in Redis (one EWMA per type, shared by every worker).
The arithmetic is pure; `TokensPerPage` is the thin Redis shell around it.
"""

from __future__ import annotations

import math
from typing import Any

import redis

from control_plane.keys import Keys
from control_plane.scripts import ScriptSet

# A text prompt costs about one token per four characters (French prose, Gemini tokenizer).
CHARS_PER_TOKEN = 4.0
# Weight of each new sample: ~5 answers move the figure most of the way to a new level,
# one odd page does not.
EWMA_WEIGHT = 0.3
# The first sample replaces the default outright: the default may be off by 2x (258 vs 560).
SEED_WEIGHT = 1.0
# Samples outside this range are measurement noise (empty pages, a bad usage report).
MIN_TOKENS_PER_PAGE = 16.0
MAX_TOKENS_PER_PAGE = 8_192.0


def estimate_prompt_tokens(prompt: str) -> int:
    """Tokens the prompt text will cost, from its length."""
    return math.ceil(len(prompt) / CHARS_PER_TOKEN)


def estimate_tokens(pages: int, tokens_per_page: float, prompt_tokens: int) -> int:
    """Input tokens a call with `pages` PDF pages and this prompt will be charged."""
    if pages < 0 or tokens_per_page < 0 or prompt_tokens < 0:
        raise ValueError("pages, tokens_per_page and prompt_tokens must be >= 0")
    return math.ceil(pages * tokens_per_page) + prompt_tokens


def per_page_sample(
    pages: int,
    prompt_tokens_text: int,
    actual_prompt_tokens: int,
    document_tokens: int | None = None,
) -> float | None:
    """Tokens per page measured on one answer, or None when the answer says nothing useful.

    The DOCUMENT modality count (promptTokensDetails) is exact when present; otherwise
    the prompt's estimated share is taken out of the total.
    """
    if pages <= 0:
        return None
    if document_tokens is not None and document_tokens > 0:
        sample = document_tokens / pages
    else:
        sample = (actual_prompt_tokens - prompt_tokens_text) / pages
    if not MIN_TOKENS_PER_PAGE <= sample <= MAX_TOKENS_PER_PAGE:
        return None
    return sample


def ewma(
    current: float | None, sample: float, *, default: float, weight: float = EWMA_WEIGHT
) -> float:
    """The learned figure after one sample (the first sample weighs SEED_WEIGHT)."""
    if current is None:
        return default + SEED_WEIGHT * (sample - default)
    return current + weight * (sample - current)


class TokensPerPage:
    """The learned tokens-per-page figure of each document type, shared in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        default: float = 258.0,
        *,
        weight: float = EWMA_WEIGHT,
    ) -> None:
        if not 0 < weight <= 1:
            raise ValueError("weight must be in (0, 1]")
        self._client = client
        self._keys = keys
        self._default = float(default)
        self._weight = weight
        self._scripts = ScriptSet(client)

    @property
    def default(self) -> float:
        return self._default

    def get(self, document_type: str) -> float:
        """The current figure for a type (the default until the first observation)."""
        raw: Any = self._client.get(self._keys.tokens_per_page(document_type))
        if raw is None:
            return self._default
        try:
            return float(raw)
        except (TypeError, ValueError):
            # Someone wrote garbage by hand: fall back rather than fail every OCR call.
            return self._default

    def observe(
        self,
        document_type: str,
        pages: int,
        prompt_tokens_text: int,
        actual_prompt_tokens: int,
        document_tokens: int | None = None,
    ) -> float | None:
        """Fold one answer's usage into the figure; returns the new figure (None: ignored)."""
        sample = per_page_sample(pages, prompt_tokens_text, actual_prompt_tokens, document_tokens)
        if sample is None:
            return None
        result = self._scripts.run(
            "tokens_per_page_observe",
            keys=[self._keys.tokens_per_page(document_type)],
            args=[repr(sample), repr(self._weight), repr(self._default), repr(SEED_WEIGHT)],
        )
        return float(result)

    def reset(self, document_type: str) -> None:
        """Forget what was learned for a type (back to the default)."""
        self._client.delete(self._keys.tokens_per_page(document_type))
