-- GENERATED from control_plane/sql/012_good_neighbour.sql by `python -m control_plane.queue.supabase_export`; do not edit.
-- Issue 12: the pool is one writer among several on extraction_queue. Earlier versions
-- added CHECK constraints on columns other components own: document_source (a 'plan' row
-- moved from status 1 to 3 by the downloader failed with check_violation) and status_id.
-- They are dropped here, only when the catalog shows the pool's own definitions (a
-- constraint of the same name the owner wrote differently is left alone). The pool itself
-- only ever touches rows of its two types (index, acte); rows of any other type are not
-- read, moved or counted, so the index that found them is dropped too.

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_constraint
               WHERE conrelid = 'extraction_queue'::regclass
                 AND conname = 'extraction_queue_document_source_check'
                 AND contype = 'c'
                 AND pg_get_constraintdef(oid) LIKE '%''index''%''acte''%') THEN
        ALTER TABLE extraction_queue DROP CONSTRAINT extraction_queue_document_source_check;
    END IF;
    IF EXISTS (SELECT FROM pg_constraint
               WHERE conrelid = 'extraction_queue'::regclass
                 AND conname = 'extraction_queue_status_id_check'
                 AND contype = 'c'
                 AND pg_get_constraintdef(oid) LIKE '%status_id >= 1%status_id <= 5%') THEN
        ALTER TABLE extraction_queue DROP CONSTRAINT extraction_queue_status_id_check;
    END IF;
END
$$;

DROP INDEX IF EXISTS extraction_queue_unknown_source_idx;
