"""The Gemini OCR engine: one document's chunks, each gated by the shared limiter.

Per chunk: estimate input tokens -> `limiter.acquire(estimate)` -> `generate_content`
(the chunk inline as application/pdf + the type's prompt) -> classify -> settle the grant
with the actual `prompt_token_count` -> learn tokens-per-page. The SDK's own retries are
off (`HttpRetryOptions(attempts=1)`): it would retry 429s blindly, ignoring RetryInfo and
the other workers. Our policy instead: a quota 429 pauses every worker (shared cooldown)
and is retried without consuming an attempt; 5xx/timeouts back off up to
GEMINI_MAX_CALL_ATTEMPTS; a bad document fails at once.

Issue 11, blame the right thing: 5xx/timeouts across documents open the model's circuit
breaker and a configuration error (key, project, location, model, settings) opens the
configuration breaker; while one is open every job waits (holding its document) and one
call per probe interval tests Gemini; nothing is charged to the documents. An answer cut
at MAX_TOKENS is never stored as complete: the chunk is split in two and redone, down to
one page, where the document fails saying so.
"""

from __future__ import annotations

import inspect
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import redis
from google import genai
from google.genai import types

from control_plane import observe
from control_plane.breakers import (
    CONFIGURATION,
    OUTAGE_FAILURES,
    OUTPUT_BUDGET,
    Breakers,
    Policy,
    Step,
)
from control_plane.errors import (
    MAX_HELD_COOLDOWN_S,
    AcquireTimeoutError,
    ConfigError,
    DependencyPausedError,
    PermanentError,
    QuotaPausedError,
    RequestTooLargeError,
    TransientError,
)
from control_plane.gemini.classify import (
    CALL_ERRORS,
    Action,
    CallDecision,
    answer_text,
    backoff_delay,
    classify_exception,
    classify_response,
)
from control_plane.gemini.estimate import TokensPerPage, estimate_prompt_tokens, estimate_tokens
from control_plane.gemini.prompts import prompt_for
from control_plane.logs import log_event

if TYPE_CHECKING:
    from control_plane.config import Settings
    from control_plane.keys import Keys


class Limiter(Protocol):
    """The part of control_plane.rate_limiter.GeminiRateLimiter the engine uses."""

    def acquire(self, tokens: int, timeout: float | None = None) -> Any: ...
    def settle(self, grant: Any, actual_tokens: int) -> None: ...
    def cooldown(self, seconds: float, reason: str = "") -> None: ...
    def cooldown_remaining_ms(self) -> int: ...


class Chunk(Protocol):
    """A page range of a PDF as its own small PDF (control_plane.queue.pdf.PdfChunk)."""

    @property
    def first_page(self) -> int: ...
    @property
    def last_page(self) -> int: ...
    @property
    def total_pages(self) -> int: ...
    @property
    def data(self) -> bytes: ...


class OcrInterrupted(TransientError):
    """The stop event was set (shutdown) before the document was done."""


def paused_error(remaining_ms: int, reason: str) -> QuotaPausedError:
    """The error that gives a document back during a long cooldown (the message says why)."""
    return QuotaPausedError(
        f"Gemini paused for {remaining_ms / 3_600_000:.1f} h ({reason}); "
        "document given back to ready without counting an attempt"
    )


@dataclass(frozen=True)
class OcrResult:
    """A whole document's text (chunks joined in page order) and what it cost."""

    text: str
    prompt_tokens: int
    output_tokens: int
    calls: int
    pages: int


@dataclass(frozen=True)
class _ChunkText:
    text: str
    prompt_tokens: int
    output_tokens: int
    calls: int
    truncated: bool = False


@dataclass(frozen=True)
class SubChunk:
    """Part of a chunk, numbered in the whole document's pages."""

    first_page: int
    last_page: int
    total_pages: int
    data: bytes


def split_truncated(chunk: Chunk) -> list[SubChunk]:
    """Two halves of a chunk whose answer was cut at MAX_TOKENS; a single page cannot be
    split, and the document fails saying why (its text would be incomplete)."""
    from control_plane.queue.pdf import split_pdf

    pages = chunk.last_page - chunk.first_page + 1
    if pages <= 1:
        raise PermanentError(
            f"page {chunk.first_page} of {chunk.total_pages}: Gemini's answer was cut at "
            "GEMINI_MAX_OUTPUT_TOKENS (finishReason=MAX_TOKENS) even for a single page; the "
            "text would be incomplete, so it is not stored: raise GEMINI_MAX_OUTPUT_TOKENS"
        )
    halves = split_pdf(chunk.data, (pages + 1) // 2)
    offset = chunk.first_page - 1
    return [
        SubChunk(h.first_page + offset, h.last_page + offset, chunk.total_pages, h.data)
        for h in halves
    ]


def make_client(settings: Settings) -> genai.Client:
    """A google-genai client for the configured endpoint, with SDK retries off."""
    if settings.gemini_api_key is None:
        raise ConfigError("GEMINI_API_KEY: not set (needed to call Gemini or the emulator)")
    return genai.Client(
        api_key=settings.gemini_api_key.get_secret_value(),
        http_options=types.HttpOptions(
            base_url=settings.gemini_base_url,
            api_version=settings.gemini_api_version,
            timeout=settings.gemini_timeout_ms,  # milliseconds, as the SDK expects
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )


class GeminiOcrEngine:
    """OCR of one document at a time (thread-safe: share one engine between threads)."""

    def __init__(
        self,
        settings: Settings,
        limiter: Limiter,
        tokens_per_page: TokensPerPage,
        *,
        client: genai.Client | None = None,
        wait_slice_s: float = 30.0,
        backoff_base_s: float = 1.0,
        rng: random.Random | None = None,
        breakers: Breakers | None = None,
    ) -> None:
        self._settings = settings
        self._limiter = limiter
        self._tpp = tokens_per_page
        self._client = client if client is not None else make_client(settings)
        # Waits are cut into slices this long, to check the stop event and the cooldown.
        self._wait_slice_s = wait_slice_s
        # The shared limiter can stop waiting on our stop event; a test double may not.
        self._acquire_takes_stop = "stop_event" in inspect.signature(limiter.acquire).parameters
        # ... and keep its FIFO place across our housekeeping (one acquire call per chunk call).
        self._acquire_keeps_place = "on_wait" in inspect.signature(limiter.acquire).parameters
        self._backoff_base_s = backoff_base_s
        self._rng = rng if rng is not None else random.Random()
        # None (a test double without Redis): no breakers, errors as in round 1.
        self._breakers = breakers
        self._local = threading.local()  # this thread's document: its hold_until
        self._model_breaker = f"gemini:{settings.gemini_model}"
        self._outage_policy = Policy(OUTAGE_FAILURES, settings.ocr_breaker_probe_ms)
        self._config_policy = Policy(1, settings.gemini_config_probe_ms)
        self._generation = types.GenerateContentConfig(
            temperature=settings.gemini_temperature,
            max_output_tokens=settings.gemini_max_output_tokens,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, redis_client: redis.Redis, keys: Keys
    ) -> GeminiOcrEngine:
        """The production wiring: the shared Redis limiter and the learned tokens-per-page."""
        from control_plane.rate_limiter import GeminiRateLimiter

        limiter = GeminiRateLimiter.from_settings(redis_client, settings, keys)
        tpp = TokensPerPage(redis_client, keys, default=float(settings.gemini_tokens_per_page))
        return cls(settings, limiter, tpp, breakers=Breakers(redis_client, keys))

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def ocr_chunks(
        self,
        document_type: str,
        chunks: Sequence[Chunk],
        *,
        stop_event: threading.Event | None = None,
        before_call: Callable[[], None] | None = None,
        hold_until: float | None = None,
    ) -> OcrResult:
        """OCR every chunk in page order and join the texts; raises on failure (see module doc).

        `before_call` runs right before each Gemini call, once the limiter granted it: the
        caller's "should I go on" check (it raises to stop, e.g. lease lost, worker stopping).
        `hold_until` (time.monotonic()): past it, a breaker pause (configuration, outage,
        output budget) gives the document back instead of holding it; the job sets it
        before its OCR_JOB_TIME_LIMIT_MS, whose interruption would count an attempt
        (attack a2). Quota waits are not bounded by it: they come back often, and a long
        document given back at each one would be redone forever without an attempt."""
        if not chunks:
            raise PermanentError("the document has no pages to OCR")
        self._local.hold_until = hold_until
        try:
            return self._ocr_all(document_type, chunks, stop_event, before_call)
        finally:
            self._local.hold_until = None

    def _held_too_long(self, wait_s: float) -> bool:
        """Would waiting `wait_s` more hold the document past the caller's `hold_until`?"""
        hold_until: float | None = getattr(self._local, "hold_until", None)
        return hold_until is not None and time.monotonic() + wait_s > hold_until

    def _ocr_all(
        self,
        document_type: str,
        chunks: Sequence[Chunk],
        stop_event: threading.Event | None,
        before_call: Callable[[], None] | None,
    ) -> OcrResult:
        texts: list[str] = []
        prompt_tokens = output_tokens = calls = pages = 0
        pending = sorted(chunks, key=lambda c: c.first_page)
        while pending:
            chunk = pending.pop(0)
            done = self._ocr_chunk(document_type, chunk, stop_event, before_call)
            prompt_tokens += done.prompt_tokens
            output_tokens += done.output_tokens
            calls += done.calls
            if done.truncated:
                # Cut at GEMINI_MAX_OUTPUT_TOKENS: never stored as complete. Redo as halves.
                pending[:0] = split_truncated(chunk)
                continue
            texts.append(done.text.strip("\n"))
            pages += chunk.last_page - chunk.first_page + 1
        return OcrResult("\n\n".join(texts), prompt_tokens, output_tokens, calls, pages)

    # --- one chunk ---------------------------------------------------------------------

    def _ocr_chunk(
        self,
        document_type: str,
        chunk: Chunk,
        stop_event: threading.Event | None,
        before_call: Callable[[], None] | None = None,
    ) -> _ChunkText:
        pages = chunk.last_page - chunk.first_page + 1
        where = f"pages {chunk.first_page}-{chunk.last_page} of {chunk.total_pages}"
        prompt = prompt_for(document_type, chunk.first_page, chunk.last_page, chunk.total_pages)
        prompt_tokens = estimate_prompt_tokens(prompt)
        contents = [
            types.Content(
                role="user",
                parts=[
                    types.Part.from_bytes(data=chunk.data, mime_type="application/pdf"),
                    types.Part.from_text(text=prompt),
                ],
            )
        ]
        calls = 0
        attempt = 1
        held_since = time.monotonic()
        while True:
            self._check_stop(stop_event)
            admitted = self._wait_for_breakers(where, held_since, stop_event)
            estimate = estimate_tokens(pages, self._tpp.get(document_type), prompt_tokens)
            waited = time.monotonic()
            grant = self._acquire(estimate, where, stop_event)
            observe.limiter_wait(document_type, time.monotonic() - waited)  # issue 14
            if before_call is not None:
                before_call()
            calls += 1
            decision: CallDecision | None
            called = time.monotonic()
            try:
                response = self._client.models.generate_content(
                    model=self._settings.gemini_model, contents=contents, config=self._generation
                )
            except CALL_ERRORS as exc:
                observe.gemini_call(document_type, time.monotonic() - called, exc)  # issue 14
                # The grant keeps its estimate: we cannot know what Gemini counted.
                decision = classify_exception(
                    exc, attempt=attempt, rng=self._rng, backoff_base=self._backoff_base_s
                )
            else:
                observe.gemini_call(document_type, time.monotonic() - called, None)  # issue 14
                usage = response.usage_metadata
                actual = (usage.prompt_token_count if usage else None) or 0
                if actual > 0:
                    try:  # bookkeeping: a Redis error here must not fail an answered chunk
                        self._limiter.settle(grant, actual)
                        self._tpp.observe(
                            document_type, pages, prompt_tokens, actual, _document_tokens(usage)
                        )
                    except (redis.RedisError, OSError) as exc:
                        log_event(
                            "gemini.settle_failed",
                            "grant keeps its estimate",
                            level="WARNING",
                            where=where,
                            error=type(exc).__name__,
                        )
                decision = classify_response(
                    response, attempt=attempt, backoff_base=self._backoff_base_s
                )
                truncated = decision is None and self._note_truncation(response, where)
                if decision is None and truncated and pages <= 1:
                    # One page cut: splitting cannot help. The output budget is too small
                    # (a configuration matter when it happens across documents): retried
                    # on the output-budget breaker, never stored, never failed at once.
                    decision = CallDecision(
                        Action.RETRY,
                        backoff_delay(attempt, base=self._backoff_base_s, rng=self._rng),
                        f"{where}: Gemini's answer was cut at GEMINI_MAX_OUTPUT_TOKENS "
                        "(finishReason=MAX_TOKENS) even for a single page; raise "
                        "GEMINI_MAX_OUTPUT_TOKENS",
                        output_budget=True,
                    )
                if (
                    decision is None
                    or decision.action is Action.PERMANENT
                    or decision.output_budget
                ):
                    # Gemini works; only this document (or the budget) may not. The
                    # output-budget breaker closes only on a whole answer.
                    self._answered(admitted, output_fits=decision is None and not truncated)
                if decision is None:
                    output = (usage.candidates_token_count if usage else None) or 0
                    return _ChunkText(
                        answer_text(response), actual or estimate, output, calls, truncated
                    )
            attempt = self._follow(decision, attempt, where, stop_event)

    def _follow(
        self,
        decision: CallDecision,
        attempt: int,
        where: str,
        stop_event: threading.Event | None,
    ) -> int:
        """Act on a failed call's decision; returns the next attempt number or raises."""
        if decision.action is Action.CONFIGURATION:
            if self._breakers is None:
                raise ConfigError(decision.message)
            opened = self._breakers.failure(CONFIGURATION, self._config_policy, decision.message)
            if opened.transition == "opened":
                probe_s = self._config_policy.probe_ms / 1000
                log_event(
                    "gemini.paused",
                    f"ALL OCR PAUSED: {decision.message}. Probing every {probe_s:g} s "
                    "(GEMINI_CONFIG_PROBE_MS); resumes by itself; documents keep their "
                    "status and attempts",
                    level="CRITICAL",
                    variable=decision.variable,
                )
            return attempt  # not the document's fault: wait for the breaker, same attempt
        if decision.action is Action.PERMANENT:
            log_event("gemini.permanent", decision.message, level="WARNING", where=where)
            raise PermanentError(f"{where}: {decision.message}")
        if decision.action is Action.COOLDOWN:
            self._cooldown(decision, where, stop_event)
            return attempt  # a quota pause is not the call's fault: same attempt again
        if self._breakers is not None and decision.output_budget:
            seen = self._breakers.failure(OUTPUT_BUDGET, self._outage_policy, decision.message)
            if seen.transition == "opened":
                log_event(
                    "gemini.paused",
                    f"ALL OCR PAUSED: answers cut across documents ({decision.message}). "
                    "GEMINI_MAX_OUTPUT_TOKENS is too small for GEMINI_MODEL; probing every "
                    f"{self._outage_policy.probe_ms / 1000:g} s (OCR_BREAKER_PROBE_MS); "
                    "documents keep their status and attempts",
                    level="CRITICAL",
                    variable="GEMINI_MAX_OUTPUT_TOKENS",
                )
            if seen.blocked:
                return attempt  # the budget, not the document: wait, same attempt
        elif self._breakers is not None:
            seen = self._breakers.failure(
                self._model_breaker, self._outage_policy, decision.message
            )
            if seen.transition == "opened":
                log_event(
                    "gemini.outage",
                    f"Gemini failing across documents ({decision.message}); OCR paused, "
                    f"one probe every {self._outage_policy.probe_ms / 1000:g} s "
                    "(OCR_BREAKER_PROBE_MS); no attempt is counted",
                    level="WARNING",
                    model=self._settings.gemini_model,
                )
            if seen.blocked:
                # an outage: wait for the breaker, same attempt; still say what this call got
                # (the outage itself is announced once, gemini.outage)
                log_event("gemini.held", decision.message, where=where, attempt=attempt)
                return attempt
        if attempt >= self._settings.gemini_max_call_attempts:
            log_event(
                "gemini.gave_up", decision.message, level="WARNING", where=where, attempts=attempt
            )
            raise TransientError(f"{where}: gave up after {attempt} attempts: {decision.message}")
        log_event(
            "gemini.retry", decision.message, where=where, attempt=attempt, delay_s=decision.delay_s
        )
        self._pause(decision.delay_s, stop_event)
        return attempt + 1

    def _cooldown(
        self,
        decision: CallDecision,
        where: str,
        stop_event: threading.Event | None,
    ) -> None:
        remaining_ms = self._limiter.cooldown_remaining_ms()
        # A burst of 429s across workers asks for one shared pause, not one per answer.
        if remaining_ms + 1000 < decision.delay_s * 1000:
            log_event(
                "gemini.429",
                decision.message,
                level="WARNING",
                where=where,
                delay_s=decision.delay_s,
                per_day=decision.per_day,
            )
            self._limiter.cooldown(decision.delay_s, decision.message)
        while (remaining_ms := self._limiter.cooldown_remaining_ms()) > 0:
            if remaining_ms > MAX_HELD_COOLDOWN_S * 1000:
                raise paused_error(remaining_ms, decision.message)
            self._pause(min(remaining_ms / 1000, self._wait_slice_s), stop_event)

    def _wait_for_breakers(
        self,
        where: str,
        held_since: float,
        stop_event: threading.Event | None,
    ) -> list[tuple[str, Policy, Step]]:
        """Wait while Gemini's configuration or model breaker is open (the job keeps its
        document); give the document back once held longer than MAX_HELD_COOLDOWN_S."""
        if self._breakers is None:
            return []
        breakers = self._breakers
        while True:
            admitted: list[tuple[str, Policy, Step]] = []
            blocked: tuple[str, Step] | None = None
            for name, policy in (
                (CONFIGURATION, self._config_policy),
                (self._model_breaker, self._outage_policy),
                (OUTPUT_BUDGET, self._outage_policy),
            ):
                seen = breakers.admit(name, policy)
                if seen.blocked:
                    blocked = (name, seen)
                    break
                admitted.append((name, policy, seen))
            if blocked is None:
                return admitted
            name, seen = blocked
            wait_s = seen.wait_ms / 1000
            if time.monotonic() - held_since + wait_s > MAX_HELD_COOLDOWN_S or self._held_too_long(
                wait_s
            ):
                raise DependencyPausedError(
                    f"{where}: Gemini paused ({name} breaker open); document given back "
                    "to ready without counting an attempt",
                    retry_after_ms=seen.wait_ms,
                )
            self._pause(max(seen.wait_ms, 50) / 1000, stop_event)
            self._check_stop(stop_event)

    def _answered(
        self, admitted: list[tuple[str, Policy, Step]], *, output_fits: bool = True
    ) -> None:
        """Gemini answered: close what this call probed (one log line per closing); the
        output-budget breaker only when the answer was whole (`output_fits`)."""
        if self._breakers is None:
            return
        for name, policy, _seen in admitted:
            if name == OUTPUT_BUDGET and not output_fits:
                continue
            # Always: failures counted elsewhere since our admit must be reset ("in a row");
            # on a closed breaker with no failure the script returns without writing.
            closed = self._breakers.success(name, policy)
            if closed.transition == "closed":
                log_event(
                    "gemini.resumed",
                    f"Gemini answers again ({name}); OCR resumed",
                    level="WARNING",
                )

    def _acquire(
        self,
        estimate: int,
        where: str,
        stop_event: threading.Event | None,
    ) -> Any:
        if self._acquire_keeps_place:
            return self._acquire_in_place(estimate, where, stop_event)
        while True:
            self._check_stop(stop_event)
            # Checked before waiting: the limiter would wait out even an hours-long cooldown.
            remaining_ms = self._limiter.cooldown_remaining_ms()
            if remaining_ms > MAX_HELD_COOLDOWN_S * 1000:
                raise paused_error(remaining_ms, "shared cooldown")
            try:
                if self._acquire_takes_stop:
                    acquire: Any = self._limiter.acquire  # the real limiter takes stop_event
                    return acquire(estimate, timeout=self._wait_slice_s, stop_event=stop_event)
                return self._limiter.acquire(estimate, timeout=self._wait_slice_s)
            except AcquireTimeoutError:  # includes the limiter's AcquireCancelledError
                continue  # still waiting our turn (the heartbeat keeps the lease alive)
            except RequestTooLargeError as exc:
                raise RequestTooLargeError(
                    f"{where}: needs ~{estimate} input tokens, more than the whole "
                    f"GEMINI_TPM_LIMIT; lower OCR_PAGES_PER_CHUNK ({exc})"
                ) from exc

    def _acquire_in_place(
        self,
        estimate: int,
        where: str,
        stop_event: threading.Event | None,
    ) -> Any:
        """One limiter wait for the whole chunk call: the FIFO place is never given up while we
        look at the cooldown every wait slice (the heartbeat keeps the lease alive)."""

        def check_cooldown() -> None:
            # The limiter would wait out even an hours-long cooldown: give the document back.
            remaining_ms = self._limiter.cooldown_remaining_ms()
            if remaining_ms > MAX_HELD_COOLDOWN_S * 1000:
                raise paused_error(remaining_ms, "shared cooldown")

        self._check_stop(stop_event)
        check_cooldown()
        acquire: Any = self._limiter.acquire
        try:
            return acquire(
                estimate,
                stop_event=stop_event,
                on_wait=check_cooldown,
                wait_slice_s=self._wait_slice_s,
            )
        except QuotaPausedError:
            raise
        except AcquireTimeoutError:  # the limiter's AcquireCancelledError: we are stopping
            self._check_stop(stop_event)
            raise
        except RequestTooLargeError as exc:
            raise RequestTooLargeError(
                f"{where}: needs ~{estimate} input tokens, more than the whole "
                f"GEMINI_TPM_LIMIT; lower OCR_PAGES_PER_CHUNK ({exc})"
            ) from exc

    def _pause(self, seconds: float, stop_event: threading.Event | None) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            step = min(left, self._wait_slice_s)
            if stop_event is not None:
                if stop_event.wait(step):
                    raise OcrInterrupted("stopped while waiting to retry Gemini")
            else:
                time.sleep(step)

    @staticmethod
    def _check_stop(stop_event: threading.Event | None) -> None:
        if stop_event is not None and stop_event.is_set():
            raise OcrInterrupted("stopped before the document was done")

    @staticmethod
    def _note_truncation(response: Any, where: str) -> bool:
        """True when the answer stopped at MAX_TOKENS: its text is incomplete."""
        candidates = response.candidates or []
        finish = getattr(candidates[0].finish_reason, "value", None) if candidates else None
        if finish == "MAX_TOKENS":
            log_event(
                "gemini.truncated",
                "answer cut at GEMINI_MAX_OUTPUT_TOKENS; the chunk is split in two and redone",
                level="WARNING",
                where=where,
            )
            return True
        return False


def _document_tokens(usage: Any) -> int | None:
    """The DOCUMENT modality's share of the prompt tokens, when Gemini reports it."""
    for detail in getattr(usage, "prompt_tokens_details", None) or []:
        if getattr(detail.modality, "value", detail.modality) == "DOCUMENT":
            return int(detail.token_count or 0) or None
    return None
