"""Error classification: real Gemini error bodies and answers in, decisions out."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import httpx
import pydantic
import pytest
from google.genai import errors as genai_errors
from google.genai import types

from control_plane.emulator import bodies
from control_plane.gemini.classify import (
    DEFAULT_COOLDOWN_S,
    Action,
    backoff_delay,
    classify_exception,
    classify_response,
    parse_quota_error,
    parse_retry_delay,
    seconds_until_daily_reset,
)

pytestmark = pytest.mark.unit

# The 429 body quoted in REFERENCE.md, as Google sends it.
REAL_429 = {
    "error": {
        "code": 429,
        "message": "You exceeded your current quota, ...",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/"
                        "generate_content_free_tier_input_token_count",
                        "quotaId": "GenerateContentInputTokensPerModelPerMinute-FreeTier",
                        "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                        "quotaValue": "250000",
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [
                    {
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "26s"},
        ],
    }
}
BARE_429 = {
    "error": {
        "code": 429,
        "message": "Resource has been exhausted (e.g. check quota).",
        "status": "RESOURCE_EXHAUSTED",
    }
}


def _with_delay(delay: str) -> dict:
    body = json.loads(json.dumps(REAL_429))
    body["error"]["details"][2]["retryDelay"] = delay
    return body


def _per_day() -> dict:
    body = json.loads(json.dumps(REAL_429))
    body["error"]["details"][0]["violations"][0]["quotaId"] = (
        "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    )
    return body


def _api_error(code: int, body: dict) -> genai_errors.APIError:
    """The exception the SDK raises for this HTTP status and JSON body."""
    try:
        genai_errors.APIError.raise_error(code, body, None)
    except genai_errors.APIError as exc:
        return exc
    raise AssertionError("raise_error did not raise")


def _err(code: int, status: str, message: str, details: list | None = None) -> dict:
    return bodies.error_body(code, status, message, details)


NOON_UTC = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # 04:00 Pacific (PST, UTC-8)

API_CASES = [
    # (name, code, body, action, delay_s or None (not checked), message fragment)
    (
        "real 429 with RetryInfo",
        429,
        REAL_429,
        Action.COOLDOWN,
        26.0,
        "InputTokensPerModelPerMinute",
    ),
    ("fractional retryDelay", 429, _with_delay("45.83s"), Action.COOLDOWN, 45.83, "45.83"),
    ("zero retryDelay floors", 429, _with_delay("0s"), Action.COOLDOWN, 1.0, "rate limit"),
    ("bare 429", 429, BARE_429, Action.COOLDOWN, DEFAULT_COOLDOWN_S, "quota not named"),
    ("per-day quota", 429, _per_day(), Action.COOLDOWN, 20 * 3600.0, "daily"),
    ("503 overloaded", 503, bodies.UNAVAILABLE, Action.RETRY, 2.0, "overloaded"),
    ("500 internal", 500, bodies.INTERNAL, Action.RETRY, 2.0, "INTERNAL"),
    ("504 deadline", 504, bodies.DEADLINE, Action.RETRY, 2.0, "DEADLINE_EXCEEDED"),
    ("400 corrupt PDF", 400, bodies.NO_PAGES, Action.PERMANENT, 0.0, "corrupt, empty or not a PDF"),
    (
        "400 too many tokens",
        400,
        _err(
            400,
            "INVALID_ARGUMENT",
            "The input token count (1200000) exceeds the maximum "
            "number of tokens allowed (1048576).",
        ),
        Action.PERMANENT,
        0.0,
        "OCR_PAGES_PER_CHUNK",
    ),
    (
        "400 other",
        400,
        _err(400, "INVALID_ARGUMENT", "Bad field x"),
        Action.RETRY,
        2.0,
        "Bad field x",
    ),
    ("400 invalid key", 400, bodies.INVALID_KEY, Action.CONFIGURATION, 0.0, "GEMINI_API_KEY"),
    ("403 missing key", 403, bodies.MISSING_KEY, Action.CONFIGURATION, 0.0, "GEMINI_API_KEY"),
    (
        "401 unauthenticated",
        401,
        _err(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
        Action.CONFIGURATION,
        0.0,
        "API key is invalid",
    ),
    (
        "404 model",
        404,
        _err(404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta"),
        Action.CONFIGURATION,
        0.0,
        "GEMINI_MODEL",
    ),
    (
        "413 too large",
        413,
        _err(413, "", "Request payload size exceeds the limit"),
        Action.PERMANENT,
        0.0,
        "too large",
    ),
]


@pytest.mark.parametrize(
    ("name", "code", "body", "action", "delay", "fragment"),
    API_CASES,
    ids=[c[0] for c in API_CASES],
)
def test_api_errors_map_to_decisions(name, code, body, action, delay, fragment) -> None:
    decision = classify_exception(_api_error(code, body), attempt=2, now=NOON_UTC)
    assert decision.action is action, f"{name}: {decision}"
    assert decision.delay_s == pytest.approx(delay), f"{name}: {decision}"
    assert fragment in decision.message, f"{name}: {decision.message!r}"
    assert decision.per_day == (name == "per-day quota")


def test_per_day_decision_names_the_pacific_reset() -> None:
    decision = classify_exception(_api_error(429, _per_day()), attempt=1, now=NOON_UTC)
    assert decision.per_day
    assert "2026-11-21 00:00 Pacific" in decision.message


def _httpx2_errors() -> list[BaseException]:
    try:
        import httpx2
    except ImportError:
        return []
    return [httpx2.ReadTimeout("timed out"), httpx2.ConnectError("refused")]


TRANSPORT_CASES = [
    httpx.ReadTimeout("timed out"),
    httpx.ConnectTimeout("timed out"),
    httpx.ConnectError("refused"),
    httpx.RemoteProtocolError("server disconnected"),
    TimeoutError("socket"),
    ConnectionResetError("reset"),
    json.JSONDecodeError("Unterminated string", '{"candidates": [', 16),
    *_httpx2_errors(),
]


@pytest.mark.parametrize(
    "exc", TRANSPORT_CASES, ids=lambda e: type(e).__module__ + "." + type(e).__name__
)
def test_transport_failures_are_retried_with_backoff(exc: BaseException) -> None:
    decision = classify_exception(exc, attempt=3)
    assert decision.action is Action.RETRY
    assert decision.delay_s == 4.0


def test_malformed_answer_validation_error_is_retried() -> None:
    try:
        types.GenerateContentResponse.model_validate({"candidates": "not a list"})
    except pydantic.ValidationError as exc:
        assert classify_exception(exc, attempt=1).action is Action.RETRY
    else:
        raise AssertionError("expected a ValidationError")


def test_unknown_exception_is_not_retried_blindly() -> None:
    decision = classify_exception(KeyError("bug"), attempt=1)
    assert decision.action is Action.PERMANENT
    assert "unexpected KeyError" in decision.message


def test_emulator_429_body_classifies_like_the_real_one() -> None:
    """Same code path: the emulator's 429 is read exactly as Google's."""
    for dimension, quota_id in (("requests", bodies.QUOTA_ID_RPM), ("tokens", bodies.QUOTA_ID_TPM)):
        body = json.loads(json.dumps(bodies.per_minute_quota_error("m", dimension, 100, 12.5)))
        info = parse_quota_error(body)
        assert info.quota_ids == (quota_id,) and info.retry_delay_s == 12.5
        decision = classify_exception(_api_error(429, body), attempt=1)
        assert (decision.action, decision.delay_s, decision.per_day) == (
            Action.COOLDOWN,
            12.5,
            False,
        )
    day = classify_exception(
        _api_error(429, bodies.per_day_quota_error("m")), attempt=1, now=NOON_UTC
    )
    assert day.per_day and day.delay_s == 20 * 3600


# --- responses -------------------------------------------------------------------------

USAGE = {"promptTokenCount": 300, "candidatesTokenCount": 10, "totalTokenCount": 310}


def _response(body: dict) -> types.GenerateContentResponse:
    return types.GenerateContentResponse.model_validate({**body, "usageMetadata": USAGE})


def _cand(finish: str, text: str | None) -> dict:
    content: dict = {"role": "model"}
    if text is not None:
        content["parts"] = [{"text": text}]
    return {"candidates": [{"content": content, "finishReason": finish}]}


RESPONSE_CASES = [
    ("usable STOP", _cand("STOP", "--- page 1 ---\nIndex"), None),
    ("truncated but usable", _cand("MAX_TOKENS", "partial text"), None),
    ("blocked prompt", {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}, Action.PERMANENT),
    ("blocked prompt SAFETY", {"promptFeedback": {"blockReason": "SAFETY"}}, Action.PERMANENT),
    ("finish SAFETY", _cand("SAFETY", None), Action.PERMANENT),
    ("finish RECITATION", _cand("RECITATION", None), Action.PERMANENT),
    ("finish PROHIBITED_CONTENT", _cand("PROHIBITED_CONTENT", None), Action.PERMANENT),
    ("MAX_TOKENS spent on thinking", _cand("MAX_TOKENS", None), Action.RETRY),
    ("empty STOP", _cand("STOP", ""), Action.RETRY),
    ("whitespace STOP", _cand("STOP", "  \n"), Action.RETRY),
    ("no candidates, no block", {}, Action.RETRY),
]


@pytest.mark.parametrize(
    ("name", "body", "action"), RESPONSE_CASES, ids=[c[0] for c in RESPONSE_CASES]
)
def test_responses_map_to_decisions(name: str, body: dict, action: Action | None) -> None:
    decision = classify_response(_response(body))
    assert (decision.action if decision else None) is action, f"{name}: {decision}"


def test_thought_parts_are_not_text() -> None:
    body = {
        "candidates": [
            {
                "content": {"parts": [{"text": "thinking...", "thought": True}]},
                "finishReason": "STOP",
            }
        ]
    }
    assert classify_response(_response(body)).action is Action.RETRY  # type: ignore[union-attr]


def test_block_messages_are_precise() -> None:
    blocked = classify_response(
        _response({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}})
    )
    assert blocked is not None and "blockReason=PROHIBITED_CONTENT" in blocked.message
    max_tokens = classify_response(_response(_cand("MAX_TOKENS", None)))
    assert max_tokens is not None and "GEMINI_MAX_OUTPUT_TOKENS" in max_tokens.message


# --- small pure pieces -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "expected"),
    [
        (1, 1.0, 60.0, 1.0),
        (2, 1.0, 60.0, 2.0),
        (4, 1.0, 60.0, 8.0),
        (10, 1.0, 60.0, 60.0),
        (3, 0.5, 60.0, 2.0),
        (0, 1.0, 60.0, 1.0),
    ],
)
def test_backoff_doubles_up_to_the_cap(
    attempt: int, base: float, cap: float, expected: float
) -> None:
    assert backoff_delay(attempt, base=base, cap=cap) == expected


def test_backoff_jitter_keeps_at_least_half() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(4, rng=rng) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 100


@pytest.mark.parametrize(
    ("now", "expected_h"),
    [
        (datetime(2026, 11, 20, 12, 0, tzinfo=UTC), 20.0),  # 04:00 PST
        (datetime(2026, 7, 1, 6, 30, tzinfo=UTC), 0.5),  # 23:30 PDT
        (datetime(2026, 7, 1, 7, 0, tzinfo=UTC), 24.0),  # exactly midnight PDT
        (datetime(2026, 11, 1, 7, 0, tzinfo=UTC), 25.0),  # 00:00 PDT on the 25-hour DST day
    ],
)
def test_daily_reset_is_midnight_pacific(now: datetime, expected_h: float) -> None:
    assert seconds_until_daily_reset(now) == pytest.approx(expected_h * 3600)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("26s", 26.0),
        ("45.83s", 45.83),
        ("0s", 0.0),
        (" 3s ", 3.0),
        ("3", None),
        ("1m", None),
        (None, None),
        (12, None),
    ],
)
def test_retry_delay_parsing(value: object, expected: float | None) -> None:
    assert parse_retry_delay(value) == expected
