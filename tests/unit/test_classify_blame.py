"""Whose fault is a Gemini error (issue 11): (status, reason, message) -> fault and action.

Only errors about the document itself may fail the document; outages and our own
configuration must not cost it anything (the table in control_plane/gemini/classify.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.genai import errors as genai_errors

from control_plane.emulator import bodies
from control_plane.gemini.classify import Action, Fault, classify_exception

pytestmark = pytest.mark.unit
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
KEY_INVALID = [
    {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
    }
]
PER_DAY = [
    {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}],
    }
]
PER_MINUTE = [
    {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{"quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}],
    },
    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "20s"},
]

# (code, status, message, details) -> (fault, action, fragment of the message / variable)
TABLE = [
    # --- configuration: pause all OCR, name the variable ---
    (
        400,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
        KEY_INVALID,
        Fault.CONFIGURATION,
        Action.CONFIGURATION,
        "GEMINI_API_KEY",
    ),
    (
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials.",
        None,
        Fault.CONFIGURATION,
        Action.CONFIGURATION,
        "GEMINI_API_KEY",
    ),
    (
        403,
        "PERMISSION_DENIED",
        "Method doesn't allow unregistered callers.",
        None,
        Fault.CONFIGURATION,
        Action.CONFIGURATION,
        "GEMINI_API_KEY",
    ),
    (
        403,
        "PERMISSION_DENIED",
        "Generative Language API has not been used in project 12 before or it is disabled.",
        None,
        Fault.CONFIGURATION,
        Action.CONFIGURATION,
        "API is not enabled",
    ),
    (
        400,
        "FAILED_PRECONDITION",
        "User location is not supported for the API use.",
        None,
        Fault.CONFIGURATION,
        Action.CONFIGURATION,
        "not available from this location",
    ),
    (
        400,
        "FAILED_PRECONDITION",
        "Gemini API free tier is not available in your country. "
        "Please enable billing on your project in Google AI Studio.",
        None,
        Fault.CONFIGURATION,
        Action.CONFIGURATION,
        "billing",
    ),
    (
        404,
        "NOT_FOUND",
        "models/gemini-9-flash is not found for API version v1beta, or is not "
        "supported for generateContent.",
        None,
        Fault.CONFIGURATION,
        Action.CONFIGURATION,
        "GEMINI_MODEL",
    ),
    (
        400,
        "INVALID_ARGUMENT",
        "Unable to submit request because it has a maxOutputTokens value "
        "of 900000 but the supported range is from 1 (inclusive) to 65537 (exclusive).",
        None,
        Fault.CONFIGURATION,
        Action.CONFIGURATION,
        "GEMINI_MAX_OUTPUT_TOKENS",
    ),
    (
        400,
        "INVALID_ARGUMENT",
        "temperature must be between 0 and 2",
        None,
        Fault.CONFIGURATION,
        Action.CONFIGURATION,
        "GEMINI_TEMPERATURE",
    ),
    (
        400,
        "INVALID_ARGUMENT",
        "Thinking budget is not supported for this model.",
        None,
        Fault.CONFIGURATION,
        Action.CONFIGURATION,
        "GEMINI_MODEL",
    ),
    (
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota.",
        PER_DAY,
        Fault.CONFIGURATION,
        Action.COOLDOWN,
        "daily Gemini quota",
    ),
    # --- outages and our own rate: never the document's fault ---
    (
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota.",
        PER_MINUTE,
        Fault.QUOTA,
        Action.COOLDOWN,
        "every worker pauses",
    ),
    (
        503,
        "UNAVAILABLE",
        "The model is overloaded. Please try again later.",
        None,
        Fault.OUTAGE,
        Action.RETRY,
        "overloaded",
    ),
    (
        500,
        "INTERNAL",
        "An internal error has occurred.",
        None,
        Fault.OUTAGE,
        Action.RETRY,
        "INTERNAL",
    ),
    (
        504,
        "DEADLINE_EXCEEDED",
        "The request timed out.",
        None,
        Fault.OUTAGE,
        Action.RETRY,
        "DEADLINE_EXCEEDED",
    ),
    (
        400,
        "INVALID_ARGUMENT",
        "Request contains an invalid argument.",
        None,
        Fault.OUTAGE,
        Action.RETRY,
        "invalid argument",
    ),
    # --- the document itself: status 4 with a precise message ---
    (
        400,
        "INVALID_ARGUMENT",
        "The document has no pages.",
        None,
        Fault.DOCUMENT,
        Action.PERMANENT,
        "corrupt, empty or not a PDF",
    ),
    (
        400,
        "INVALID_ARGUMENT",
        "Unable to process input image. The PDF is password protected.",
        None,
        Fault.DOCUMENT,
        Action.PERMANENT,
        "corrupt",
    ),
    (
        400,
        "INVALID_ARGUMENT",
        "The document is encrypted.",
        None,
        Fault.DOCUMENT,
        Action.PERMANENT,
        "encrypted",
    ),
    (
        400,
        "INVALID_ARGUMENT",
        "The document has too many pages (1200); the limit is 1000.",
        None,
        Fault.DOCUMENT,
        Action.PERMANENT,
        "too many pages",
    ),
    (
        400,
        "INVALID_ARGUMENT",
        "Request payload size exceeds the limit: 20971520 bytes.",
        None,
        Fault.DOCUMENT,
        Action.PERMANENT,
        "too large",
    ),
    (413, "", "Request Entity Too Large", None, Fault.DOCUMENT, Action.PERMANENT, "too large"),
    (
        400,
        "INVALID_ARGUMENT",
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
        None,
        Fault.DOCUMENT,
        Action.PERMANENT,
        "OCR_PAGES_PER_CHUNK",
    ),
    (
        400,
        "INVALID_ARGUMENT",
        "Unsupported MIME type: image/tiff",
        None,
        Fault.DOCUMENT,
        Action.PERMANENT,
        "unsupported document format",
    ),
    # Attack (a2): every chunk is sent as application/pdf; refusing that is the model's
    # doing (a GEMINI_MODEL without PDF input), not the document's.
    (
        400,
        "INVALID_ARGUMENT",
        "Unsupported MIME type: application/pdf",
        None,
        Fault.CONFIGURATION,
        Action.CONFIGURATION,
        "GEMINI_MODEL",
    ),
]


def _error(code: int, status: str, message: str, details: list | None) -> genai_errors.APIError:
    try:
        genai_errors.APIError.raise_error(
            code, bodies.error_body(code, status, message, details), None
        )
    except genai_errors.APIError as exc:
        return exc
    raise AssertionError("raise_error did not raise")


@pytest.mark.parametrize(
    ("code", "status", "message", "details", "fault", "action", "fragment"),
    TABLE,
    ids=[f"{row[0]}-{row[1] or 'none'}-{row[2][:30]}" for row in TABLE],
)
def test_each_gemini_error_is_blamed_on_the_right_thing(
    code, status, message, details, fault, action, fragment
) -> None:
    decision = classify_exception(_error(code, status, message, details), attempt=1, now=NOW)
    assert (decision.fault, decision.action) == (fault, action), decision
    assert fragment in decision.message, decision.message
    if action is Action.CONFIGURATION:
        assert decision.variable and decision.variable in decision.message, (
            "a configuration error names the variable to check"
        )
