-- The event log (staging table), consumer cursors, dead letters and producer cycles.
--
-- Gap-safe reading: every row records the id of the transaction that inserted it
-- (tx_id, a 64-bit xid8 that never wraps). Consumers read in (tx_id, id) order and only rows
-- whose transaction is older than the oldest transaction still running
-- (pg_snapshot_xmin(pg_current_snapshot())). No row can later appear below that horizon, so a
-- cursor (tx_id, id) never steps over a row whose transaction commits after a later id's.

CREATE TABLE staging_snapshots (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx_id       xid8        NOT NULL DEFAULT pg_current_xact_id(),
    account     text        NOT NULL,
    kind        text        NOT NULL,
    source      text        NOT NULL,
    fetched_at  timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    cycle_id    bigint,
    -- The broker's JSON as parsed by PostgreSQL (values and strings exact; jsonb drops
    -- insignificant whitespace and duplicate keys). A body that is not valid JSON is kept
    -- verbatim in raw_body with payload NULL, so nothing the broker sent is ever lost.
    payload     jsonb,
    raw_body    text,
    CONSTRAINT staging_snapshots_body_present CHECK (payload IS NOT NULL OR raw_body IS NOT NULL)
);
CREATE INDEX staging_snapshots_log_order ON staging_snapshots (tx_id, id);
CREATE INDEX staging_snapshots_kind_account ON staging_snapshots (kind, account, fetched_at);
CREATE INDEX staging_snapshots_fetched_at ON staging_snapshots (fetched_at);
COMMENT ON TABLE staging_snapshots IS
    'The event log: one raw broker snapshot per row. Append-only (see brokersync retention).';

-- Append-only: updates, deletes and truncation are refused unless the documented retention
-- command sets brokersync.retention = on for its own transaction.
CREATE FUNCTION staging_snapshots_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('brokersync.retention', true), '') <> 'on' THEN
        RAISE EXCEPTION 'staging_snapshots is append-only (% refused); use "brokersync retention"', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER staging_snapshots_no_update BEFORE UPDATE ON staging_snapshots
    FOR EACH ROW EXECUTE FUNCTION staging_snapshots_append_only();
CREATE TRIGGER staging_snapshots_no_delete BEFORE DELETE ON staging_snapshots
    FOR EACH ROW EXECUTE FUNCTION staging_snapshots_append_only();
CREATE TRIGGER staging_snapshots_no_truncate BEFORE TRUNCATE ON staging_snapshots
    FOR EACH STATEMENT EXECUTE FUNCTION staging_snapshots_append_only();

-- NOTIFY is a wake-up, never the data: ids and kind only (payloads are capped at 8000 bytes
-- and lost while nobody listens; consumers also poll).
CREATE FUNCTION staging_snapshots_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('brokersync_events',
        json_build_object('id', NEW.id, 'kind', NEW.kind, 'account', NEW.account)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER staging_snapshots_notify AFTER INSERT ON staging_snapshots
    FOR EACH ROW EXECUTE FUNCTION staging_snapshots_notify();

CREATE TABLE consumer_cursors (
    consumer       text PRIMARY KEY,
    kinds          text[]      NOT NULL DEFAULT '{}',
    tx_id          xid8        NOT NULL DEFAULT '0',
    last_id        bigint      NOT NULL DEFAULT 0,
    applied_count  bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    last_applied_at timestamptz,
    last_error     text,
    last_error_at  timestamptz,
    heartbeat_at   timestamptz,
    pid            integer,
    host           text,
    replay_started_at timestamptz,
    replay_target_id  bigint
);
COMMENT ON TABLE consumer_cursors IS
    'Each consumer''s durable position in the event log, in (tx_id, id) order.';

CREATE TABLE consumer_dead_letters (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer      text        NOT NULL,
    event_id      bigint      NOT NULL REFERENCES staging_snapshots (id),
    error         text        NOT NULL,
    attempts      integer     NOT NULL,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    retry_requested_at timestamptz,
    resolved_at   timestamptz,
    UNIQUE (consumer, event_id)
);
COMMENT ON TABLE consumer_dead_letters IS
    'Events a consumer could not apply after its retries; "brokersync dlq retry" re-applies them.';

CREATE TABLE producer_cycle_runs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at  timestamptz,
    source       text        NOT NULL,
    status       text        NOT NULL DEFAULT 'running'
                 CHECK (status IN ('running', 'ok', 'partial', 'failed')),
    outcomes     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    snapshots    integer     NOT NULL DEFAULT 0,
    broker_calls integer     NOT NULL DEFAULT 0,
    error        text,
    host         text,
    pid          integer
);
CREATE INDEX producer_cycle_runs_started ON producer_cycle_runs (started_at DESC);
COMMENT ON TABLE producer_cycle_runs IS
    'One row per producer cycle: per-kind outcome (ok/failed/skipped), errors, counts.';

-- ---- views for psql (\dv explains them) ---------------------------------------------------
CREATE VIEW event_log AS
SELECT s.id, s.account, s.kind, s.source, s.fetched_at, s.recorded_at, s.cycle_id,
       octet_length(coalesce(s.payload::text, s.raw_body)) AS size_bytes,
       (s.payload IS NULL) AS malformed,
       s.payload
FROM staging_snapshots s;
COMMENT ON VIEW event_log IS
    'Every raw broker snapshot: id, account, kind, source, fetched time, size. ORDER BY id DESC for the recent ones.';

CREATE VIEW consumer_lag AS
SELECT c.consumer,
       c.last_id                          AS cursor_id,
       (SELECT max(id) FROM staging_snapshots) AS log_head_id,
       (SELECT count(*) FROM staging_snapshots s
         WHERE (s.tx_id, s.id) > (c.tx_id, c.last_id)
           AND (cardinality(c.kinds) = 0 OR s.kind = ANY (c.kinds))) AS events_behind,
       now() - (SELECT min(s.recorded_at) FROM staging_snapshots s
         WHERE (s.tx_id, s.id) > (c.tx_id, c.last_id)
           AND (cardinality(c.kinds) = 0 OR s.kind = ANY (c.kinds))) AS oldest_pending_age,
       c.applied_count,
       c.last_applied_at,
       c.heartbeat_at,
       (SELECT count(*) FROM consumer_dead_letters d
         WHERE d.consumer = c.consumer AND d.resolved_at IS NULL) AS dead_letters,
       c.last_error,
       c.last_error_at,
       c.kinds
FROM consumer_cursors c;
COMMENT ON VIEW consumer_lag IS
    'Each consumer: its cursor, how many events of its kinds it has not applied yet, dead letters, last error.';

CREATE VIEW dead_letters AS
SELECT d.id, d.consumer, d.event_id, s.kind, s.account, s.fetched_at,
       d.attempts, d.error, d.first_failed_at, d.last_failed_at,
       d.retry_requested_at, d.resolved_at,
       CASE WHEN d.resolved_at IS NOT NULL THEN 'resolved'
            WHEN d.retry_requested_at IS NOT NULL THEN 'retry requested'
            ELSE 'dead' END AS state
FROM consumer_dead_letters d
JOIN staging_snapshots s ON s.id = d.event_id;
COMMENT ON VIEW dead_letters IS
    'Events a consumer gave up on, with the error; "brokersync dlq retry" re-applies them.';

CREATE VIEW producer_cycles AS
SELECT r.id, r.started_at, r.finished_at, r.finished_at - r.started_at AS duration,
       r.source, r.status, r.snapshots, r.broker_calls, r.outcomes, r.error
FROM producer_cycle_runs r;
COMMENT ON VIEW producer_cycles IS
    'The producer''s cycles, newest last: status, duration, per-kind outcome, error text.';
