-- The producer's own state: the instrument cache, per-account order watermarks and extra
-- columns on producer_cycle_runs (clock drift, shape drift, HTTP status per failure).

-- Instrument lookups (stock /instruments/{id}/ and option /options/instruments/{id}/) are
-- cached here instead of being fetched every cycle: instruments do not change in ways the
-- snapshots depend on, and the raw object is copied into each positions snapshot from here.
CREATE TABLE producer_instruments (
    url         text PRIMARY KEY,
    kind        text        NOT NULL CHECK (kind IN ('stock', 'option')),
    symbol      text,
    payload     jsonb       NOT NULL,
    fetched_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE producer_instruments IS
    'The producer''s instrument cache: raw broker instrument objects by URL (stock and option).';

-- Orders are fetched incrementally (updated_at[gte] = watermark). The watermark moves only
-- after the orders snapshot that covers it is stored, in the same transaction.
CREATE TABLE producer_order_watermarks (
    account     text        NOT NULL,
    kind        text        NOT NULL,
    updated_gte timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, kind)
);
COMMENT ON TABLE producer_order_watermarks IS
    'Per account and order kind: the updated_at[gte] the next incremental orders fetch asks for.';

ALTER TABLE producer_cycle_runs
    ADD COLUMN clock_drift_s double precision,
    ADD COLUMN shape_drift   jsonb NOT NULL DEFAULT '{}'::jsonb;
COMMENT ON COLUMN producer_cycle_runs.clock_drift_s IS
    'Local clock minus the broker''s Date header, seconds (positive: we are ahead).';
COMMENT ON COLUMN producer_cycle_runs.shape_drift IS
    'Per endpoint: fields the consumers rely on that a live response lacked.';

CREATE VIEW producer_kind_outcomes AS
SELECT r.id AS cycle_id, r.started_at, o.key AS kind, o.value ->> 'status' AS status,
       o.value ->> 'error' AS error, (o.value ->> 'http_status')::int AS http_status,
       (o.value ->> 'snapshots')::int AS snapshots
FROM producer_cycle_runs r, jsonb_each(r.outcomes) o;
COMMENT ON VIEW producer_kind_outcomes IS
    'One row per producer cycle and kind: ok / failed / unchanged, HTTP status, error text.';
