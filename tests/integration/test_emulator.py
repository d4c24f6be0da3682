"""The Gemini emulator over real HTTP: auth, OCR answers, its own limits and 429s, faults, load."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from control_plane.emulator import bodies
from control_plane.gemini.classify import Action, classify_exception
from control_plane.gemini.prompts import prompt_for, split_pages
from control_plane.samples import make_pdf, sample_document
from tests.support.emulator import (
    DEFAULT_TEST_KEY,
    EmulatorProcess,
    emulator_fixture,
    start_emulator,
)

pytestmark = pytest.mark.integration

emulator = emulator_fixture(scope="module")
MODEL = "gemini-3.5-flash"


@pytest.fixture
def emu(emulator: EmulatorProcess) -> EmulatorProcess:
    emulator.configure(
        rpm_limit=0,
        tpm_limit=0,
        window_s=60.0,
        script=[],
        storm_requests=0,
        per_day_quota=False,
        fault_rates={},
        latency_ms=0.0,
        tokens_per_page=258,
        retry_delay_s=None,
        omit_retry_info=False,
    )
    emulator.reset()
    return emulator


def _body(pdf: bytes, prompt: str, *, snake: bool = False, mime: str = "application/pdf") -> dict:
    data = base64.b64encode(pdf).decode()
    inline = {"mime_type": mime, "data": data} if snake else {"mimeType": mime, "data": data}
    key = "inline_data" if snake else "inlineData"
    return {"contents": [{"role": "user", "parts": [{key: inline}, {"text": prompt}]}]}


def _post(
    emu: EmulatorProcess, body: dict, *, key: str | None = DEFAULT_TEST_KEY, version: str = "v1beta"
) -> httpx.Response:
    headers = {"x-goog-api-key": key} if key else {}
    return httpx.post(
        f"{emu.url}/{version}/models/{MODEL}:generateContent",
        json=body,
        headers=headers,
        timeout=10,
    )


def _client(emu: EmulatorProcess, key: str = DEFAULT_TEST_KEY) -> genai.Client:
    return genai.Client(
        api_key=key,
        http_options=types.HttpOptions(
            base_url=emu.url,
            api_version="v1beta",
            timeout=10_000,
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )


def test_answers_with_the_text_layer_page_by_page_and_realistic_usage(emu: EmulatorProcess) -> None:
    doc = sample_document("acte", 11, pages=4)
    prompt = prompt_for("acte", 5, 8, 8)
    client = _client(emu)  # keep a reference: a collected Client closes its HTTP pool
    response = client.models.generate_content(
        model=MODEL,
        contents=[types.Part.from_bytes(data=doc.pdf, mime_type="application/pdf"), prompt],
    )
    pages = split_pages(response.text or "")
    assert list(pages) == [5, 6, 7, 8], "markers numbered from the prompt's first page, in order"
    for i, text in enumerate(doc.pages):
        assert pages[5 + i].split() == text.split()
    usage = response.usage_metadata
    details = {d.modality.value: d.token_count for d in usage.prompt_tokens_details}
    assert details["DOCUMENT"] == 4 * 258
    assert details["TEXT"] == pytest.approx(len(prompt.encode()) / 4, abs=1)
    assert usage.prompt_token_count == details["DOCUMENT"] + details["TEXT"]
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    assert response.candidates[0].finish_reason.value == "STOP"


@pytest.mark.parametrize(("snake", "version"), [(False, "v1beta"), (True, "v1")])
def test_camel_and_snake_case_on_both_api_versions(
    emu: EmulatorProcess, snake: bool, version: str
) -> None:
    pdf = make_pdf(["Page une", "Page deux"])
    answer = (
        _post(emu, _body(pdf, "OCR"), version=version)
        if not snake
        else _post(emu, _body(pdf, "OCR", snake=True), version=version)
    )
    assert answer.status_code == 200
    text = answer.json()["candidates"][0]["content"]["parts"][0]["text"]
    assert text.index("Page une") < text.index("Page deux")


def test_missing_or_wrong_key_is_refused_like_google_and_never_echoed(emu: EmulatorProcess) -> None:
    body = _body(make_pdf(["x"]), "OCR")
    missing = _post(emu, body, key=None)
    assert (missing.status_code, missing.json()["error"]["status"]) == (403, "PERMISSION_DENIED")
    wrong_key = "wrong-key-that-must-not-leak"
    wrong = _post(emu, body, key=wrong_key)
    assert wrong.status_code == 400
    assert wrong.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert wrong_key not in wrong.text and DEFAULT_TEST_KEY not in wrong.text
    assert DEFAULT_TEST_KEY not in json.dumps(emu.stats(log=True))
    client = _client(emu, wrong_key)
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(model=MODEL, contents=["hi"])
    assert classify_exception(caught.value, attempt=1).action is Action.CONFIGURATION


@pytest.mark.parametrize(
    ("payload", "mime"),
    [(b"not a pdf at all", "application/pdf"), (make_pdf(["x"])[:200], "application/pdf")],
)
def test_corrupt_or_non_pdf_gets_no_pages(emu: EmulatorProcess, payload: bytes, mime: str) -> None:
    answer = _post(emu, _body(payload, "OCR", mime=mime))
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "The document has no pages."


def test_rpm_window_answers_the_real_429_and_stats_report_the_excess(emu: EmulatorProcess) -> None:
    emu.configure(rpm_limit=3, window_s=30.0)
    body = _body(make_pdf(["x"]), "OCR")
    statuses = [_post(emu, body).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    refused = _post(emu, body).json()
    kinds = [d["@type"].rsplit(".", 1)[-1] for d in refused["error"]["details"]]
    assert kinds == ["QuotaFailure", "Help", "RetryInfo"]
    assert refused["error"]["status"] == "RESOURCE_EXHAUSTED"
    delay = refused["error"]["details"][2]["retryDelay"]
    assert delay.endswith("s") and 0 < float(delay[:-1]) <= 30
    stats = emu.stats()
    assert stats["sent_429"] == 3 and stats["requests"] == 6
    assert stats["window"]["max_requests_admitted"] == 3
    assert stats["window"]["max_requests_offered"] == 6
    assert stats["window_exceeded"] is True
    assert list(stats["documents"].values()) == [6], "one document, keyed by its bytes"


def test_tpm_window_counts_input_tokens(emu: EmulatorProcess) -> None:
    pdf = make_pdf(["a", "b", "c", "d"])  # 4 x 258 = 1032 document tokens
    emu.configure(tpm_limit=2500, tokens_per_page=258)
    with pytest.raises(genai_errors.ClientError) as caught:
        client = _client(emu)
        for _ in range(3):
            client.models.generate_content(
                model=MODEL,
                contents=[types.Part.from_bytes(data=pdf, mime_type="application/pdf"), "OCR"],
            )
    decision = classify_exception(caught.value, attempt=1)
    assert decision.action is Action.COOLDOWN and not decision.per_day
    assert bodies.QUOTA_ID_TPM in decision.message
    assert emu.stats()["statuses"] == {"200": 2, "429": 1}


def test_staying_inside_the_limits_is_reported_as_such(emu: EmulatorProcess) -> None:
    emu.configure(rpm_limit=10, tpm_limit=100_000)
    for _ in range(4):
        assert _post(emu, _body(make_pdf(["x"]), "OCR")).status_code == 200
    stats = emu.stats()
    assert stats["window_exceeded"] is False and stats["sent_429"] == 0


def test_per_day_mode_and_storm_mode(emu: EmulatorProcess) -> None:
    body = _body(make_pdf(["x"]), "OCR")
    emu.configure(storm_requests=2, storm_retry_delay_s=7.0)
    storm = [_post(emu, body) for _ in range(3)]
    assert [r.status_code for r in storm] == [429, 429, 200]
    assert storm[0].json()["error"]["details"][2]["retryDelay"] == "7s"
    emu.configure(per_day_quota=True)
    daily = _post(emu, body)
    assert daily.status_code == 429
    quota_id = daily.json()["error"]["details"][0]["violations"][0]["quotaId"]
    assert "PerDay" in quota_id
    assert emu.stats()["sent_429_per_day"] == 1


def test_scripted_faults_come_in_order(emu: EmulatorProcess) -> None:
    emu.configure(
        script=[
            "500",
            "503",
            "malformed_json",
            "blocked_prompt",
            "safety",
            "recitation",
            "empty_stop",
            "max_tokens",
            "ok",
        ]
    )
    body = _body(make_pdf(["x"]), "OCR")
    got = [_post(emu, body) for _ in range(9)]
    assert [r.status_code for r in got] == [500, 503, 200, 200, 200, 200, 200, 200, 200]
    with pytest.raises(json.JSONDecodeError):
        json.loads(got[2].text)
    assert got[3].json()["promptFeedback"]["blockReason"] == "PROHIBITED_CONTENT"
    assert [got[i].json()["candidates"][0]["finishReason"] for i in (4, 5, 6, 7, 8)] == [
        "SAFETY",
        "RECITATION",
        "STOP",
        "MAX_TOKENS",
        "STOP",
    ]
    assert got[7].json()["usageMetadata"]["thoughtsTokenCount"] > 0
    assert emu.stats()["faults"] == {
        f: 1
        for f in (
            "500",
            "503",
            "malformed_json",
            "blocked_prompt",
            "safety",
            "recitation",
            "empty_stop",
            "max_tokens",
        )
    }


def test_fault_rates_are_applied(emu: EmulatorProcess) -> None:
    emu.configure(fault_rates={"503": 0.5}, seed=3)
    body = _body(make_pdf(["x"]), "OCR")
    codes = [_post(emu, body).status_code for _ in range(60)]
    assert 10 <= codes.count(503) <= 50 and codes.count(200) == 60 - codes.count(503)


def test_bad_config_is_refused_over_http(emu: EmulatorProcess) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        emu.configure(fault_rates={"explode": 0.1})


def test_hundreds_of_concurrent_requests_are_served_together(emu: EmulatorProcess) -> None:
    emu.configure(latency_ms=1500.0)
    body = _body(make_pdf(["x"]), "OCR")

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=400)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            calls = [
                client.post(
                    f"{emu.url}/v1beta/models/{MODEL}:generateContent",
                    json=body,
                    headers={"x-goog-api-key": DEFAULT_TEST_KEY},
                )
                for _ in range(300)
            ]
            return [r.status_code for r in await asyncio.gather(*calls)]

    assert asyncio.run(burst()) == [200] * 300
    stats = emu.stats()
    assert stats["requests"] == 300
    # all 300 were inside the server at once: it did not serialise them behind the latency
    assert stats["max_in_flight"] >= 250, stats["max_in_flight"]


def test_cli_flags_configure_the_emulator() -> None:
    with start_emulator(
        api_key=None,
        extra_args=["--rpm-limit", "1", "--tokens-per-page", "560", "--retry-delay-s", "4"],
    ) as emu:
        body = _body(make_pdf(["x"]), "OCR")
        first = _post(emu, body, key="any-key-is-fine")
        assert first.json()["usageMetadata"]["promptTokensDetails"][1]["tokenCount"] == 560
        second = _post(emu, body, key="any-key-is-fine")
        assert second.json()["error"]["details"][2]["retryDelay"] == "4s"
