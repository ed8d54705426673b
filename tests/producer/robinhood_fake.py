"""A fake Robinhood API for `responses`: real field names, string-typed numbers, `next` URLs.

Only HTTP is faked; robin_stocks's session and the producer's code run for real. Payloads
follow the shapes Robinhood returns (trimmed of a few rarely used fields, never renamed).
Hooks let a test make one path fail, throttle, paginate or answer garbage.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import responses

API = "https://api.robinhood.com"
INDIVIDUAL = "5PY78241"
IRA = "919203847"

AAPL_ID = "450dfc6d-5510-4d40-abfb-f633b7d9be3e"
MSFT_ID = "50810c35-d215-4866-9758-0ada4ac79ffa"
TSLA_ID = "e39ed23a-7bd1-4587-b060-71988d9ef483"
SPY_ID = "8f92e76f-1e0e-4478-8580-16a6ffcfaef5"
OPT_CALL = "1ac71b52-a3a7-4c4c-8c4f-2b1b0d1e2f3a"
OPT_PUT = "6f3c9d1e-5a2b-4c8d-9e7f-0a1b2c3d4e5f"


def instrument(iid: str, symbol: str, name: str) -> dict[str, Any]:
    return {
        "id": iid, "url": f"{API}/instruments/{iid}/", "quote": f"{API}/quotes/{symbol}/",
        "fundamentals": f"{API}/fundamentals/{symbol}/", "splits": f"{API}/instruments/{iid}/splits/",
        "state": "active", "market": f"{API}/markets/XNAS/", "simple_name": name, "name": f"{name} Inc. Common Stock",
        "tradeable": True, "tradability": "tradable", "symbol": symbol, "bloomberg_unique": "EQ0010169500001000",
        "margin_initial_ratio": "0.5000", "maintenance_ratio": "0.2500", "country": "US",
        "day_trade_ratio": "0.2500", "list_date": "1990-01-02", "min_tick_size": None, "type": "stock",
        "tradable_chain_id": "7dd906e5-7d4b-4161-a3fe-2c3b62038482", "rhs_tradability": "tradable",
        "fractional_tradability": "tradable", "default_collar_fraction": "0.05",
    }


def position(account: str, iid: str, quantity: str, avg: str) -> dict[str, Any]:
    return {
        "url": f"{API}/positions/{account}/{iid}/", "instrument": f"{API}/instruments/{iid}/",
        "instrument_id": iid, "account": f"{API}/accounts/{account}/", "account_number": account,
        "average_buy_price": avg, "pending_average_buy_price": avg, "quantity": quantity,
        "intraday_average_buy_price": "0.0000", "intraday_quantity": "0.00000000",
        "shares_available_for_exercise": quantity, "shares_held_for_buys": "0.00000000",
        "shares_held_for_sells": "0.00000000", "shares_held_for_stock_grants": "0.00000000",
        "shares_held_for_options_collateral": "0.00000000", "shares_held_for_options_events": "0.00000000",
        "shares_pending_from_options_events": "0.00000000", "shares_available_for_closing_short_position": "0.00000000",
        "ipo_allocated_quantity": "0.00000000", "ipo_dsp_allocated_quantity": "0.00000000",
        "avg_cost_affected": False, "avg_cost_affected_reason": "", "is_primary_account": account == INDIVIDUAL,
        "updated_at": "2026-11-19T15:02:11.218403Z", "created_at": "2024-03-04T14:41:54.772112Z",
    }


def account(number: str, kind: str) -> dict[str, Any]:
    return {
        "url": f"{API}/accounts/{number}/", "portfolio_cash": "1523.4100", "can_downgrade_to_cash": f"{API}/accounts/{number}/can_downgrade_to_cash/",
        "user": f"{API}/user/", "account_number": number, "type": "margin" if kind == "individual" else "cash",
        "brokerage_account_type": kind, "created_at": "2019-06-01T15:31:22.514581-04:00",
        "updated_at": "2026-11-18T09:12:48.114251-05:00", "deactivated": False, "deposit_halted": False,
        "withdrawal_halted": False, "only_position_closing_trades": False, "buying_power": "1523.4100",
        "onbp": "1523.4100", "cash_available_for_withdrawal": "1523.4100", "cash": "1523.4100",
        "amount_eligible_for_deposit_cancellation": "0.0000", "cash_held_for_orders": "0.0000",
        "uncleared_deposits": "0.0000", "sma": "0.0000", "sma_held_for_orders": "0.0000",
        "unsettled_funds": "0.0000", "unsettled_debit": "0.0000", "crypto_buying_power": "1523.4100",
        "max_ach_early_access_amount": "1000.00", "cash_balances": None, "margin_balances": None,
        "sweep_enabled": False, "instant_eligibility": {"state": "ok", "reason": ""},
        "option_level": "option_level_2", "is_pinnacle_account": True, "rhs_account_number": 812345678,
        "state": "active", "active_subscription_id": None, "locked": False, "permanently_deactivated": False,
        "received_ach_debit_locked": False, "drip_enabled": False, "eligible_for_fractionals": True,
        "eligible_for_drip": True, "eligible_for_cash_management": None, "cash_management_enabled": False,
        "option_trading_on_expiration_enabled": False, "cash_held_for_options_collateral": "0.0000",
        "fractional_position_closing_only": False, "user_id": "2c4d5e6f-0000-4000-8000-000000000001",
        "equity_trading_lock": "unlocked", "option_trading_lock": "unlocked", "disable_adt": False,
        "management_type": "self_directed", "dynamic_instant_limit": "1000.00", "affiliate": "rhf",
    }


def portfolio(number: str) -> dict[str, Any]:
    return {
        "url": f"{API}/portfolios/{number}/", "account": f"{API}/accounts/{number}/", "start_date": "2019-06-03",
        "market_value": "10234.5600", "equity": "11758.9700", "extended_hours_market_value": "10240.1100",
        "extended_hours_equity": "11764.5200", "extended_hours_portfolio_equity": "11764.5200",
        "last_core_market_value": "10234.5600", "last_core_equity": "11758.9700",
        "last_core_portfolio_equity": "11758.9700", "excess_margin": "1523.4100", "excess_maintenance": "1523.4100",
        "excess_margin_with_uncleared_deposits": "1523.4100", "excess_maintenance_with_uncleared_deposits": "1523.4100",
        "equity_previous_close": "11700.0100", "portfolio_equity_previous_close": "11700.0100",
        "adjusted_equity_previous_close": "11700.0100", "adjusted_portfolio_equity_previous_close": "11700.0100",
        "withdrawable_amount": "1523.4100", "unwithdrawable_deposits": "0.0000", "unwithdrawable_grants": "0.0000",
    }


def quote(symbol: str, iid: str, price: str) -> dict[str, Any]:
    return {
        "ask_price": price, "ask_size": 100, "venue_ask_time": "2026-11-20T20:59:59.868Z",
        "bid_price": price, "bid_size": 200, "venue_bid_time": "2026-11-20T20:59:59.868Z",
        "last_trade_price": price, "venue_last_trade_time": "2026-11-20T20:59:59.868Z",
        "last_extended_hours_trade_price": None, "last_non_reg_trade_price": None,
        "venue_last_non_reg_trade_time": None, "previous_close": price, "adjusted_previous_close": price,
        "previous_close_date": "2026-11-19", "symbol": symbol, "trading_halted": False, "has_traded": True,
        "last_trade_price_source": "consolidated", "last_non_reg_trade_price_source": "",
        "updated_at": "2026-11-20T21:00:00Z", "instrument": f"{API}/instruments/{iid}/", "instrument_id": iid,
        "state": "active",
    }


def option_position(account: str, oid: str, chain_symbol: str, kind: str, quantity: str) -> dict[str, Any]:
    return {
        "id": f"agg-{oid[:8]}", "chain": f"{API}/options/chains/cee01a93-626e-4ee6-9b04-60e2fd1392d1/",
        "account": f"{API}/accounts/{account}/", "account_number": account, "symbol": chain_symbol,
        "strategy": f"long_{kind}", "average_open_price": "245.0000",
        "legs": [{"id": f"leg-{oid[:8]}", "position": f"{API}/options/positions/{oid}/", "position_type": "long",
                  "option": f"{API}/options/instruments/{oid}/", "option_id": oid, "ratio_quantity": 1,
                  "expiration_date": "2026-12-18", "strike_price": "230.0000", "option_type": kind}],
        "quantity": quantity, "intraday_average_open_price": "0.0000", "intraday_quantity": "0.0000",
        "direction": "debit", "intraday_direction": "debit", "trade_value_multiplier": "100.0000",
        "created_at": "2026-11-02T14:31:09.114312Z", "updated_at": "2026-11-02T14:31:09.218812Z",
        "strategy_code": f"{oid}_L1",
    }


def option_instrument(oid: str, symbol: str, kind: str) -> dict[str, Any]:
    return {
        "chain_id": "cee01a93-626e-4ee6-9b04-60e2fd1392d1", "chain_symbol": symbol,
        "created_at": "2026-10-01T01:03:12.129133Z", "expiration_date": "2026-12-18", "id": oid,
        "issue_date": "2026-10-01", "min_ticks": {"above_tick": "0.05", "below_tick": "0.01", "cutoff_price": "3.00"},
        "rhs_tradability": "untradable", "state": "active", "strike_price": "230.0000", "tradability": "tradable",
        "type": kind, "updated_at": "2026-10-01T01:03:12.129141Z", "url": f"{API}/options/instruments/{oid}/",
        "sellout_datetime": "2026-12-18T20:00:00+00:00", "long_strategy_code": f"{oid}_L1",
        "short_strategy_code": f"{oid}_S1",
    }


def option_marketdata(oid: str, symbol: str, greeks: bool) -> dict[str, Any]:
    def g(v: str) -> str | None:
        return v if greeks else None
    return {
        "adjusted_mark_price": "2.450000", "adjusted_mark_price_round_down": "2.450000", "ask_price": "2.500000",
        "ask_size": 31, "bid_price": "2.400000", "bid_size": 12, "break_even_price": "232.450000",
        "high_price": "2.700000", "instrument": f"{API}/options/instruments/{oid}/", "instrument_id": oid,
        "last_trade_price": "2.450000", "last_trade_size": 1, "low_price": "2.100000", "mark_price": "2.450000",
        "open_interest": 1542, "previous_close_date": "2026-11-19", "previous_close_price": "2.310000",
        "updated_at": "2026-11-20T21:00:00.412151Z", "volume": 311, "symbol": symbol,
        "occ_symbol": f"{symbol:<6}261218C00230000", "state": "active",
        "chance_of_profit_long": g("0.312245"), "chance_of_profit_short": g("0.687755"),
        "delta": g("0.412345"), "gamma": g("0.021331"), "implied_volatility": g("0.281224"),
        "rho": g("0.101445"), "theta": g("-0.081245"), "vega": g("0.301122"),
        "high_fill_rate_buy_price": "2.480000", "high_fill_rate_sell_price": "2.420000",
        "low_fill_rate_buy_price": "2.430000", "low_fill_rate_sell_price": "2.470000",
    }


def stock_order(account: str, oid: str, iid: str, updated: str, *, qty: str = "0.52341200",
                state: str = "filled") -> dict[str, Any]:
    execs = [] if state != "filled" else [{
        "price": "228.12000000", "quantity": qty, "rounded_notional": "119.40",
        "settlement_date": "2026-11-21", "timestamp": "2026-11-19T15:02:11.101000Z",
        "id": f"exec-{oid}", "ipo_access_execution_rank": None, "trade_execution_date": "2026-11-19",
        "fees": "0.00", "sec_fee": None, "taf_fee": None, "cat_fee": None, "sales_taxes": []}]
    return {
        "id": oid, "ref_id": f"ref-{oid}", "url": f"{API}/orders/{oid}/", "account": f"{API}/accounts/{account}/",
        "user_uuid": "2c4d5e6f-0000-4000-8000-000000000001", "position": f"{API}/positions/{account}/{iid}/",
        "cancel": None, "instrument": f"{API}/instruments/{iid}/", "instrument_id": iid,
        "cumulative_quantity": qty if state == "filled" else "0.00000000",
        "average_price": "228.12000000" if state == "filled" else None, "fees": "0.00", "state": state,
        "derived_state": state, "pending_cancel_open_agent": None, "type": "market", "side": "buy",
        "time_in_force": "gfd", "trigger": "immediate", "price": "230.40000000", "stop_price": None,
        "quantity": qty, "reject_reason": None, "created_at": "2026-11-19T15:02:10.921000Z", "updated_at": updated,
        "last_transaction_at": updated, "executions": execs, "extended_hours": False,
        "market_hours": "regular_hours", "override_dtbp_checks": False, "override_day_trade_checks": False,
        "response_category": None, "stop_triggered_at": None, "last_trail_price": None,
        "dollar_based_amount": {"amount": "119.40", "currency_code": "USD", "currency_id": "1072fc76-1862-41ab-82c2-485837590762"},
        "total_notional": {"amount": "119.40", "currency_code": "USD", "currency_id": "1072fc76-1862-41ab-82c2-485837590762"},
        "executed_notional": {"amount": "119.40", "currency_code": "USD", "currency_id": "1072fc76-1862-41ab-82c2-485837590762"},
        "investment_schedule_id": None, "is_ipo_access_order": False, "is_editable": False,
        "is_visible_to_user": True, "order_form_version": 4,
    }


def option_order(account: str, oid: str, option: str, updated: str) -> dict[str, Any]:
    return {
        "account_number": account, "cancel_url": None, "canceled_quantity": "0.00000",
        "created_at": "2026-11-02T14:31:08.512000Z", "direction": "debit", "id": oid,
        "legs": [{"executions": [{"id": f"oexec-{oid}", "price": "2.45000000", "quantity": "1.00000",
                                  "settlement_date": "2026-11-03", "timestamp": "2026-11-02T14:31:09.101000Z"}],
                  "id": f"oleg-{oid}", "option": f"{API}/options/instruments/{option}/", "position_effect": "open",
                  "ratio_quantity": 1, "side": "buy", "expiration_date": "2026-12-18", "strike_price": "230.0000",
                  "option_type": "call", "long_strategy_code": f"{option}_L1", "short_strategy_code": f"{option}_S1"}],
        "pending_quantity": "0.00000", "premium": "245.00000000", "processed_premium": "245",
        "processed_premium_direction": "debit", "net_amount": "245.03", "net_amount_direction": "debit",
        "price": "2.45000000", "processed_quantity": "1.00000", "quantity": "1.00000", "ref_id": f"oref-{oid}",
        "regulatory_fees": "0.03", "contract_fees": "0.00", "gold_savings": "0.00", "state": "filled",
        "time_in_force": "gfd", "trigger": "immediate", "type": "limit", "updated_at": updated,
        "chain_id": "cee01a93-626e-4ee6-9b04-60e2fd1392d1", "chain_symbol": "AAPL", "response_category": None,
        "opening_strategy": "long_call", "closing_strategy": None, "stop_price": None,
        "form_source": "strategy_detail", "client_bid_at_submission": "2.4", "client_ask_at_submission": "2.5",
        "client_time_at_submission": None, "average_net_premium_paid": "245.00", "estimated_total_net_amount": "245.03",
        "estimated_total_net_amount_direction": "debit", "is_replaceable": False, "strategy": "long_call",
        "derived_state": "filled", "sales_taxes": [],
    }


Hook = Callable[[str, dict[str, str], int], tuple[int, dict[str, str], str] | None]


class FakeRobinhood:
    """Routes every api.robinhood.com request; counts calls per path."""

    def __init__(self, rsps: responses.RequestsMock) -> None:
        self.rsps = rsps
        self.calls: Counter[str] = Counter()
        self.queries: list[tuple[str, dict[str, str]]] = []
        self.hooks: dict[str, Hook] = {}
        self.date_offset = 0.0  # seconds the broker's clock is ahead of ours
        self.positions: dict[str, list[dict[str, Any]]] = {
            INDIVIDUAL: [position(INDIVIDUAL, AAPL_ID, "12.00000000", "171.2300"),
                         position(INDIVIDUAL, MSFT_ID, "0.27364100", "402.9900")],
            IRA: [position(IRA, SPY_ID, "3.51020000", "512.1100")],
        }
        self.page_size = 100
        self.option_positions = {
            INDIVIDUAL: [option_position(INDIVIDUAL, OPT_CALL, "AAPL", "call", "2.0000"),
                         option_position(INDIVIDUAL, OPT_PUT, "TSLA", "put", "1.0000")],
            IRA: [],
        }
        self.greeks = {OPT_CALL: True, OPT_PUT: False}
        self.orders = {INDIVIDUAL: [stock_order(INDIVIDUAL, "o-1", AAPL_ID, "2026-11-19T15:02:11.318000Z")],
                       IRA: []}
        self.option_orders = {INDIVIDUAL: [option_order(INDIVIDUAL, "oo-1", OPT_CALL, "2026-11-02T14:31:09.318000Z")],
                              IRA: []}
        self.instruments = {AAPL_ID: instrument(AAPL_ID, "AAPL", "Apple"),
                            MSFT_ID: instrument(MSFT_ID, "MSFT", "Microsoft"),
                            TSLA_ID: instrument(TSLA_ID, "TSLA", "Tesla"),
                            SPY_ID: instrument(SPY_ID, "SPY", "SPDR S&P 500 ETF Trust")}
        self.option_instruments = {OPT_CALL: option_instrument(OPT_CALL, "AAPL", "call"),
                                   OPT_PUT: option_instrument(OPT_PUT, "TSLA", "put")}
        self.prices = {"AAPL": "228.410000", "MSFT": "415.020000", "SPY": "590.110000", "TSLA": "245.500000"}
        rsps.add_callback(responses.GET, re.compile(re.escape(API) + r"/.*"), callback=self._callback)

    def count(self, prefix: str) -> int:
        return sum(n for p, n in self.calls.items() if p.startswith(prefix))

    def _callback(self, request: Any) -> tuple[int, dict[str, str], str]:
        parts = urlsplit(request.url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        self.calls[path] += 1
        self.queries.append((path, query))
        headers = {"Content-Type": "application/json",
                   "Date": email.utils.formatdate(time.time() + self.date_offset, usegmt=True)}
        if request.headers.get("Authorization") is None:
            return 401, headers, json.dumps({"detail": "Authentication credentials were not provided."})
        for prefix, hook in self.hooks.items():
            if path.startswith(prefix):
                answer = hook(path, query, self.calls[path])
                if answer is not None:
                    status, extra, body = answer
                    return status, {**headers, **extra}, body
        status, body = self._route(request.url, path, query)
        return status, headers, json.dumps(body)

    def _paged(self, url: str, query: dict[str, str], rows: list[Any]) -> dict[str, Any]:
        offset = int(query.get("cursor", "0") or 0)
        nxt = None
        if offset + self.page_size < len(rows):
            base = url.split("&cursor=")[0].split("?cursor=")[0]
            nxt = f"{base}{'&' if '?' in base else '?'}cursor={offset + self.page_size}"
        prev = None if offset == 0 else url
        return {"next": nxt, "previous": prev, "results": rows[offset:offset + self.page_size]}

    def _route(self, url: str, path: str, q: dict[str, str]) -> tuple[int, Any]:
        segs = [s for s in path.split("/") if s]
        if segs == ["accounts"]:
            return 200, self._paged(url, q, [account(INDIVIDUAL, "individual"), account(IRA, "ira_roth")])
        if segs == ["portfolios"]:  # the list answers for the default account only
            return 200, {"next": None, "previous": None, "results": [portfolio(INDIVIDUAL)]}
        if len(segs) == 2 and segs[0] == "portfolios":
            return 200, portfolio(segs[1])
        if segs == ["positions"]:
            return 200, self._paged(url, q, self.positions[q["account_number"]])
        if segs == ["instruments"] and "ids" in q:
            return 200, {"next": None, "previous": None,
                         "results": [self.instruments[i] for i in q["ids"].split(",") if i in self.instruments]}
        if segs == ["options", "instruments"] and "ids" in q:
            return 200, {"next": None, "previous": None,
                         "results": [self.option_instruments[i] for i in q["ids"].split(",")
                                     if i in self.option_instruments]}
        if len(segs) == 2 and segs[0] == "instruments" and segs[1] in self.instruments:
            return 200, self.instruments[segs[1]]
        if segs == ["marketdata", "quotes"]:
            syms = q["symbols"].split(",")
            by = {i["symbol"]: i["id"] for i in self.instruments.values()}
            return 200, {"results": [quote(s, by[s], self.prices[s]) if s in by else None for s in syms]}
        if segs == ["options", "aggregate_positions"]:
            return 200, self._paged(url, q, self.option_positions[q["account_numbers"]])
        if len(segs) == 3 and segs[:2] == ["options", "instruments"] and segs[2] in self.option_instruments:
            return 200, self.option_instruments[segs[2]]
        if segs == ["marketdata", "options"]:
            ids = [u.rstrip("/").rsplit("/", 1)[-1] for u in q["instruments"].split(",")]
            return 200, {"results": [option_marketdata(i, self.option_instruments[i]["chain_symbol"], self.greeks[i])
                                     for i in ids]}
        if segs == ["orders"]:
            rows = [o for o in self.orders[q["account_numbers"]]
                    if "updated_at[gte]" not in q or o["updated_at"] >= q["updated_at[gte]"]]
            return 200, self._paged(url, q, rows)
        if segs == ["options", "orders"]:
            rows = [o for o in self.option_orders[q["account_numbers"]]
                    if "updated_at[gte]" not in q or o["updated_at"] >= q["updated_at[gte]"]]
            return 200, self._paged(url, q, rows)
        return 404, {"detail": "Not found."}
