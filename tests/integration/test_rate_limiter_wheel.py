"""The limiter's Lua ships in the wheel and loads through importlib.resources from it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LIMITER_SCRIPTS = [
    "limiter_acquire",
    "limiter_cancel",
    "limiter_cooldown",
    "limiter_settle",
    "limiter_status",
    "limiter_lib_window",
    "limiter_lib_state",
    "limiter_lib_queue",
    "limiter_lib_hint",
]

PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import lua, control_plane.scripts as scripts
assert lua.__file__.startswith(sys.argv[1]), lua.__file__
for name in sys.argv[2:]:
    assert scripts.lua_source(name).startswith("-- " + name), name
    lines = scripts.lua_source(name).splitlines()
    assert not [x for x in lines if x.startswith("--! include")], name  # helpers pasted in
print(",".join(scripts.available_scripts()))
"""


def test_lua_scripts_load_from_the_built_wheel(tmp_path: Path) -> None:
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "demo-run"
        ),
    )
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "unpacked")
    missing = [n for n in LIMITER_SCRIPTS if f"lua/{n}.lua" not in names]
    assert not missing, f"scripts missing from {wheel.name}: {missing}"

    # Both the wheel itself (zipimport) and its unpacked tree, first on sys.path, in a clean
    # interpreter (-I: no cwd, no PYTHONPATH) so the checkout cannot answer instead.
    for location in (wheel, tmp_path / "unpacked"):
        probe = subprocess.run(
            [sys.executable, "-I", "-c", PROBE, str(location), *LIMITER_SCRIPTS],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert probe.returncode == 0, f"{location.name}: {probe.stderr[-2000:]}"
        assert set(LIMITER_SCRIPTS) <= set(probe.stdout.strip().split(","))
