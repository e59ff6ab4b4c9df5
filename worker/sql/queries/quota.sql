-- Tavily API keys whose quota the quota job refreshes.

-- name: count_quota_keys
SELECT count(*) AS n FROM tavily_api_keys WHERE remaining_quota <= plan_limit;

-- name: fetch_quota_keys_page
-- Keyset pagination: keys are streamed a page at a time, no transaction held open.
SELECT id, api_key, remaining_quota, plan_limit
  FROM tavily_api_keys
 WHERE remaining_quota <= plan_limit AND id > %(after_id)s
 ORDER BY id
 LIMIT %(limit)s;

-- name: update_key_quota
UPDATE tavily_api_keys
   SET remaining_quota = %(remaining_quota)s, plan_limit = %(plan_limit)s, updated_at = now()
 WHERE id = %(id)s;
