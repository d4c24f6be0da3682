"""Lua scripts of the Redis control plane, one per operation (see control_plane.scripts)."""
