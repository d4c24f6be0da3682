-- Issue 11: retry timing. A document sent back to ready after a transient failure (or
-- given back during an outage of something it depends on) is not claimed again before
-- retry_not_before; ocr_claim skips it until then and takes the other ready documents.
-- NULL = due now. Idempotent. The functions that use it live in 002_functions.sql, which
-- runs first: it turns check_function_bodies off so their bodies are checked at first
-- call, when this column exists.
ALTER TABLE extraction_queue
    ADD COLUMN IF NOT EXISTS retry_not_before timestamptz;
