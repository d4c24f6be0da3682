"""docker/: the compose stack, image, Prometheus config and dashboard, checked statically.

There is no Docker engine (nor `docker compose`) on the build machine, so these tests
read the files and check what compose and Prometheus would rely on: images, health
checks, restart policies, stop periods, environment names, ports and metric names.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from control_plane.config import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
FIELDS = {name.upper() for name in Settings.model_fields}
# Read by dramatiq's Prometheus middleware and prometheus_client, not by Settings.
PROMETHEUS_VARS = {
    "dramatiq_prom_db",
    "dramatiq_prom_host",
    "dramatiq_prom_port",
    "PROMETHEUS_MULTIPROC_DIR",
    "prometheus_multiproc_dir",
}
# Compose-only knobs, documented in docker/README.md.
COMPOSE_KNOBS = {"WORKER_PROCESSES", "WORKER_THREADS"}
ONE_SHOT = {"migrate"}
RESTARTING = {"always", "unless-stopped", "on-failure"}
LONGEST_JOB_S = 10 * 60  # an OCR job runs up to ~10 minutes

SCHEDULER_METRICS = {
    "ocr_allocation_slots",
    "ocr_queue_ready",
    "ocr_queue_in_flight",
    "ocr_slots_busy",
    "ocr_gemini_requests_window",
    "ocr_gemini_tokens_window",
    "ocr_gemini_rpm_limit",
    "ocr_gemini_tpm_limit",
    "ocr_gemini_cooldown_seconds",
    "ocr_gemini_429_total",
    "ocr_limiter_wait_seconds_total",
    "ocr_capacity_cpu_allocated",
    "ocr_capacity_ram_allocated",
    "ocr_capacity_cpu_budget",
    "ocr_capacity_ram_budget",
    "ocr_leases_reaped_total",
    "ocr_documents_fed_total",
    "ocr_documents_completed_total",
    "ocr_documents_failed_total",
    # issue 14
    "ocr_scheduler_leader",
    "ocr_scheduler_leader_epoch",
    "ocr_last_success_timestamp_seconds",
    "ocr_status_snapshot_timestamp_seconds",
    "ocr_documents_total",
    "ocr_gemini_cooldowns_total",
    "ocr_circuit_breaker_state",
}
DRAMATIQ_METRICS = {
    "dramatiq_messages_total",
    "dramatiq_message_errors_total",
    "dramatiq_message_duration_milliseconds",
    "dramatiq_messages_inprogress",
    # issue 14: ours, on the workers' port beside Dramatiq's
    "ocr_gemini_call_seconds",
    "ocr_limiter_wait_seconds",
    "ocr_gemini_responses_total",
    "ocr_worker_documents_total",
}
HISTOGRAMS = {
    "dramatiq_message_duration_milliseconds",
    "ocr_gemini_call_seconds",
    "ocr_limiter_wait_seconds",
}
LABELS = {
    "type",
    "environment",
    "queue_name",
    "actor_name",
    "le",
    "step",
    "outcome",
    "breaker",
    "alertname",
    "alertstate",
}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


# --- helpers -------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    return load_compose()["services"]  # type: ignore[no-any-return]


def app_services() -> dict[str, dict[str, Any]]:
    """Services running the pool's own image (the ones that read Settings)."""
    return {n: s for n, s in services().items() if "build" in s}


def resolve(value: str) -> str:
    """Compose interpolation as on a machine with none of the variables set."""
    return INTERPOLATION.sub(lambda m: m.group(3) or "", value)


def duration_s(text: str) -> float:
    """Compose duration ('15m', '1m30s', '90s') in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(text))
    assert parts and "".join(a + b for a, b in parts) == str(text), f"bad duration {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def flag(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form for environment"
    return {k: resolve(str(v)) for k, v in env.items()}


def healthcheck_text(service: dict[str, Any]) -> str:
    return " ".join(str(part) for part in service["healthcheck"]["test"])


def published_container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])}


def prometheus_targets() -> dict[str, list[str]]:
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text(encoding="utf-8"))
    return {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }


# --- compose -------------------------------------------------------------------------


def test_the_stack_has_its_services() -> None:
    expected = {"redis", "postgres", "gemini-emulator", "migrate", "scheduler", "workers"}
    assert expected <= set(services())


def test_every_service_has_an_image_or_a_build() -> None:
    for name, service in services().items():
        assert service.get("image") or service.get("build"), f"{name}: no image nor build"


def test_pool_services_share_one_image_built_from_the_repository() -> None:
    apps = app_services()
    assert {"gemini-emulator", "migrate", "scheduler", "workers"} <= set(apps)
    assert len({s["image"] for s in apps.values()}) == 1, "one image for every pool process"
    for name, service in apps.items():
        context = (DOCKER / service["build"]["context"]).resolve()
        assert context == ROOT, f"{name}: build context must be the repository root"
        assert (context / service["build"]["dockerfile"]).resolve() == DOCKER / "Dockerfile"


def test_long_running_services_have_healthcheck_and_restart_policy() -> None:
    for name, service in services().items():
        if name in ONE_SHOT:
            continue
        assert service.get("restart") in RESTARTING, f"{name}: restart policy missing"
        check = service.get("healthcheck") or {}
        assert check.get("test") and check["test"][0] in ("CMD", "CMD-SHELL"), (
            f"{name}: health check missing"
        )


def test_migration_runs_once_before_the_pool_starts() -> None:
    svc = services()
    assert svc["migrate"]["command"][-2:] == ["scheduler.py", "migrate"]
    assert svc["migrate"]["restart"] == "no"
    for name in ("scheduler", "workers"):
        condition = svc[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", f"{name} must wait for migrate"


def test_health_conditions_point_at_services_with_health_checks() -> None:
    svc = services()
    for name, service in svc.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in svc, f"{name} depends on unknown {dependency}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in svc[dependency], f"{dependency} has no health check"


def test_processes_run_the_contract_commands() -> None:
    svc = services()
    assert svc["scheduler"]["command"] == ["python", "scheduler.py"]
    assert svc["workers"]["command"][:2] == ["dramatiq", "actors"]
    assert svc["gemini-emulator"]["command"][:3] == ["python", "-m", "control_plane.emulator"]


def test_workers_stop_gracefully_after_the_longest_job() -> None:
    workers = services()["workers"]
    shutdown_s = int(resolve(flag(workers["command"], "--worker-shutdown-timeout"))) / 1000
    grace_s = duration_s(workers["stop_grace_period"])
    assert shutdown_s >= LONGEST_JOB_S, "dramatiq must wait for a running job"
    assert grace_s > shutdown_s, "docker must not kill dramatiq before its own timeout"
    assert grace_s >= LONGEST_JOB_S
    # Dramatiq flags after the module; the thread and process counts resolve to numbers.
    assert int(resolve(flag(workers["command"], "-p"))) >= 1
    assert int(resolve(flag(workers["command"], "-t"))) >= 1


def test_environment_names_are_settings_or_known_variables() -> None:
    for name, service in app_services().items():
        unknown = set(environment(service)) - FIELDS - PROMETHEUS_VARS
        assert not unknown, f"{name}: not read by Settings or dramatiq/prometheus: {unknown}"
    text = (DOCKER / "compose.yaml").read_text(encoding="utf-8")
    interpolated = {m.group(1) for m in INTERPOLATION.finditer(text)}
    unknown = interpolated - FIELDS - COMPOSE_KNOBS
    assert not unknown, f"${{...}} names that are neither settings nor documented knobs: {unknown}"


def test_pool_environment_is_valid_settings_wired_to_the_stack(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in list(os.environ):
        if name.upper() in FIELDS:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    svc = services()
    env = {k: v for k, v in environment(svc["workers"]).items() if k.upper() in FIELDS}
    values: dict[str, Any] = {k.lower(): v for k, v in env.items()}
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]

    redis = urlsplit(settings.redis_url.get_secret_value())
    assert (redis.hostname, redis.port) == ("redis", 6379)

    assert settings.dev_database_url is not None
    db = urlsplit(settings.dev_database_url.get_secret_value())
    pg = svc["postgres"]["environment"]
    assert (db.hostname, db.port) == ("postgres", 5432)
    assert (db.username, db.password, db.path) == (
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        "/" + pg["POSTGRES_DB"],
    ), "DEV_DATABASE_URL must match the postgres service's credentials"

    gemini = urlsplit(settings.gemini_base_url)
    emulator_port = int(flag(svc["gemini-emulator"]["command"], "--port"))
    assert (gemini.hostname, gemini.port) == ("gemini-emulator", emulator_port)
    # Inside its container the emulator must listen beyond loopback.
    assert flag(svc["gemini-emulator"]["command"], "--host") == "0.0.0.0"  # noqa: S104
    assert f"127.0.0.1:{emulator_port}/" in healthcheck_text(svc["gemini-emulator"])
    assert settings.gemini_api_key and settings.gemini_api_key.get_secret_value(), (
        "a placeholder key for the emulator"
    )


def test_emulator_command_is_accepted_by_the_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    from control_plane.emulator.__main__ import build_parser, config_from_args

    monkeypatch.delenv("GEMINI_EMULATOR_API_KEY", raising=False)  # the --api-key default
    command = services()["gemini-emulator"]["command"]
    config = config_from_args(build_parser().parse_args(command[3:]))
    # Its quota is the limiter's default budget: the pool stays under it, so no 429s.
    defaults = Settings.model_fields
    assert config.rpm_limit == defaults["gemini_rpm_limit"].default
    assert config.tpm_limit == defaults["gemini_tpm_limit"].default
    assert config.api_key is None, "any key: a GEMINI_API_KEY exported in the shell still works"


def test_every_pool_process_gets_the_same_wiring() -> None:
    svc = services()
    wired = {"REDIS_URL", "DEV_DATABASE_URL", "GEMINI_BASE_URL", "GEMINI_API_KEY"}
    envs = {name: environment(svc[name]) for name in ("migrate", "scheduler", "workers")}
    for name, env in envs.items():
        assert wired <= set(env), f"{name}: missing {wired - set(env)}"
        assert {k: env[k] for k in wired} == {k: envs["workers"][k] for k in wired}


@pytest.mark.parametrize(
    ("service", "setting", "job"),
    [
        ("scheduler", "OCR_SCHEDULER_METRICS_PORT", "ocr-scheduler"),
        ("workers", "OCR_WORKER_METRICS_PORT", "ocr-workers"),
    ],
)
def test_metrics_ports_agree_with_prometheus(service: str, setting: str, job: str) -> None:
    spec = services()[service]
    port = int(environment(spec)[setting])
    assert port > 0
    assert prometheus_targets()[job] == [f"{service}:{port}"]
    assert port in published_container_ports(spec), f"{service}: metrics port not published"
    assert f"127.0.0.1:{port}/metrics" in healthcheck_text(spec)


def test_worker_metrics_store_is_fresh_and_shared() -> None:
    workers = services()["workers"]
    env = environment(workers)
    store = env["dramatiq_prom_db"]
    assert env["PROMETHEUS_MULTIPROC_DIR"] == store, "one multiprocess directory"
    assert store in workers.get("tmpfs", []), "the multiprocess directory must start empty"


def test_local_documents_are_shared_by_scheduler_and_workers() -> None:
    svc = services()
    directory = environment(svc["workers"])["OCR_LOCAL_DOCUMENTS_DIR"]
    for name in ("scheduler", "workers"):
        targets = {str(v).split(":")[1] for v in svc[name].get("volumes", [])}
        assert directory in targets, f"{name}: {directory} is not on the shared volume"
    runs = " ".join(args for op, args in dockerfile_instructions() if op == "RUN")
    assert f"-o ocr -g ocr {directory}" in runs, "the service user must own the directory"


def test_mounted_files_exist() -> None:
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("."):
                assert (DOCKER / source).is_file(), f"{name}: {source} does not exist"


# --- Dockerfile and build context ----------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_image_is_slim_python_311_running_as_non_root() -> None:
    instructions = dockerfile_instructions()
    bases = [args.split()[0] for op, args in instructions if op == "FROM"]
    assert bases and all(b.startswith("python:3.11-slim") for b in bases if ":" in b)
    last_stage = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    users = [args for op, args in last_stage if op == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert "ENTRYPOINT" not in {op for op, _ in instructions}
    cmd = [args for op, args in last_stage if op == "CMD"]
    assert cmd and json.loads(cmd[-1]) == ["python", "scheduler.py"]


def test_image_installs_the_project_from_pyproject() -> None:
    instructions = dockerfile_instructions()
    copied = [args for op, args in instructions if op == "COPY" and "--from" not in args]
    sources = {s for args in copied for s in args.split()[:-1] if not s.startswith("--")}
    assert "pyproject.toml" in sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert "pip wheel" in runs and "pip install" in runs


def test_image_has_no_secrets() -> None:
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    for op, args in dockerfile_instructions():
        if op in ("ENV", "ARG"):
            assert not re.search(r"(KEY|SECRET|PASSWORD|TOKEN|DATABASE_URL)", args, re.I), args
    assert not re.search(r"AIza[0-9A-Za-z_-]{20,}|eyJ[0-9A-Za-z_-]{20,}|://[^/\s]*:[^/\s]*@", text)


def test_build_context_leaves_out_secrets_and_local_state() -> None:
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".env", "**/.env", ".venv", ".git"} <= ignored


# --- dashboard -----------------------------------------------------------------------


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DOCKER / "grafana-dashboard.json").read_text(encoding="utf-8"))
    exprs: list[str] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} queries nothing"
        exprs.extend(t["expr"] for t in panel["targets"])
    return exprs


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(?:ocr|dramatiq)_[a-z0-9_]+", expr))
    return {_histogram_base(n) for n in names}


def _histogram_base(name: str) -> str:
    """A histogram's _bucket/_sum/_count series name as the histogram's own name."""
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return base if base in HISTOGRAMS else name


def test_dashboard_queries_only_known_metrics() -> None:
    known = SCHEDULER_METRICS | DRAMATIQ_METRICS
    for expr in dashboard_exprs():
        names = metric_names(expr)
        if expr.startswith("ALERTS{"):  # Prometheus's own series of docker/alerts.yml
            continue
        assert names, f"no pool metric in {expr!r}"
        assert names <= known, f"unknown metric(s) {names - known} in {expr!r}"
        for histogram in HISTOGRAMS & names:
            assert f"{histogram}_bucket" in expr, "histograms are queried through _bucket"
        labels = set(re.findall(r"\{\{(\w+)\}\}|by \(([^)]*)\)", expr))
        used = {label.strip() for pair in labels for part in pair for label in part.split(",")}
        assert used - {""} <= LABELS, f"unknown label(s) in {expr!r}"


def test_dashboard_covers_every_metric() -> None:
    used = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    missing = (SCHEDULER_METRICS | DRAMATIQ_METRICS) - used
    assert not missing, f"metrics without a panel: {missing}"


def test_dashboard_panels_use_the_datasource_variable() -> None:
    dashboard = json.loads((DOCKER / "grafana-dashboard.json").read_text(encoding="utf-8"))
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
