-- Reference app tables (README, "Command line"). The app owns these in production; `worker
-- migrate --app-tables` creates the missing ones for local use, demos and tests.
CREATE TABLE IF NOT EXISTS tavily_api_keys (
    id              bigserial PRIMARY KEY,
    api_key         text        NOT NULL UNIQUE,
    plan_limit      integer     NOT NULL DEFAULT 0,
    remaining_quota integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS refresh_tokens (
    id         bigserial PRIMARY KEY,
    user_id    bigint      NOT NULL,
    token_hash text        NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS refresh_tokens_expires_idx ON refresh_tokens (expires_at);

CREATE TABLE IF NOT EXISTS password_reset_tokens (
    id         bigserial PRIMARY KEY,
    user_id    bigint      NOT NULL,
    token_hash text        NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS password_reset_tokens_expires_idx ON password_reset_tokens (expires_at);

CREATE TABLE IF NOT EXISTS scrape_sessions (
    id         bigserial PRIMARY KEY,
    url        text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS scrape_sessions_created_idx ON scrape_sessions (created_at);

CREATE TABLE IF NOT EXISTS reddit_posts (
    id         bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS reddit_posts_created_idx ON reddit_posts (created_at);

CREATE TABLE IF NOT EXISTS reddit_comments (
    id         bigserial PRIMARY KEY,
    post_id    bigint      NOT NULL REFERENCES reddit_posts (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS reddit_comments_created_idx ON reddit_comments (created_at);
CREATE INDEX IF NOT EXISTS reddit_comments_post_idx ON reddit_comments (post_id);

CREATE TABLE IF NOT EXISTS campaigns (
    id            bigserial PRIMARY KEY,
    user_id       bigint      NOT NULL,
    name          text        NOT NULL,
    is_active     boolean     NOT NULL DEFAULT true,
    low_watermark integer     NOT NULL DEFAULT 0,
    target_stock  integer     NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS campaign_stock (
    id           bigserial PRIMARY KEY,
    campaign_id  bigint      NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    payload      text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    leased_until timestamptz,
    lease_owner  text,
    consumed_at  timestamptz
);
-- Each campaign's stock version is max(id): this index answers it without reading history.
CREATE INDEX IF NOT EXISTS campaign_stock_campaign_id_idx ON campaign_stock (campaign_id, id);
CREATE INDEX IF NOT EXISTS campaign_stock_available_idx ON campaign_stock (campaign_id) WHERE consumed_at IS NULL;
CREATE INDEX IF NOT EXISTS campaign_stock_lease_idx ON campaign_stock (leased_until)
    WHERE consumed_at IS NULL AND leased_until IS NOT NULL;
