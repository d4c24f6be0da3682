"""The OCR engine end to end: real google-genai client -> HTTP -> emulator, real Redis limiter."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from control_plane.config import Settings
from control_plane.errors import ConfigError, PermanentError, TransientError
from control_plane.gemini.classify import Action, classify_exception
from control_plane.gemini.engine import GeminiOcrEngine, make_client
from control_plane.gemini.estimate import TokensPerPage
from control_plane.gemini.prompts import split_pages
from control_plane.keys import Keys
from control_plane.queue.pdf import PdfChunk, split_pdf
from control_plane.rate_limiter import GeminiRateLimiter
from control_plane.samples import acte_pages, make_pdf, sample_document
from tests.support.emulator import DEFAULT_TEST_KEY, EmulatorProcess, emulator_fixture

pytestmark = pytest.mark.integration

emulator = emulator_fixture(scope="module")


@pytest.fixture
def emu(emulator: EmulatorProcess) -> EmulatorProcess:
    emulator.configure(
        rpm_limit=0,
        tpm_limit=0,
        script=[],
        storm_requests=0,
        per_day_quota=False,
        fault_rates={},
        latency_ms=0.0,
        tokens_per_page=258,
        timeout_sleep_s=5.0,
    )
    # A call left by an earlier test (a timeout fault sleeps 5 s) must not land in this
    # test's counters or take one of its scripted faults.
    deadline = time.monotonic() + 15
    while emulator.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    emulator.reset()
    return emulator


def _settings(emu: EmulatorProcess, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        gemini_api_key=DEFAULT_TEST_KEY,
        gemini_base_url=emu.url,
        gemini_timeout_ms=1500,
        gemini_max_call_attempts=4,
        gemini_rpm_limit=1000,
        gemini_tpm_limit=5_000_000,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class Engines:
    """Builds engines sharing one Redis prefix (one limiter state) and closes them."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client, self.keys, self.made = client, keys, []  # type: list[GeminiOcrEngine]

    def __call__(self, settings: Settings, **kwargs: object) -> GeminiOcrEngine:
        limiter = GeminiRateLimiter.from_settings(self.client, settings, self.keys)
        tpp = TokensPerPage(self.client, self.keys, default=float(settings.gemini_tokens_per_page))
        engine = GeminiOcrEngine(
            settings, limiter, tpp, backoff_base_s=0.05, wait_slice_s=0.5, **kwargs
        )  # type: ignore[arg-type]
        self.made.append(engine)
        return engine


@pytest.fixture
def engines(redis_client: redis.Redis, keys: Keys) -> Iterator[Engines]:
    made = Engines(redis_client, keys)
    yield made
    for engine in made.made:
        engine.close()


def _whole(pdf: bytes, total: int) -> list[PdfChunk]:
    return [PdfChunk(1, total, total, pdf)]


def test_multi_page_pdf_comes_back_in_page_order(emu: EmulatorProcess, engines: Engines) -> None:
    doc = sample_document("acte", 42, pages=5)
    result = engines(_settings(emu)).ocr_chunks("acte", _whole(doc.pdf, 5))
    pages = split_pages(result.text)
    assert list(pages) == [1, 2, 3, 4, 5]
    assert [pages[n].split() for n in pages] == [p.split() for p in doc.pages]
    assert (result.calls, result.pages) == (1, 5)
    assert result.prompt_tokens > 5 * 258 and result.output_tokens > 0


def test_120_page_pdf_is_chunked_and_joined_in_order(
    emu: EmulatorProcess, engines: Engines
) -> None:
    texts = acte_pages(7, pages=120)
    chunks = split_pdf(make_pdf(texts), 20)
    assert [(c.first_page, c.last_page) for c in chunks][:2] == [(1, 20), (21, 40)]
    # hand the chunks over shuffled: the engine still joins them in page order
    result = engines(_settings(emu)).ocr_chunks("acte", list(reversed(chunks)))
    pages = split_pages(result.text)
    assert list(pages) == list(range(1, 121))
    assert all(pages[n].split() == texts[n - 1].split() for n in pages)
    assert result.calls == 6 == emu.stats()["requests"]


def test_estimates_settle_to_actual_usage(
    emu: EmulatorProcess, engines: Engines, redis_client: redis.Redis, keys: Keys
) -> None:
    emu.configure(tokens_per_page=560)  # Gemini 3's media resolution, not the 258 we assume
    engine = engines(_settings(emu))
    limiter = GeminiRateLimiter(redis_client, rpm_limit=1000, tpm_limit=5_000_000, keys=keys)
    result = engine.ocr_chunks("index", split_pdf(make_pdf([f"p{i}" for i in range(6)]), 3))
    stats = emu.stats()
    assert result.prompt_tokens == stats["prompt_tokens"], "we report what Gemini counted"
    assert limiter.usage() == (2, stats["prompt_tokens"]), "the window holds actuals, not estimates"
    learned = TokensPerPage(redis_client, keys).get("index")
    assert learned == pytest.approx(560.0), "learned from promptTokensDetails DOCUMENT"
    assert TokensPerPage(redis_client, keys).get("acte") == 258.0, "learning is per type"


RETRIED = [
    (["503", "500", "timeout"], 4),
    (["malformed_json"], 2),
    (["empty_stop", "empty_stop"], 3),
]


@pytest.mark.parametrize(("script", "calls"), RETRIED, ids=["5xx+timeout", "malformed", "empty"])
def test_transient_failures_are_retried_then_succeed(
    emu: EmulatorProcess, engines: Engines, script: list[str], calls: int
) -> None:
    emu.configure(script=script)
    result = engines(_settings(emu)).ocr_chunks("index", _whole(make_pdf(["Registre"]), 1))
    assert "Registre" in result.text and result.calls == calls


def test_retries_stop_at_max_call_attempts(emu: EmulatorProcess, engines: Engines) -> None:
    emu.configure(script=["503"] * 10)
    with pytest.raises(TransientError, match=r"gave up after 3 attempts.*overloaded"):
        engines(_settings(emu, gemini_max_call_attempts=3)).ocr_chunks(
            "index", _whole(make_pdf(["x"]), 1)
        )
    assert emu.stats()["requests"] == 3


PERMANENT = [
    ("blocked_prompt", "blockReason=PROHIBITED_CONTENT"),
    ("safety", "finishReason=SAFETY"),
    ("recitation", "finishReason=RECITATION"),
]


def test_no_text_at_max_tokens_is_retried_not_failed(
    emu: EmulatorProcess, engines: Engines
) -> None:
    # The output budget, not the document (attack a2): across documents it pauses all OCR
    # (tests/integration/test_gemini_blame.py); once, it is simply asked again.
    emu.configure(script=["max_tokens"])
    result = engines(_settings(emu)).ocr_chunks("acte", _whole(make_pdf(["Registre"]), 1))
    assert "Registre" in result.text and result.calls == 2


@pytest.mark.parametrize(("fault", "fragment"), PERMANENT, ids=[p[0] for p in PERMANENT])
def test_bad_answers_fail_once_with_a_precise_message(
    emu: EmulatorProcess, engines: Engines, fault: str, fragment: str
) -> None:
    emu.configure(script=[fault])
    with pytest.raises(PermanentError, match=fragment):
        engines(_settings(emu)).ocr_chunks("acte", _whole(make_pdf(["x"]), 1))
    assert emu.stats()["requests"] == 1, "no retry for a permanent failure"


def test_corrupt_pdf_fails_once(emu: EmulatorProcess, engines: Engines) -> None:
    with pytest.raises(PermanentError, match="pages 1-1 of 1: the PDF is corrupt"):
        engines(_settings(emu)).ocr_chunks("acte", [PdfChunk(1, 1, 1, b"%PDF-1.7 garbage")])
    assert emu.stats()["requests"] == 1


def test_bad_key_without_breakers_raises_a_configuration_error(
    emu: EmulatorProcess, engines: Engines
) -> None:
    # With the shared breakers (production) the pool pauses instead: test_gemini_blame.py.
    with pytest.raises(ConfigError, match="GEMINI_API_KEY") as caught:
        engines(_settings(emu, gemini_api_key="not-the-key")).ocr_chunks(
            "acte", _whole(make_pdf(["x"]), 1)
        )
    assert "not-the-key" not in str(caught.value)


def test_a_429_cools_down_without_consuming_an_attempt(
    emu: EmulatorProcess, engines: Engines
) -> None:
    emu.configure(script=["429", "503", "503", "503"], storm_retry_delay_s=1.0)
    result = engines(_settings(emu, gemini_max_call_attempts=4)).ocr_chunks(
        "index", _whole(make_pdf(["Registre"]), 1)
    )
    assert result.calls == 5, "1 cooled-down call + 3 failures + the success, within 4 attempts"


def test_per_day_quota_is_recognised_live(emu: EmulatorProcess) -> None:
    emu.configure(per_day_quota=True)
    from google.genai import errors as genai_errors
    from google.genai import types

    client = make_client(_settings(emu))
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(
            model="m",
            contents=[
                types.Part.from_bytes(data=make_pdf(["x"]), mime_type="application/pdf"),
                "OCR",
            ],
        )
    client.close()
    decision = classify_exception(caught.value, attempt=1)
    assert decision.action is Action.COOLDOWN and decision.per_day
    assert "Pacific" in decision.message and decision.delay_s > 0


def test_stop_event_interrupts_a_waiting_engine(emu: EmulatorProcess, engines: Engines) -> None:
    emu.configure(script=["503"] * 10)
    stop = threading.Event()
    engine = engines(_settings(emu))
    stop.set()
    with pytest.raises(TransientError, match="stopped"):
        engine.ocr_chunks("acte", _whole(make_pdf(["x"]), 1), stop_event=stop)
    assert emu.stats()["requests"] == 0


def test_a_429_burst_gives_one_shared_cooldown_that_every_caller_waits_out(
    emu: EmulatorProcess, engines: Engines, redis_client: redis.Redis, keys: Keys
) -> None:
    """Six workers (separate engines and limiters, one Redis prefix) hit a 429 storm."""
    delay = 2.0
    settings = _settings(emu)
    workers = [engines(settings) for _ in range(6)]
    # Warm each engine (HTTP client, estimates) so the six first calls leave together.
    for n, engine in enumerate(workers):
        engine.ocr_chunks("index", _whole(make_pdf([f"warm-up {n}"]), 1))
    while emu.stats()["in_flight"]:
        time.sleep(0.01)
    emu.reset()
    emu.configure(storm_requests=6, storm_retry_delay_s=delay, latency_ms=300.0)
    docs = [make_pdf([f"document {i}"]) for i in range(12)]
    start = threading.Barrier(6)

    def run(i: int) -> str:
        engine = workers[i % 6]
        if i < 6:
            start.wait(timeout=30)
        return engine.ocr_chunks("index", _whole(docs[i], 1)).text

    with ThreadPoolExecutor(6) as pool:
        texts = list(pool.map(run, range(12)))
    assert all(f"document {i}" in texts[i] for i in range(12))

    log = sorted(emu.stats(log=True)["log"], key=lambda e: e["t"])
    refused = [e for e in log if e["status"] == 429]
    served = [e for e in log if e["status"] == 200]
    assert len(refused) == 6 and len(served) == 12
    first_429 = refused[0]["t"]
    timeline = [(round(e["t"] - first_429, 3), e["status"]) for e in log]
    # Nothing reached Gemini during the cooldown: every call came in the first burst or after
    # the pause (a caller still preparing its request when the burst hit waits it out too, and
    # the count-based storm then refuses it: that is the emulator's storm, not a second wave).
    assert all(e["t"] - first_429 < 0.5 or e["t"] >= first_429 + delay - 0.1 for e in log), timeline
    assert sum(1 for e in refused if e["t"] - first_429 < 0.5) >= 3, timeline
    resumed = min(e["t"] for e in served)
    assert resumed >= first_429 + delay - 0.1, timeline
    # ... and the pauses were one shared period, not stacked one per 429
    assert resumed < first_429 + 2 * delay, "cooldowns were stacked, not shared"
    # Simultaneous 429s may each extend the shared deadline by a few ms (counted by the
    # limiter); the engine skips the call when a cooldown long enough is already running.
    counted = GeminiRateLimiter(redis_client, rpm_limit=1, tpm_limit=1, keys=keys).stats()
    assert 1 <= counted.get("cooldowns", 0) <= len(refused), counted
