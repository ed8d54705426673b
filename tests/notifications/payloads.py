"""Small Robinhood-shaped snapshot payloads (the envelope of schema/payloads.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import psycopg

from schema.eventlog import append_snapshot
from schema.payloads import envelope

API = "https://api.robinhood.com"
ACCOUNT = "5QR12345"


def _page(results: list[Any]) -> dict[str, Any]:
    return {"next": None, "previous": None, "results": results}


def stock_positions(held: dict[str, tuple[str, str]], account: str = ACCOUNT) -> dict[str, Any]:
    """``held``: symbol -> (quantity, average_buy_price) as Robinhood's strings."""
    results, instruments = [], {}
    for symbol, (qty, avg) in held.items():
        url = f"{API}/instruments/{symbol.lower()}-id/"
        results.append({
            "url": f"{API}/positions/{account}/{symbol.lower()}-id/", "instrument": url,
            "account": f"{API}/accounts/{account}/", "account_number": account,
            "average_buy_price": avg, "pending_average_buy_price": avg, "quantity": qty,
            "intraday_quantity": "0.00000000", "shares_held_for_sells": "0.00000000",
            "created_at": "2026-01-05T15:00:00.000000Z", "updated_at": "2026-11-20T15:00:00.000000Z",
        })
        instruments[url] = {"id": f"{symbol.lower()}-id", "url": url, "symbol": symbol,
                            "simple_name": symbol, "type": "stock", "tradeable": True}
    # Robinhood paginates: split the results over two pages when there are several.
    pages = [_page(results[:1]), _page(results[1:])] if len(results) > 1 else [_page(results)]
    return envelope(positions=pages, instruments=instruments)


def option_position(pid: str, symbol: str, expiration: date, strike: str, avg: str, qty: str = "1.0000",
                    option_type: str = "call", position_type: str = "long") -> dict[str, Any]:
    oid = f"opt-{pid}"
    return {
        "id": pid, "chain": f"{API}/options/chains/{symbol.lower()}-chain/",
        "account": f"{API}/accounts/{ACCOUNT}/", "account_number": ACCOUNT, "symbol": symbol,
        "strategy": f"{position_type}_{option_type}", "average_open_price": avg, "quantity": qty,
        "direction": "debit" if position_type == "long" else "credit",
        "trade_value_multiplier": "100.0000",
        "legs": [{
            "id": pid, "position": f"{API}/options/positions/{pid}/", "position_type": position_type,
            "option": f"{API}/options/instruments/{oid}/", "option_id": oid, "ratio_quantity": 1,
            "expiration_date": expiration.isoformat(), "strike_price": strike, "option_type": option_type,
        }],
    }


def option_positions(positions: list[dict[str, Any]], marks: dict[str, str]) -> dict[str, Any]:
    """``marks``: position id -> adjusted mark price per share (Greeks may be null)."""
    marketdata = [{
        "instrument": f"{API}/options/instruments/opt-{pid}/", "instrument_id": f"opt-{pid}",
        "adjusted_mark_price": mark, "mark_price": mark, "delta": None, "gamma": None,
        "theta": None, "vega": None, "implied_volatility": None,
    } for pid, mark in marks.items()]
    instruments = {f"{API}/options/instruments/opt-{p['id']}/": {"id": f"opt-{p['id']}"} for p in positions}
    return envelope(positions=[_page(positions)], instruments=instruments, marketdata=[_page(marketdata)])


def quotes(prices: dict[str, str]) -> dict[str, Any]:
    return envelope(quotes=[_page([
        {"symbol": s, "last_trade_price": p, "ask_price": p, "bid_price": p,
         "last_extended_hours_trade_price": None, "trading_halted": False,
         "updated_at": "2026-11-20T15:00:00Z"}
        for s, p in prices.items()
    ])])


def account(buying_power: str, account: str = ACCOUNT) -> dict[str, Any]:
    return envelope(account={
        "url": f"{API}/accounts/{account}/", "account_number": account, "type": "cash",
        "buying_power": buying_power, "cash": buying_power, "portfolio_cash": buying_power,
        "cash_held_for_orders": "0.0000", "margin_balances": None, "state": "active",
    })


def portfolio(equity: str, previous_close: str, account: str = ACCOUNT) -> dict[str, Any]:
    return envelope(portfolio={
        "url": f"{API}/portfolios/{account}/", "account": f"{API}/accounts/{account}/",
        "equity": equity, "extended_hours_equity": equity, "market_value": equity,
        "equity_previous_close": previous_close, "adjusted_equity_previous_close": previous_close,
    })


def put(conn: psycopg.Connection[Any], kind: str, payload: Any, *, account: str = ACCOUNT,
        fetched_at: datetime | None = None) -> int:
    return append_snapshot(conn, account=account, kind=kind, source="test",
                           fetched_at=fetched_at or datetime.now(UTC), body=payload)
