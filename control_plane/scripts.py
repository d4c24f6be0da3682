"""Lua scripts: loaded from the `lua` package with importlib.resources.

Each `.lua` file in `lua/` is one operation. Scripts are registered once per
Redis client; redis-py's `Script` runs EVALSHA and reloads on NOSCRIPT, so a
Redis restart or `SCRIPT FLUSH` is invisible to callers.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script

# A line `--! include <name>` is replaced by the text of lua/<name>.lua (shared Lua helpers:
# Redis runs one self-contained script, so helpers are pasted in at load time).
_INCLUDE = re.compile(r"^--! include (\S+)$", re.MULTILINE)


@cache
def lua_source(name: str) -> str:
    """The text of `lua/<name>.lua` with its includes expanded (from a checkout or a wheel)."""
    text = resources.files("lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda match: lua_source(match.group(1)), text)


def available_scripts() -> list[str]:
    """Names of every shipped script (without `.lua`)."""
    return sorted(
        entry.name.removesuffix(".lua")
        for entry in resources.files("lua").iterdir()
        if entry.name.endswith(".lua")
    )


class ScriptSet:
    """The shipped scripts registered on one client, called by name."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._scripts: dict[str, Script] = {}

    def get(self, name: str) -> Script:
        script = self._scripts.get(name)
        if script is None:
            script = self._client.register_script(lua_source(name))
            self._scripts[name] = script
        return script

    def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run script `name`; EVALSHA with automatic reload after NOSCRIPT."""
        return self.get(name)(keys=keys, args=args)


def check_scripting(client: redis.Redis) -> None:
    """Raise (redis NoPermissionError) when this Redis user may not load our scripts: an
    ACL user that can PING but not script would fail every operation later (issue 11)."""
    client.script_load(lua_source("breaker"))
