"""Robinhood-shaped payloads for the consumer tests.

Field names and value types follow Robinhood's API as robin_stocks returns it: numbers are
strings ("12.3400"), times ISO 8601 with ``Z``, resources linked by URL, list endpoints paginated
with ``next`` links. Each builder returns the raw object; the ``*_envelope`` helpers wrap them in
the snapshot envelope of ``schema/payloads.py``.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from schema.payloads import envelope

API = "https://api.robinhood.com"
ACCOUNT = "5QR24680"
ACCOUNT_URL = f"{API}/accounts/{ACCOUNT}/"


def uid(name: str) -> str:
    """A stable UUID for a readable name (so tests can refer to ids by name)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pages(results: list[dict[str, Any]], endpoint: str, per_page: int = 2) -> list[dict[str, Any]]:
    """Split results into Robinhood pages linked by ``next`` cursors (at least one page)."""
    chunks = [results[i:i + per_page] for i in range(0, len(results), per_page)] or [[]]
    out = []
    for i, chunk in enumerate(chunks):
        nxt = f"{API}{endpoint}?cursor=c{i + 1}" if i + 1 < len(chunks) else None
        prev = f"{API}{endpoint}?cursor=c{i - 1}" if i > 0 else None
        out.append({"next": nxt, "previous": prev, "results": chunk})
    return out


# ---- stocks -----------------------------------------------------------------------------------


def instrument(symbol: str) -> dict[str, Any]:
    iid = uid(f"instrument:{symbol}")
    return {
        "id": iid,
        "url": f"{API}/instruments/{iid}/",
        "quote": f"{API}/quotes/{symbol}/",
        "fundamentals": f"{API}/fundamentals/{symbol}/",
        "splits": f"{API}/instruments/{iid}/splits/",
        "state": "active",
        "market": f"{API}/markets/XNAS/",
        "simple_name": symbol.title(),
        "name": f"{symbol} Inc. Common Stock",
        "tradeable": True,
        "tradability": "tradable",
        "symbol": symbol,
        "bloomberg_unique": "EQ0010169500001000",
        "margin_initial_ratio": "0.5000",
        "maintenance_ratio": "0.2500",
        "country": "US",
        "day_trade_ratio": "0.2500",
        "list_date": "1990-01-02",
        "min_tick_size": None,
        "type": "stock",
        "tradable_chain_id": uid(f"chain:{symbol}"),
        "rhs_tradability": "tradable",
        "fractional_tradability": "tradable",
        "default_collar_fraction": "0.05",
    }


def stock_position(symbol: str, quantity: str, average_buy_price: str, at: datetime) -> dict[str, Any]:
    inst = instrument(symbol)
    return {
        "url": f"{API}/positions/{ACCOUNT}/{inst['id']}/",
        "instrument": inst["url"],
        "instrument_id": inst["id"],
        "account": ACCOUNT_URL,
        "account_number": ACCOUNT,
        "average_buy_price": average_buy_price,
        "pending_average_buy_price": average_buy_price,
        "quantity": quantity,
        "intraday_average_buy_price": "0.0000",
        "intraday_quantity": "0.00000000",
        "shares_available_for_exercise": quantity,
        "shares_held_for_buys": "0.00000000",
        "shares_held_for_sells": "0.00000000",
        "shares_held_for_stock_grants": "0.00000000",
        "shares_held_for_options_collateral": "0.00000000",
        "shares_held_for_options_events": "0.00000000",
        "shares_pending_from_options_events": "0.00000000",
        "shares_available_for_closing_short_position": "0.00000000",
        "ipo_allocated_quantity": "0.00000000",
        "ipo_dsp_allocated_quantity": "0.00000000",
        "avg_cost_affected": False,
        "avg_cost_affected_reason": "",
        "is_primary_account": True,
        "updated_at": iso(at),
        "created_at": "2024-01-03T15:30:00.000000Z",
    }


def stock_positions_envelope(positions: list[dict[str, Any]]) -> dict[str, Any]:
    instruments = {}
    for p in positions:
        symbol = next(s for s in _KNOWN if instrument(s)["url"] == p["instrument"])
        instruments[p["instrument"]] = instrument(symbol)
    return envelope(positions=pages(positions, "/positions/"), instruments=instruments)


_KNOWN = ("AAPL", "MSFT", "NVDA", "TSLA", "SPY", "F", "AMD")


def quote(symbol: str, last: str | None, at: datetime) -> dict[str, Any]:
    inst = instrument(symbol)
    return {
        "ask_price": last,
        "ask_size": 100,
        "bid_price": last,
        "bid_size": 200,
        "last_trade_price": last,
        "last_extended_hours_trade_price": None,
        "previous_close": "100.000000",
        "adjusted_previous_close": "100.000000",
        "previous_close_date": "2026-11-19",
        "symbol": symbol,
        "trading_halted": False,
        "has_traded": last is not None,
        "last_trade_price_source": "consolidated",
        "updated_at": iso(at).replace(".000000", ""),
        "instrument": inst["url"],
        "instrument_id": inst["id"],
        "state": "active",
    }


def quotes_envelope(quotes: list[dict[str, Any]]) -> dict[str, Any]:
    return envelope(quotes=pages(quotes, "/marketdata/quotes/", per_page=50))


# ---- options ----------------------------------------------------------------------------------


def option_instrument(symbol: str, option_type: str, strike: str, expiration: date) -> dict[str, Any]:
    oid = uid(f"option:{symbol}:{option_type}:{strike}:{expiration}")
    return {
        "chain_id": uid(f"chain:{symbol}"),
        "chain_symbol": symbol,
        "created_at": "2026-10-01T01:00:00.000000Z",
        "expiration_date": expiration.isoformat(),
        "id": oid,
        "issue_date": "2026-10-01",
        "min_ticks": {"above_tick": "0.05", "below_tick": "0.01", "cutoff_price": "3.00"},
        "rhs_tradability": "tradable",
        "state": "active",
        "strike_price": strike,
        "tradability": "tradable",
        "type": option_type,
        "updated_at": "2026-10-01T01:00:00.000000Z",
        "url": f"{API}/options/instruments/{oid}/",
        "sellout_datetime": f"{expiration.isoformat()}T19:45:00+00:00",
        "long_strategy_code": f"{oid}_L1",
        "short_strategy_code": f"{oid}_S1",
    }


def aggregate_position(opt: dict[str, Any], direction: str, quantity: str,
                       average_open_price: str) -> dict[str, Any]:
    agg_id = uid(f"aggregate:{opt['id']}")
    return {
        "id": agg_id,
        "chain": f"{API}/options/chains/{opt['chain_id']}/",
        "account": ACCOUNT_URL,
        "account_number": ACCOUNT,
        "symbol": opt["chain_symbol"],
        "strategy": f"{direction}_{opt['type']}",
        "average_open_price": average_open_price,
        "legs": [{
            "id": uid(f"leg:{agg_id}"),
            "position": f"{API}/options/positions/{uid('pos:' + opt['id'])}/",
            "position_type": direction,
            "option": opt["url"],
            "option_id": opt["id"],
            "ratio_quantity": 1,
            "expiration_date": opt["expiration_date"],
            "strike_price": opt["strike_price"],
            "option_type": opt["type"],
        }],
        "quantity": quantity,
        "intraday_average_open_price": "0.0000",
        "intraday_quantity": "0.0000",
        "direction": "debit" if direction == "long" else "credit",
        "intraday_direction": "debit",
        "trade_value_multiplier": "100.0000",
        "created_at": "2026-11-02T15:00:00.000000Z",
        "updated_at": "2026-11-02T15:00:00.000000Z",
        "strategy_code": opt["long_strategy_code" if direction == "long" else "short_strategy_code"],
    }


def option_marketdata(opt: dict[str, Any], mark: str, greeks: dict[str, str] | None) -> dict[str, Any]:
    g = greeks or {}
    return {
        "adjusted_mark_price": mark,
        "adjusted_mark_price_round_down": mark,
        "ask_price": mark,
        "ask_size": 10,
        "bid_price": mark,
        "bid_size": 12,
        "break_even_price": "0.00",
        "high_price": None,
        "instrument": opt["url"],
        "instrument_id": opt["id"],
        "last_trade_price": mark,
        "last_trade_size": 1,
        "low_price": None,
        "mark_price": mark,
        "open_interest": 1520,
        "previous_close_date": "2026-11-19",
        "previous_close_price": mark,
        "volume": 311,
        "symbol": opt["chain_symbol"],
        "occ_symbol": f"{opt['chain_symbol']:<6}261218C00150000",
        "chance_of_profit_long": g.get("chance_of_profit_long"),
        "chance_of_profit_short": g.get("chance_of_profit_short"),
        "delta": g.get("delta"),
        "gamma": g.get("gamma"),
        "implied_volatility": g.get("implied_volatility"),
        "rho": g.get("rho"),
        "theta": g.get("theta"),
        "vega": g.get("vega"),
        "high_fill_rate_buy_price": mark,
        "high_fill_rate_sell_price": mark,
        "low_fill_rate_buy_price": mark,
        "low_fill_rate_sell_price": mark,
    }


def option_positions_envelope(items: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """items: (option instrument, aggregate position, marketdata)."""
    return envelope(
        positions=pages([a for _, a, _ in items], "/options/aggregate_positions/"),
        instruments={o["url"]: o for o, _, _ in items},
        marketdata=pages([m for _, _, m in items], "/marketdata/options/", per_page=20),
    )


# ---- balances ---------------------------------------------------------------------------------


def account(buying_power: str, cash: str, at: datetime) -> dict[str, Any]:
    return {
        "url": ACCOUNT_URL,
        "portfolio_cash": cash,
        "can_downgrade_to_cash": f"{ACCOUNT_URL}can_downgrade_to_cash/",
        "user": f"{API}/user/",
        "account_number": ACCOUNT,
        "type": "margin",
        "brokerage_account_type": "individual",
        "created_at": "2020-03-01T14:00:00.000000Z",
        "updated_at": iso(at),
        "deactivated": False,
        "deposit_halted": False,
        "withdrawal_halted": False,
        "only_position_closing_trades": False,
        "buying_power": buying_power,
        "onbp": buying_power,
        "cash_available_for_withdrawal": cash,
        "cash": cash,
        "amount_eligible_for_deposit_cancellation": "0.0000",
        "cash_held_for_orders": "0.0000",
        "uncleared_deposits": "0.0000",
        "sma": "0.0000",
        "sma_held_for_orders": "0.0000",
        "unsettled_funds": "0.0000",
        "unsettled_debit": "0.0000",
        "crypto_buying_power": "0.0000",
        "max_ach_early_access_amount": "1000.00",
        "cash_balances": None,
        "margin_balances": {"day_trade_buying_power": "0.0000", "margin_limit": "0.0000"},
        "sweep_enabled": False,
        "instant_eligibility": {"state": "ok"},
        "option_level": "option_level_2",
        "is_pinnacle_account": True,
        "rhs_account_number": 123456789,
        "state": "active",
    }


def portfolio(equity: str, market_value: str, previous_close: str | None) -> dict[str, Any]:
    return {
        "url": f"{API}/portfolios/{ACCOUNT}/",
        "account": ACCOUNT_URL,
        "start_date": "2020-03-01",
        "market_value": market_value,
        "equity": equity,
        "extended_hours_market_value": None,
        "extended_hours_equity": None,
        "extended_hours_portfolio_equity": None,
        "last_core_market_value": market_value,
        "last_core_equity": equity,
        "last_core_portfolio_equity": equity,
        "excess_margin": "0.0000",
        "excess_maintenance": "0.0000",
        "excess_margin_with_uncleared_deposits": "0.0000",
        "excess_maintenance_with_uncleared_deposits": "0.0000",
        "equity_previous_close": previous_close,
        "portfolio_equity_previous_close": previous_close,
        "adjusted_equity_previous_close": previous_close,
        "adjusted_portfolio_equity_previous_close": previous_close,
        "withdrawable_amount": "0.0000",
        "unwithdrawable_deposits": "0.0000",
        "unwithdrawable_grants": "0.0000",
    }


# ---- orders -----------------------------------------------------------------------------------


def execution(name: str, price: str, quantity: str, at: datetime) -> dict[str, Any]:
    return {
        "price": price,
        "quantity": quantity,
        "rounded_notional": f"{float(price) * float(quantity):.2f}",
        "settlement_date": at.date().isoformat(),
        "timestamp": iso(at),
        "id": uid(f"execution:{name}"),
        "ipo_access_execution_rank": None,
    }


def stock_order(name: str, symbol: str, side: str, quantity: str, state: str,
                executions: list[dict[str, Any]], at: datetime, fees: str = "0.00") -> dict[str, Any]:
    inst = instrument(symbol)
    oid = uid(f"order:{name}")
    filled = sum(float(e["quantity"]) for e in executions)
    avg = (sum(float(e["price"]) * float(e["quantity"]) for e in executions) / filled) if filled else None
    return {
        "id": oid,
        "ref_id": uid(f"ref:{name}"),
        "url": f"{API}/orders/{oid}/",
        "account": ACCOUNT_URL,
        "user_uuid": uid("user"),
        "position": f"{API}/positions/{ACCOUNT}/{inst['id']}/",
        "cancel": None,
        "instrument": inst["url"],
        "instrument_id": inst["id"],
        "cumulative_quantity": f"{filled:.8f}",
        "average_price": f"{avg:.8f}" if avg is not None else None,
        "fees": fees,
        "state": state,
        "derived_state": state,
        "pending_cancel_open_agent": None,
        "type": "limit",
        "side": side,
        "time_in_force": "gfd",
        "trigger": "immediate",
        "price": executions[0]["price"] if executions else "1.00000000",
        "stop_price": None,
        "quantity": quantity,
        "reject_reason": None,
        "created_at": iso(at),
        "updated_at": iso(at),
        "last_transaction_at": iso(at),
        "executions": executions,
        "extended_hours": False,
        "market_hours": "regular_hours",
        "override_dtbp_checks": False,
        "override_day_trade_checks": False,
        "response_category": None,
        "stop_triggered_at": None,
        "last_trail_price": None,
        "last_trail_price_updated_at": None,
        "dollar_based_amount": None,
        "total_notional": {"amount": "0.00", "currency_code": "USD", "currency_id": uid("usd")},
        "executed_notional": None,
        "investment_schedule_id": None,
        "is_ipo_access_order": False,
    }


def stock_orders_envelope(orders: list[dict[str, Any]]) -> dict[str, Any]:
    instruments = {}
    for o in orders:
        symbol = next(s for s in _KNOWN if instrument(s)["url"] == o["instrument"])
        instruments[o["instrument"]] = instrument(symbol)
    return envelope(orders=pages(orders, "/orders/"), instruments=instruments)


def option_order(name: str, opt: dict[str, Any], side: str, effect: str, quantity: str, state: str,
                 executions: list[dict[str, Any]], at: datetime,
                 regulatory_fees: str = "0.00") -> dict[str, Any]:
    oid = uid(f"option-order:{name}")
    filled = sum(float(e["quantity"]) for e in executions)
    price = executions[0]["price"] if executions else "1.00000000"
    return {
        "account_number": ACCOUNT,
        "cancel_url": None,
        "canceled_quantity": f"{float(quantity) - filled:.5f}" if state == "cancelled" else "0.00000",
        "created_at": iso(at),
        "direction": "debit" if side == "buy" else "credit",
        "id": oid,
        "legs": [{
            "executions": executions,
            "id": uid(f"option-leg:{name}"),
            "option": opt["url"],
            "option_id": opt["id"],
            "position_effect": effect,
            "ratio_quantity": 1,
            "side": side,
            "expiration_date": opt["expiration_date"],
            "strike_price": opt["strike_price"],
            "option_type": opt["type"],
            "long_strategy_code": opt["long_strategy_code"],
            "short_strategy_code": opt["short_strategy_code"],
        }],
        "pending_quantity": "0.00000",
        "premium": f"{float(price) * 100:.8f}",
        "processed_premium": f"{float(price) * 100 * filled:.2f}",
        "net_amount": f"{float(price) * 100 * filled:.2f}",
        "net_amount_direction": "debit" if side == "buy" else "credit",
        "price": price,
        "processed_quantity": f"{filled:.5f}",
        "quantity": quantity,
        "ref_id": uid(f"option-ref:{name}"),
        "regulatory_fees": regulatory_fees,
        "state": state,
        "time_in_force": "gfd",
        "trigger": "immediate",
        "type": "limit",
        "updated_at": iso(at),
        "chain_id": opt["chain_id"],
        "chain_symbol": opt["chain_symbol"],
        "response_category": None,
        "opening_strategy": f"{'long' if side == 'buy' else 'short'}_{opt['type']}" if effect == "open" else None,
        "closing_strategy": None if effect == "open" else f"{'long' if side == 'sell' else 'short'}_{opt['type']}",
        "stop_price": None,
        "form_source": "option_chain",
        "client_bid_at_submission": None,
        "client_ask_at_submission": None,
        "client_time_at_submission": None,
    }


def option_orders_envelope(orders: list[dict[str, Any]]) -> dict[str, Any]:
    return envelope(orders=pages(orders, "/options/orders/"))
