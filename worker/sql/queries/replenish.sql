-- Campaign stock: the replenish pass and lease recovery.
-- Available stock = not consumed and not under an unexpired lease (an expired lease counts
-- as available: lease_recovery releases it soon anyway).

-- name: fetch_low_stock
-- One scan of campaign_stock; stock_version covers every row ever inserted (consumed ones
-- too), so it only moves when stock is added and a crashed run repeats its Idempotency-Key.
WITH stock AS (
    SELECT campaign_id,
           count(*) FILTER (
               WHERE consumed_at IS NULL AND (leased_until IS NULL OR leased_until <= now())
           ) AS available,
           max(id) AS stock_version
      FROM campaign_stock
     GROUP BY campaign_id
)
SELECT c.id, c.user_id, c.name, c.low_watermark, c.target_stock,
       coalesce(s.available, 0)::integer AS available,
       (c.target_stock - coalesce(s.available, 0))::integer AS quantity,
       coalesce(s.stock_version, 0)::bigint AS stock_version
  FROM campaigns c
  LEFT JOIN stock s ON s.campaign_id = c.id
 WHERE c.is_active
   AND coalesce(s.available, 0) < c.low_watermark
   AND coalesce(s.available, 0) < c.target_stock
 ORDER BY coalesce(s.available, 0)::numeric / nullif(c.target_stock, 0), c.id;

-- name: lock_active_campaign
-- Held until the campaign's write commits: two replicas (or a replica and the app adding
-- stock, whose foreign key check needs this row) take turns on one campaign.
SELECT id FROM campaigns WHERE id = %(campaign_id)s AND is_active FOR UPDATE;

-- name: current_stock_version
-- A statement of its own after the lock, so it sees whatever the previous holder committed.
SELECT coalesce(max(id), 0)::bigint AS stock_version
  FROM campaign_stock
 WHERE campaign_id = %(campaign_id)s;

-- name: insert_campaign_stock
INSERT INTO campaign_stock (campaign_id, payload)
SELECT %(campaign_id)s, payload
  FROM unnest(%(payloads)s::text[]) WITH ORDINALITY AS item(payload, n)
 ORDER BY n;

-- name: count_expired_leases
SELECT count(*) AS n
  FROM campaign_stock
 WHERE consumed_at IS NULL AND leased_until < now();

-- name: release_expired_leases
-- The outer conditions repeat the inner ones on purpose: if the app confirms or renews a
-- lease while this runs, PostgreSQL re-checks them on the row's new version and skips it.
UPDATE campaign_stock
   SET leased_until = NULL, lease_owner = NULL
 WHERE id = ANY(ARRAY(
           SELECT id
             FROM campaign_stock
            WHERE consumed_at IS NULL AND leased_until < now()
            LIMIT %(limit)s
              FOR UPDATE SKIP LOCKED))
   AND consumed_at IS NULL
   AND leased_until < now();
