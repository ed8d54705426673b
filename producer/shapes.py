"""Shape drift: the fields the consumers rely on, per response, and a check for them.

A live response that lacks one of these is still stored (it is what the broker said), but the
cycle row records the missing fields per endpoint and the producer logs a warning, so a
changed API is noticed before the consumers fail on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

REQUIRED: dict[str, frozenset[str]] = {
    "accounts": frozenset({"url", "account_number", "type", "cash", "buying_power", "portfolio_cash"}),
    "portfolios": frozenset({"url", "account", "equity", "market_value", "equity_previous_close"}),
    "positions": frozenset({"url", "instrument", "account_number", "quantity", "average_buy_price",
                            "updated_at"}),
    "instruments": frozenset({"id", "url", "symbol", "name", "type"}),
    "quotes": frozenset({"symbol", "instrument", "last_trade_price", "bid_price", "ask_price",
                         "previous_close", "updated_at"}),
    "option_positions": frozenset({"id", "account_number", "symbol", "quantity", "average_open_price",
                                   "trade_value_multiplier", "legs"}),
    "option_instruments": frozenset({"id", "url", "chain_symbol", "type", "strike_price",
                                     "expiration_date"}),
    "option_marketdata": frozenset({"instrument", "mark_price", "adjusted_mark_price", "delta",
                                    "gamma", "theta", "vega", "rho", "implied_volatility"}),
    "stock_orders": frozenset({"id", "account", "instrument", "state", "side", "type", "quantity",
                               "cumulative_quantity", "average_price", "fees", "executions",
                               "created_at", "updated_at"}),
    "option_orders": frozenset({"id", "account_number", "state", "direction", "legs", "quantity",
                                "processed_quantity", "premium", "created_at", "updated_at"}),
}


def missing_fields(endpoint: str, items: Iterable[Any]) -> list[str]:
    """Required fields absent from any of ``items`` (``None`` items are skipped)."""
    need = REQUIRED[endpoint]
    missing: set[str] = set()
    for item in items:
        if isinstance(item, dict):
            missing |= need - item.keys()
    return sorted(missing)
