-- Retention cleanup. `{table}`, `{column}` and `{predicate}` are placeholders that
-- worker/jobs/cleanup.py fills with psycopg.sql.Identifier and SQL composed from this file,
-- never with text taken from configuration.

-- name: relation_exists
SELECT to_regclass(%(relation)s) IS NOT NULL AS present;

-- name: older_than
-- The cutoff is computed by PostgreSQL, never by the process clock.
{column} < now() - make_interval(days => %(days)s)

-- name: not_running
-- A `running` row is the live record of a run in progress (or of a dead process whose
-- row the next run marks `abandoned`): it is never retention's to delete.
status <> 'running'

-- name: batch_settings
-- Inside a batch's transaction, both transaction-local. A lock wait longer than
-- `lock_timeout` fails the batch (it rolls back alone) rather than making the app's requests
-- queue behind our DELETE. The COMMIT returns without waiting for the WAL to reach disk (or
-- a synchronous standby): a crash in that instant can undo the last batches' deletes, whose
-- rows still match the rule, so the next run deletes them again. Waiting for that flush on
-- every batch cost more than any other per-batch step.
SELECT set_config('lock_timeout', %(lock_timeout)s, true),
       set_config('synchronous_commit', 'off', true);

-- name: batch_bound
-- A batch is a range of ids: from just after the previous batch's last id (`{after}`; the
-- first batch has no lower bound) up to the id of the n-th row the rule matches (OFFSET is
-- n - 1). No row means fewer than n are left: the final batch then has no upper bound.
-- Walking the table in id order makes each batch start where the last one ended, instead of
-- re-reading the dead rows earlier batches left behind: the `id = ANY(ARRAY(SELECT id ...
-- LIMIT n))` form did that, and was 3x slower on a 1M-row table once PostgreSQL's
-- synchronized scans did not happen to hide it (they only apply to tables larger than a
-- quarter of shared_buffers).
SELECT id FROM {table}
 WHERE {predicate} {after}
 ORDER BY id
OFFSET %(offset)s
 LIMIT 1;

-- name: delete_walked
-- A small batch in one walk of the table in id order: the next n rows the rule matches
-- after the previous batch's last id, deleted by id, the predicate checked again on each.
-- Fewer than n matched: this was the final batch.
WITH batch AS MATERIALIZED (
    SELECT id FROM {table}
     WHERE {predicate} {after}
     ORDER BY id
     LIMIT %(limit)s
), gone AS (
    DELETE FROM {table}
     WHERE id = ANY(ARRAY(SELECT id FROM batch)) AND {predicate}
    RETURNING 1
)
SELECT (SELECT id FROM batch ORDER BY id DESC LIMIT 1) AS last_id,
       (SELECT count(*) FROM batch) AS matched,
       (SELECT count(*) FROM gone) AS deleted;

-- name: delete_range
-- The predicate is checked again on every row: a token the app extended since the bound was
-- read is not deleted.
DELETE FROM {table}
 WHERE {predicate} {after} {upto};

-- name: after_id
AND id > %(after_id)s

-- name: upto_id
AND id <= %(upto_id)s

-- name: count_rows
SELECT count(*) AS n FROM {table} WHERE {predicate};

-- name: describe_rule
-- What the start-up check needs to know about an extra rule's table: does it exist, the
-- type of the rule's column, whether it has the `id` the batches select on, and whether
-- this role may delete from it.
SELECT c.oid IS NOT NULL AS table_exists,
       (SELECT a.atttypid::regtype::text
          FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attname = %(column)s
           AND a.attnum > 0 AND NOT a.attisdropped) AS column_type,
       EXISTS (SELECT 1
                 FROM pg_attribute a
                WHERE a.attrelid = c.oid AND a.attname = 'id'
                  AND a.attnum > 0 AND NOT a.attisdropped) AS has_id,
       coalesce(has_table_privilege(c.oid, 'DELETE'), false) AS can_delete
  FROM (SELECT to_regclass(%(relation)s)::oid AS oid) AS c;
