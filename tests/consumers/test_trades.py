"""trade_history: fills once, partial fills, cancelled/failed orders, options, FIFO, export, replay."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from consumers.trades import CONSUMER
from schema.eventlog import OPTION_ORDERS, STOCK_ORDERS
from tests.conftest import run_cli
from tests.consumers import payloads as rh
from tests.consumers.support import add, replay, rows, run, tables

T = datetime(2026, 11, 16, 15, 0, tzinfo=UTC)
ex = rh.execution


def _orders(conn: psycopg.Connection[Any], at: datetime, *orders: dict[str, Any]) -> int:
    return add(conn, STOCK_ORDERS, rh.stock_orders_envelope(list(orders)), at)


def _option_orders(conn: psycopg.Connection[Any], at: datetime, *orders: dict[str, Any]) -> int:
    return add(conn, OPTION_ORDERS, rh.option_orders_envelope(list(orders)), at)


def stock_history(conn: psycopg.Connection[Any]) -> None:
    """AAPL: two buys (one in two partial fills, one cancelled after a partial fill), a failed
    buy, and two sells that close the lots FIFO; orders arrive as overlapping deltas."""
    e1 = ex("e1", "100.00000000", "4.00000000", T)
    e2 = ex("e2", "101.00000000", "6.00000000", T + timedelta(minutes=1))
    e3 = ex("e3", "110.00000000", "2.00000000", T + timedelta(hours=1))
    bogus = ex("failed-fill", "90.00000000", "100.00000000", T + timedelta(hours=2))
    e4 = ex("e4", "120.00000000", "9.00000000", T + timedelta(days=1))
    e5 = ex("e5", "90.00000000", "3.00000000", T + timedelta(days=2))
    # delta 1: o1 partially filled
    _orders(conn, T + timedelta(seconds=30),
            rh.stock_order("o1", "AAPL", "buy", "10.00000000", "partially_filled", [e1], T))
    # delta 2: o1 filled (its first fill again), o2 cancelled after a partial fill, o3 failed
    _orders(conn, T + timedelta(hours=3),
            rh.stock_order("o1", "AAPL", "buy", "10.00000000", "filled", [e1, e2], T + timedelta(minutes=1)),
            rh.stock_order("o2", "AAPL", "buy", "5.00000000", "cancelled", [e3], T + timedelta(hours=1, minutes=30)),
            rh.stock_order("o3", "AAPL", "buy", "100.00000000", "failed", [bogus], T + timedelta(hours=2)))
    # delta 3: a sell with fees, plus a stale copy of o1 (older updated_at) that must not win
    _orders(conn, T + timedelta(days=1, hours=1),
            rh.stock_order("o4", "AAPL", "sell", "9.00000000", "filled", [e4], T + timedelta(days=1), fees="0.09"),
            rh.stock_order("o1", "AAPL", "buy", "10.00000000", "partially_filled", [e1], T))
    _orders(conn, T + timedelta(days=2, hours=1),
            rh.stock_order("o5", "AAPL", "sell", "3.00000000", "filled", [e5], T + timedelta(days=2)))


def test_fifo_across_partial_fills_and_several_lots(db_url: str, conn: psycopg.Connection[Any]) -> None:
    stock_history(conn)
    run(db_url, CONSUMER)
    fills = {r["execution_id"]: r for r in rows(conn, "SELECT * FROM trade_executions")}
    assert set(fills) == {rh.uid(f"execution:{n}") for n in ("e1", "e2", "e3", "e4", "e5")}
    assert fills[rh.uid("execution:e4")]["fees"] == Decimal("0.09")
    assert fills[rh.uid("execution:e1")]["amount"] == Decimal("400")
    orders = {r["order_id"]: r for r in rows(conn, "SELECT * FROM trade_orders")}
    assert orders[rh.uid("order:o1")]["state"] == "filled"  # the stale copy did not win
    assert orders[rh.uid("order:o3")]["state"] == "failed"

    closed = rows(conn, "SELECT * FROM closed_trades ORDER BY closed_at, seq")
    got = [(r["open_execution_id"], r["quantity"], r["open_price"], r["close_price"], r["proceeds"],
            r["cost_basis"], r["fees"], r["realized_pnl"]) for r in closed]
    e = rh.uid
    assert got == [
        (e("execution:e1"), 4, 100, 120, 480, 400, Decimal("0.04"), Decimal("79.96")),
        (e("execution:e2"), 5, 101, 120, 600, 505, Decimal("0.05"), Decimal("94.95")),
        (e("execution:e2"), 1, 101, 90, 90, 101, 0, -11),
        (e("execution:e3"), 2, 110, 90, 180, 220, 0, -40),
    ]
    assert all(r["direction"] == "long" and r["term"] == "short" and r["tax_year"] == 2026 for r in closed)
    assert sum(r["realized_pnl"] for r in closed) == Decimal("123.91")
    assert rows(conn, "SELECT * FROM open_lots") == []


def test_fills_arriving_out_of_time_order_give_the_same_lots(db_url: str, conn: psycopg.Connection[Any]) -> None:
    # the sell's delta arrives before the delta holding the second buy's fill
    b1 = ex("b1", "10.00000000", "5.00000000", T)
    b2 = ex("b2", "12.00000000", "5.00000000", T + timedelta(hours=1))
    s1 = ex("s1", "15.00000000", "7.00000000", T + timedelta(hours=2))
    _orders(conn, T + timedelta(hours=3),
            rh.stock_order("b1", "F", "buy", "5", "filled", [b1], T),
            rh.stock_order("s1", "F", "sell", "7", "filled", [s1], T + timedelta(hours=2)))
    _orders(conn, T + timedelta(hours=4), rh.stock_order("b2", "F", "buy", "5", "filled", [b2], T + timedelta(hours=1)))
    run(db_url, CONSUMER)
    closed = rows(conn, "SELECT open_execution_id, quantity, realized_pnl FROM closed_trades ORDER BY seq")
    assert closed == [
        {"open_execution_id": rh.uid("execution:b1"), "quantity": 5, "realized_pnl": 25},
        {"open_execution_id": rh.uid("execution:b2"), "quantity": 2, "realized_pnl": 6},
    ]
    lots = rows(conn, "SELECT open_execution_id, quantity FROM open_lots")
    assert lots == [{"open_execution_id": rh.uid("execution:b2"), "quantity": 3}]


def test_sell_without_synced_purchase_has_unknown_basis(db_url: str, conn: psycopg.Connection[Any]) -> None:
    _orders(conn, T, rh.stock_order("old", "MSFT", "sell", "2", "filled",
                                    [ex("old", "400.00000000", "2.00000000", T)], T, fees="0.02"))
    run(db_url, CONSUMER)
    (c,) = rows(conn, "SELECT * FROM closed_trades")
    assert c["open_execution_id"] is None and c["cost_basis"] is None and c["realized_pnl"] is None
    assert c["proceeds"] == Decimal("800") and c["fees"] == Decimal("0.02")


def option_history(conn: psycopg.Connection[Any]) -> None:
    call = rh.option_instrument("AAPL", "call", "150.0000", date(2026, 12, 18))
    put = rh.option_instrument("SPY", "put", "580.0000", date(2026, 12, 31))
    _option_orders(
        conn, T + timedelta(hours=1),
        rh.option_order("bto", call, "buy", "open", "2.00000", "filled",
                        [ex("bto", "2.50000000", "2.00000", T)], T, regulatory_fees="0.04"),
        rh.option_order("sto", put, "sell", "open", "1.00000", "filled",
                        [ex("sto", "4.20000000", "1.00000", T + timedelta(minutes=5))], T, regulatory_fees="0.02"),
    )
    _option_orders(
        conn, T + timedelta(days=3),
        rh.option_order("stc", call, "sell", "close", "1.00000", "filled",
                        [ex("stc", "3.10000000", "1.00000", T + timedelta(days=2))], T + timedelta(days=2),
                        regulatory_fees="0.02"),
        # the buy-to-close of the put was cancelled: no fill, no trade
        rh.option_order("btc-cancelled", put, "buy", "close", "1.00000", "cancelled", [],
                        T + timedelta(days=2)),
    )
    # closes on 31 Dec 2026 22:00 New York time (03:00 UTC on 1 Jan 2027): tax year 2026
    late = datetime(2027, 1, 1, 3, 0, tzinfo=UTC)
    _option_orders(conn, late + timedelta(hours=1),
                   rh.option_order("btc", put, "buy", "close", "1.00000", "filled",
                                   [ex("btc", "1.00000000", "1.00000", late)], late, regulatory_fees="0.02"))


def test_option_trades_with_multiplier_and_fees(db_url: str, conn: psycopg.Connection[Any]) -> None:
    option_history(conn)
    run(db_url, CONSUMER)
    fills = rows(conn, "SELECT * FROM trade_executions ORDER BY executed_at")
    assert [(f["side"], f["position_effect"], f["multiplier"], f["amount"]) for f in fills] == [
        ("buy", "open", 100, 500), ("sell", "open", 100, 420), ("sell", "close", 100, 310), ("buy", "close", 100, 100)]
    closed = {r["symbol"]: r for r in rows(conn, "SELECT * FROM closed_trades")}
    call, put = closed["AAPL"], closed["SPY"]
    assert (call["direction"], call["quantity"], call["proceeds"], call["cost_basis"]) == ("long", 1, 310, 250)
    assert call["fees"] == Decimal("0.04") and call["realized_pnl"] == Decimal("59.96")
    assert (call["option_type"], call["strike"], call["expiration"]) == ("call", 150, date(2026, 12, 18))
    assert (put["direction"], put["proceeds"], put["cost_basis"]) == ("short", 420, 100)
    assert put["realized_pnl"] == Decimal("319.96") and put["tax_year"] == 2026
    (lot,) = rows(conn, "SELECT * FROM open_lots")
    assert (lot["symbol"], lot["direction"], lot["quantity"], lot["fees"]) == ("AAPL", "long", 1, Decimal("0.02"))


def test_replay_equals_live(db_url: str, conn: psycopg.Connection[Any]) -> None:
    stock_history(conn)
    option_history(conn)
    run(db_url, CONSUMER)
    live = tables(conn, CONSUMER)
    assert len(live["closed_trades"]) == 6 and live["open_lots"]
    assert replay(conn, db_url, CONSUMER) == live


def test_export_trades_csv_and_json(db_url: str, conn: psycopg.Connection[Any], cli_env: dict[str, str],
                                    tmp_path: Path) -> None:
    stock_history(conn)
    option_history(conn)
    add(conn, STOCK_ORDERS, rh.stock_orders_envelope([rh.stock_order(
        "next-year", "NVDA", "sell", "1", "filled", [ex("ny", "130.00000000", "1.00000000", T.replace(year=2027))],
        T.replace(year=2027))]), T.replace(year=2027))
    run(db_url, CONSUMER)

    r = run_cli(["export", "trades", "--format", "csv", "--year", "2026"], cli_env)
    assert r.returncode == 0, r.stderr
    data = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(data) == 6 and {d["tax_year"] for d in data} == {"2026"}
    first = data[0]
    assert (first["symbol"], first["quantity"], first["proceeds"], first["cost_basis"], first["fees"],
            first["realized_pnl"]) == ("AAPL", "4", "480", "400", "0.04", "79.96")
    assert {d["description"] for d in data if d["asset_type"] == "option"} == {
        "AAPL 2026-12-18 C150", "SPY 2026-12-31 P580"}
    assert sum(Decimal(d["realized_pnl"]) for d in data) == Decimal("123.91") + Decimal("59.96") + Decimal("319.96")

    out = tmp_path / "trades.json"
    r = run_cli(["export", "trades", "--format", "json", "--account", rh.ACCOUNT, "--output", str(out)], cli_env)
    assert r.returncode == 0, r.stderr
    items = json.loads(out.read_text(encoding="utf-8"))
    assert len(items) == 7 and items[-1]["tax_year"] == 2027 and items[-1]["realized_pnl"] is None
    assert items[0]["realized_pnl"] == "79.96"  # exact decimal text, not a float

    r = run_cli(["export", "trades", "--format", "json", "--year", "2025"], cli_env)
    assert r.returncode == 0 and json.loads(r.stdout) == []
    r = run_cli(["export", "trades", "--year", "26"], cli_env)
    assert r.returncode == 2 and "is not a year" in r.stderr
