"""What the emulator says: Gemini's JSON bodies (answers and errors), and its "OCR".

Shapes follow the public REST reference and real captured bodies (REFERENCE.md).
Nothing here echoes a request header: an API key never appears in a body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import uuid
from dataclasses import dataclass
from typing import Any

from control_plane.gemini.prompts import PAGE_MARKER, first_page_in_prompt

RATE_LIMITS_URL = "https://ai.google.dev/gemini-api/docs/rate-limits"
_METRIC_REQUESTS = "generativelanguage.googleapis.com/generate_content_paid_tier_requests"
_METRIC_TOKENS = "generativelanguage.googleapis.com/generate_content_paid_tier_input_token_count"
QUOTA_ID_RPM = "GenerateRequestsPerMinutePerProjectPerModel-PaidTier"
QUOTA_ID_TPM = "GenerateContentPaidTierInputTokensPerModelPerMinute"
QUOTA_ID_RPD = "GenerateRequestsPerDayPerProjectPerModel-PaidTier"


def error_body(
    code: int, status: str, message: str, details: list[Any] | None = None
) -> dict[str, Any]:
    """Google's error envelope."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


def quota_error(
    *, model: str, quota_id: str, metric: str, limit: int, retry_delay_s: float | None
) -> dict[str, Any]:
    """A 429 RESOURCE_EXHAUSTED body with QuotaFailure, Help and (optionally) RetryInfo."""
    message = (
        "You exceeded your current quota, please check your plan and billing details. "
        f"For more information on this error, head to: {RATE_LIMITS_URL}. "
        f"\n* Quota exceeded for metric: {metric}, limit: {limit}, model: {model}"
    )
    details: list[Any] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": metric,
                    "quotaId": quota_id,
                    "quotaDimensions": {"location": "global", "model": model},
                    "quotaValue": str(limit),
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {"description": "Learn more about Gemini API quotas", "url": RATE_LIMITS_URL}
            ],
        },
    ]
    if retry_delay_s is not None:
        message += f"\nPlease retry in {retry_delay_s:g}s."
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": _duration(retry_delay_s),
            }
        )
    return error_body(429, "RESOURCE_EXHAUSTED", message, details)


def per_minute_quota_error(
    model: str, dimension: str, limit: int, retry_delay_s: float | None
) -> dict[str, Any]:
    """429 for the requests-per-minute or input-tokens-per-minute quota."""
    if dimension == "tokens":
        return quota_error(
            model=model,
            quota_id=QUOTA_ID_TPM,
            metric=_METRIC_TOKENS,
            limit=limit,
            retry_delay_s=retry_delay_s,
        )
    return quota_error(
        model=model,
        quota_id=QUOTA_ID_RPM,
        metric=_METRIC_REQUESTS,
        limit=limit,
        retry_delay_s=retry_delay_s,
    )


def per_day_quota_error(model: str, limit: int = 10_000) -> dict[str, Any]:
    """429 for the requests-per-day quota (resets at midnight Pacific)."""
    return quota_error(
        model=model, quota_id=QUOTA_ID_RPD, metric=_METRIC_REQUESTS, limit=limit, retry_delay_s=None
    )


def _duration(seconds: float) -> str:
    """google.protobuf.Duration JSON: "26s", "45.83s"."""
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"{text}s"


MISSING_KEY = error_body(
    403,
    "PERMISSION_DENIED",
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API.",
)
INVALID_KEY = error_body(
    400,
    "INVALID_ARGUMENT",
    "API key not valid. Please pass a valid API key.",
    [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        }
    ],
)
NO_PAGES = error_body(400, "INVALID_ARGUMENT", "The document has no pages.")
INTERNAL = error_body(
    500,
    "INTERNAL",
    "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
)
UNAVAILABLE = error_body(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
FAILED_PRECONDITION = error_body(
    400, "FAILED_PRECONDITION", "User location is not supported for the API use."
)
# What a model that takes no PDF input answers (GEMINI_MODEL set to such a model).
PDF_UNSUPPORTED = error_body(400, "INVALID_ARGUMENT", "Unsupported MIME type: application/pdf")
DEADLINE = error_body(504, "DEADLINE_EXCEEDED", "The request timed out. Please try again.")


# --- the request and the "OCR" --------------------------------------------------------


@dataclass(frozen=True)
class ParsedRequest:
    """The parts of a generateContent body the emulator uses."""

    pdf: bytes | None
    mime_type: str | None
    prompt: str
    max_output_tokens: int | None

    @property
    def document_id(self) -> str:
        """A stable id of the inline document (hash of its bytes)."""
        return hashlib.sha256(self.pdf or b"").hexdigest()[:16]


def parse_request(body: Any) -> ParsedRequest:
    """Read inline data and text from camelCase or snake_case JSON; ValueError if unusable."""
    if not isinstance(body, dict) or not isinstance(body.get("contents"), list):
        raise ValueError("* GenerateContentRequest.contents: contents is not specified")
    pdf: bytes | None = None
    mime: str | None = None
    texts: list[str] = []
    for content in body["contents"]:
        for part in (content or {}).get("parts") or []:
            inline = part.get("inlineData") or part.get("inline_data")
            if inline:
                mime = inline.get("mimeType") or inline.get("mime_type")
                try:
                    pdf = _b64decode(str(inline.get("data") or ""))
                except (binascii.Error, ValueError):
                    raise ValueError(
                        "Invalid value at 'contents[0].parts[0].inline_data.data'"
                    ) from None
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
    config = body.get("generationConfig") or body.get("generation_config") or {}
    max_out = config.get("maxOutputTokens") or config.get("max_output_tokens")
    return ParsedRequest(pdf, mime, "\n".join(texts), int(max_out) if max_out else None)


def _b64decode(text: str) -> bytes:
    """Standard or URL-safe base64 (google-genai sends URL-safe), padding optional."""
    text = text.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def pdf_pages_text(data: bytes) -> list[str]:
    """Each page's text layer, in order; ValueError when the bytes are not a readable PDF."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise ValueError(f"unreadable PDF: {type(exc).__name__}") from None
    if not pages:
        raise ValueError("PDF without pages")
    return pages


def text_tokens(text: str) -> int:
    """The emulator's tokenizer: one token per four UTF-8 bytes (accents cost more)."""
    return math.ceil(len(text.encode("utf-8")) / 4)


def ocr_text(pages: list[str], prompt: str) -> str:
    """The answer: each page's text, with page markers when the prompt asks for them."""
    first = first_page_in_prompt(prompt)
    if first is None:
        return "\n\n".join(p.strip("\n") for p in pages)
    return "\n\n".join(
        f"{PAGE_MARKER.format(n=first + i)}\n{p.strip(chr(10))}" for i, p in enumerate(pages)
    )


def usage(
    prompt_text_tokens: int, document_tokens: int, output_tokens: int, thoughts: int = 0
) -> dict[str, Any]:
    """usageMetadata as Gemini reports it (input split by modality)."""
    prompt = prompt_text_tokens + document_tokens
    data: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": output_tokens,
        "totalTokenCount": prompt + output_tokens + thoughts,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": prompt_text_tokens},
            {"modality": "DOCUMENT", "tokenCount": document_tokens},
        ],
    }
    if thoughts:
        data["thoughtsTokenCount"] = thoughts
    return data


def answer(
    model: str, text: str | None, finish: str, usage_metadata: dict[str, Any]
) -> dict[str, Any]:
    """A 200 answer with one candidate (no parts when `text` is None)."""
    content: dict[str, Any] = {"role": "model"}
    if text is not None:
        content["parts"] = [{"text": text}]
    candidate: dict[str, Any] = {"content": content, "finishReason": finish, "index": 0}
    if finish == "SAFETY":
        candidate["safetyRatings"] = [
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}
        ]
    return {
        "candidates": [candidate],
        "usageMetadata": usage_metadata,
        "modelVersion": model,
        "responseId": uuid.uuid4().hex[:22],
    }


def blocked_prompt(model: str, usage_metadata: dict[str, Any]) -> dict[str, Any]:
    """A 200 answer without candidates: the prompt itself was blocked."""
    return {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": usage_metadata,
        "modelVersion": model,
        "responseId": uuid.uuid4().hex[:22],
    }


def model_body(model: str) -> dict[str, Any]:
    """A models.get answer (the fields the SDK maps onto `types.Model`)."""
    return {
        "name": f"models/{model}",
        "displayName": model,
        "description": "Gemini emulator model",
        "inputTokenLimit": 1_048_576,
        "outputTokenLimit": 65_536,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
    }
