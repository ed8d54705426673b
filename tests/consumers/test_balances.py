"""balances: latest balances per account, daily equity across midnight and time zones, replay."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from consumers.balances import CONSUMER
from schema.eventlog import ACCOUNT, PORTFOLIO
from schema.payloads import envelope
from tests.consumers import payloads as rh
from tests.consumers.support import add, one, replay, rows, run, tables


def _portfolio(conn: psycopg.Connection[Any], at: datetime, equity: str, prev: str | None = "1000.0000") -> int:
    return add(conn, PORTFOLIO, envelope(portfolio=rh.portfolio(equity, "600.0000", prev)), at)


def _account(conn: psycopg.Connection[Any], at: datetime, buying_power: str, cash: str) -> int:
    return add(conn, ACCOUNT, envelope(account=rh.account(buying_power, cash, at)), at)


def _days(conn: psycopg.Connection[Any]) -> dict[date, dict[str, Any]]:
    return {r["market_day"]: r for r in rows(conn, "SELECT * FROM daily_portfolio_balances")}


def test_latest_balances_and_a_stale_snapshot(db_url: str, conn: psycopg.Connection[Any]) -> None:
    t = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    _account(conn, t, "2500.5000", "1200.0000")
    _portfolio(conn, t + timedelta(seconds=2), "3450.1200")
    _account(conn, t - timedelta(minutes=5), "1.0000", "1.0000")  # older, arrives later
    run(db_url, CONSUMER)
    a = one(conn, "SELECT * FROM trading_accounts WHERE account = %s", rh.ACCOUNT)
    assert a["buying_power"] == Decimal("2500.5") and a["cash"] == Decimal("1200")
    assert a["equity"] == Decimal("3450.12") and a["portfolio_value"] == Decimal("600")
    assert a["account_type"] == "margin"
    assert a["account_fetched_at"] == t and a["updated_at"] == t + timedelta(seconds=2)


def test_daily_rows_across_midnight_and_time_zones(db_url: str, conn: psycopg.Connection[Any]) -> None:
    # US market day = America/New_York date. 20 Nov 2026 (EST, UTC-5):
    _portfolio(conn, datetime(2026, 11, 20, 14, 35, tzinfo=UTC), "1010.0000")  # 09:35 NY, open
    _portfolio(conn, datetime(2026, 11, 20, 18, 0, tzinfo=UTC), "1050.0000")   # high
    _portfolio(conn, datetime(2026, 11, 20, 20, 0, tzinfo=UTC), "990.0000")    # low
    # 00:30 UTC on the 21st is 19:30 on the 20th in New York: still the 20th (its close). After
    # the close the broker already reports today's close as the previous close: the day's
    # change is measured from the previous close its first snapshot reported.
    _portfolio(conn, datetime(2026, 11, 21, 0, 30, tzinfo=UTC), "1005.0000", prev="1005.0000")
    # 05:10 UTC on the 21st is 00:10 in New York: the 21st
    _portfolio(conn, datetime(2026, 11, 21, 5, 10, tzinfo=UTC), "1007.0000", prev="1005.0000")
    run(db_url, CONSUMER)
    days = _days(conn)
    assert set(days) == {date(2026, 11, 20), date(2026, 11, 21)}
    d = days[date(2026, 11, 20)]
    assert (d["open_equity"], d["high_equity"], d["low_equity"], d["close_equity"]) == (
        Decimal("1010"), Decimal("1050"), Decimal("990"), Decimal("1005"))
    assert d["previous_close"] == Decimal("1000") and d["change"] == Decimal("5")
    assert d["change_pct"] == Decimal("0.5") and d["samples"] == 4
    assert days[date(2026, 11, 21)]["change"] == Decimal("2")


def test_daylight_saving_edge(db_url: str, conn: psycopg.Connection[Any]) -> None:
    # 2026-03-08: New York switches to EDT (UTC-4). 03:30 UTC on 9 March is 23:30 EDT on the 8th.
    _portfolio(conn, datetime(2026, 3, 9, 3, 30, tzinfo=UTC), "500.0000", prev=None)
    # and 04:30 UTC on 8 March was 23:30 EST on the 7th (still standard time then)
    _portfolio(conn, datetime(2026, 3, 8, 4, 30, tzinfo=UTC), "400.0000", prev=None)
    run(db_url, CONSUMER)
    days = _days(conn)
    assert set(days) == {date(2026, 3, 7), date(2026, 3, 8)}
    # no previous close from the broker: the change is measured from the day's open
    assert days[date(2026, 3, 8)]["previous_close"] == Decimal("500")
    assert days[date(2026, 3, 8)]["change"] == Decimal("0")


def test_daily_rows_do_not_depend_on_arrival_order(db_url: str, conn: psycopg.Connection[Any]) -> None:
    base = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
    readings = [(base + timedelta(minutes=45 * i), f"{1000 + (i * 7919) % 97}.{i:04d}") for i in range(24)]
    shuffled = readings[:]
    random.Random(4).shuffle(shuffled)
    # the same readings for two accounts: in time order for one, shuffled for the other
    for at, equity in readings:
        add(conn, PORTFOLIO, envelope(portfolio=rh.portfolio(equity, "1.0000", None)), at, account="IN_ORDER")
    for at, equity in shuffled:
        add(conn, PORTFOLIO, envelope(portfolio=rh.portfolio(equity, "1.0000", None)), at, account="SHUFFLED")
    run(db_url, CONSUMER)
    q = "SELECT * FROM daily_portfolio_balances WHERE account = %s ORDER BY market_day"
    ids = {"account", "first_event_id", "last_event_id"}  # differ between the two accounts
    in_order = [{k: v for k, v in r.items() if k not in ids} for r in rows(conn, q, "IN_ORDER")]
    mixed = [{k: v for k, v in r.items() if k not in ids} for r in rows(conn, q, "SHUFFLED")]
    assert [r["market_day"] for r in in_order] == [date(2026, 11, 20), date(2026, 11, 21)]
    assert in_order[0]["open_equity"] == Decimal(readings[0][1])
    assert mixed == in_order


def test_replay_equals_live(db_url: str, conn: psycopg.Connection[Any]) -> None:
    t = datetime(2026, 11, 19, 14, 0, tzinfo=UTC)
    for i in range(40):
        at = t + timedelta(minutes=45 * i)
        _account(conn, at, f"{2000 + i}.0000", f"{1000 - i}.5000")
        _portfolio(conn, at + timedelta(seconds=3), f"{3000 + (i * 37) % 101}.2500")
    _portfolio(conn, t - timedelta(hours=30), "1.0000")  # stale and late
    run(db_url, CONSUMER)
    live = tables(conn, CONSUMER)
    assert len(live["daily_portfolio_balances"]) >= 3
    assert replay(conn, db_url, CONSUMER) == live
