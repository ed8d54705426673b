-- The trade_history consumer's tables (consumers/trades.py).
--
-- Orders snapshots are deltas (every order updated since the previous fetch, with all its
-- executions), so an order is kept at its newest broker updated_at and every execution once
-- (primary key: the broker's execution id). Closed trades are matched FIFO per account and
-- instrument, ordered by execution time then execution id, and recomputed for an instrument
-- whenever one of its executions (or an order's fees) changes, so a replay gives the same lots.

CREATE TABLE trade_orders (
    order_id            text        PRIMARY KEY,
    account             text        NOT NULL,
    asset_type          text        NOT NULL CHECK (asset_type IN ('stock', 'option')),
    symbol              text        NOT NULL,  -- stock symbol, or the option's chain symbol
    side                text,                  -- stock: buy/sell; option: NULL (see legs)
    direction           text,                  -- option: debit/credit
    state               text        NOT NULL,  -- filled, partially_filled, cancelled, failed, ...
    order_type          text,
    quantity            numeric,
    executed_quantity   numeric     NOT NULL,  -- cumulative_quantity / processed_quantity
    average_price       numeric,
    fees                numeric     NOT NULL,  -- stock: fees; option: regulatory + contract fees
    created_at          timestamptz,
    updated_at          timestamptz NOT NULL,  -- the broker's updated_at of the version kept
    fetched_at          timestamptz NOT NULL   -- fetched_at of the snapshot that brought it
);
CREATE INDEX trade_orders_account ON trade_orders (account, updated_at);
COMMENT ON TABLE trade_orders IS
    'Stock and option orders at their newest version (trade_history consumer).';

-- Every fill once. Failed and rejected orders contribute none; a cancelled order's partial
-- fills count. Option amounts include the multiplier.
CREATE TABLE trade_executions (
    execution_id        text        PRIMARY KEY,
    account             text        NOT NULL,
    order_id            text        NOT NULL,
    leg_id              text,
    asset_type          text        NOT NULL CHECK (asset_type IN ('stock', 'option')),
    instrument_key      text        NOT NULL,  -- stock: instrument id; option: option id
    symbol              text        NOT NULL,
    option_type         text,
    strike              numeric,
    expiration          date,
    position_effect     text,                  -- option: open/close
    side                text        NOT NULL CHECK (side IN ('buy', 'sell')),
    quantity            numeric     NOT NULL,
    price               numeric     NOT NULL,  -- per share (option premium per share)
    multiplier          numeric     NOT NULL,  -- 1 for stock, trade_value_multiplier for options
    amount              numeric     NOT NULL,  -- price * quantity * multiplier
    fees                numeric     NOT NULL,  -- this fill's share of the order's fees
    executed_at         timestamptz NOT NULL,
    trade_date          date        NOT NULL,  -- America/New_York date of executed_at
    settlement_date     date
);
CREATE INDEX trade_executions_instrument ON trade_executions (account, instrument_key, executed_at, execution_id);
CREATE INDEX trade_executions_order ON trade_executions (order_id);
COMMENT ON TABLE trade_executions IS
    'Every execution (fill) of stock and option orders, once (trade_history consumer).';

-- Closed trades: FIFO matches of a closing fill against the oldest open lots. A close with no
-- lot left (history before the first synced order) has open_execution_id, cost_basis and
-- realized_pnl NULL: the basis is unknown.
CREATE TABLE closed_trades (
    close_execution_id  text        NOT NULL,
    seq                 integer     NOT NULL,  -- 1.. per closing fill, in FIFO order
    open_execution_id   text,
    account             text        NOT NULL,
    asset_type          text        NOT NULL,
    instrument_key      text        NOT NULL,
    symbol              text        NOT NULL,
    option_type         text,
    strike              numeric,
    expiration          date,
    direction           text        NOT NULL CHECK (direction IN ('long', 'short')),
    quantity            numeric     NOT NULL,
    multiplier          numeric     NOT NULL,
    open_price          numeric,
    close_price         numeric     NOT NULL,
    opened_at           timestamptz,
    closed_at           timestamptz NOT NULL,
    proceeds            numeric,               -- long: sale amount; short: premium received
    cost_basis          numeric,               -- long: purchase amount; short: buy-back amount
    fees                numeric     NOT NULL,  -- the lot's share of the open and close fees
    realized_pnl        numeric,               -- proceeds - cost_basis - fees
    holding_days        integer,
    term                text,                  -- short / long (held more than one year)
    tax_year            integer     NOT NULL,  -- America/New_York year of closed_at
    PRIMARY KEY (close_execution_id, seq)
);
CREATE INDEX closed_trades_year ON closed_trades (tax_year, account);
COMMENT ON TABLE closed_trades IS
    'Closed trades matched FIFO with realized P&L per lot (trade_history consumer).';

-- What is left open after FIFO matching, per opening fill.
CREATE TABLE open_lots (
    open_execution_id   text        PRIMARY KEY,
    account             text        NOT NULL,
    asset_type          text        NOT NULL,
    instrument_key      text        NOT NULL,
    symbol              text        NOT NULL,
    direction           text        NOT NULL CHECK (direction IN ('long', 'short')),
    quantity            numeric     NOT NULL,  -- remaining
    price               numeric     NOT NULL,
    multiplier          numeric     NOT NULL,
    fees                numeric     NOT NULL,  -- the remaining quantity's share of the open fees
    opened_at           timestamptz NOT NULL
);
CREATE INDEX open_lots_instrument ON open_lots (account, instrument_key);
COMMENT ON TABLE open_lots IS
    'Open FIFO lots left after matching (trade_history consumer).';

-- The tax-year report behind "brokersync export trades".
CREATE VIEW trade_tax_lots AS
SELECT c.tax_year, c.account, c.asset_type, c.symbol,
       CASE WHEN c.asset_type = 'option'
            THEN c.symbol || ' ' || to_char(c.expiration, 'YYYY-MM-DD') || ' '
                 || upper(left(c.option_type, 1)) || trim_scale(c.strike)::text
            ELSE c.symbol END AS description,
       c.direction, c.quantity, c.multiplier,
       c.opened_at, c.closed_at, c.open_price, c.close_price,
       c.proceeds, c.cost_basis, c.fees, c.realized_pnl, c.holding_days, c.term,
       c.open_execution_id, c.close_execution_id, c.seq
FROM closed_trades c;
COMMENT ON VIEW trade_tax_lots IS
    'Closed trades per tax year with proceeds, basis, fees and realized P&L (brokersync export trades).';
