-- GENERATED from control_plane/sql/010b_leader_fence_closed.sql by `python -m control_plane.queue.supabase_export`; do not edit.
-- Issue 10: the leader fence is closed to Supabase's API roles. Idempotent.
-- 010_delivery_fencing.sql created ocr_leader_fence without the lock-down the other queue
-- tables get (001_schema.sql): Supabase's default privileges left it open to anon (the
-- public key, through the REST API) and authenticated, who could move the fence (stop
-- every scheduler) or delete it (unfence stale leaders). Only the service role, through
-- ocr_fence_check / ocr_leader_fence, reads and writes it.

ALTER TABLE ocr_leader_fence ENABLE ROW LEVEL SECURITY;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN
        REVOKE ALL ON ocr_leader_fence FROM PUBLIC;
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN
            REVOKE ALL ON ocr_leader_fence FROM anon;
        END IF;
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
            REVOKE ALL ON ocr_leader_fence FROM authenticated;
        END IF;
        GRANT SELECT, INSERT, UPDATE ON ocr_leader_fence TO service_role;
    END IF;
END
$$;
