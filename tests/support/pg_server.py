"""A private, throwaway PostgreSQL cluster for tests that stop and restart the server.

The implementation lives in control_plane.local_services (the demo uses it too).
"""

from control_plane.local_services import PrivatePostgres, private_postgres

__all__ = ["PrivatePostgres", "private_postgres"]
