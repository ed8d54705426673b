-- The cache_invalidation consumer's tables (consumers/cache.py).
--
-- A version per cache key (positions, balances, trades) and account, bumped when the content of
-- a snapshot feeding that key changed; each bump sends
--   NOTIFY brokersync_cache, '{"key": "positions", "account": "5QR12345", "version": 7, "event_id": 123}'
-- on commit. Account '*' (quotes) means every account's entry for that key.

CREATE TABLE cache_versions (
    cache_key   text        NOT NULL CHECK (cache_key IN ('positions', 'balances', 'trades')),
    account     text        NOT NULL,
    version     bigint      NOT NULL,
    changed_at  timestamptz NOT NULL,  -- fetched_at of the snapshot that changed it
    event_id    bigint      NOT NULL,
    PRIMARY KEY (cache_key, account)
);
COMMENT ON TABLE cache_versions IS
    'Cache version per key and account; dashboards LISTEN on brokersync_cache (cache_invalidation consumer).';

-- The content hash of the newest snapshot per kind and account ("did it change?").
CREATE TABLE cache_content_hashes (
    kind        text        NOT NULL,
    account     text        NOT NULL,
    content_hash text       NOT NULL,
    fetched_at  timestamptz NOT NULL,
    PRIMARY KEY (kind, account)
);
COMMENT ON TABLE cache_content_hashes IS
    'cache_invalidation consumer: content hash of the newest snapshot per kind and account.';
