"""One log stream (issue 11): every library's `logging` goes through our loguru sink,
format and scrubber; no secret survives, whatever the URL form, tracebacks included."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from control_plane.logs import setup_logging

pytestmark = pytest.mark.unit

REGISTERED = "GEMKEY-registered-0123456789"
# Secrets the scrubber was never told about: found by their place in a URL.
FORMS = {
    "user:pass@": "redis://default:UNREG-pass-1@cache:6379/0",
    "?password=": "redis://cache:6379/0?password=UNREG-pass-2",
    "@ inside the password": "redis://:UNREG@pa@ss-3@cache:6379/0",
    "libpq query": "postgresql://ocr@db/ocr?sslmode=require&password=UNREG-pass-4",
}
UNREGISTERED = ["UNREG-pass-1", "UNREG-pass-2", "UNREG@pa@ss-3", "pa@ss-3", "UNREG-pass-4"]


@pytest.fixture
def json_logs(capfd: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """capfd, with our JSON logging set up by the test itself (`start()`): a sink added
    during fixture setup writes to the setup phase's stderr, which pytest swaps."""
    yield capfd
    logging.getLogger().handlers[:] = []


def start() -> None:
    setup_logging("INFO", json_lines=True, secrets=[REGISTERED])


def test_library_lines_come_out_as_our_json_with_the_logger_as_action(json_logs) -> None:
    start()
    logging.getLogger("psycopg.pool").warning("error connecting in %r: %s", "pool-1", "refused")
    logging.getLogger("dramatiq.worker.WorkerThread").error("Failed to process message %s", 7)
    lines = [json.loads(ln) for ln in json_logs.readouterr().err.splitlines() if ln.strip()]
    assert [(ln["action"], ln["level"]) for ln in lines] == [
        ("psycopg.pool", "WARNING"),
        ("dramatiq.worker.WorkerThread", "ERROR"),
    ]
    assert lines[0]["message"] == "error connecting in 'pool-1': refused"


def test_chatty_libraries_stay_at_warning(json_logs) -> None:
    start()
    logging.getLogger("apscheduler.executors.default").info("Running job feed (trigger...)")
    logging.getLogger("apscheduler.scheduler").warning("Execution of job feed skipped")
    err = json_logs.readouterr().err
    assert "Running job" not in err and "skipped" in err


@pytest.mark.parametrize("form", sorted(FORMS))
def test_no_secret_in_any_library_line_nor_traceback(json_logs, form: str) -> None:
    start()
    url = FORMS[form]
    logging.getLogger("redis.connection").warning("cannot connect to %s with %s", url, REGISTERED)
    try:
        raise ConnectionError(f"Error 111 connecting to {url} ({REGISTERED})")
    except ConnectionError:
        logging.getLogger("apscheduler.executors.default").exception("Job raised")
    err = json_logs.readouterr().err
    assert "Traceback" in err and "ConnectionError" in err, err
    lines = [json.loads(ln) for ln in err.splitlines() if ln.strip()]  # still JSON lines
    assert "Traceback" in lines[-1]["exception"]
    for secret in [REGISTERED, *UNREGISTERED]:
        assert secret not in err, (form, secret, err)


def test_human_format_is_scrubbed_too(capfd: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", json_lines=False, secrets=[])
    try:
        logging.getLogger("httpx").error("GET %s", FORMS["?password="])
        try:
            raise RuntimeError(FORMS["@ inside the password"])
        except RuntimeError:
            logging.getLogger("dramatiq").exception("boom")
        err = capfd.readouterr().err
    finally:
        logging.getLogger().handlers[:] = []
    assert " ERROR " in err and "httpx GET redis://cache:6379/0?password=***" in err, err
    assert not any(s in err for s in UNREGISTERED), err


@pytest.mark.parametrize("secret", ['Pg-pa"ss-word-9', "Pg-pa\\ss-word-9", "Pg-pa\tss-word-9"])
def test_a_registered_secret_that_json_escapes_is_still_scrubbed(json_logs, secret: str) -> None:
    """Attack (a2): the JSON sink scrubbed the dumped text, where a secret holding `"`,
    a backslash or a control character is written escaped and no longer matched."""
    setup_logging("INFO", json_lines=True, secrets=[secret])
    logging.getLogger("psycopg.pool").warning("password %s rejected", secret)
    try:
        raise RuntimeError(f"boom {secret}")
    except RuntimeError:
        logging.getLogger("x").exception("failed")
    err = json_logs.readouterr().err
    lines = [json.loads(ln) for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 2
    for line in lines:
        assert secret not in json.dumps(line), line
        assert "ss-word-9" not in json.dumps(line), line


def test_warnings_and_uncaught_thread_errors_go_through_the_one_stream(json_logs) -> None:
    """Attack (a2): Python warnings (a library's DeprecationWarning, urllib3's...) and an
    exception that escapes a thread were printed by Python itself: plain text in a JSON
    stream, and never scrubbed."""
    import threading
    import warnings

    start()
    url = FORMS["user:pass@"]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"connecting to {url} without TLS", UserWarning, stacklevel=1)

    def crash() -> None:
        raise ConnectionError(f"lost {url} ({REGISTERED})")

    thread = threading.Thread(target=crash, name="probe-x")
    thread.start()
    thread.join()
    err = json_logs.readouterr().err
    lines = [json.loads(ln) for ln in err.splitlines() if ln.strip()]  # every line is JSON
    assert any("without TLS" in ln["message"] for ln in lines), err
    assert any("ConnectionError" in (ln.get("exception") or "") for ln in lines), err
    for secret in [REGISTERED, *UNREGISTERED]:
        assert secret not in err, (secret, err)
