"""cache_invalidation: versions bumped on changed content, NOTIFY, the reader, replay."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from consumers.cache import CACHE_CHANNEL, CONSUMER, CacheReader
from consumers.positions import CONSUMER as POSITIONS
from schema.eventlog import PORTFOLIO, QUOTES, STOCK_ORDERS, STOCK_POSITIONS
from schema.payloads import QUOTES_ACCOUNT, envelope
from tests.consumers import payloads as rh
from tests.consumers.support import add, replay, rows, run, tables

T = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


def _versions(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], int]:
    return {(r["cache_key"], r["account"]): r["version"] for r in rows(conn, "SELECT * FROM cache_versions")}


def _positions(conn: psycopg.Connection[Any], at: datetime, qty: str) -> int:
    body = rh.stock_positions_envelope([rh.stock_position("AAPL", qty, "100.0000", T.replace(hour=9))])
    return add(conn, STOCK_POSITIONS, body, at)


def _portfolio(conn: psycopg.Connection[Any], at: datetime, equity: str) -> int:
    return add(conn, PORTFOLIO, envelope(portfolio=rh.portfolio(equity, "1.0000", None)), at)


def test_versions_follow_content_changes(db_url: str, conn: psycopg.Connection[Any]) -> None:
    _positions(conn, T, "1.0")                              # new: v1
    _positions(conn, T + timedelta(minutes=5), "1.0")       # same content: no bump
    _positions(conn, T + timedelta(minutes=10), "2.0")      # changed: v2
    _positions(conn, T + timedelta(minutes=1), "7.0")       # stale (older fetch): no bump
    _portfolio(conn, T, "100.0000")                         # balances v1
    add(conn, STOCK_ORDERS, rh.stock_orders_envelope([]), T)  # an empty delta: nothing changed
    e = rh.execution("x", "10.00000000", "1.00000000", T)
    add(conn, STOCK_ORDERS, rh.stock_orders_envelope([rh.stock_order("x", "F", "buy", "1", "filled", [e], T)]),
        T + timedelta(hours=1))                             # trades v1
    add(conn, QUOTES, rh.quotes_envelope([rh.quote("AAPL", "101.0000", T)]), T, account=QUOTES_ACCOUNT)
    run(db_url, CONSUMER)
    assert _versions(conn) == {
        ("positions", rh.ACCOUNT): 2, ("balances", rh.ACCOUNT): 1, ("trades", rh.ACCOUNT): 1,
        ("positions", QUOTES_ACCOUNT): 1,
    }
    (v,) = rows(conn, "SELECT changed_at FROM cache_versions WHERE cache_key = 'positions' AND account = %s",
                rh.ACCOUNT)
    assert v["changed_at"] == T + timedelta(minutes=10)


def test_notify_on_the_documented_channel(db_url: str, conn: psycopg.Connection[Any]) -> None:
    listener = psycopg.connect(db_url, autocommit=True)
    try:
        listener.execute(f"LISTEN {CACHE_CHANNEL}")
        first = _portfolio(conn, T, "100.0000")
        _portfolio(conn, T + timedelta(minutes=5), "100.0000")   # unchanged: no notification
        third = _portfolio(conn, T + timedelta(minutes=10), "101.0000")
        run(db_url, CONSUMER)
        got = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=2)]
        got += [json.loads(n.payload) for n in listener.notifies(timeout=0.2)]
    finally:
        listener.close()
    assert got == [
        {"key": "balances", "account": rh.ACCOUNT, "version": 1, "event_id": first,
         "changed_at": "2026-11-20T15:00:00.000000Z"},
        {"key": "balances", "account": rh.ACCOUNT, "version": 2, "event_id": third,
         "changed_at": "2026-11-20T15:10:00.000000Z"},
    ]


def test_reader_drops_entries_on_notification(db_url: str, conn: psycopg.Connection[Any]) -> None:
    loads: list[str] = []

    def load_positions(c: psycopg.Connection[Any]) -> list[Any]:
        loads.append("positions")
        return c.execute("SELECT symbol, quantity FROM positions ORDER BY symbol").fetchall()

    _positions(conn, T, "1.0")
    run(db_url, POSITIONS)
    run(db_url, CONSUMER)
    with CacheReader(db_url) as cache:
        assert cache.versions[("positions", rh.ACCOUNT)] == 1
        assert [tuple(r) for r in cache.get("positions", rh.ACCOUNT, load_positions)] == [("AAPL", 1)]
        cache.get("balances", rh.ACCOUNT, lambda c: "unrelated")
        assert cache.get("positions", rh.ACCOUNT, load_positions) and loads == ["positions"]  # cached

        _positions(conn, T + timedelta(minutes=5), "3.0")
        run(db_url, POSITIONS)
        run(db_url, CONSUMER)
        assert cache.poll(timeout=5) == 1
        assert not cache.cached("positions", rh.ACCOUNT) and cache.cached("balances", rh.ACCOUNT)
        assert cache.versions[("positions", rh.ACCOUNT)] == 2
        assert cache.wait_applied("positions", rh.ACCOUNT, timeout=1)
        assert [tuple(r) for r in cache.get("positions", rh.ACCOUNT, load_positions)] == [("AAPL", 3)]
        assert loads == ["positions", "positions"]

        # a quote change ("*") drops every account's positions entry
        add(conn, QUOTES, rh.quotes_envelope([rh.quote("AAPL", "101.0000", T)]), T, account=QUOTES_ACCOUNT)
        run(db_url, CONSUMER)
        assert cache.poll(timeout=5) == 1 and not cache.cached("positions", rh.ACCOUNT)


def test_replay_equals_live(db_url: str, conn: psycopg.Connection[Any]) -> None:
    for i in range(30):
        at = T + timedelta(minutes=5 * i)
        _positions(conn, at, f"{i // 3}.0")
        _portfolio(conn, at, f"{100 + i % 4}.0000")
        add(conn, QUOTES, rh.quotes_envelope([rh.quote("AAPL", f"{100 + i % 2}.0000", at)]), at,
            account=QUOTES_ACCOUNT)
    _positions(conn, T - timedelta(days=1), "99.0")  # stale
    run(db_url, CONSUMER)
    live = tables(conn, CONSUMER)
    assert _versions(conn)[("positions", rh.ACCOUNT)] == 10
    assert replay(conn, db_url, CONSUMER) == live
