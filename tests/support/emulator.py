"""Start the Gemini emulator in a subprocess for a test, read its stats, change its faults.

    with start_emulator(api_key="k", rpm_limit=10) as emu:
        emu.url, emu.stats()["sent_429"], emu.configure(script=["503"]), emu.reset()

Or the pytest fixture factory `emulator_fixture(scope=...)`. The emulator binds port 0
and reports the chosen port on its ready line, so parallel tests never race for a port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

READY_PREFIX = "gemini-emulator ready on "
DEFAULT_TEST_KEY = "test-emulator-key-0123"


@dataclass
class EmulatorProcess:
    """A running emulator: its URL, the key it expects, and its control endpoints."""

    url: str
    api_key: str | None
    process: subprocess.Popen[str]
    _http: httpx.Client = field(repr=False)

    def stats(self, *, log: bool = False) -> dict[str, Any]:
        """GET /_emulator/stats (with the per-call log if asked)."""
        response = self._http.get(f"{self.url}/_emulator/stats", params={"log": int(log)})
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def configure(self, **changes: Any) -> dict[str, Any]:
        """POST /_emulator/config: change limits, latency or faults now."""
        response = self._http.post(f"{self.url}/_emulator/config", json=changes)
        if response.status_code != 200:
            raise ValueError(response.text)
        return response.json()  # type: ignore[no-any-return]

    def reset(self) -> None:
        """POST /_emulator/reset: forget the traffic seen so far (config stays)."""
        self._http.post(f"{self.url}/_emulator/reset").raise_for_status()

    def stop(self) -> None:
        """SIGTERM, then kill if it does not exit in 5 s."""
        self._http.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stdout:
            self.process.stdout.close()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_emulator(
    *,
    api_key: str | None = DEFAULT_TEST_KEY,
    extra_args: list[str] | None = None,
    ready_timeout: float = 20.0,
    **config: Any,
) -> EmulatorProcess:
    """Start `python -m control_plane.emulator --port 0` and wait for its ready line.

    Keyword arguments are EmulatorConfig fields, passed as --config-json.
    """
    cmd = [sys.executable, "-m", "control_plane.emulator", "--port", "0"]
    if config:
        cmd += ["--config-json", json.dumps(config)]
    cmd += extra_args or []
    env = dict(os.environ)
    env.pop("GEMINI_EMULATOR_API_KEY", None)
    if api_key is not None:
        env["GEMINI_EMULATOR_API_KEY"] = api_key  # not on the command line: ps shows argv
    process = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env, cwd=_project_root()
    )
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(ready_timeout)
    if not line or not line[0].startswith(READY_PREFIX):
        process.kill()
        process.wait(timeout=5)
        raise RuntimeError(f"emulator did not start (exit {process.poll()}, said {line!r})")
    url = line[0][len(READY_PREFIX) :].strip()
    http = httpx.Client(timeout=10.0)
    deadline = time.monotonic() + ready_timeout
    while True:  # the line is printed after bind; make sure the loop is serving too
        try:
            http.get(f"{url}/_emulator/health").raise_for_status()
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return EmulatorProcess(url, api_key, process, http)


def _project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def emulator_fixture(scope: str = "module", **config: Any) -> Any:
    """A pytest fixture (declare it in a test module) yielding an EmulatorProcess."""

    @pytest.fixture(scope=scope)  # type: ignore[call-overload,misc]
    def _emulator() -> Iterator[EmulatorProcess]:
        with start_emulator(**config) as emu:
            yield emu

    return _emulator
