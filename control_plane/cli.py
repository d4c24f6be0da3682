"""Command line of `python scheduler.py`: run (default), status, migrate, seed, demo,
doctor, errors, requeue."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from control_plane.config import Settings, load_settings
from control_plane.errors import ConfigError, OcrPoolError
from control_plane.keys import Keys
from control_plane.logs import log_event, setup_logging
from control_plane.redis_conn import check_redis, redis_client


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python scheduler.py",
        description="Control process of the OCR pool (configuration from the environment or .env).",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the scheduler until SIGINT/SIGTERM (the default)")
    sub.add_parser("status", help="print the status block once from live state and exit")
    sub.add_parser("migrate", help="apply the schema to every environment with a *_DATABASE_URL")
    seed = sub.add_parser("seed", help="write sample PDFs and queue them as ready documents")
    seed.add_argument("--index", type=int, default=20, help="index documents to add")
    seed.add_argument("--acte", type=int, default=10, help="acte documents to add")
    seed.add_argument("--environment", default=None, help="environment name (default: first)")
    seed.add_argument("--start", type=int, default=1, help="first sample number (seed)")
    # issue 14: the operator's console
    doctor = sub.add_parser(
        "doctor", help="check Redis, configuration, Gemini, environments, schema, workers"
    )
    doctor.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    errors = sub.add_parser("errors", help="documents in ERREUR grouped by reason")
    errors.add_argument("--env", default=None, help="one environment (default: all)")
    errors.add_argument("--type", default=None, choices=["index", "acte"])
    errors.add_argument("--samples", type=int, default=5, help="sample ids per reason")
    errors.add_argument("--json", action="store_true")
    requeue = sub.add_parser(
        "requeue", help="put documents in ERREUR back to ready (dry run unless --yes)"
    )
    requeue.add_argument("--env", default=None, help="one environment (default: all)")
    requeue.add_argument("--type", default=None, choices=["index", "acte"])
    requeue.add_argument("--reason", default=None, help="substring of the error message")
    requeue.add_argument("--id", type=int, action="append", dest="ids", help="repeatable")
    requeue.add_argument(
        "--all", action="store_true", dest="everything", help="no filter: every document"
    )
    requeue.add_argument("--yes", action="store_true", help="apply (default: dry run)")
    demo = sub.add_parser("demo", help="run the pool end to end on sample documents, then stop")
    demo.add_argument("--index", type=int, default=60)
    demo.add_argument("--acte", type=int, default=30)
    demo.add_argument(
        "--real-gemini",
        action="store_true",
        help="use the real Gemini API (needs GEMINI_API_KEY) instead of the emulator",
    )
    demo.add_argument(
        "--timeout", type=float, default=600.0, help="give up after this many seconds"
    )
    demo.add_argument("--summary-json", default=None, help="also write the summary to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(argv) if argv is not None else None)
    command = args.command or "run"
    if command == "demo":
        from control_plane.demo import run_demo

        return run_demo(args)
    if command == "doctor":
        from control_plane.console.doctor import run_doctor

        return run_doctor(as_json=args.json)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(
        settings.ocr_log_level, json_lines=settings.ocr_log_json, secrets=settings.secrets
    )
    try:
        if command == "migrate":
            return _migrate(settings)
        if command == "seed":
            return _seed(settings, args)
        if command in ("errors", "requeue"):
            return _failed_documents(settings, command, args)
        return _run(settings, status_only=command == "status")
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except OcrPoolError as exc:
        log_event("scheduler.fatal", str(exc), level="CRITICAL")
        return 1


def _migrate(settings: Settings) -> int:
    from control_plane.queue.migrate import migrate

    reports = migrate(settings)
    if not reports:
        print(
            "migrate: no environment has a *_DATABASE_URL; apply the Supabase migrations "
            "(supabase/migrations) with the Supabase CLI instead",
            file=sys.stderr,
        )
        return 2
    for report in reports:
        done = ", ".join(report.applied) if report.applied else "nothing to apply"
        print(f"migrate: schema up to date in {report.environment} ({done})")
        if report.security_statements:
            print(
                f"WARNING: {report.environment}: the queue tables are open to Supabase's "
                "anon/authenticated roles (anyone with the public anon key can read or "
                "rewrite them). The migration leaves an existing table's privileges to its "
                "owner; to close it, run:",
                file=sys.stderr,
            )
            for stmt in report.security_statements:
                print(f"  {stmt}", file=sys.stderr)
    return 0


def _failed_documents(settings: Settings, command: str, args: argparse.Namespace) -> int:
    from control_plane.console.failed_documents import UsageError, run_errors, run_requeue

    try:
        if command == "errors":
            return run_errors(
                settings,
                env=args.env,
                document_type=args.type,
                as_json=args.json,
                samples=args.samples,
            )
        return run_requeue(
            settings,
            env=args.env,
            document_type=args.type,
            reason=args.reason,
            ids=args.ids,
            everything=args.everything,
            apply=args.yes,
        )
    except UsageError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 2


def _seed(settings: Settings, args: argparse.Namespace) -> int:
    from control_plane.seeding import seed_documents

    added = seed_documents(
        settings, index=args.index, acte=args.acte, environment=args.environment, start=args.start
    )
    print(
        f"seed: {added['index']} index and {added['acte']} acte document(s) queued in "
        f"{added['environment']}"
    )
    return 0


def _run(settings: Settings, *, status_only: bool) -> int:
    from control_plane.queue.environments import Environments
    from control_plane.scheduler.banner import render_banner
    from control_plane.scheduler.screens import wants_emoji
    from control_plane.scheduler.service import Scheduler
    from control_plane.scripts import check_scripting
    from control_plane.start_errors import start_error_line, start_error_types

    url = settings.redis_url.get_secret_value()
    client = redis_client(url)
    check_redis(url)
    keys = Keys(prefix=settings.ocr_redis_prefix)
    try:  # a library refusing our settings at start: one line naming the variable
        check_scripting(client)
        environments = Environments.from_settings(settings)
        scheduler = Scheduler(settings, client, keys, environments)
        leading = False if status_only else scheduler.tick_leadership()
    except start_error_types() as exc:
        raise ConfigError(start_error_line(exc)) from None
    if status_only:
        try:
            environments.wait_first_contact(15.0)  # so the block says what is wrong (issue 12)
            print(scheduler.status_text(emoji=wants_emoji(sys.stdout)), flush=True)
        finally:
            environments.close()
        return 0
    print(
        render_banner(
            settings,
            owner=scheduler.owner,
            allocation=scheduler.pool.read_allocation(),
            assignments=scheduler.pool.assignments(),
            leading=leading,
            emoji=wants_emoji(sys.stdout),
        ),
        flush=True,
    )
    snap = scheduler.snapshot()
    from control_plane.scheduler.status import warn_thin_pool

    warning = warn_thin_pool(settings.ocr_worker_pool_size, snap.registered_threads)
    if warning:
        log_event("scheduler.thin_pool", warning.removeprefix("WARNING: "), level="WARNING")
    scheduler.metrics.serve(settings.ocr_scheduler_metrics_port)
    log_event(
        "scheduler.started",
        "scheduler running",
        owner=scheduler.owner,
        role="leader" if leading else "standby",
    )
    scheduler.run_forever()  # prints the shutdown block on SIGINT/SIGTERM
    return 0
