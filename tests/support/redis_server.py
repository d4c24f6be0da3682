"""A private redis-server for tests that stop, restart or flush Redis.

    with private_redis() as server:
        client = redis_client(server.url)
        server.restart()     # same port, empty data (no persistence)

The implementation lives in control_plane.local_services (the demo uses it too).
"""

from control_plane.local_services import PrivateRedis, free_port, private_redis

__all__ = ["PrivateRedis", "free_port", "private_redis"]
