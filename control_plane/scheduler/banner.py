"""The startup banner and the shutdown block: the seed's screens, then ours. No secrets."""

from __future__ import annotations

from typing import Any

from control_plane.config import DEFAULT_GEMINI_BASE_URL, Settings
from control_plane.redis_conn import describe_redis
from control_plane.scheduler.screens import RULE, amount, mark
from control_plane.scheduler.status import ordered_slots
from control_plane.urls import describe_url


def render_banner(
    settings: Settings,
    *,
    owner: str,
    allocation: dict[str, Any] | None,
    assignments: dict[str, str],
    leading: bool,
    emoji: bool = True,
) -> str:
    """The seed's startup screen line for line, then our configuration details."""
    return "\n".join(
        [
            *seed_banner_lines(settings, allocation, assignments, emoji),
            *our_banner_lines(settings, owner, allocation, leading, emoji),
            RULE,
        ]
    )


def seed_banner_lines(
    s: Settings, allocation: dict[str, Any] | None, assignments: dict[str, str], emoji: bool
) -> list[str]:
    """From UNIFIED OCR WORKER POOL STARTING to the Configuration list."""
    alloc = allocation or {}
    index, acte = alloc.get("index"), alloc.get("acte")
    total = (index or 0) + (acte or 0) if alloc else None
    lines = [
        RULE,
        mark("🚀", "UNIFIED OCR WORKER POOL STARTING", emoji),
        RULE,
        mark("📊", "Initializing shared rate limiter...", emoji),
        mark("💾", "Initializing server capacity manager...", emoji),
        mark("🎯", "Initializing worker pool manager...", emoji),
        mark("✅", "All managers initialized", emoji),
        "",
        mark("👷", "Starting worker pool...", emoji),
        "",
        mark("📋", "Initial Worker Allocation:", emoji),
        f"   Index workers: {'-' if index is None else index}",
        f"   Acte workers: {'-' if acte is None else acte}",
        f"   Total workers: {'-' if total is None else total}",
        "",
    ]
    for slot, mode in ordered_slots(assignments):
        lines.append(mark("✅", f"Started {slot} (mode: {mode})", emoji))
    lines += [
        "",
        RULE,
        mark("✅", "WORKER POOL STARTED SUCCESSFULLY", emoji),
        RULE,
        "",
        # The seed's gear has a variation selector and two spaces after it.
        ("⚙️  Configuration:" if emoji else "Configuration:"),
        (
            f"   Pool size: auto ({s.pool_minimum}..{s.ocr_worker_pool_max} workers)"
            if s.autopilot  # issue 15
            else f"   Pool size: {s.ocr_worker_pool_size} workers"
        ),
        f"   Min index workers: {s.ocr_min_index_workers}",
        f"   Min acte workers: {s.ocr_min_acte_workers}",
        f"   Rebalance interval: {s.ocr_rebalance_interval_ms}ms",
        f"   Server capacity: {amount(s.server_max_cpu)} vCPUs, {amount(s.server_max_ram)} GB RAM",
        f"   Reserved: {amount(s.server_reserve_cpu_percent)}% CPU, "
        f"{amount(s.server_reserve_ram_percent)}% RAM",
    ]
    return lines


def our_banner_lines(
    s: Settings, owner: str, allocation: dict[str, Any] | None, leading: bool, emoji: bool
) -> list[str]:
    """What the seed's list leaves out: who we are, where state lives, Gemini, budgets."""
    default = s.gemini_base_url == DEFAULT_GEMINI_BASE_URL
    endpoint = "Google" if default else describe_url(s.gemini_base_url)
    key_state = "set" if s.gemini_api_key is not None else "NOT SET"
    redis = describe_redis(s.redis_url.get_secret_value())
    if s.ocr_redis_prefix:
        redis += f" (prefix {s.ocr_redis_prefix!r})"
    lines = [
        f"   Scheduler: {owner} ({'leader' if leading else 'standby'})",
        f"   Intervals: feed {s.ocr_feed_interval_ms}ms, status {s.ocr_status_interval_ms}ms, "
        f"lease {s.ocr_lease_ms}ms",
        f"   Server budget: {amount(s.cpu_budget)} vCPUs, {amount(s.ram_budget)} GB RAM",
        f"   Slot cost: index {amount(s.ocr_index_cpu)} vCPU {amount(s.ocr_index_ram_gb)} GB, "
        f"acte {amount(s.ocr_acte_cpu)} vCPU {amount(s.ocr_acte_ram_gb)} GB",
        f"   Redis: {redis}",
        "   Environments: " + "; ".join(e.describe() for e in s.environments),
        f"   Gemini: {s.gemini_model} via {endpoint}, API key {key_state}",
        f"   Gemini budget: {s.gemini_rpm_limit} RPM, {s.gemini_tpm_limit:,} TPM per "
        f"{s.gemini_rate_window_ms / 1000:g} s window "
        f"(+{s.gemini_rate_margin_ms / 1000:g} s margin)",
    ]
    if allocation and allocation.get("reason"):
        lines.append(f"   Allocation reason: {allocation['reason']}")
    return lines


SHUTDOWN_STEPS = (
    "Stopping workers...",
    "Stopping pool manager...",
    "Stopping rate limiter...",
    "Stopping capacity manager...",
)


def shutdown_header(emoji: bool) -> list[str]:
    return [RULE, mark("🛑", "SHUTTING DOWN WORKER POOL", emoji), RULE]


def shutdown_footer(emoji: bool) -> list[str]:
    return ["", mark("✅", "WORKER POOL STOPPED SUCCESSFULLY", emoji), RULE]


def render_shutdown(emoji: bool = True) -> str:
    """The seed's shutdown block as one text (the scheduler prints it step by step)."""
    return "\n".join([*shutdown_header(emoji), *SHUTDOWN_STEPS, *shutdown_footer(emoji)])
