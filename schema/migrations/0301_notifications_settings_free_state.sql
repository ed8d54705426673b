-- The notifications consumer's rule state no longer depends on the thresholds in the settings,
-- so a replay rebuilds it row for row even when it runs with other settings than live did:
-- * notify_positions keeps the last unrealized P&L % (the band is computed from it and the
--   threshold when an event arrives) instead of the band itself;
-- * notify_accounts keeps only the buying power (under the floor or not is computed from the
--   previous value and the floor when an event arrives).
ALTER TABLE notify_positions ADD COLUMN pnl_pct numeric;
ALTER TABLE notify_positions DROP COLUMN pnl_band;
ALTER TABLE notify_accounts DROP COLUMN below_floor;
COMMENT ON COLUMN notify_positions.pnl_pct IS
    'Unrealized P&L % at the last price seen (stocks: quotes; options: mark); NULL until priced.';
