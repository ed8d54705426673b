-- The positions consumer's tables (consumers/positions.py). Every column derives from the
-- events: times are the snapshot's fetched_at, never the moment it was applied, so
-- "brokersync replay positions" rebuilds these tables row for row.

-- Open stock positions: one row per account and instrument. A stock_positions snapshot is the
-- full state of its account: instruments absent from it are removed (closed).
CREATE TABLE positions (
    account            text        NOT NULL,
    instrument_id      text        NOT NULL,
    symbol             text        NOT NULL,
    quantity           numeric     NOT NULL,
    average_cost       numeric     NOT NULL,  -- per share (Robinhood average_buy_price)
    cost_basis         numeric     NOT NULL,  -- quantity * average_cost
    last_price         numeric,               -- last_trade_price of the newest quotes snapshot
    price_at           timestamptz,           -- fetched_at of that quotes snapshot
    market_value       numeric,               -- quantity * last_price
    unrealized_pnl     numeric,               -- market_value - cost_basis
    unrealized_pnl_pct numeric,               -- unrealized_pnl / cost_basis * 100
    updated_at         timestamptz NOT NULL,  -- fetched_at of the positions snapshot
    PRIMARY KEY (account, instrument_id)
);
CREATE INDEX positions_symbol ON positions (symbol);
COMMENT ON TABLE positions IS
    'Open stock positions per account, valued at the latest quote (positions consumer).';

-- Open option positions: one row per account and option contract (a leg of an aggregate
-- position). average_price is the premium per share (average_open_price / multiplier);
-- multi-leg strategies have no per-leg average price from the broker, so theirs is NULL.
CREATE TABLE option_positions (
    account            text        NOT NULL,
    option_id          text        NOT NULL,
    position_id        text        NOT NULL,  -- the aggregate position's id
    chain_symbol       text        NOT NULL,
    strategy           text,
    option_type        text        NOT NULL CHECK (option_type IN ('call', 'put')),
    direction          text        NOT NULL CHECK (direction IN ('long', 'short')),
    strike             numeric     NOT NULL,
    expiration         date        NOT NULL,
    quantity           numeric     NOT NULL,  -- contracts
    multiplier         numeric     NOT NULL,  -- trade_value_multiplier, usually 100
    average_price      numeric,               -- premium per share paid (long) or received (short)
    mark               numeric,               -- mark_price per share from marketdata
    delta              numeric,
    gamma              numeric,
    theta              numeric,
    vega               numeric,
    rho                numeric,
    implied_volatility numeric,
    market_value       numeric,               -- mark * quantity * multiplier, negative when short
    unrealized_pnl     numeric,
    unrealized_pnl_pct numeric,
    days_to_expiration integer     NOT NULL,  -- expiration - market day of the snapshot
    updated_at         timestamptz NOT NULL,
    PRIMARY KEY (account, option_id)
);
CREATE INDEX option_positions_expiration ON option_positions (expiration);
COMMENT ON TABLE option_positions IS
    'Open option positions per account with mark and Greeks (positions consumer).';

-- The newest snapshot applied per account and kind: an older one arriving late is ignored.
CREATE TABLE positions_snapshot_marks (
    account     text        NOT NULL,
    kind        text        NOT NULL,
    fetched_at  timestamptz NOT NULL,
    event_id    bigint      NOT NULL,
    PRIMARY KEY (account, kind)
);
COMMENT ON TABLE positions_snapshot_marks IS
    'positions consumer: fetched_at of the newest snapshot applied per account and kind.';

-- The positions consumer's own copy of the last trade price per symbol (from quotes).
CREATE TABLE positions_last_prices (
    symbol      text        PRIMARY KEY,
    price       numeric     NOT NULL,
    quoted_at   timestamptz,             -- the quote's updated_at
    fetched_at  timestamptz NOT NULL     -- the quotes snapshot's fetched_at
);
COMMENT ON TABLE positions_last_prices IS
    'positions consumer: last trade price per symbol from the newest quotes snapshot.';
