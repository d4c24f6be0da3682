-- OCR queue state changes (DESIGN.md section 6). Every change of a document's state goes
-- through one of these functions, so the Postgres transport (psycopg) and the Supabase
-- transport (PostgREST .rpc) share one implementation. Idempotent (CREATE OR REPLACE).
--
-- Leases: claim sets a fresh lease_token (uuid) and lease_expires_at (server clock).
-- start / renew / complete / fail / release are fenced on that token: a stale token
-- (the lease was reaped and maybe re-claimed) changes nothing and says so.
--
-- Retry timing (issue 11): fail and release take a delay; the row is not claimed again
-- before retry_not_before (column added by 011_retry_not_before.sql, which runs after this
-- file: bodies are checked at first call, hence check_function_bodies off here).
SET check_function_bodies = off;
DROP FUNCTION IF EXISTS ocr_fail(bigint, uuid, text, boolean, integer);
DROP FUNCTION IF EXISTS ocr_release(bigint, uuid);
DROP FUNCTION IF EXISTS ocr_counts();

-- Claim up to p_limit ready documents of one type, oldest first, without waiting on
-- rows other claimers hold (SKIP LOCKED). Counts an attempt. A row waiting to retry
-- (retry_not_before in the future) is skipped until it is due.
CREATE OR REPLACE FUNCTION ocr_claim(
    p_document_source text, p_limit integer, p_worker_id text, p_lease_ms integer)
RETURNS TABLE (id bigint, document_source text, storage_path text, lease_token uuid,
               lease_expires_at timestamptz, attempts integer)
LANGUAGE sql VOLATILE AS $$
    WITH picked AS (
        SELECT q.id FROM extraction_queue q
        WHERE q.status_id = 3 AND q.document_source = p_document_source
          AND (q.retry_not_before IS NULL OR q.retry_not_before <= now())
        ORDER BY q.id
        LIMIT greatest(p_limit, 0)
        FOR UPDATE SKIP LOCKED
    )
    UPDATE extraction_queue q
    SET status_id = 2,
        worker_id = p_worker_id,
        lease_token = gen_random_uuid(),
        lease_expires_at = now() + p_lease_ms * interval '1 millisecond',
        attempts = q.attempts + 1,
        claimed_at = now(),
        started_at = NULL,
        retry_not_before = NULL,
        updated_at = now()
    FROM picked
    WHERE q.id = picked.id
    RETURNING q.id, q.document_source, q.storage_path, q.lease_token, q.lease_expires_at,
              q.attempts;
$$;

-- The worker has begun processing: record it and extend the lease. False = stale.
CREATE OR REPLACE FUNCTION ocr_start(
    p_id bigint, p_lease_token uuid, p_worker_id text, p_lease_ms integer)
RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    WITH changed AS (
        UPDATE extraction_queue
        SET worker_id = p_worker_id,
            started_at = now(),
            lease_expires_at = now() + p_lease_ms * interval '1 millisecond',
            updated_at = now()
        WHERE id = p_id AND status_id = 2 AND lease_token = p_lease_token
        RETURNING 1
    )
    SELECT EXISTS (SELECT FROM changed);
$$;

-- Extend a lease while a long job runs. False = stale.
CREATE OR REPLACE FUNCTION ocr_renew(p_id bigint, p_lease_token uuid, p_lease_ms integer)
RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    WITH changed AS (
        UPDATE extraction_queue
        SET lease_expires_at = now() + p_lease_ms * interval '1 millisecond',
            updated_at = now()
        WHERE id = p_id AND status_id = 2 AND lease_token = p_lease_token
        RETURNING 1
    )
    SELECT EXISTS (SELECT FROM changed);
$$;

-- Write the OCR result (status 5). False = stale: nothing was written.
CREATE OR REPLACE FUNCTION ocr_complete(
    p_id bigint, p_lease_token uuid, p_text text, p_prompt_tokens integer,
    p_output_tokens integer)
RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    WITH changed AS (
        UPDATE extraction_queue
        SET status_id = 5,
            file_content = p_text,
            prompt_tokens = p_prompt_tokens,
            output_tokens = p_output_tokens,
            error_message = NULL,
            lease_token = NULL,
            lease_expires_at = NULL,
            completed_at = now(),
            updated_at = now()
        WHERE id = p_id AND status_id = 2 AND lease_token = p_lease_token
        RETURNING 1
    )
    SELECT EXISTS (SELECT FROM changed);
$$;

-- A failed attempt: 'error' (status 4) when permanent or out of attempts, 'retry'
-- (back to 3, message kept as the last error, not claimed again for p_retry_after_ms)
-- otherwise, 'stale' if the lease is lost.
CREATE OR REPLACE FUNCTION ocr_fail(
    p_id bigint, p_lease_token uuid, p_message text, p_permanent boolean,
    p_max_attempts integer, p_retry_after_ms integer DEFAULT 0)
RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_attempts integer;
BEGIN
    SELECT q.attempts INTO v_attempts FROM extraction_queue q
    WHERE q.id = p_id AND q.status_id = 2 AND q.lease_token = p_lease_token
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'stale';
    END IF;
    IF p_permanent OR v_attempts >= p_max_attempts THEN
        UPDATE extraction_queue
        SET status_id = 4, error_message = left(p_message, 4000), lease_token = NULL,
            lease_expires_at = NULL, updated_at = now()
        WHERE id = p_id;
        RETURN 'error';
    END IF;
    UPDATE extraction_queue
    SET status_id = 3, error_message = left(p_message, 4000), worker_id = NULL,
        lease_token = NULL, lease_expires_at = NULL, updated_at = now(),
        retry_not_before = now() + greatest(p_retry_after_ms, 0) * interval '1 millisecond'
    WHERE id = p_id;
    RETURN 'retry';
END
$$;

-- Give a claim back without counting the attempt (graceful shutdown, Gemini 429, an
-- outage of a dependency); p_retry_after_ms: not claimed again before that (0 = at once).
CREATE OR REPLACE FUNCTION ocr_release(
    p_id bigint, p_lease_token uuid, p_retry_after_ms integer DEFAULT 0)
RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    WITH changed AS (
        UPDATE extraction_queue
        SET status_id = 3, attempts = greatest(attempts - 1, 0), worker_id = NULL,
            lease_token = NULL, lease_expires_at = NULL, updated_at = now(),
            retry_not_before = CASE WHEN p_retry_after_ms > 0
                THEN now() + p_retry_after_ms * interval '1 millisecond' END
        WHERE id = p_id AND status_id = 2 AND lease_token = p_lease_token
        RETURNING 1
    )
    SELECT EXISTS (SELECT FROM changed);
$$;

-- Expired leases go back to ready, or to error once they used p_max_attempts.
-- Also moves legacy ready rows of an unknown type (see 001_schema.sql) to error.
CREATE OR REPLACE FUNCTION ocr_reap(p_max_attempts integer, p_limit integer DEFAULT 1000)
RETURNS TABLE (requeued integer, errored integer)
LANGUAGE sql VOLATILE AS $$
    WITH expired AS (
        SELECT q.id FROM extraction_queue q
        WHERE q.status_id = 2 AND q.lease_expires_at < now()
        ORDER BY q.lease_expires_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), moved AS (
        -- A claim that was never started (its message waited in a queue, or was lost
        -- before a worker took it) gives its attempt back: only work that ran counts.
        UPDATE extraction_queue q
        SET status_id = CASE WHEN q.started_at IS NOT NULL AND q.attempts >= p_max_attempts
                             THEN 4 ELSE 3 END,
            attempts = CASE WHEN q.started_at IS NULL THEN greatest(q.attempts - 1, 0)
                            ELSE q.attempts END,
            error_message = CASE
                WHEN q.started_at IS NOT NULL AND q.attempts >= p_max_attempts THEN format(
                    'lease expired on attempt %s of %s (last worker %s): giving up',
                    q.attempts, p_max_attempts, coalesce(q.worker_id, 'unknown'))
                ELSE q.error_message END,
            worker_id = CASE WHEN q.started_at IS NOT NULL AND q.attempts >= p_max_attempts
                             THEN q.worker_id END,
            lease_token = NULL,
            lease_expires_at = NULL,
            updated_at = now()
        FROM expired
        WHERE q.id = expired.id
        RETURNING q.status_id
    ), unknown AS (
        UPDATE extraction_queue q
        SET status_id = 4,
            error_message = format('unknown document_source %L (expected index or acte)',
                                   q.document_source),
            updated_at = now()
        WHERE q.id IN (
            SELECT u.id FROM extraction_queue u
            WHERE u.status_id = 3 AND u.document_source NOT IN ('index', 'acte')
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED)
        RETURNING q.status_id
    )
    SELECT (count(*) FILTER (WHERE m.status_id = 3))::integer,
           (count(*) FILTER (WHERE m.status_id = 4))::integer
    FROM (SELECT status_id FROM moved UNION ALL SELECT status_id FROM unknown) m;
$$;

-- Ready and in-flight documents per type; both read only small partial indexes.
-- waiting_retry: the ready documents not due yet (counted in ready too).
CREATE OR REPLACE FUNCTION ocr_counts()
RETURNS TABLE (document_source text, ready bigint, in_flight bigint, waiting_retry bigint)
LANGUAGE sql STABLE AS $$
    SELECT s.source,
           (SELECT count(*) FROM extraction_queue q
            WHERE q.status_id = 3 AND q.document_source = s.source),
           (SELECT count(*) FROM extraction_queue q
            WHERE q.status_id = 2 AND q.document_source = s.source),
           (SELECT count(*) FROM extraction_queue q
            WHERE q.status_id = 3 AND q.document_source = s.source
              AND q.retry_not_before > now())
    FROM (VALUES ('index'), ('acte')) AS s(source);
$$;

-- On Supabase only the service role may call these; plain Postgres has no such role
-- and keeps the default (owner and PUBLIC).
DO $$
DECLARE
    fn text;
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN
        FOREACH fn IN ARRAY ARRAY[
            'ocr_claim(text, integer, text, integer)',
            'ocr_start(bigint, uuid, text, integer)',
            'ocr_renew(bigint, uuid, integer)',
            'ocr_complete(bigint, uuid, text, integer, integer)',
            'ocr_fail(bigint, uuid, text, boolean, integer, integer)',
            'ocr_release(bigint, uuid, integer)',
            'ocr_reap(integer, integer)',
            'ocr_counts()'
        ] LOOP
            EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN
                EXECUTE format('REVOKE ALL ON FUNCTION %s FROM anon', fn);
            END IF;
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
                EXECUTE format('REVOKE ALL ON FUNCTION %s FROM authenticated', fn);
            END IF;
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO service_role', fn);
        END LOOP;
        GRANT SELECT, INSERT, UPDATE ON extraction_queue TO service_role;
        GRANT SELECT ON ocr_status TO service_role;
    END IF;
END
$$;
