"""`python -m control_plane.emulator`: run the Gemini emulator until SIGINT/SIGTERM.

Prints one line when ready: `gemini-emulator ready on http://HOST:PORT` (with
--port 0 the line carries the port the OS chose). The API key is read from
--api-key or GEMINI_EMULATOR_API_KEY and never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Any

from control_plane.emulator.config import FAULTS, EmulatorConfig
from control_plane.emulator.server import serve


def build_parser() -> argparse.ArgumentParser:
    """The command line: one flag per setting."""
    p = argparse.ArgumentParser(
        prog="ocr-gemini-emulator",
        description="Gemini-compatible generateContent emulator (PDF text layer as OCR).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    p.add_argument(
        "--api-key",
        default=os.environ.get("GEMINI_EMULATOR_API_KEY"),
        help="expected x-goog-api-key (default: $GEMINI_EMULATOR_API_KEY; unset: any key)",
    )
    p.add_argument("--rpm-limit", type=int, default=0, help="requests per window, 0 = unlimited")
    p.add_argument(
        "--tpm-limit", type=int, default=0, help="input tokens per window, 0 = unlimited"
    )
    p.add_argument("--window-s", type=float, default=60.0)
    p.add_argument("--tokens-per-page", type=int, default=258)
    p.add_argument("--latency-ms", type=float, default=0.0, help="mean latency")
    p.add_argument("--latency-jitter-ms", type=float, default=0.0, help="latency std deviation")
    p.add_argument("--latency-per-page-ms", type=float, default=0.0)
    for fault in FAULTS:
        p.add_argument(
            f"--rate-{fault.replace('_', '-')}",
            type=float,
            default=0.0,
            dest=f"rate_{fault}",
            help=f"share of calls answered with fault {fault}",
        )
    p.add_argument("--script", default="", help="comma-separated faults for the first calls")
    p.add_argument("--per-day-quota", action="store_true", help="every call: per-day 429")
    p.add_argument("--storm-requests", type=int, default=0, help="the first N calls: 429")
    p.add_argument("--storm-retry-delay-s", type=float, default=2.0)
    p.add_argument(
        "--retry-delay-s",
        type=float,
        default=None,
        help="fixed RetryInfo on limit 429s (default: time until the window frees)",
    )
    p.add_argument("--omit-retry-info", action="store_true")
    p.add_argument("--timeout-sleep-s", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--config-json", default=None, help="JSON object of settings (applied last)")
    p.add_argument("--verbose", action="store_true", help="log every HTTP request to stderr")
    return p


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """The EmulatorConfig the flags describe."""
    rates = {f: getattr(args, f"rate_{f}") for f in FAULTS if getattr(args, f"rate_{f}")}
    config = EmulatorConfig(
        api_key=args.api_key or None,
        rpm_limit=args.rpm_limit,
        tpm_limit=args.tpm_limit,
        window_s=args.window_s,
        tokens_per_page=args.tokens_per_page,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        latency_per_page_ms=args.latency_per_page_ms,
        fault_rates=rates,
        script=[s.strip() for s in args.script.split(",") if s.strip()],
        per_day_quota=args.per_day_quota,
        storm_requests=args.storm_requests,
        storm_retry_delay_s=args.storm_retry_delay_s,
        retry_delay_s=args.retry_delay_s,
        omit_retry_info=args.omit_retry_info,
        timeout_sleep_s=args.timeout_sleep_s,
        seed=args.seed,
    )
    if args.config_json:
        extra: Any = json.loads(args.config_json)
        config.update(extra)
    config.validate()
    return config


def main(argv: list[str] | None = None) -> int:
    """Run the emulator; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"ocr-gemini-emulator: {exc}", file=sys.stderr)
        return 2
    server = serve(config, args.host, args.port, verbose=args.verbose)
    host, port = str(server.server_address[0]), int(server.server_address[1])

    def stop(_signum: int, _frame: object) -> None:
        server.state.shutdown.set()  # wake sleeping calls (latency, timeouts)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"gemini-emulator ready on http://{host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
