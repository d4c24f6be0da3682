-- OCR queue state changes (DESIGN.md section 6). Every change of a document's state goes
-- through one of these functions, so the Postgres transport (psycopg) and the Supabase
-- transport (PostgREST .rpc) share one implementation. Idempotent (CREATE OR REPLACE).
--
-- Leases: claim sets a fresh lease_token (uuid) and lease_expires_at (server clock).
-- start / renew / complete / fail / release are fenced on that token: a stale token
-- (the lease was reaped and maybe re-claimed) changes nothing and says so.
--
-- Deliveries (issue 10): each start of a document is one delivery. ocr_start counts the
-- attempt and replaces the claim's token with a fresh one that only this delivery holds;
-- every later write of the job (renew, complete, fail, release) carries it. A second
-- delivery of the same message (Dramatiq redelivers it after a worker process died, or a
-- partitioned host) still carries the claim's token: its start is refused, so it cannot
-- run the document while the first holds it, and nothing it could write is accepted.
-- A delivery that dies leaves its lease to lapse; ocr_reap then counts it lost and,
-- once the document used p_max_attempts starts, moves it to error saying so.
--
-- Leaders (issue 10): ocr_claim and ocr_reap take the scheduler's leader epoch. The
-- database keeps the highest epoch it saw (ocr_leader_fence); a call carrying a lower
-- one comes from a leader that was replaced and is refused (SQLSTATE OCR01), in the
-- same transaction as the write it would have made. NULL = unfenced (tools, tests).

-- Function bodies are checked when first called, not at CREATE: some read columns that
-- 010_delivery_fencing.sql adds, and that file runs after this one.
SET check_function_bodies = off;

-- Raise the fence to p_epoch; refuse (OCR01) when a newer leader already passed it.
-- Holds the fence row until the caller's transaction ends, so a newer leader's fence
-- waits for a claim in flight and every later stale call is refused.
CREATE OR REPLACE FUNCTION ocr_fence_check(p_epoch bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_epoch bigint;
BEGIN
    IF p_epoch IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO ocr_leader_fence (singleton, epoch) VALUES (true, 0) ON CONFLICT DO NOTHING;
    SELECT f.epoch INTO v_epoch FROM ocr_leader_fence f WHERE f.singleton FOR UPDATE;
    IF v_epoch > p_epoch THEN
        RAISE EXCEPTION 'leader epoch % is stale: epoch % leads now', p_epoch, v_epoch
            USING ERRCODE = 'OCR01';
    END IF;
    IF v_epoch < p_epoch THEN
        UPDATE ocr_leader_fence SET epoch = p_epoch, updated_at = now() WHERE singleton;
    END IF;
END
$$;

-- A new leader announces its epoch (before it claims or reaps). Returns the highest
-- epoch the database has seen: above p_epoch, the caller's epoch went backwards (a
-- Redis flush) and it must take a higher one before acting.
CREATE OR REPLACE FUNCTION ocr_leader_fence(p_epoch bigint, p_owner text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_epoch bigint;
BEGIN
    INSERT INTO ocr_leader_fence (singleton, epoch) VALUES (true, 0) ON CONFLICT DO NOTHING;
    UPDATE ocr_leader_fence f
    SET epoch = p_epoch, owner = p_owner, updated_at = now()
    WHERE f.singleton AND f.epoch <= p_epoch;
    SELECT f.epoch INTO v_epoch FROM ocr_leader_fence f WHERE f.singleton;
    RETURN v_epoch;
END
$$;

-- Retry timing (issue 11): fail and release take a delay; the row is not claimed again
-- before retry_not_before (column added by 011_retry_not_before.sql).
DROP FUNCTION IF EXISTS ocr_fail(bigint, uuid, text, boolean, integer);
DROP FUNCTION IF EXISTS ocr_release(bigint, uuid);
DROP FUNCTION IF EXISTS ocr_counts();

-- Claim up to p_limit ready documents of one type, oldest first, without waiting on
-- rows other claimers hold (SKIP LOCKED). Counts no attempt (a start does). A row
-- waiting to retry (retry_not_before in the future) is skipped until it is due.
DROP FUNCTION IF EXISTS ocr_claim(text, integer, text, integer);
CREATE OR REPLACE FUNCTION ocr_claim(
    p_document_source text, p_limit integer, p_worker_id text, p_lease_ms integer,
    p_epoch bigint DEFAULT NULL)
RETURNS TABLE (id bigint, document_source text, storage_path text, lease_token uuid,
               lease_expires_at timestamptz, attempts integer)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM ocr_fence_check(p_epoch);
    RETURN QUERY
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
        claim_epoch = p_epoch,
        claimed_at = now(),
        started_at = NULL,
        retry_not_before = NULL,
        updated_at = now()
    FROM picked
    WHERE q.id = picked.id
    RETURNING q.id, q.document_source, q.storage_path, q.lease_token, q.lease_expires_at,
              q.attempts;
END
$$;

-- A delivery begins: count the attempt, give this delivery its own token (returned
-- with the attempt number) and extend the lease. No row: the claim's token is stale
-- (reaped, or another delivery of the same message started first). A document that
-- already used p_max_attempts starts goes to error instead.
DROP FUNCTION IF EXISTS ocr_start(bigint, uuid, text, integer);
CREATE OR REPLACE FUNCTION ocr_start(
    p_id bigint, p_lease_token uuid, p_worker_id text, p_lease_ms integer,
    p_max_attempts integer)
RETURNS TABLE (lease_token uuid, attempts integer)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_attempts integer;
BEGIN
    -- A legacy nullable attempts column may hold NULL: it counts as 0.
    SELECT coalesce(q.attempts, 0) INTO v_attempts FROM extraction_queue q
    WHERE q.id = p_id AND q.status_id = 2 AND q.lease_token = p_lease_token
      AND q.started_at IS NULL
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v_attempts >= p_max_attempts THEN
        UPDATE extraction_queue q
        SET status_id = 4,
            error_message = format('out of attempts: %s of %s used', v_attempts, p_max_attempts),
            lease_token = NULL, lease_expires_at = NULL, updated_at = now()
        WHERE q.id = p_id;
        RETURN;
    END IF;
    RETURN QUERY
    UPDATE extraction_queue q
    SET worker_id = p_worker_id,
        lease_token = gen_random_uuid(),
        attempts = coalesce(q.attempts, 0) + 1,
        started_at = now(),
        lease_expires_at = now() + p_lease_ms * interval '1 millisecond',
        updated_at = now()
    WHERE q.id = p_id
    RETURNING q.lease_token, q.attempts;
END
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

-- Give a claim or a delivery back without counting the attempt (graceful shutdown,
-- Gemini 429, an outage of a dependency): a started delivery gives its attempt back.
-- p_retry_after_ms: not claimed again before that (0 = at once).
CREATE OR REPLACE FUNCTION ocr_release(
    p_id bigint, p_lease_token uuid, p_retry_after_ms integer DEFAULT 0)
RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    WITH changed AS (
        UPDATE extraction_queue
        SET status_id = 3,
            attempts = CASE WHEN started_at IS NOT NULL THEN greatest(attempts - 1, 0)
                            ELSE attempts END,
            worker_id = NULL, lease_token = NULL, lease_expires_at = NULL, started_at = NULL,
            updated_at = now(),
            retry_not_before = CASE WHEN p_retry_after_ms > 0
                THEN now() + p_retry_after_ms * interval '1 millisecond' END
        WHERE id = p_id AND status_id = 2 AND lease_token = p_lease_token
        RETURNING 1
    )
    SELECT EXISTS (SELECT FROM changed);
$$;

-- Expired leases go back to ready, or to error once they used p_max_attempts starts.
-- A started delivery whose lease lapsed is counted lost (its worker process died, or
-- could not reach the database for a whole lease). A claim never started (its message
-- waited in a queue, or was lost before a worker took it) counted no attempt. Only rows
-- of the pool's two types are touched. A legacy status-2 row without a lease (left by an
-- older system: no lease_expires_at) counts as expired; it never started under this pool,
-- so it goes back to ready without using an attempt.
DROP FUNCTION IF EXISTS ocr_reap(integer, integer);
CREATE OR REPLACE FUNCTION ocr_reap(
    p_max_attempts integer, p_limit integer DEFAULT 1000, p_epoch bigint DEFAULT NULL)
RETURNS TABLE (requeued integer, errored integer)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM ocr_fence_check(p_epoch);
    RETURN QUERY
    WITH expired AS (
        SELECT q.id FROM extraction_queue q
        WHERE q.status_id = 2 AND q.document_source IN ('index', 'acte')
          AND (q.lease_expires_at < now() OR q.lease_expires_at IS NULL)
        ORDER BY q.lease_expires_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), moved AS (
        UPDATE extraction_queue q
        SET status_id = CASE WHEN q.started_at IS NOT NULL AND q.attempts >= p_max_attempts
                             THEN 4 ELSE 3 END,
            lost_deliveries = q.lost_deliveries
                + CASE WHEN q.started_at IS NOT NULL THEN 1 ELSE 0 END,
            error_message = CASE
                WHEN q.started_at IS NOT NULL AND q.attempts >= p_max_attempts THEN format(
                    'worker process died during processing %s time(s) (last worker %s): '
                    'its lease expired on attempt %s of %s, giving up',
                    q.lost_deliveries + 1, coalesce(q.worker_id, 'unknown'), q.attempts,
                    p_max_attempts)
                ELSE q.error_message END,
            worker_id = CASE WHEN q.started_at IS NOT NULL AND q.attempts >= p_max_attempts
                             THEN q.worker_id END,
            lease_token = NULL,
            lease_expires_at = NULL,
            started_at = NULL,
            updated_at = now()
        FROM expired
        WHERE q.id = expired.id
        RETURNING q.status_id
    )
    SELECT (count(*) FILTER (WHERE m.status_id = 3))::integer,
           (count(*) FILTER (WHERE m.status_id = 4))::integer
    FROM moved m;
END
$$;

RESET check_function_bodies;

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

-- ---------------------------------------------------------------------------
-- Issue 14: `python scheduler.py errors` and `requeue` (table in 014_error_history.sql;
-- plpgsql so this file can be applied before it on a fresh database).

-- Documents in ERREUR grouped by type and reason (the error message text), largest
-- group first, with the first and last time a row of the group failed and sample ids.
CREATE OR REPLACE FUNCTION ocr_errors(
    p_document_source text DEFAULT NULL, p_samples integer DEFAULT 5)
RETURNS TABLE (document_source text, reason text, documents bigint,
               oldest timestamptz, newest timestamptz, sample_ids bigint[])
LANGUAGE sql STABLE AS $$
    SELECT q.document_source, coalesce(q.error_message, ''), count(*),
           min(q.updated_at), max(q.updated_at),
           (array_agg(q.id ORDER BY q.id))[1:greatest(p_samples, 0)]
    FROM extraction_queue q
    WHERE q.status_id = 4
      AND (p_document_source IS NULL OR q.document_source = p_document_source)
    GROUP BY q.document_source, coalesce(q.error_message, '')
    ORDER BY count(*) DESC, 1, 2;
$$;

-- Documents in ERREUR matching every given filter (NULL = any): type, a case-blind
-- substring of the error message, ids. Only known types (index, acte) can go back.
-- p_apply false: the rows that would change, nothing written (the dry run).
-- p_apply true: each error copied to ocr_error_history, then the row back to ready
-- (status 3) with its attempts reset; the rows changed.
CREATE OR REPLACE FUNCTION ocr_requeue(
    p_document_source text, p_reason text, p_ids bigint[], p_apply boolean,
    p_requeued_by text DEFAULT NULL)
RETURNS TABLE (id bigint, document_source text, attempts integer, error_message text,
               failed_at timestamptz)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT p_apply THEN
        RETURN QUERY
        SELECT q.id, q.document_source, q.attempts, q.error_message, q.updated_at
        FROM extraction_queue q
        WHERE q.status_id = 4 AND q.document_source IN ('index', 'acte')
          AND (p_document_source IS NULL OR q.document_source = p_document_source)
          AND (p_reason IS NULL
               OR strpos(lower(coalesce(q.error_message, '')), lower(p_reason)) > 0)
          AND (p_ids IS NULL OR q.id = ANY (p_ids))
        ORDER BY q.id;
        RETURN;
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT q.id, q.document_source, q.attempts, q.error_message, q.worker_id, q.updated_at
        FROM extraction_queue q
        WHERE q.status_id = 4 AND q.document_source IN ('index', 'acte')
          AND (p_document_source IS NULL OR q.document_source = p_document_source)
          AND (p_reason IS NULL
               OR strpos(lower(coalesce(q.error_message, '')), lower(p_reason)) > 0)
          AND (p_ids IS NULL OR q.id = ANY (p_ids))
        ORDER BY q.id
        FOR UPDATE
    ), kept AS (
        INSERT INTO ocr_error_history (document_id, document_source, error_message, attempts,
                                       worker_id, failed_at, requeued_by)
        SELECT p.id, p.document_source, p.error_message, p.attempts, p.worker_id,
               p.updated_at, p_requeued_by
        FROM picked p
    ), moved AS (
        UPDATE extraction_queue q
        SET status_id = 3, attempts = 0, error_message = NULL, worker_id = NULL,
            lease_token = NULL, lease_expires_at = NULL, updated_at = now()
        FROM picked p
        WHERE q.id = p.id AND q.status_id = 4
        RETURNING q.id
    )
    SELECT p.id, p.document_source, p.attempts, p.error_message, p.updated_at
    FROM picked p JOIN moved m ON m.id = p.id
    ORDER BY p.id;
END
$$;

-- What `python scheduler.py doctor` needs to know of a database, over either transport:
-- ('function', name, 1) per ocr_* function; ('table', name, 1 if row level security is on
-- else 0); ('exposed', 'role PRIVILEGE object', 1) per privilege Supabase's API roles
-- (anon, authenticated) hold on our tables or functions; ('ready', type, n) and
-- ('ready_with_worker', type, n) for ready rows, the latter those carrying a worker_id.
CREATE OR REPLACE FUNCTION ocr_doctor()
RETURNS TABLE (kind text, name text, value bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r record;
    api_role text;
    priv text;
BEGIN
    RETURN QUERY
    SELECT 'function'::text, p.proname::text, 1::bigint
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = current_schema() AND p.proname LIKE 'ocr\_%'
    GROUP BY p.proname;
    RETURN QUERY
    SELECT 'table'::text, c.relname::text, (CASE WHEN c.relrowsecurity THEN 1 ELSE 0 END)::bigint
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
      AND (c.relname = 'extraction_queue' OR c.relname LIKE 'ocr\_%');
    FOREACH api_role IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        CONTINUE WHEN NOT EXISTS (SELECT FROM pg_roles WHERE rolname = api_role);
        FOR r IN
            SELECT c.oid, c.relname::text AS relname, c.relrowsecurity
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
              AND (c.relname = 'extraction_queue' OR c.relname LIKE 'ocr\_%')
        LOOP
            FOREACH priv IN ARRAY ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE'] LOOP
                IF has_table_privilege(api_role, r.oid, priv) AND NOT r.relrowsecurity THEN
                    kind := 'exposed'; name := api_role || ' ' || priv || ' ' || r.relname;
                    value := 1;
                    RETURN NEXT;
                END IF;
            END LOOP;
        END LOOP;
        FOR r IN
            SELECT p.oid, p.proname::text AS proname
            FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = current_schema() AND p.proname LIKE 'ocr\_%'
        LOOP
            IF has_function_privilege(api_role, r.oid, 'EXECUTE') THEN
                kind := 'exposed'; name := api_role || ' EXECUTE ' || r.proname; value := 1;
                RETURN NEXT;
            END IF;
        END LOOP;
    END LOOP;
    RETURN QUERY
    SELECT 'ready'::text, q.document_source, count(*)
    FROM extraction_queue q WHERE q.status_id = 3 GROUP BY q.document_source;
    RETURN QUERY
    SELECT 'ready_with_worker'::text, q.document_source, count(*)
    FROM extraction_queue q WHERE q.status_id = 3 AND q.worker_id IS NOT NULL
    GROUP BY q.document_source;
END
$$;

-- A lock another writer of the shared table holds (its own ALTER TABLE during a deploy,
-- a LOCK TABLE, a long transaction on a row) must not hold the pool: without a limit a
-- claim, count or reap waited there for the whole statement timeout, and the feed served
-- the other environments only after it (attack a2 on issue 12). The pool's functions give
-- up a lock wait after 2 s with lock_not_available (55P03, transient: that environment
-- backs off on its own). Set after every CREATE OR REPLACE above, which resets it.
DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY[
        'ocr_fence_check(bigint)',
        'ocr_leader_fence(bigint, text)',
        'ocr_claim(text, integer, text, integer, bigint)',
        'ocr_start(bigint, uuid, text, integer, integer)',
        'ocr_renew(bigint, uuid, integer)',
        'ocr_complete(bigint, uuid, text, integer, integer)',
        'ocr_fail(bigint, uuid, text, boolean, integer, integer)',
        'ocr_release(bigint, uuid, integer)',
        'ocr_reap(integer, integer, bigint)',
        'ocr_counts()',
        'ocr_errors(text, integer)',
        'ocr_requeue(text, text, bigint[], boolean, text)',
        'ocr_doctor()'
    ] LOOP
        EXECUTE format('ALTER FUNCTION %s SET lock_timeout = %L', fn, '2s');
        -- On Supabase only the service role may call these; plain Postgres has no such
        -- role and keeps the default (owner and PUBLIC). Table privileges are not touched
        -- here: 001_schema.sql sets them on the tables it creates, the owner otherwise.
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN
            EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN
                EXECUTE format('REVOKE ALL ON FUNCTION %s FROM anon', fn);
            END IF;
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
                EXECUTE format('REVOKE ALL ON FUNCTION %s FROM authenticated', fn);
            END IF;
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO service_role', fn);
        END IF;
    END LOOP;
END
$$;
