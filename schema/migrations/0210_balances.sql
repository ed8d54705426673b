-- The balances consumer's tables (consumers/balances.py).
--
-- Day boundary: a "market day" is the calendar date of fetched_at in America/New_York (the US
-- market's time zone, daylight saving included), so 01:00 UTC belongs to the previous day.

-- Latest balances per account. The account and portfolio snapshots arrive separately; each
-- half only moves forward in fetched_at (an older snapshot never overwrites a newer one).
CREATE TABLE trading_accounts (
    account                 text PRIMARY KEY,
    account_type            text,          -- cash / margin
    buying_power            numeric,
    cash                    numeric,
    cash_available_for_withdrawal numeric,
    cash_held_for_orders    numeric,
    unsettled_funds         numeric,
    account_fetched_at      timestamptz,   -- fetched_at of the account snapshot applied
    portfolio_value         numeric,       -- market value of the holdings (portfolio market_value)
    equity                  numeric,       -- holdings + cash (portfolio equity)
    extended_hours_equity   numeric,
    equity_previous_close   numeric,
    portfolio_fetched_at    timestamptz,   -- fetched_at of the portfolio snapshot applied
    updated_at              timestamptz NOT NULL  -- the newer of the two fetched times
);
COMMENT ON TABLE trading_accounts IS
    'Latest buying power, cash, portfolio value and equity per account (balances consumer).';

-- Every portfolio equity reading; the daily rows are aggregated from these, so the result does
-- not depend on the order in which snapshots arrived.
CREATE TABLE balance_equity_samples (
    account        text        NOT NULL,
    event_id       bigint      NOT NULL,
    fetched_at     timestamptz NOT NULL,
    market_day     date        NOT NULL,
    equity         numeric     NOT NULL,
    previous_close numeric,                -- the broker's adjusted equity at the previous close
    PRIMARY KEY (account, event_id)
);
CREATE INDEX balance_equity_samples_day ON balance_equity_samples (account, market_day, fetched_at);
COMMENT ON TABLE balance_equity_samples IS
    'balances consumer: each portfolio snapshot''s equity, by US market day.';

-- One row per account per market day.
CREATE TABLE daily_portfolio_balances (
    account        text        NOT NULL,
    market_day     date        NOT NULL,   -- America/New_York date of fetched_at
    open_equity    numeric     NOT NULL,   -- equity at the day's earliest snapshot
    high_equity    numeric     NOT NULL,
    low_equity     numeric     NOT NULL,
    close_equity   numeric     NOT NULL,   -- equity at the day's latest snapshot
    previous_close numeric     NOT NULL,   -- broker's previous close at the day's first snapshot (else open_equity)
    change         numeric     NOT NULL,   -- close_equity - previous_close
    change_pct     numeric,                -- change / previous_close * 100
    samples        integer     NOT NULL,
    first_at       timestamptz NOT NULL,
    last_at        timestamptz NOT NULL,
    PRIMARY KEY (account, market_day)
);
COMMENT ON TABLE daily_portfolio_balances IS
    'Open/high/low/close equity and the day''s change per account per US market day (balances consumer).';
