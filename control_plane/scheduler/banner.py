"""The startup banner and the shutdown lines: human output, no secrets."""

from __future__ import annotations

from typing import Any

from control_plane.config import DEFAULT_GEMINI_BASE_URL, Settings
from control_plane.pool import by_slot_number
from control_plane.redis_conn import describe_redis
from control_plane.scheduler.status import RULE
from control_plane.urls import describe_url


def render_banner(
    settings: Settings,
    *,
    owner: str,
    allocation: dict[str, Any] | None,
    assignments: dict[str, str],
    leading: bool,
) -> str:
    """Configuration, initial allocation and the slots with their modes."""
    s = settings
    default = s.gemini_base_url == DEFAULT_GEMINI_BASE_URL
    endpoint = "Google" if default else describe_url(s.gemini_base_url)
    key_state = "set" if s.gemini_api_key is not None else "NOT SET"
    lines = [
        RULE,
        "OCR pool scheduler",
        RULE,
        f"Instance          : {owner} ({'leader' if leading else 'standby'})",
        f"Worker pool       : {s.ocr_worker_pool_size} slots, minimum index "
        f"{s.ocr_min_index_workers} / acte {s.ocr_min_acte_workers}",
        f"Intervals         : rebalance {s.ocr_rebalance_interval_ms} ms, feed "
        f"{s.ocr_feed_interval_ms} ms, status {s.ocr_status_interval_ms} ms, "
        f"lease {s.ocr_lease_ms} ms",
        f"Redis             : {describe_redis(s.redis_url.get_secret_value())}"
        + (f" (prefix {s.ocr_redis_prefix!r})" if s.ocr_redis_prefix else ""),
        "Environments      : " + "; ".join(e.describe() for e in s.environments),
        f"Gemini            : {s.gemini_model} via {endpoint}, API key {key_state}",
        f"Gemini budget     : {s.gemini_rpm_limit:,} RPM, {s.gemini_tpm_limit:,} TPM per "
        f"{s.gemini_rate_window_ms / 1000:g} s window "
        f"(+{s.gemini_rate_margin_ms / 1000:g} s margin)",
        f"Server capacity   : {s.server_max_cpu:g} vCPU / {s.server_max_ram:g} GB, reserve "
        f"{s.server_reserve_cpu_percent:g}% / {s.server_reserve_ram_percent:g}% -> budget "
        f"{s.cpu_budget:g} vCPU / {s.ram_budget:g} GB",
        f"Slot cost         : index {s.ocr_index_cpu:g} vCPU {s.ocr_index_ram_gb:g} GB, acte "
        f"{s.ocr_acte_cpu:g} vCPU {s.ocr_acte_ram_gb:g} GB",
    ]
    if allocation:
        lines.append(
            f"Initial allocation: index {allocation.get('index')} / acte {allocation.get('acte')}"
            + (f"  ({allocation['reason']})" if allocation.get("reason") else "")
        )
    if assignments:
        lines.append("Slots started     :")
        for slot, mode in by_slot_number(assignments.items()):
            lines.append(f"  {slot:<16} {mode}")
    lines.append(RULE)
    return "\n".join(lines)
