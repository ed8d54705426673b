-- balances: the daily row is maintained incrementally (each new equity reading adjusts it) instead
-- of being recomputed from all of the day's readings, which made a replay quadratic per day.
-- Still independent of arrival order: the open and the previous close belong to the earliest
-- reading by (fetched_at, event id), the close to the latest, and each reading counts once
-- (balance_equity_samples guards against re-application).
--
-- The balances tables are derived data: they are emptied here and the consumer's cursor removed,
-- so the next "brokersync consumer balances" rebuilds them from the event log.

TRUNCATE trading_accounts, balance_equity_samples, daily_portfolio_balances;
DELETE FROM consumer_cursors WHERE consumer = 'balances';

ALTER TABLE daily_portfolio_balances
    ADD COLUMN first_event_id bigint NOT NULL,
    ADD COLUMN last_event_id  bigint NOT NULL,
    DROP COLUMN change,
    DROP COLUMN change_pct;
ALTER TABLE daily_portfolio_balances
    ADD COLUMN change numeric GENERATED ALWAYS AS (close_equity - previous_close) STORED,
    ADD COLUMN change_pct numeric GENERATED ALWAYS AS (
        CASE WHEN previous_close <> 0
             THEN round((close_equity - previous_close) / previous_close * 100, 4) END) STORED;
COMMENT ON COLUMN daily_portfolio_balances.change IS 'close_equity - previous_close';
COMMENT ON COLUMN daily_portfolio_balances.change_pct IS 'change / previous_close * 100, 4 places';
