"""The engine blames the right thing (issue 11), real google-genai -> emulator, real Redis:
a Gemini outage or configuration error pauses every caller (shared breakers) and ends by
itself without charging the document; a truncated answer is never returned as complete."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from loguru import logger

from control_plane.breakers import CONFIGURATION, OUTPUT_BUDGET, Breakers
from control_plane.config import Settings
from control_plane.gemini.engine import GeminiOcrEngine
from control_plane.gemini.estimate import TokensPerPage
from control_plane.gemini.prompts import split_pages
from control_plane.keys import Keys
from control_plane.queue.pdf import PdfChunk
from control_plane.rate_limiter import GeminiRateLimiter
from control_plane.samples import make_pdf, sample_document
from tests.support.emulator import DEFAULT_TEST_KEY, EmulatorProcess, emulator_fixture

pytestmark = pytest.mark.integration
emulator = emulator_fixture(scope="module")
PROBE_MS = 300


@pytest.fixture
def emu(emulator: EmulatorProcess) -> EmulatorProcess:
    emulator.configure(script=[], fault_rates={}, api_key=None, rpm_limit=0, tpm_limit=0)
    emulator.reset()
    return emulator


@pytest.fixture
def engine(
    emu: EmulatorProcess, redis_client: redis.Redis, keys: Keys
) -> Iterator[GeminiOcrEngine]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        gemini_api_key=DEFAULT_TEST_KEY,
        gemini_base_url=emu.url,
        gemini_timeout_ms=3000,
        gemini_max_call_attempts=3,
        ocr_breaker_probe_ms=PROBE_MS,
        gemini_config_probe_ms=PROBE_MS,
    )
    made = GeminiOcrEngine(
        settings,
        GeminiRateLimiter.from_settings(redis_client, settings, keys),
        TokensPerPage(redis_client, keys, default=258.0),
        backoff_base_s=0.05,
        wait_slice_s=0.2,
        breakers=Breakers(redis_client, keys),
    )
    yield made
    made.close()


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(f"{m.record['extra'].get('action')} {m}"))
    yield lines
    logger.remove(sink)


def _doc(n: int, pages: int = 1) -> list[PdfChunk]:
    doc = sample_document("index", n, pages=pages)
    return [PdfChunk(1, pages, pages, doc.pdf)]


def _run_phase(emu: EmulatorProcess, fault: str, seconds: float, work: list) -> list:
    """Start `work` in threads, put the emulator in `fault` for `seconds`, then heal it."""
    emu.configure(fault_rates={fault: 1.0})
    with ThreadPoolExecutor(len(work)) as pool:
        futures = [pool.submit(fn) for fn in work]
        time.sleep(seconds)
        emu.configure(fault_rates={})
        healed = time.monotonic()
        results = [f.result(timeout=60) for f in futures]
    return [results, time.monotonic() - healed]


def test_a_503_phase_across_documents_pauses_and_resumes_without_giving_up(
    emu: EmulatorProcess, engine: GeminiOcrEngine, log_lines: list[str]
) -> None:
    work = [lambda n=n: engine.ocr_chunks("index", _doc(n)) for n in range(4)]
    results, _ = _run_phase(emu, "503", 3.0, work)
    assert all(r.pages == 1 and r.text for r in results), "every document done, none given up"
    assert sum("gemini.outage" in line for line in log_lines) == 1, "one line per outage"
    assert sum("gemini.resumed" in line for line in log_lines) == 1
    # Held callers did not hammer Gemini: about one probe per interval during the phase.
    assert emu.stats()["statuses"].get("503", 0) < 3 + 4 * 3 + 3.0 / (PROBE_MS / 1000) + 4


def test_failed_precondition_pauses_all_ocr_with_one_line_and_resumes_by_itself(
    emu: EmulatorProcess, engine: GeminiOcrEngine, log_lines: list[str], redis_client, keys
) -> None:
    work = [lambda n=n: engine.ocr_chunks("index", _doc(n)) for n in range(3)]
    emu.configure(fault_rates={"failed_precondition": 1.0})
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(fn) for fn in work]
        deadline = time.monotonic() + 10
        while CONFIGURATION not in Breakers(redis_client, keys).open_breakers():
            assert time.monotonic() < deadline, "the configuration breaker should open"
            time.sleep(0.05)
        time.sleep(1.0)
        emu.configure(fault_rates={})
        healed = time.monotonic()
        results = [f.result(timeout=30) for f in futures]
        resumed_after = time.monotonic() - healed
    assert all(r.text for r in results)
    paused = [line for line in log_lines if line.startswith("gemini.paused")]
    assert len(paused) == 1, paused
    assert "not available from this location" in paused[0] and "GEMINI_API_KEY" in paused[0]
    assert "GEMINI_CONFIG_PROBE_MS" in paused[0]
    assert resumed_after < PROBE_MS / 1000 + 2.0, "resumes within one probe interval (+slack)"


def test_a_model_without_pdf_input_pauses_all_ocr_instead_of_failing_every_document(
    emu: EmulatorProcess, engine: GeminiOcrEngine, log_lines: list[str], redis_client, keys
) -> None:
    """Attack (a2): GEMINI_MODEL set to a model that takes no PDF answers every call with
    400 "Unsupported MIME type: application/pdf"; that was read as the document's format,
    and every document failed at once (status 4) at the Gemini call rate."""
    work = [lambda n=n: engine.ocr_chunks("index", _doc(n)) for n in range(3)]
    emu.configure(fault_rates={"pdf_unsupported": 1.0})
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(fn) for fn in work]
        deadline = time.monotonic() + 10
        while CONFIGURATION not in Breakers(redis_client, keys).open_breakers():
            assert time.monotonic() < deadline, "the configuration breaker should open"
            assert not any(f.done() for f in futures), [f.exception() for f in futures]
            time.sleep(0.05)
        time.sleep(0.5)
        assert not any(f.done() for f in futures), "held, not failed"
        emu.configure(fault_rates={})
        results = [f.result(timeout=30) for f in futures]
    assert all(r.text for r in results)
    paused = [line for line in log_lines if line.startswith("gemini.paused")]
    assert len(paused) == 1 and "GEMINI_MODEL" in paused[0], paused


def test_a_bad_key_pauses_instead_of_failing_and_resumes_when_the_key_works(
    emu: EmulatorProcess, engine: GeminiOcrEngine, log_lines: list[str]
) -> None:
    emu.configure(api_key="another-key")  # ours is now refused (400 API_KEY_INVALID)
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(engine.ocr_chunks, "index", _doc(1), stop_event=stop)
        time.sleep(1.0)
        assert not future.done(), "a refused key must not fail the document"
        emu.configure(api_key=None)
        assert future.result(timeout=10).text
    paused = [line for line in log_lines if line.startswith("gemini.paused")]
    assert len(paused) == 1 and "GEMINI_API_KEY" in paused[0]
    assert DEFAULT_TEST_KEY not in "\n".join(log_lines)


def test_an_answer_cut_at_max_tokens_is_split_and_redone(
    emu: EmulatorProcess, engine: GeminiOcrEngine
) -> None:
    doc = sample_document("acte", 5, pages=4)
    emu.configure(script=["max_tokens_cut", "max_tokens_cut"])  # 1-4 cut, then 1-2 cut
    result = engine.ocr_chunks("acte", [PdfChunk(1, 4, 4, doc.pdf)])
    pages = split_pages(result.text)
    assert list(pages) == [1, 2, 3, 4], "every page once, in order, nothing cut"
    assert [pages[n].split() for n in pages] == [p.split() for p in doc.pages]
    assert result.calls == 5  # 1-4 (cut), 1-2 (cut), 1, 2, 3-4


def test_a_single_page_cut_once_at_max_tokens_is_redone_not_stored(
    emu: EmulatorProcess, engine: GeminiOcrEngine
) -> None:
    emu.configure(script=["max_tokens_cut"])
    result = engine.ocr_chunks("acte", [PdfChunk(1, 1, 1, make_pdf(["Acte de vente"]))])
    assert "Acte de vente" in result.text and result.calls == 2


@pytest.mark.parametrize("fault", ["max_tokens", "max_tokens_cut"])
def test_an_output_budget_too_small_for_every_document_pauses_instead_of_failing_them(
    emu: EmulatorProcess,
    engine: GeminiOcrEngine,
    log_lines: list[str],
    redis_client: redis.Redis,
    keys: Keys,
    fault: str,
) -> None:
    """Attack (a2): GEMINI_MAX_OUTPUT_TOKENS too small for the model (thinking spends it,
    or a page's text does not fit) is a configuration problem: every document's answer is
    cut. It failed each document at once (status 4) at the Gemini call rate. Now answers
    cut across documents open the output-budget breaker: all OCR pauses with one line
    naming the variable, nothing is charged, and the documents finish once answers fit."""
    work = [lambda n=n: engine.ocr_chunks("index", _doc(n)) for n in range(4)]
    emu.configure(fault_rates={fault: 1.0})
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(fn) for fn in work]
        deadline = time.monotonic() + 15
        while OUTPUT_BUDGET not in Breakers(redis_client, keys).open_breakers():
            assert time.monotonic() < deadline, "the output-budget breaker should open"
            assert not any(f.done() for f in futures), [f.exception() for f in futures]
            time.sleep(0.05)
        time.sleep(1.0)
        assert not any(f.done() for f in futures), "held, not failed"
        emu.configure(fault_rates={})
        results = [f.result(timeout=30) for f in futures]
    assert all(r.text and r.pages == 1 for r in results)
    paused = [line for line in log_lines if line.startswith("gemini.paused")]
    assert len(paused) == 1 and "GEMINI_MAX_OUTPUT_TOKENS" in paused[0], paused
    assert OUTPUT_BUDGET not in Breakers(redis_client, keys).open_breakers()
