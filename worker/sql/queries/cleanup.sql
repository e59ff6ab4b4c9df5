-- Retention cleanup (worker/jobs/cleanup.py). Every statement a rule runs is here, whole. Their
-- placeholders: `{table}` and `{column}` are the rule's table and column, quoted with
-- psycopg.sql.Identifier (never text from configuration); `{kept}` is the condition of rows the
-- rule never deletes: `false` for every rule but worker_job_runs', whose is `running_run` below.
-- The cutoff is computed by PostgreSQL (`now() - make_interval(days => %(days)s)`), never by
-- the process clock, and every DELETE checks the rule's condition itself: a row the app
-- extended since a batch was planned is not deleted.

-- name: running_run
-- A `running` row is the live record of a run in progress (or of a dead process whose row the
-- next run marks `abandoned`): it is never retention's to delete.
status = 'running'

-- name: describe_table
-- What choosing a walk needs to know about the rule's table: whether it exists, its size in
-- blocks now, and whether a valid btree index without a WHERE clause leads with the rule's
-- column. A partitioned table's size is its largest partition's: a TID range applies to every
-- partition alike.
SELECT c.oid IS NOT NULL AS present,
       greatest(pg_relation_size(c.oid),
                (SELECT max(pg_relation_size(p.relid))
                   FROM pg_partition_tree(c.oid) AS p
                  WHERE p.isleaf)) / current_setting('block_size')::bigint AS blocks,
       EXISTS (SELECT 1
                 FROM pg_index AS i
                 JOIN pg_class AS ic ON ic.oid = i.indexrelid
                 JOIN pg_am AS am ON am.oid = ic.relam
                 JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                WHERE i.indrelid = c.oid AND a.attname = %(column)s
                  AND i.indisvalid AND i.indpred IS NULL AND am.amname = 'btree') AS indexed
  FROM (SELECT to_regclass(%(relation)s)::oid AS oid) AS c;

-- name: estimate_matching
-- The planner's estimate of how many rows the rule matches now (EXPLAIN plans, runs nothing).
EXPLAIN (FORMAT JSON)
SELECT 1
  FROM {table}
 WHERE {column} < now() - make_interval(days => %(days)s)
   AND NOT ({kept});

-- name: estimate_rows
-- The planner's estimate of the table's rows now: its last ANALYZE's density times its size.
EXPLAIN (FORMAT JSON)
SELECT 1 FROM {table};

-- name: batch_settings
-- Inside a batch's transaction, both transaction-local. A lock wait longer than
-- `lock_timeout` fails the batch (it rolls back alone) rather than making the app's requests
-- queue behind our DELETE. The COMMIT returns without waiting for the WAL to reach disk (or
-- a synchronous standby): a crash in that instant can undo the last batches' deletes, whose
-- rows still match the rule, so the next run deletes them again. Waiting for that flush on
-- every batch cost more than any other per-batch step.
SELECT set_config('lock_timeout', %(lock_timeout)s, true),
       set_config('synchronous_commit', 'off', true);

-- name: delete_blocks
-- One batch of the block walk: the rows the rule matches in the blocks `first_tid` (`(n,0)`,
-- before every row of block n) up to, not including, `end_tid`. A TID range scan (PostgreSQL
-- 14+) reads just those blocks, in the table's own order, as one DELETE's sequential scan
-- would, and needs no index: the walk for rules that match many of the table's rows.
DELETE FROM {table}
 WHERE ctid >= %(first_tid)s::tid
   AND ctid < %(end_tid)s::tid
   AND {column} < now() - make_interval(days => %(days)s)
   AND NOT ({kept});

-- name: delete_indexed
-- One batch of the index walk: the next `limit` rows the rule matches in the order of the
-- rule column's index, from the previous batch's last value on (`from_value`; `-infinity` for
-- the first batch), deleted by their tids in the same statement. Only matching rows are read:
-- the walk for rules that match few of the table's rows. Rows of the previous batch at its last
-- value are gone, so starting at that value (not after it) skips none that tie with it. Fewer
-- than `limit` matched: this was the final batch.
WITH batch AS MATERIALIZED (
    SELECT ctid AS row_tid, {column} AS value
      FROM {table}
     WHERE {column} >= %(from_value)s
       AND {column} < now() - make_interval(days => %(days)s)
       AND NOT ({kept})
     ORDER BY {column}
     LIMIT %(limit)s
), gone AS (
    DELETE FROM {table}
     WHERE ctid = ANY(ARRAY(SELECT row_tid FROM batch))
       AND {column} < now() - make_interval(days => %(days)s)
       AND NOT ({kept})
    RETURNING 1
)
SELECT (SELECT max(value) FROM batch) AS last_value,
       (SELECT count(*) FROM batch) AS matched,
       (SELECT count(*) FROM gone) AS deleted;

-- name: count_rows
-- What a dry run reports: the rows the rule would delete now.
SELECT count(*) AS n
  FROM {table}
 WHERE {column} < now() - make_interval(days => %(days)s)
   AND NOT ({kept});

-- name: describe_rule
-- What the start-up check needs to know about an extra rule's relation: does it exist, is it a
-- table (batches walk its blocks or delete by tid), the type of the rule's column, and whether
-- this role may delete from it.
SELECT c.oid IS NOT NULL AS table_exists,
       (SELECT r.relkind IN ('r', 'p') FROM pg_class AS r WHERE r.oid = c.oid) AS is_table,
       (SELECT a.atttypid::regtype::text
          FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attname = %(column)s
           AND a.attnum > 0 AND NOT a.attisdropped) AS column_type,
       coalesce(has_table_privilege(c.oid, 'DELETE'), false) AS can_delete
  FROM (SELECT to_regclass(%(relation)s)::oid AS oid) AS c;
