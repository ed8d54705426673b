"""positions: open, change, close, stale snapshots, quotes, options with Greeks, replay."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from consumers.positions import CONSUMER
from schema.eventlog import OPTION_POSITIONS, QUOTES, STOCK_POSITIONS
from schema.payloads import QUOTES_ACCOUNT
from tests.consumers import payloads as rh
from tests.consumers.support import add, one, replay, rows, run, tables

T0 = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


def _positions(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    return {r["symbol"]: r for r in rows(conn, "SELECT * FROM positions WHERE account = %s", rh.ACCOUNT)}


def _stock(conn: psycopg.Connection[Any], at: datetime, *holdings: tuple[str, str, str]) -> int:
    body = rh.stock_positions_envelope([rh.stock_position(s, q, p, at) for s, q, p in holdings])
    return add(conn, STOCK_POSITIONS, body, at)


def _quotes(conn: psycopg.Connection[Any], at: datetime, **prices: str | None) -> int:
    body = rh.quotes_envelope([rh.quote(s, p, at) for s, p in prices.items()])
    return add(conn, QUOTES, body, at, account=QUOTES_ACCOUNT)


def test_positions_open_change_and_close(db_url: str, conn: psycopg.Connection[Any]) -> None:
    # three positions across two pages, then a quote
    _stock(conn, T0, ("AAPL", "10.00000000", "150.0000"), ("MSFT", "2.50000000", "400.0000"),
           ("F", "100.00000000", "11.2000"))
    _quotes(conn, T0 + timedelta(seconds=5), AAPL="160.0000", MSFT="380.0000")
    run(db_url, CONSUMER)
    pos = _positions(conn)
    assert set(pos) == {"AAPL", "MSFT", "F"}
    aapl = pos["AAPL"]
    assert aapl["quantity"] == Decimal("10") and aapl["average_cost"] == Decimal("150")
    assert aapl["last_price"] == Decimal("160") and aapl["market_value"] == Decimal("1600")
    assert aapl["unrealized_pnl"] == Decimal("100") and aapl["unrealized_pnl_pct"] == Decimal("6.6667")
    assert aapl["updated_at"] == T0 and aapl["price_at"] == T0 + timedelta(seconds=5)
    assert pos["MSFT"]["unrealized_pnl"] == Decimal("-50")
    assert pos["F"]["last_price"] is None and pos["F"]["market_value"] is None  # no quote yet

    # change: AAPL grows, F is sold (absent: closed), NVDA opens; a new quote revalues it
    t1 = T0 + timedelta(minutes=5)
    _stock(conn, t1, ("AAPL", "15.00000000", "153.3333"), ("MSFT", "2.50000000", "400.0000"),
           ("NVDA", "4.00000000", "130.0000"))
    _quotes(conn, t1 + timedelta(seconds=5), AAPL="150.0000", NVDA="140.5000")
    run(db_url, CONSUMER)
    pos = _positions(conn)
    assert set(pos) == {"AAPL", "MSFT", "NVDA"}
    assert pos["AAPL"]["quantity"] == Decimal("15")
    assert pos["AAPL"]["unrealized_pnl"] == Decimal("15") * (Decimal("150") - Decimal("153.3333"))
    assert pos["NVDA"]["market_value"] == Decimal("562")
    assert pos["MSFT"]["last_price"] == Decimal("380")  # kept from the earlier quote

    # everything closed: an empty snapshot removes every position of the account
    _stock(conn, t1 + timedelta(minutes=5))
    run(db_url, CONSUMER)
    assert _positions(conn) == {}


def test_stale_snapshot_arriving_late_is_ignored(db_url: str, conn: psycopg.Connection[Any]) -> None:
    _stock(conn, T0 + timedelta(minutes=10), ("AAPL", "20.00000000", "155.0000"))
    run(db_url, CONSUMER)
    # a snapshot fetched earlier is appended (and applied) later: it must not win
    _stock(conn, T0, ("AAPL", "10.00000000", "150.0000"), ("TSLA", "1.00000000", "250.0000"))
    _quotes(conn, T0 + timedelta(minutes=11), AAPL="170.0000")
    _quotes(conn, T0, AAPL="1.0000")  # a stale quote too
    run(db_url, CONSUMER)
    pos = _positions(conn)
    assert set(pos) == {"AAPL"}
    assert pos["AAPL"]["quantity"] == Decimal("20") and pos["AAPL"]["updated_at"] == T0 + timedelta(minutes=10)
    assert pos["AAPL"]["last_price"] == Decimal("170")
    mark = one(conn, "SELECT * FROM positions_snapshot_marks WHERE kind = %s", STOCK_POSITIONS)
    assert mark["fetched_at"] == T0 + timedelta(minutes=10)


def test_option_positions_with_greeks_and_days_to_expiration(db_url: str, conn: psycopg.Connection[Any]) -> None:
    call = rh.option_instrument("AAPL", "call", "150.0000", date(2026, 12, 18))
    put = rh.option_instrument("SPY", "put", "580.0000", date(2026, 11, 27))
    greeks = {"delta": "0.612345", "gamma": "0.021000", "theta": "-0.081200", "vega": "0.190000",
              "rho": "0.050000", "implied_volatility": "0.284500"}
    # 01:30 UTC on 21 Nov is still 20 Nov in New York: days to expiration count from the 20th
    at = datetime(2026, 11, 21, 1, 30, tzinfo=UTC)
    body = rh.option_positions_envelope([
        (call, rh.aggregate_position(call, "long", "2.0000", "250.0000"), rh.option_marketdata(call, "3.100000", greeks)),
        (put, rh.aggregate_position(put, "short", "1.0000", "420.0000"), rh.option_marketdata(put, "5.000000", None)),
    ])
    add(conn, OPTION_POSITIONS, body, at)
    run(db_url, CONSUMER)
    got = {r["chain_symbol"]: r for r in rows(conn, "SELECT * FROM option_positions")}
    c, p = got["AAPL"], got["SPY"]
    assert (c["option_type"], c["direction"], c["strike"], c["expiration"]) == ("call", "long", Decimal("150"), date(2026, 12, 18))
    assert c["quantity"] == Decimal("2") and c["multiplier"] == Decimal("100")
    assert c["average_price"] == Decimal("2.5") and c["mark"] == Decimal("3.1")
    assert c["delta"] == Decimal("0.612345") and c["implied_volatility"] == Decimal("0.2845")
    assert c["market_value"] == Decimal("620") and c["unrealized_pnl"] == Decimal("120")
    assert c["days_to_expiration"] == 28
    # short put: premium received 4.20, now worth 5.00: a loss; Greeks null
    assert p["direction"] == "short" and p["delta"] is None and p["vega"] is None
    assert p["market_value"] == Decimal("-500") and p["unrealized_pnl"] == Decimal("-80")
    assert p["days_to_expiration"] == 7

    # the put is closed: the next full snapshot no longer lists it
    body = rh.option_positions_envelope([
        (call, rh.aggregate_position(call, "long", "2.0000", "250.0000"), rh.option_marketdata(call, "2.000000", greeks)),
    ])
    add(conn, OPTION_POSITIONS, body, at + timedelta(days=1))
    run(db_url, CONSUMER)
    got = {r["chain_symbol"]: r for r in rows(conn, "SELECT * FROM option_positions")}
    assert set(got) == {"AAPL"} and got["AAPL"]["unrealized_pnl"] == Decimal("-100")
    assert got["AAPL"]["days_to_expiration"] == 27


def test_replay_equals_live(db_url: str, conn: psycopg.Connection[Any]) -> None:
    call = rh.option_instrument("TSLA", "call", "300.0000", date(2027, 1, 15))
    for i in range(6):
        at = T0 + timedelta(minutes=5 * i)
        _stock(conn, at, ("AAPL", f"{10 + i}.00000000", "150.0000"), *([("AMD", "3.00000000", "120.0000")] if i % 2 else []))
        _quotes(conn, at + timedelta(seconds=1), AAPL=f"{150 + i}.5000", AMD="118.2500", SPY=None)
        body = rh.option_positions_envelope([
            (call, rh.aggregate_position(call, "long", "1.0000", "1200.0000"),
             rh.option_marketdata(call, f"{12 + i}.000000", {"delta": "0.4"})),
        ])
        add(conn, OPTION_POSITIONS, body, at)
    _stock(conn, T0 - timedelta(minutes=1), ("MSFT", "1.00000000", "1.0000"))  # stale, late
    run(db_url, CONSUMER)
    live = tables(conn, CONSUMER)
    assert live["positions"] and live["option_positions"] and live["positions_last_prices"]
    assert replay(conn, db_url, CONSUMER) == live


def test_replay_keeps_a_snapshot_whose_newer_successor_is_malformed(
        db_url: str, conn: psycopg.Connection[Any]) -> None:
    # a replay skips snapshots superseded by a newer one, but only by one that applies
    _stock(conn, T0, ("AAPL", "10.00000000", "150.0000"))
    bad = rh.stock_positions_envelope([rh.stock_position("AAPL", "11.00000000", "150.0000", T0)])
    del bad["responses"]["positions"][0]["results"][0]["average_buy_price"]
    poison = add(conn, STOCK_POSITIONS, bad, T0 + timedelta(minutes=5))
    _quotes(conn, T0 + timedelta(minutes=5), AAPL="151.0000")
    run(db_url, CONSUMER)
    live = tables(conn, CONSUMER)
    assert [r["quantity"] for r in _positions(conn).values()] == [Decimal("10")]
    dead = rows(conn, "SELECT event_id FROM consumer_dead_letters WHERE consumer = 'positions'")
    assert dead == [{"event_id": poison}]
    assert replay(conn, db_url, CONSUMER) == live
    assert rows(conn, "SELECT event_id FROM consumer_dead_letters WHERE consumer = 'positions'") == dead
