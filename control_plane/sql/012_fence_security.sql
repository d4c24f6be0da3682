-- Issue 12 (attack a2): the leader fence is a table of the pool in `public`, so on
-- Supabase the default privileges gave `anon` and `authenticated` all rights on it: one
-- PATCH through the REST API with the public anon key (epoch = the largest bigint)
-- fenced every scheduler out for good, and the owner of the current leader could be
-- read. Closed like the other tables the pool creates: row-level security (no policy:
-- only the owner and BYPASSRLS roles such as service_role see it) and no privilege for
-- the API roles. Versioned: runs once (a brief lock on the one-row table).

ALTER TABLE ocr_leader_fence ENABLE ROW LEVEL SECURITY;

DO $$
BEGIN
    REVOKE ALL ON ocr_leader_fence FROM PUBLIC;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN
        REVOKE ALL ON ocr_leader_fence FROM anon;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
        REVOKE ALL ON ocr_leader_fence FROM authenticated;
    END IF;
END
$$;
