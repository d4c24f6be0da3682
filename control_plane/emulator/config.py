"""The emulator's settings: limits, latency and fault injection, changeable at runtime."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Fault names, usable as rates (`fault_rates`) or scripted one by one (`script`).
FAULTS: tuple[str, ...] = (
    "500",  # INTERNAL
    "503",  # UNAVAILABLE, "The model is overloaded"
    "timeout",  # sleep past the client's timeout, then 504
    "malformed_json",  # HTTP 200 with a truncated JSON body
    "blocked_prompt",  # HTTP 200, promptFeedback.blockReason, no candidates
    "safety",  # candidate with finishReason SAFETY and no text
    "recitation",  # candidate with finishReason RECITATION and no text
    "empty_stop",  # candidate with finishReason STOP and empty text
    "max_tokens",  # candidate with finishReason MAX_TOKENS, output spent on thinking
    "max_tokens_cut",  # candidate with the first half of the text, finishReason MAX_TOKENS
    "failed_precondition",  # 400 FAILED_PRECONDITION "User location is not supported ..."
    "pdf_unsupported",  # 400 INVALID_ARGUMENT "Unsupported MIME type: application/pdf"
)
# Only scriptable: forced 429s, and "ok" to let one request through untouched.
SCRIPT_ONLY: tuple[str, ...] = ("429", "429_per_day", "ok")


@dataclass
class EmulatorConfig:
    """Everything the emulator does differently from a perfect, unlimited Gemini."""

    api_key: str | None = None  # None: any non-empty key is accepted
    rpm_limit: int = 0  # 0 = unlimited
    tpm_limit: int = 0  # input tokens per window; 0 = unlimited
    window_s: float = 60.0
    tokens_per_page: int = 258
    latency_ms: float = 0.0  # mean of a normal distribution, truncated at 0
    latency_jitter_ms: float = 0.0  # its standard deviation
    latency_per_page_ms: float = 0.0  # added per PDF page
    # issue 15: heavy tail: the latency is multiplied by a Pareto(alpha) draw (>= 1); 0 = off
    latency_tail_alpha: float = 0.0
    fault_rates: dict[str, float] = field(default_factory=dict)
    script: list[str] = field(default_factory=list)  # faults for the next requests, in order
    per_day_quota: bool = False  # every call: 429 with a PerDay quotaId
    storm_requests: int = 0  # the next N calls: 429 per-minute quota
    storm_retry_delay_s: float = 2.0
    retry_delay_s: float | None = None  # fixed RetryInfo for limit 429s (None: time to free)
    omit_retry_info: bool = False  # send 429s without RetryInfo (seen in the wild)
    timeout_sleep_s: float = 30.0
    seed: int | None = None
    known_models: list[str] = field(default_factory=list)  # models.get: empty = any model

    def public(self) -> dict[str, Any]:
        """The settings as JSON, without the API key."""
        data = dataclasses.asdict(self)
        data["api_key"] = "set" if self.api_key else None
        return data

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial change (from POST /_emulator/config); raises ValueError on bad input."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        candidate = dataclasses.replace(self, **changes)
        candidate.validate()
        for name in changes:
            setattr(self, name, getattr(candidate, name))

    def validate(self) -> None:
        """Raise ValueError on a setting that makes no sense."""
        for name in ("rpm_limit", "tpm_limit", "storm_requests", "tokens_per_page"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0")
        for name in (
            "window_s",
            "latency_ms",
            "latency_jitter_ms",
            "latency_per_page_ms",
            "latency_tail_alpha",
            "storm_retry_delay_s",
            "timeout_sleep_s",
        ):
            if not isinstance(getattr(self, name), int | float) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a number >= 0")
        if self.window_s <= 0:
            raise ValueError("window_s must be > 0")
        for name, rate in self.fault_rates.items():
            if name not in FAULTS:
                raise ValueError(f"unknown fault {name!r} (known: {', '.join(FAULTS)})")
            if not 0 <= float(rate) <= 1:
                raise ValueError(f"fault rate {name} must be in [0, 1]")
        if sum(float(r) for r in self.fault_rates.values()) > 1:
            raise ValueError("fault rates add up to more than 1")
        for name in self.script:
            if name not in FAULTS + SCRIPT_ONLY:
                raise ValueError(f"unknown scripted fault {name!r}")
