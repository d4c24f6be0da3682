"""What to do after a Gemini call: pure functions from an exception or a response to a decision.

- COOLDOWN: a quota 429. Every worker pauses for the delay (RetryInfo, or until the daily
  reset for a per-day quota); the retry does not consume an attempt.
- RETRY: worth trying again after a backoff (5xx, timeouts, connection errors, empty answers).
- PERMANENT: this document cannot succeed (bad PDF, blocked content); fail it with the message.
- CONFIGURATION: our key, project, location, model or request settings are wrong; every
  call would fail the same way. All OCR pauses (a shared circuit breaker), probes every
  GEMINI_CONFIG_PROBE_MS and resumes by itself; documents keep their status and attempts.

Whose fault it is (`CallDecision.fault`), the question of issue 11:

- 429 per-minute quota -> quota: shared cooldown (RetryInfo), same attempt again.
- 429 per-day quota -> configuration: cooldown until the daily reset, documents given back.
- 500/502/503/504, timeouts, network errors, malformed or empty answers, and a 400
  INVALID_ARGUMENT not recognised below -> outage: retry with backoff; failing across
  documents they open the model's breaker (pause, probe, no attempt counted).
- 401/403, 400 API_KEY_INVALID -> configuration (GEMINI_API_KEY); 400 FAILED_PRECONDITION
  (location, billing) -> configuration (the key's project); 404 -> configuration
  (GEMINI_MODEL, GEMINI_BASE_URL); 400 "Unsupported MIME type: application/pdf" ->
  configuration (GEMINI_MODEL takes no PDF); 400 about generation settings -> configuration
  (GEMINI_MAX_OUTPUT_TOKENS, GEMINI_TEMPERATURE): pause all OCR, probe, resume by itself.
- finishReason MAX_TOKENS with no text, or a single page cut at MAX_TOKENS -> output
  budget (GEMINI_MAX_OUTPUT_TOKENS): retried; across documents the output-budget breaker
  opens and all OCR pauses, nothing charged (a longer chunk is split instead).
- 400 no pages / corrupt / encrypted / too many pages / unsupported MIME, 400 input token
  count too large, 413 payload too large, blocked prompt, finishReason SAFETY/RECITATION/...
  -> document: status 4 with a precise message.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pydantic
from google.genai import errors as genai_errors

PACIFIC = ZoneInfo("America/Los_Angeles")
# A 429 without RetryInfo: Google's own examples suggest retrying after tens of seconds.
DEFAULT_COOLDOWN_S = 15.0
# Never pause the whole pool for less than this, whatever retryDelay says ("0s" happens).
MIN_COOLDOWN_S = 1.0
# Finish reasons that mean the answer was withheld: retrying the same pages gives the same.
_BLOCKING_FINISH = {
    "SAFETY",
    "RECITATION",
    "PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "LANGUAGE",
}
_RETRYABLE_STATUS = {408, 500, 502, 503, 504}
# Everything a generate_content call may raise that classify_exception understands;
# anything else is a bug and should propagate.
CALL_ERRORS: tuple[type[BaseException], ...] = (
    genai_errors.APIError,
    httpx.HTTPError,
    OSError,
    json.JSONDecodeError,
    pydantic.ValidationError,
)
try:  # google-genai prefers httpx2 when present
    import httpx2

    CALL_ERRORS += (httpx2.HTTPError,)
except ImportError:  # pragma: no cover - depends on the environment
    pass
_DELAY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


class Action(StrEnum):
    COOLDOWN = "cooldown"
    RETRY = "retry"
    PERMANENT = "permanent"
    CONFIGURATION = "configuration"


class Fault(StrEnum):
    """Whose fault a failed call is: decides whether the document pays an attempt."""

    DOCUMENT = "document"  # this document cannot succeed: fail it
    OUTAGE = "outage"  # a dependency is down or overloaded: not the document's fault
    QUOTA = "quota"  # our own rate: wait, not the document's fault
    CONFIGURATION = "configuration"  # our settings or project: pause everything


@dataclass(frozen=True)
class CallDecision:
    """One decision: the action, how long to wait first, and a precise human message.

    `variable`: for a configuration error, the setting to check (named in the log line).
    """

    action: Action
    delay_s: float
    message: str
    per_day: bool = False
    variable: str = ""
    # RETRY because the answer was cut at GEMINI_MAX_OUTPUT_TOKENS where splitting cannot
    # help: counted on the output-budget breaker (breakers.OUTPUT_BUDGET), not the model's.
    output_budget: bool = False

    @property
    def fault(self) -> Fault:
        if self.per_day:
            return Fault.CONFIGURATION
        return {
            Action.COOLDOWN: Fault.QUOTA,
            Action.RETRY: Fault.OUTAGE,
            Action.PERMANENT: Fault.DOCUMENT,
            Action.CONFIGURATION: Fault.CONFIGURATION,
        }[self.action]


def backoff_delay(
    attempt: int, *, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None
) -> float:
    """Exponential backoff after failed attempt `attempt` (1-based); jitter only with an rng."""
    delay = min(cap, base * 2.0 ** max(0, attempt - 1))
    if rng is not None:
        # "equal jitter": keep at least half, so a retry never comes back immediately
        delay = delay / 2 + rng.uniform(0, delay / 2)
    return delay


def seconds_until_daily_reset(now: datetime) -> float:
    """Seconds from `now` (aware) to the next midnight, Pacific time (Gemini's daily reset)."""
    local = now.astimezone(PACIFIC)
    next_midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), PACIFIC)
    # Subtract in UTC: same-zone aware datetimes subtract wall clocks and miss DST days.
    return max(0.0, (next_midnight.astimezone(UTC) - now.astimezone(UTC)).total_seconds())


def parse_retry_delay(value: Any) -> float | None:
    """A google.protobuf.Duration in JSON form ("26s", "45.83s") as seconds."""
    if not isinstance(value, str):
        return None
    found = _DELAY_RE.match(value)
    return float(found.group(1)) if found else None


def error_details(body: Any) -> list[dict[str, Any]]:
    """The `details` list of a Google error body (whole body or its `error` member)."""
    if not isinstance(body, dict):
        return []
    inner = body.get("error", body)
    details = inner.get("details") if isinstance(inner, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


@dataclass(frozen=True)
class QuotaInfo:
    """What a 429 body says: which quotas, and how long Google asks us to wait."""

    quota_ids: tuple[str, ...]
    retry_delay_s: float | None

    @property
    def per_day(self) -> bool:
        return any("PerDay" in q for q in self.quota_ids)


def parse_quota_error(body: Any) -> QuotaInfo:
    """Read QuotaFailure and RetryInfo from a 429 body (both optional)."""
    quota_ids: list[str] = []
    delay: float | None = None
    for detail in error_details(body):
        kind = str(detail.get("@type", ""))
        if kind.endswith("google.rpc.QuotaFailure"):
            for violation in detail.get("violations") or []:
                if isinstance(violation, dict) and violation.get("quotaId"):
                    quota_ids.append(str(violation["quotaId"]))
        elif kind.endswith("google.rpc.RetryInfo"):
            delay = parse_retry_delay(detail.get("retryDelay"))
    return QuotaInfo(tuple(quota_ids), delay)


def _error_reasons(body: Any) -> set[str]:
    return {
        str(d.get("reason"))
        for d in error_details(body)
        if str(d.get("@type", "")).endswith("google.rpc.ErrorInfo") and d.get("reason")
    }


def classify_exception(
    exc: BaseException,
    *,
    attempt: int,
    now: datetime | None = None,
    rng: random.Random | None = None,
    backoff_base: float = 1.0,
) -> CallDecision:
    """Decide what follows a failed call; `attempt` is the 1-based attempt that just failed."""
    backoff = backoff_delay(attempt, base=backoff_base, rng=rng)
    if isinstance(exc, genai_errors.APIError):
        return _classify_api_error(exc, backoff=backoff, now=now)
    http_kinds = _httpx_kinds(exc)
    if "TimeoutException" in http_kinds or isinstance(exc, TimeoutError):
        return CallDecision(Action.RETRY, backoff, f"Gemini call timed out ({type(exc).__name__})")
    if "DecodingError" in http_kinds or isinstance(
        exc, json.JSONDecodeError | pydantic.ValidationError
    ):
        return CallDecision(
            Action.RETRY, backoff, f"Gemini answered with a malformed body ({type(exc).__name__})"
        )
    if http_kinds or isinstance(exc, ConnectionError):
        return CallDecision(
            Action.RETRY, backoff, f"cannot reach Gemini ({type(exc).__name__}: {exc})"
        )
    if isinstance(exc, OSError):
        return CallDecision(Action.RETRY, backoff, f"network error ({type(exc).__name__}: {exc})")
    # Not an answer from Gemini at all: a bug here, not something a retry would cure.
    return CallDecision(Action.PERMANENT, 0.0, f"unexpected {type(exc).__name__}: {exc}")


def _httpx_kinds(exc: BaseException) -> set[str]:
    """Class names in the exception's MRO that come from httpx or httpx2.

    google-genai uses httpx2 (a fork with the same class names) when it is installed,
    httpx otherwise: matching by name covers both.
    """
    return {
        cls.__name__
        for cls in type(exc).__mro__
        if cls.__module__.split(".")[0] in ("httpx", "httpx2")
    }


def _classify_api_error(
    exc: genai_errors.APIError, *, backoff: float, now: datetime | None
) -> CallDecision:
    code = int(exc.code or 0)
    status = exc.status or ""
    message = (exc.message or "").strip()
    said = f"Gemini {code} {status}: {message}".rstrip(": ")
    if code == 429:
        quota = parse_quota_error(exc.details)
        if quota.per_day:
            wait = seconds_until_daily_reset(now or datetime.now(UTC))
            reset_at = ((now or datetime.now(UTC)) + timedelta(seconds=wait)).astimezone(PACIFIC)
            return CallDecision(
                Action.COOLDOWN,
                wait,
                f"daily Gemini quota exhausted ({', '.join(quota.quota_ids)}): waiting "
                f"{wait / 3600:.1f} h for the reset at {reset_at:%Y-%m-%d %H:%M} Pacific",
                per_day=True,
            )
        delay = quota.retry_delay_s if quota.retry_delay_s is not None else DEFAULT_COOLDOWN_S
        delay = max(MIN_COOLDOWN_S, delay)
        which = ", ".join(quota.quota_ids) or "quota not named"
        return CallDecision(
            Action.COOLDOWN,
            delay,
            f"Gemini rate limit hit ({which}): every worker pauses {delay:g} s",
        )
    configuration = configuration_cause(code, status, message, _error_reasons(exc.details))
    if configuration is not None:
        cause, variable = configuration
        return CallDecision(
            Action.CONFIGURATION,
            0.0,
            f"Gemini configuration problem: {cause} ({said}); check {variable}",
            variable=variable,
        )
    if code in _RETRYABLE_STATUS or code >= 500:
        return CallDecision(Action.RETRY, backoff, said)
    if code == 413:
        return CallDecision(Action.PERMANENT, 0.0, f"request too large for Gemini ({said})")
    document = document_fault_message(message, said)
    if document is not None:
        return CallDecision(Action.PERMANENT, 0.0, document)
    # A 4xx we cannot place: retried, and if every document gets it the model's breaker
    # opens; a document that alone keeps getting it uses its attempts and ends in error.
    return CallDecision(Action.RETRY, backoff, f"Gemini rejected the request ({said})")


# Words of an INVALID_ARGUMENT message about our generation settings, not the document.
_SETTING_WORDS = (
    "max_output_tokens",
    "maxoutputtokens",
    "max output tokens",
    "temperature",
    "generation_config",
    "generationconfig",
    "top_p",
    "topp",
    "top_k",
    "topk",
    "thinking",
    "response_mime_type",
    "candidate_count",
)


def configuration_cause(
    code: int, status: str, message: str, reasons: set[str]
) -> tuple[str, str] | None:
    """(likely cause, variable to check) when the error is about our configuration."""
    lowered = message.lower()
    if "API_KEY_INVALID" in reasons or code == 401:
        return "the API key is invalid or expired", "GEMINI_API_KEY"
    if code == 403:
        if "not been used" in lowered or "disabled" in lowered or "SERVICE_DISABLED" in reasons:
            return (
                "the Generative Language API is not enabled for the key's project",
                "GEMINI_API_KEY (its Google Cloud project)",
            )
        return "the API key is missing or not allowed to call Gemini", "GEMINI_API_KEY"
    if code == 404:
        return (
            "the model or endpoint does not exist",
            "GEMINI_MODEL, GEMINI_BASE_URL and GEMINI_API_VERSION",
        )
    if code == 400 and status == "FAILED_PRECONDITION":
        if "location" in lowered:
            cause = "the API is not available from this location"
        elif "billing" in lowered:
            cause = "billing is not enabled on the key's Google Cloud project"
        else:
            cause = "the key's Google Cloud project cannot use this API"
        return cause, "GEMINI_API_KEY (its Google Cloud project and region)"
    if code == 400 and "mime" in lowered and "application/pdf" in lowered:
        # The pool sends every chunk as application/pdf, checked locally first: refused,
        # it is the model that takes no PDF input (attack a2: every document failed).
        return "the model does not accept PDF input", "GEMINI_MODEL"
    if code == 400 and any(word in lowered for word in _SETTING_WORDS):
        if "token" in lowered and "output" in lowered:
            return "invalid generation settings", "GEMINI_MAX_OUTPUT_TOKENS"
        if "temperature" in lowered:
            return "invalid generation settings", "GEMINI_TEMPERATURE"
        return "invalid generation settings", "GEMINI_MODEL (the settings it accepts)"
    return None


def document_fault_message(message: str, said: str) -> str | None:
    """The precise error_message when a 400 is about the document itself; else None."""
    lowered = message.lower()
    if "no pages" in lowered or "corrupt" in lowered or "unable to process input" in lowered:
        return f"the PDF is corrupt, empty or not a PDF ({said})"
    if "password" in lowered or "encrypt" in lowered:
        return f"the PDF is encrypted ({said})"
    if "page" in lowered and ("exceed" in lowered or "too many" in lowered):
        return f"the document has too many pages for Gemini ({said}); lower OCR_PAGES_PER_CHUNK"
    if "payload" in lowered or "request size" in lowered or "too large" in lowered:
        return f"request too large for Gemini ({said}); lower OCR_PAGES_PER_CHUNK"
    if "token" in lowered and ("exceed" in lowered or "maximum" in lowered):
        return (
            f"the chunk is larger than the model's input limit ({said}); lower OCR_PAGES_PER_CHUNK"
        )
    if "mime" in lowered:
        return f"unsupported document format ({said})"
    return None


def _name(value: Any) -> str:
    """An SDK enum or a raw string as its wire name."""
    return str(getattr(value, "value", value) or "")


def answer_text(response: Any) -> str:
    """The answer's text (first candidate, thought parts left out)."""
    candidates = getattr(response, "candidates", None) or []
    if not candidates:
        return ""
    content = getattr(candidates[0], "content", None)
    parts = getattr(content, "parts", None) or []
    return "".join(
        p.text for p in parts if getattr(p, "text", None) and not getattr(p, "thought", False)
    )


def classify_response(
    response: Any, *, attempt: int = 1, backoff_base: float = 1.0
) -> CallDecision | None:
    """None when the answer is usable; otherwise why not and what to do."""
    backoff = backoff_delay(attempt, base=backoff_base)
    feedback = getattr(response, "prompt_feedback", None)
    block = _name(getattr(feedback, "block_reason", None))
    if block and block != "BLOCKED_REASON_UNSPECIFIED":
        detail = getattr(feedback, "block_reason_message", None)
        return CallDecision(
            Action.PERMANENT,
            0.0,
            f"Gemini blocked the document (promptFeedback.blockReason={block}"
            + (f": {detail}" if detail else "")
            + ")",
        )
    candidates = getattr(response, "candidates", None) or []
    if not candidates:
        return CallDecision(
            Action.RETRY, backoff, "Gemini returned no candidate and no block reason"
        )
    finish = _name(getattr(candidates[0], "finish_reason", None))
    text = answer_text(response)
    if finish in _BLOCKING_FINISH:
        return CallDecision(
            Action.PERMANENT, 0.0, f"Gemini withheld the text (finishReason={finish})"
        )
    if not text.strip():
        if finish == "MAX_TOKENS":
            # Not the document's fault: the budget is too small for the model (issue 11
            # attack: failing it failed every document). Retried; across documents it
            # opens the output-budget breaker and all OCR pauses.
            return CallDecision(
                Action.RETRY,
                backoff,
                "Gemini spent the whole output budget without text (finishReason=MAX_TOKENS, "
                "thinking may have used it); raise GEMINI_MAX_OUTPUT_TOKENS",
                output_budget=True,
            )
        return CallDecision(
            Action.RETRY,
            backoff,
            f"Gemini returned an empty answer (finishReason={finish or 'none'})",
        )
    return None
