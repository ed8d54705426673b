"""The notification rules, fired by events inserted into a real database, and replay."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from brokersync.ops import rewind
from consumers import notifications
from consumers.runtime import Consumer, Runner
from schema import eventlog
from schema.payloads import QUOTES_ACCOUNT
from tests.notifications import payloads as rh
from tests.notifications.support import deliveries, make_settings, queued_messages
from tests.support import ledger
from tests.support.events import insert
from tests.support.runner import FAST

T0 = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)  # 10:00 in New York


def consumer(tmp_path, clock=None, **overrides: Any) -> Consumer:
    s = make_settings(tmp_path, notify_sinks=overrides.pop("notify_sinks", "log,webhook"),
                      notify_webhook_url="http://127.0.0.1:9/unused", **overrides)
    return notifications.build(s, clock=clock or (lambda: T0 + timedelta(hours=1)))


def apply_all(c: Consumer, url: str) -> Runner:
    """Run the consumer until it has applied every event, in this thread."""
    runner = Runner(c, url, FAST, threading.Event(), exit_when_idle=True)
    runner.run()
    return runner


def rules(conn: psycopg.Connection[Any], sink: str = "log") -> list[tuple[str, str]]:
    return [(d["rule"], d["subject"]) for d in deliveries(conn, sink=sink)]


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_positions_opened_and_closed(conn, db_url, tmp_path):
    c = consumer(tmp_path)
    rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions({"AAPL": ("10.00000000", "150.0000")}),
           fetched_at=at(0))
    rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions(
        {"AAPL": ("10.00000000", "150.0000"), "MSFT": ("3.00000000", "400.0000")}), fetched_at=at(5))
    closing = rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions(
        {"MSFT": ("3.00000000", "400.0000")}), fetched_at=at(10))
    apply_all(c, db_url)

    assert rules(conn) == [("position_opened", "AAPL"), ("position_opened", "MSFT"),
                           ("position_closed", "AAPL")]
    closed = deliveries(conn, rule="position_closed", sink="webhook")
    assert closed[0]["dedupe_key"] == f"position_closed:{rh.ACCOUNT}:AAPL:{closing}"
    assert closed[0]["event_id"] == closing
    # One delivery per sink, each with its dramatiq message queued in the same transaction.
    all_rows = deliveries(conn)
    assert len(all_rows) == 6 and {d["status"] for d in all_rows} == {"queued"}
    msgs = queued_messages(conn)
    assert sorted((a, i) for a, i, _ in msgs) == sorted(
        (f"notify_{d['sink']}", d["id"]) for d in all_rows)
    held = conn.execute("SELECT position_key, quantity FROM notify_positions").fetchall()
    assert [(k, float(q)) for k, q in held] == [("MSFT", 3.0)]


def test_a_stale_snapshot_arriving_late_changes_nothing(conn, db_url, tmp_path):
    c = consumer(tmp_path, notify_sinks="log")
    rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions({"AAPL": ("1", "10")}), fetched_at=at(10))
    # Fetched earlier, committed later: without the guard it would "close" AAPL and open TSLA.
    rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions({"TSLA": ("1", "10")}), fetched_at=at(5))
    apply_all(c, db_url)
    assert rules(conn) == [("position_opened", "AAPL")]


def test_pnl_moves_past_the_threshold_once_per_band(conn, db_url, tmp_path):
    c = consumer(tmp_path, notify_sinks="log", notify_pnl_move_pct=5.0)
    rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions({"AAPL": ("10", "100.0000")}), fetched_at=at(0))
    for i, price in enumerate(["101.00", "104.99", "105.50", "107.00", "111.00", "99.00", "94.00"]):
        rh.put(conn, eventlog.QUOTES, rh.quotes({"AAPL": price, "MSFT": "1.00"}),
               account=QUOTES_ACCOUNT, fetched_at=at(1 + i))
    apply_all(c, db_url)
    moves = deliveries(conn, rule="pnl_move")
    # +1% (first price: recorded silently), +4.99 (band 0), +5.5 (band 1: alert), +7 (band 1),
    # +11 (band 2: alert), -1 (band 0: alert), -6 (band -1: alert)
    assert [m["title"].split(": ", 1)[1] for m in moves] == [
        "unrealized P&L rose above +5.00% (now +5.50%)",
        "unrealized P&L rose above +10.00% (now +11.00%)",
        "unrealized P&L fell below +5.00% (now -1.00%)",
        "unrealized P&L fell below -5.00% (now -6.00%)",
    ]
    assert moves[2]["body"] == (f"AAPL: unrealized P&L -1.00% (-$10.00), price $99.00, average cost "
                                f"$100.00 (account {rh.ACCOUNT})")


def test_a_price_hovering_on_an_edge_alerts_once_per_band_and_day(conn, db_url, tmp_path):
    rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions({"AAPL": ("1", "100")}), fetched_at=at(0))
    prices = ["104", "106", "104", "106", "104", "106"]
    for i, price in enumerate(prices):
        rh.put(conn, eventlog.QUOTES, rh.quotes({"AAPL": price}), account=QUOTES_ACCOUNT, fetched_at=at(1 + i))
    next_day = T0 + timedelta(days=1)
    for i, price in enumerate(["104", "106"]):
        rh.put(conn, eventlog.QUOTES, rh.quotes({"AAPL": price}), account=QUOTES_ACCOUNT,
               fetched_at=next_day + timedelta(minutes=i))
    apply_all(consumer(tmp_path, clock=lambda: next_day, notify_sinks="log", notify_pnl_move_pct=5.0), db_url)
    keys = [d["dedupe_key"] for d in deliveries(conn, rule="pnl_move")]
    assert keys == [
        f"pnl_move:{rh.ACCOUNT}:AAPL:1:2026-11-20",
        f"pnl_move:{rh.ACCOUNT}:AAPL:0:2026-11-20",
        f"pnl_move:{rh.ACCOUNT}:AAPL:0:2026-11-21",
        f"pnl_move:{rh.ACCOUNT}:AAPL:1:2026-11-21",
    ]


def test_option_expiry_and_option_pnl(conn, db_url, tmp_path):
    c = consumer(tmp_path, notify_sinks="log", notify_option_expiry_days=3, notify_option_pnl_move_pct=20.0)
    soon = date(2026, 11, 23)  # 3 days after T0's New York date
    later = date(2026, 12, 18)
    positions = [rh.option_position("p1", "AAPL", soon, "200.0000", "250.0000"),
                 rh.option_position("p2", "SPY", later, "600.0000", "400.0000", position_type="short",
                                    option_type="put")]
    rh.put(conn, eventlog.OPTION_POSITIONS, rh.option_positions(positions, {"p1": "2.50", "p2": "4.00"}),
           fetched_at=at(0))
    # Again the next cycle: the expiry alert is not repeated; p2's short put doubles (P&L -100%).
    rh.put(conn, eventlog.OPTION_POSITIONS, rh.option_positions(positions, {"p1": "2.60", "p2": "8.00"}),
           fetched_at=at(5))
    apply_all(c, db_url)
    got = rules(conn)
    assert got.count(("option_expiry", "AAPL 2026-11-23 200 call (long)")) == 1
    assert ("position_opened", "SPY 2026-12-18 600 put (short)") in got
    assert not any(r == "option_expiry" and "SPY" in s for r, s in got)
    [move] = deliveries(conn, rule="pnl_move")
    assert move["subject"] == "SPY 2026-12-18 600 put (short)"
    assert "now -100.00%" in move["title"]


def test_buying_power_floor_alerts_once_and_rearms(conn, db_url, tmp_path):
    c = consumer(tmp_path, notify_sinks="log", notify_buying_power_floor=1000.0)
    for i, bp in enumerate(["5000.0000", "900.0000", "800.0000", "1500.0000", "10.0000"]):
        rh.put(conn, eventlog.ACCOUNT, rh.account(bp), fetched_at=at(i))
    apply_all(c, db_url)
    low = deliveries(conn, rule="buying_power_low")
    assert [d["title"] for d in low] == ["Buying power $900.00 is under $1,000.00",
                                         "Buying power $10.00 is under $1,000.00"]


def test_time_based_rules_on_tick(conn, db_url, tmp_path):
    now = [at(0)]
    c = consumer(tmp_path, clock=lambda: now[0], notify_sinks="log", notify_producer_failing_cycles=3,
                 notify_data_age_minutes=30, notify_daily_summary_time="16:30",
                 notify_time_zone="America/New_York")
    rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions({"AAPL": ("10", "100")}), fetched_at=at(0))
    rh.put(conn, eventlog.QUOTES, rh.quotes({"AAPL": "110"}), account="*", fetched_at=at(0))
    rh.put(conn, eventlog.PORTFOLIO, rh.portfolio("12000.0000", "11800.0000"), fetched_at=at(0))
    rh.put(conn, eventlog.ACCOUNT, rh.account("2500.0000"), fetched_at=at(0))
    apply_all(c, db_url)
    for status in ("ok", "failed", "partial", "failed"):
        conn.execute("INSERT INTO producer_cycle_runs (source, status, error) VALUES ('test', %s, 'HTTP 503')",
                     (status,))

    def tick() -> None:
        assert c.tick is not None
        with conn.transaction():
            c.tick(conn)

    tick()  # 10:00 New York, data fresh: only the failing producer
    assert rules(conn)[-1:] == [("producer_failing", "producer")]
    tick()
    assert [r for r, _ in rules(conn)].count("producer_failing") == 1

    now[0] = at(31)  # data older than 30 minutes
    tick()
    tick()
    assert [r for r, _ in rules(conn)].count("data_stale") == 1

    now[0] = datetime(2026, 11, 20, 21, 31, tzinfo=UTC)  # 16:31 in New York
    tick()
    tick()
    [summary] = deliveries(conn, rule="daily_summary")
    assert summary["dedupe_key"] == f"daily_summary:{rh.ACCOUNT}:2026-11-20"
    assert "Equity $12,000.00 ($200.00, +1.69% today)" in summary["body"]
    assert "AAPL: 10 @ $110.00 (+10.00%)" in summary["body"]
    assert "Buying power $2,500.00" in summary["body"]
    now[0] = datetime(2026, 11, 21, 21, 31, tzinfo=UTC)  # the next day
    tick()
    assert len(deliveries(conn, rule="daily_summary")) == 2


def test_old_events_are_recorded_as_expired_not_sent(conn, db_url, tmp_path):
    c = consumer(tmp_path, clock=lambda: at(0) + timedelta(days=30), notify_sinks="log")
    rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions({"AAPL": ("1", "1")}), fetched_at=at(0))
    apply_all(c, db_url)
    [d] = deliveries(conn)
    assert d["status"] == "expired"
    assert queued_messages(conn) == []


def state(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in notifications.STATE_TABLES}


def test_replay_rebuilds_the_state_and_sends_nothing_again(conn, db_url, tmp_path):
    c = consumer(tmp_path, notify_buying_power_floor=1000.0)
    rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions({"AAPL": ("10", "100")}), fetched_at=at(0))
    for i, price in enumerate(["100", "106", "112", "90"]):
        rh.put(conn, eventlog.QUOTES, rh.quotes({"AAPL": price}), account="*", fetched_at=at(1 + i))
    rh.put(conn, eventlog.ACCOUNT, rh.account("500"), fetched_at=at(6))
    rh.put(conn, eventlog.PORTFOLIO, rh.portfolio("100", "90"), fetched_at=at(6))
    rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions({}), fetched_at=at(7))
    apply_all(c, db_url)
    live_state = state(conn)
    live_deliveries = deliveries(conn)
    live_queue = queued_messages(conn)
    assert len(live_deliveries) == 2 * 6  # opened, 3 P&L moves, buying power, closed; 2 sinks

    r = rewind(conn, c)
    assert r.full
    assert all(not rows for rows in state(conn).values())
    apply_all(c, db_url)

    assert state(conn) == live_state
    assert deliveries(conn) == live_deliveries  # no new rows, statuses untouched
    assert queued_messages(conn) == live_queue  # nothing queued again


def test_the_state_does_not_depend_on_the_thresholds(conn, db_url, tmp_path):
    """A replay run with other thresholds (e.g. a process whose environment differs) still
    rebuilds the same state rows: the state keeps P&L % and buying power, not bands."""
    rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions({"AAPL": ("10", "100")}), fetched_at=at(0))
    for i, price in enumerate(["100", "103", "112", "90"]):
        rh.put(conn, eventlog.QUOTES, rh.quotes({"AAPL": price}), account="*", fetched_at=at(1 + i))
    rh.put(conn, eventlog.ACCOUNT, rh.account("500"), fetched_at=at(6))
    first = consumer(tmp_path, notify_pnl_move_pct=1.0, notify_buying_power_floor=1000.0)
    apply_all(first, db_url)
    live_state = state(conn)
    assert [float(r[-1]) for r in conn.execute("SELECT pnl_pct FROM notify_positions")] == [-10.0]
    other = consumer(tmp_path, notify_pnl_move_pct=7.0)
    rewind(conn, other)
    apply_all(other, db_url)
    assert state(conn) == live_state


def test_a_bad_payload_is_dead_lettered_and_other_consumers_go_on(conn, db_url, tmp_path):
    c = consumer(tmp_path, notify_sinks="log", notify_buying_power_floor=1000.0)
    bad = rh.put(conn, eventlog.STOCK_POSITIONS, {"v": 1, "responses": {"positions": "not pages"}},
                 fetched_at=at(0))
    raw = rh.put(conn, eventlog.ACCOUNT, b"<html>502 Bad Gateway</html>", fetched_at=at(1))
    insert(conn, {"key": "a", "amount": 5})
    rh.put(conn, eventlog.ACCOUNT, rh.account("10"), fetched_at=at(2))
    insert(conn, {"key": "a", "amount": 7})
    apply_all(c, db_url)
    apply_all(ledger.CONSUMER, db_url)

    dead = conn.execute(
        "SELECT consumer, event_id FROM consumer_dead_letters ORDER BY event_id").fetchall()
    assert dead == [("notifications", bad), ("notifications", raw)]
    # The notifications consumer went past them; the ledger consumer never noticed.
    assert rules(conn) == [("buying_power_low", "buying power")]
    assert conn.execute("SELECT total FROM test_totals WHERE key = 'a'").fetchone() == (12,)
    assert conn.execute("SELECT count(*) FROM notify_positions").fetchone() == (0,)


def test_simulated_broker_history_live_then_replay(conn, db_url, tmp_path):
    """A day of the producer's simulated broker: the rules run over realistic snapshots, and
    a replay rebuilds the same state and records no new delivery."""
    from producer.simulate import simulate

    end = datetime(2026, 11, 20, 21, 0, tzinfo=UTC)
    stats = simulate(conn, days=1, seed=11, end=end)
    assert stats["snapshots"] > 100
    c = consumer(tmp_path, clock=lambda: end, notify_buying_power_floor=10_000_000.0)
    apply_all(c, db_url)
    assert conn.execute("SELECT count(*) FROM consumer_dead_letters").fetchone() == (0,)
    live_state, live_deliveries = state(conn), deliveries(conn)
    got = {d["rule"] for d in live_deliveries}
    assert {"position_opened", "buying_power_low"} <= got, got
    assert live_state["notify_positions"] and live_state["notify_quotes"]

    rewind(conn, c)
    apply_all(c, db_url)
    assert state(conn) == live_state
    assert deliveries(conn) == live_deliveries
