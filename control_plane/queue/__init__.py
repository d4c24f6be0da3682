"""The document queue: the `extraction_queue` table behind a `QueueStore` protocol.

Two transports share the SQL functions in `control_plane/sql`: `PostgresStore`
(psycopg 3, pooled) and `SupabaseStore` (supabase-py `.rpc`). `Environments`
holds one store per configured environment and claims fairly across them.
"""

from control_plane.queue.models import ClaimedDocument, FailOutcome, QueueCounts, ReapResult
from control_plane.queue.store import QueueStore

__all__ = ["ClaimedDocument", "FailOutcome", "QueueCounts", "QueueStore", "ReapResult"]
