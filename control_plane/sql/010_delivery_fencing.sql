-- Issue 10: fenced leaders and fenced deliveries (columns and the leader fence).
-- Idempotent: safe to run again. The functions that use these live in 002_functions.sql
-- (their bodies are checked when first called, after this file has run).

-- claim_epoch: the scheduler leader epoch that made the current claim (NULL: an
-- unfenced caller such as a tool). lost_deliveries: starts whose lease lapsed without
-- an outcome (the worker process died, or lost the database for a whole lease).
ALTER TABLE extraction_queue
    ADD COLUMN IF NOT EXISTS claim_epoch     bigint,
    ADD COLUMN IF NOT EXISTS lost_deliveries integer NOT NULL DEFAULT 0;

-- The highest scheduler leader epoch this database has seen (one row). A claim or reap
-- that carries a lower epoch comes from a leader that has been replaced: it is refused.
CREATE TABLE IF NOT EXISTS ocr_leader_fence (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch      bigint      NOT NULL DEFAULT 0,
    owner      text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ocr_leader_fence (singleton, epoch) VALUES (true, 0) ON CONFLICT DO NOTHING;

-- Supabase: the fence is the scheduler's alone; anyone who could raise it (the anon key
-- through the REST API, with Supabase's default privileges) could fence every leader out.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('REVOKE ALL ON TABLE ocr_leader_fence FROM %I', r);
            ALTER TABLE ocr_leader_fence ENABLE ROW LEVEL SECURITY;
        END IF;
    END LOOP;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN
        GRANT SELECT, INSERT, UPDATE ON ocr_leader_fence TO service_role;
    END IF;
END
$$;
