"""The simulated broker as a transport: Robinhood's URLs, Robinhood's JSON, a simulated world.

Answers the endpoints the producer calls with the field names and string-typed numbers of the
real API (trimmed to the fields a mirror uses, so a year of history stays small), with ``next``
pagination, a ``Date`` header, and optional latency and faults (HTTP 500/503, 429, slow calls
that time out) drawn from their own seeded generator so that faults never change the world.
"""

from __future__ import annotations

import base64
import email.utils
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson

from producer.broker import API, FetchError, Response
from producer.simworld import Account, Execution, OptionInstrument, Order, SimWorld

PAGE_SIZE = 100


@lru_cache(maxsize=4096)
def _ts(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_FORMATS = {p: f"%.{p}f" for p in range(9)}


def _n(x: float, places: int) -> str:
    return _FORMATS[places] % x


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class SimBroker:
    """A :class:`~producer.broker.Transport` over a :class:`SimWorld`."""

    source = "simulated"

    def __init__(self, world: SimWorld, *, clock: Callable[[], datetime] | None = None,
                 latency: float = 0.0, error_rate: float = 0.0, throttle_rate: float = 0.0,
                 slow_rate: float = 0.0, slow_seconds: float = 3.0,
                 sleep: Callable[[float], None] = time.sleep, encode: bool = True) -> None:
        self.world = world
        self.wall_clock = clock is None  # only then is the Date header comparable with ours
        self.clock = clock or (lambda: datetime.now(UTC))
        self.latency = latency
        self.error_rate, self.throttle_rate = error_rate, throttle_rate
        self.slow_rate, self.slow_seconds = slow_rate, slow_seconds
        self.sleep = sleep
        self.encode = encode  # False: hand the client decoded JSON (history writing only)
        self.faults = random.Random(f"brokersync-sim-faults:{world.seed}")
        self.lock = threading.Lock()
        self.calls = 0

    def now(self) -> datetime:
        return self.clock()

    def close(self) -> None:
        pass

    # ---- transport -----------------------------------------------------------------------
    def get(self, url: str, params: dict[str, str] | None, timeout: float) -> Response:
        started = time.monotonic()
        with self.lock:
            self.calls += 1
            roll = self.faults.random()
            slow = self.slow_rate and self.faults.random() < self.slow_rate
        delay = self.latency + (self.slow_seconds if slow else 0.0)
        if delay:
            if delay > timeout:
                self.sleep(timeout)
                raise FetchError(f"timed out after {timeout:.1f}s", None, url)
            self.sleep(delay)
        now = self.now()
        headers = {"Date": email.utils.format_datetime(now.astimezone(UTC), usegmt=True),
                   "Content-Type": "application/json"}
        if roll < self.throttle_rate:
            return Response(429, b'{"detail":"Request was throttled. Expected available in 5 seconds."}',
                            url, {**headers, "Retry-After": "5"}, time.monotonic() - started)
        if roll < self.throttle_rate + self.error_rate:
            status = 500 if roll < self.throttle_rate + self.error_rate / 2 else 503
            return Response(status, b"<html><body>Service Unavailable</body></html>", url, headers,
                            time.monotonic() - started)
        with self.lock:
            self.world.advance_to(now)
            status, body = self.route(url, params or {})
        if not self.encode and status == 200:
            return Response(status, b"", url, headers, time.monotonic() - started, data=body)
        return Response(status, orjson.dumps(body), url, headers, time.monotonic() - started)

    # ---- routing -------------------------------------------------------------------------
    def route(self, url: str, params: dict[str, str]) -> tuple[int, Any]:
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        query.update(params)
        path = [p for p in parts.path.split("/") if p]
        w = self.world
        match path:
            case ["accounts"]:
                return 200, self._page([self.account(a) for a in w.accounts.values()])
            case ["accounts", number] if number in w.accounts:
                return 200, self.account(w.accounts[number])
            case ["portfolios"]:
                return 200, self._page([self.portfolio(a) for a in w.accounts.values()])
            case ["portfolios", number] if number in w.accounts:
                return 200, self.portfolio(w.accounts[number])
            case ["positions"]:
                acct = w.accounts.get(query.get("account_number", ""))
                if acct is None:
                    return 400, {"detail": "Invalid account_number."}
                rows = [self.position(acct, i) for i in sorted(acct.positions)]
                return 200, self._paged(url, query, rows, 50)
            case ["instruments"] if "ids" in query:
                ids = [i for i in query["ids"].split(",") if i in w.instruments]
                return 200, self._page([self.instrument(i) for i in ids])
            case ["options", "instruments"] if "ids" in query:
                ids = [i for i in query["ids"].split(",") if i in w.options]
                return 200, self._page([self.option_instrument(w.options[i]) for i in ids])
            case ["instruments", iid] if iid in w.instruments:
                return 200, self.instrument(iid)
            case ["marketdata", "quotes"]:
                symbols = [s for s in query.get("symbols", "").split(",") if s]
                return 200, {"results": [self.quote(s) if s in w.prices else None for s in symbols]}
            case ["options", "aggregate_positions"]:
                acct = w.accounts.get(query.get("account_numbers", ""))
                if acct is None:
                    return 400, {"detail": "Invalid account_numbers."}
                rows = [self.option_position(acct, o) for o in sorted(acct.option_positions)]
                return 200, self._paged(url, query, rows, 50)
            case ["options", "instruments", oid] if oid in w.options:
                return 200, self.option_instrument(w.options[oid])
            case ["marketdata", "options"]:
                ids = [u.rstrip("/").rsplit("/", 1)[-1] for u in query.get("instruments", "").split(",") if u]
                return 200, {"results": [self.option_marketdata(w.options[i]) if i in w.options else None
                                         for i in ids]}
            case ["orders"] | ["options", "orders"]:
                acct = w.accounts.get(query.get("account_numbers", ""))
                if acct is None:
                    return 400, {"detail": "Invalid account_numbers."}
                since = query.get("updated_at[gte]")
                source = w.orders if path == ["orders"] else w.option_orders
                try:
                    gte = _parse_time(since) if since else None
                except ValueError:
                    return 400, {"updated_at": ["Enter a valid date/time."]}
                now = w.now
                chosen = [o for o in source if o.account == acct.number and o.created_at <= now
                          and (gte is None or o.updated_at >= gte)]
                chosen.sort(key=lambda o: o.created_at, reverse=True)  # newest first, like Robinhood
                render = self.order if path == ["orders"] else self.option_order
                return 200, self._paged(url, query, [render(o) for o in chosen], PAGE_SIZE)
        return 404, {"detail": "Not found."}

    def _page(self, rows: list[Any]) -> dict[str, Any]:
        return {"next": None, "previous": None, "results": rows}

    def _paged(self, url: str, query: dict[str, str], rows: list[Any], size: int) -> dict[str, Any]:
        offset = 0
        if "cursor" in query:
            offset = int(base64.urlsafe_b64decode(query["cursor"]).decode().split("=")[1])
        nxt = None
        if offset + size < len(rows):
            q = dict(query)
            q["cursor"] = base64.urlsafe_b64encode(f"o={offset + size}".encode()).decode()
            nxt = urlsplit(url)._replace(query=urlencode(q, safe="[],:")).geturl()
        return {"next": nxt, "previous": None, "results": rows[offset:offset + size]}

    # ---- renderers (Robinhood's field names; numbers are strings) ---------------------------
    def account(self, a: Account) -> dict[str, Any]:
        w = self.world
        held = sum(o.quantity * o.price for o in w.open_orders()
                   if o.account == a.number and o.side == "buy" and o.option_id is None
                   and o.price is not None)
        cash = _n(a.cash, 4)
        return {
            "url": f"{API}/accounts/{a.number}/", "account_number": a.number,
            "user": f"{API}/user/", "type": a.type, "brokerage_account_type": a.kind,
            "created_at": _ts(a.created_at), "updated_at": _ts(a.created_at), "deactivated": False,
            "portfolio_cash": cash, "cash": cash, "buying_power": _n(max(a.cash - held, 0), 4),
            "cash_available_for_withdrawal": _n(max(a.cash - held, 0), 4),
            "cash_held_for_orders": _n(held, 4), "uncleared_deposits": "0.0000",
            "unsettled_funds": "0.0000", "unsettled_debit": "0.0000",
            "crypto_buying_power": "0.0000", "sma": None, "margin_balances": None,
            "option_level": "option_level_2" if a.kind == "individual" else "option_level_1",
            "state": "active", "eligible_for_fractionals": True, "is_default": a.kind == "individual",
        }

    def portfolio(self, a: Account) -> dict[str, Any]:
        w = self.world
        equity = w.equity(a)
        market = equity - a.cash
        return {
            "url": f"{API}/portfolios/{a.number}/", "account": f"{API}/accounts/{a.number}/",
            "start_date": a.created_at.date().isoformat(),
            "market_value": _n(market, 4), "equity": _n(equity, 4),
            "extended_hours_market_value": _n(market, 4), "extended_hours_equity": _n(equity, 4),
            "last_core_market_value": _n(market, 4), "last_core_equity": _n(equity, 4),
            "excess_margin": _n(a.cash, 4), "excess_maintenance": _n(a.cash, 4),
            "equity_previous_close": _n(a.previous_equity, 4),
            "adjusted_equity_previous_close": _n(a.previous_equity, 4),
            "withdrawable_amount": _n(a.cash, 4), "unwithdrawable_deposits": "0.0000",
        }

    def position(self, a: Account, iid: str) -> dict[str, Any]:
        p = a.positions[iid]
        return {
            "url": f"{API}/positions/{a.number}/{iid}/", "instrument": f"{API}/instruments/{iid}/",
            "instrument_id": iid, "account": f"{API}/accounts/{a.number}/",
            "account_number": a.number, "average_buy_price": _n(p.average_price, 4),
            "pending_average_buy_price": _n(p.average_price, 4), "quantity": _n(p.quantity, 8),
            "intraday_average_buy_price": "0.0000", "intraday_quantity": "0.00000000",
            "shares_held_for_buys": "0.00000000", "shares_held_for_sells": "0.00000000",
            "shares_available_for_exercise": _n(p.quantity, 8),
            "created_at": _ts(p.created_at), "updated_at": _ts(p.updated_at),
        }

    def instrument(self, iid: str) -> dict[str, Any]:
        i = self.world.instruments[iid]
        etf = i.symbol in ("SPY", "QQQ", "VTI")
        return {
            "id": i.id, "url": f"{API}/instruments/{i.id}/", "symbol": i.symbol,
            "simple_name": i.name, "name": f"{i.name} {'ETF' if etf else 'Inc. Common Stock'}",
            "type": "etp" if etf else "stock", "state": "active", "tradeable": True,
            "tradability": "tradable", "fractional_tradability": "tradable",
            "tradable_chain_id": i.chain_id, "country": "US", "list_date": i.list_date,
        }

    def quote(self, symbol: str) -> dict[str, Any]:
        w = self.world
        i = w.by_symbol[symbol]
        price = w.prices[symbol]
        spread = max(0.01, round(price * 0.0002, 2))
        return {
            "ask_price": _n(price + spread / 2, 6), "bid_price": _n(price - spread / 2, 6),
            "last_trade_price": _n(price, 6), "previous_close": _n(w.previous_close[symbol], 6),
            "symbol": symbol, "trading_halted": False, "updated_at": _ts(w.last_trade_at),
            "instrument": f"{API}/instruments/{i.id}/", "instrument_id": i.id,
        }

    def option_position(self, a: Account, oid: str) -> dict[str, Any]:
        p = a.option_positions[oid]
        o = self.world.options[oid]
        return {
            "id": p.id, "chain": f"{API}/options/chains/{o.chain_id}/", "account": f"{API}/accounts/{a.number}/",
            "account_number": a.number, "symbol": o.symbol, "strategy": f"long_{o.type}",
            "average_open_price": _n(p.average_open_price, 4), "quantity": _n(p.quantity, 4),
            "intraday_average_open_price": "0.0000", "intraday_quantity": "0.0000",
            "direction": "debit", "trade_value_multiplier": "100.0000",
            "created_at": _ts(p.created_at), "updated_at": _ts(p.updated_at),
            "legs": [{
                "id": p.id, "position": f"{API}/options/positions/{p.id}/", "position_type": "long",
                "option": f"{API}/options/instruments/{oid}/", "option_id": oid, "ratio_quantity": 1,
                "expiration_date": o.expiration.isoformat(), "strike_price": _n(o.strike, 4),
                "option_type": o.type,
            }],
        }

    def option_instrument(self, o: OptionInstrument) -> dict[str, Any]:
        return {
            "id": o.id, "url": f"{API}/options/instruments/{o.id}/", "chain_id": o.chain_id,
            "chain_symbol": o.symbol, "type": o.type, "strike_price": _n(o.strike, 4),
            "expiration_date": o.expiration.isoformat(), "state": "active",
            "tradability": "tradable", "created_at": _ts(o.created_at),
            "issue_date": o.created_at.date().isoformat(),
            "min_ticks": {"above_tick": "0.05", "below_tick": "0.01", "cutoff_price": "3.00"},
        }

    def option_marketdata(self, o: OptionInstrument) -> dict[str, Any]:
        w = self.world
        mark, greeks, iv = w.option_mark(o)
        spread = max(0.01, round(mark * 0.04, 2))
        g: dict[str, str | None] = {k: (None if o.greeks_missing else _n(v, 6)) for k, v in greeks.items()}
        return {
            "instrument": f"{API}/options/instruments/{o.id}/", "instrument_id": o.id,
            "symbol": o.symbol, "occ_symbol": f"{o.symbol:<6}{o.expiration:%y%m%d}{o.type[0].upper()}"
                                              f"{int(o.strike * 1000):08d}",
            "adjusted_mark_price": _n(mark, 6), "mark_price": _n(mark, 6),
            "ask_price": _n(mark + spread / 2, 6), "bid_price": _n(max(mark - spread / 2, 0.01), 6),
            "last_trade_price": _n(mark, 6), "previous_close_price": _n(mark, 6),
            "break_even_price": _n(o.strike + mark if o.type == "call" else o.strike - mark, 4),
            "open_interest": 120 + len(o.id) * 3, "volume": 45,
            "implied_volatility": None if o.greeks_missing else _n(iv, 6),
            "chance_of_profit_long": None if o.greeks_missing else _n(0.35, 6),
            **g, "updated_at": _ts(w.last_trade_at), "state": "active",
        }

    def _executions(self, execs: list[Execution], option: bool) -> list[dict[str, Any]]:
        out = []
        for e in execs:
            settle = (e.timestamp + timedelta(days=1 if option else 2)).date().isoformat()
            row: dict[str, Any] = {"id": e.id, "price": _n(e.price, 8), "quantity": _n(e.quantity, 8 if not option else 5),
                                   "settlement_date": settle, "timestamp": _ts(e.timestamp)}
            if not option:
                row.update(fees=_n(e.fees, 2), rounded_notional=_n(e.price * e.quantity, 2),
                           trade_execution_date=e.timestamp.date().isoformat())
            out.append(row)
        return out

    def order(self, o: Order) -> dict[str, Any]:
        assert o.instrument_id is not None
        avg = o.average_price
        notional = (o.dollar_based if o.dollar_based else o.quantity * (o.price or 0))
        return {
            "id": o.id, "ref_id": o.ref_id, "url": f"{API}/orders/{o.id}/",
            "account": f"{API}/accounts/{o.account}/",
            "position": f"{API}/positions/{o.account}/{o.instrument_id}/",
            "cancel": f"{API}/orders/{o.id}/cancel/" if o.state in ("confirmed", "partially_filled") else None,
            "instrument": f"{API}/instruments/{o.instrument_id}/", "instrument_id": o.instrument_id,
            "cumulative_quantity": _n(o.filled, 8), "average_price": None if avg is None else _n(avg, 8),
            "fees": _n(o.fees, 2), "state": o.state, "derived_state": o.state, "type": o.type,
            "side": o.side, "time_in_force": "gfd", "trigger": "immediate",
            "price": None if o.price is None else _n(o.price, 8), "stop_price": None,
            "quantity": _n(o.quantity, 8), "reject_reason": o.reject_reason,
            "created_at": _ts(o.created_at), "updated_at": _ts(o.updated_at),
            "last_transaction_at": _ts(o.updated_at), "executions": self._executions(o.executions, False),
            "extended_hours": False, "market_hours": "regular_hours",
            "dollar_based_amount": None if o.dollar_based is None else
            {"amount": _n(o.dollar_based, 2), "currency_code": "USD"},
            "total_notional": {"amount": _n(notional, 2), "currency_code": "USD"},
            "executed_notional": None if avg is None else {"amount": _n(avg * o.filled, 2), "currency_code": "USD"},
        }

    def option_order(self, o: Order) -> dict[str, Any]:
        assert o.option_id is not None
        opt = self.world.options[o.option_id]
        filled = o.filled
        avg = o.average_price
        premium = (avg or o.price or 0) * 100
        return {
            "id": o.id, "ref_id": o.ref_id, "account_number": o.account,
            "cancel_url": f"{API}/options/orders/{o.id}/cancel/" if o.state in ("confirmed", "partially_filled") else None,
            "canceled_quantity": _n(o.quantity - filled if o.state == "cancelled" else 0, 5),
            "created_at": _ts(o.created_at), "updated_at": _ts(o.updated_at),
            "direction": "debit" if o.side == "buy" else "credit",
            "legs": [{
                "id": o.ref_id, "option": f"{API}/options/instruments/{opt.id}/", "option_id": opt.id,
                "position_effect": o.position_effect, "ratio_quantity": 1, "side": o.side,
                "expiration_date": opt.expiration.isoformat(), "strike_price": _n(opt.strike, 4),
                "option_type": opt.type, "executions": self._executions(o.executions, True),
            }],
            "pending_quantity": _n(o.quantity - filled if o.state in ("confirmed", "partially_filled") else 0, 5),
            "processed_quantity": _n(filled, 5), "quantity": _n(o.quantity, 5),
            "premium": _n(premium, 8), "processed_premium": _n(premium * filled, 2),
            "price": _n(o.price or 0, 8), "net_amount": _n(premium * filled + (o.fees if o.side == "buy" else -o.fees), 2),
            "net_amount_direction": "debit" if o.side == "buy" else "credit",
            "regulatory_fees": _n(o.fees, 2), "state": o.state, "derived_state": o.state,
            "time_in_force": "gfd", "trigger": "immediate", "type": o.type,
            "chain_id": opt.chain_id, "chain_symbol": opt.symbol,
            "opening_strategy": o.opening_strategy,
            "closing_strategy": f"long_{opt.type}" if o.position_effect == "close" else None,
            "stop_price": None, "reject_reason": o.reject_reason,
        }
