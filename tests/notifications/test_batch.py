"""The batch handler (a replay's speed) has exactly the effect of the per-event handler.

Each test applies the same event log twice to the same database: once through
``Rules.handle_batch`` and once with the batch handler switched off (the runtime then calls
``Rules.handle`` per event), emptying the rule state, the deliveries and the dramatiq queue
(identities restarted) in between, and compares every row: the ``notify_*`` tables as text,
each delivery with its id and the message queued for it, and the queue itself in order.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from brokersync.ops import rewind
from consumers import notifications
from consumers.runtime import Consumer, Event, Runner, RuntimeConfig
from schema import eventlog
from schema.payloads import QUOTES_ACCOUNT
from tests.notifications import payloads as rh
from tests.notifications.support import make_settings

T0 = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
CONFIG = RuntimeConfig(batch_size=97, poll_interval=1.0, max_attempts=2, retry_backoff=0.01,
                       reconnect_max_backoff=0.5)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


@dataclasses.dataclass
class Counting:
    """Wraps the batch handler: how many events it applied, and whether it ever gave up."""

    inner: Any
    sizes: list[int] = dataclasses.field(default_factory=list)
    raised: list[BaseException] = dataclasses.field(default_factory=list)

    def __call__(self, conn: psycopg.Connection[Any], events: Sequence[Event]) -> None:
        try:
            self.inner(conn, events)
        except BaseException as exc:
            self.raised.append(exc)
            raise
        self.sizes.append(len(events))


def consumer(tmp_path: Any, clock: datetime, **overrides: Any) -> Consumer:
    s = make_settings(tmp_path, notify_sinks="log,webhook",
                      notify_webhook_url="http://127.0.0.1:9/unused", **overrides)
    return notifications.build(s, clock=lambda: clock)


def run(c: Consumer, url: str, config: RuntimeConfig = CONFIG) -> Runner:
    runner = Runner(c, url, config, threading.Event(), exit_when_idle=True)
    runner.run()
    return runner


def dump(conn: psycopg.Connection[Any], *, ids: bool = True) -> dict[str, list[Any]]:
    """Every row the consumer writes, as text (so 10 and 10.0 would differ).

    ``ids=False``: delivery ids and queue positions by rank, not value. A failed attempt that
    is rolled back still uses up identity values (as the per-event path's own optimistic
    attempt does), so after a poison event only their order is comparable.
    """
    did = "d.id" if ids else "row_number() OVER (ORDER BY d.id)"
    pos = "position" if ids else "row_number() OVER (ORDER BY position)"
    args = "message->'args'" if ids else "(SELECT n FROM (SELECT id, row_number() OVER (ORDER BY id) AS n " \
        "FROM notification_deliveries) r WHERE r.id = (message->'args'->>0)::bigint)"
    out: dict[str, list[Any]] = {
        t: [r[0] for r in conn.execute(f"SELECT x::text FROM {t} x ORDER BY 1")]
        for t in notifications.STATE_TABLES
    }
    out["deliveries"] = conn.execute(
        f"""SELECT ({did}, d.dedupe_key, d.sink, d.rule, d.account, d.subject, d.title, d.body,
                    d.data, d.event_id, d.occurred_at, d.status, d.attempts)::text,
                   d.message_id IS NOT NULL, q.queue_name, q.state::text,
                   q.message->>'actor_name'
            FROM notification_deliveries d LEFT JOIN dramatiq.queue q USING (message_id)
            ORDER BY d.id"""
    ).fetchall()
    out["queue"] = conn.execute(
        f"""SELECT {pos}, queue_name, state::text, message->>'actor_name', {args}
            FROM dramatiq.queue ORDER BY position"""
    ).fetchall()
    return out


def start_over(conn: psycopg.Connection[Any], c: Consumer) -> None:
    """Empty the rule state (cursor to the first event), the deliveries and the queue."""
    rewind(conn, c)
    conn.execute("TRUNCATE notification_deliveries, dramatiq.queue RESTART IDENTITY")


def batch_then_per_event(conn: psycopg.Connection[Any], url: str, c: Consumer,
                         config: RuntimeConfig = CONFIG) -> tuple[dict[str, list[Any]], Counting]:
    """Apply the log with the batch handler, then per event; assert the same rows; return them."""
    counting = Counting(c.handle_batch)
    run(dataclasses.replace(c, handle_batch=counting), url, config)
    batched = dump(conn)
    start_over(conn, c)
    run(dataclasses.replace(c, handle_batch=None), url, config)
    per_event = dump(conn)
    for table, rows in per_event.items():
        assert batched[table] == rows, table
    assert conn.execute("SELECT count(*) FROM consumer_dead_letters").fetchone() == (0,)
    return per_event, counting


def rank(conn: psycopg.Connection[Any], text: str) -> int:
    """Where ``text`` sorts among the position keys in the database's collation."""
    row = conn.execute("SELECT count(*) FROM unnest(%s::text[]) AS k WHERE k < %s",
                       (["AAPL", "MSFT", "ZM", "abc", "TSLA", "p2"], text)).fetchone()
    return int(row[0]) if row else 0


def test_simulated_days_batch_equals_per_event(conn, db_url, tmp_path):
    """Three days of the simulated broker: the same rows either way, in batches of 97 events."""
    from producer.simulate import simulate

    end = datetime(2026, 11, 20, 21, 0, tzinfo=UTC)
    simulate(conn, days=3, seed=5, end=end)
    # The clock at the end: the last day is queued for sending, the older days expired.
    c = consumer(tmp_path, end, notify_buying_power_floor=10_000_000.0, notify_pnl_move_pct=1.0,
                 notify_option_pnl_move_pct=5.0, notify_option_expiry_days=365)
    rows, counting = batch_then_per_event(conn, db_url, c)

    assert not counting.raised and max(counting.sizes) == CONFIG.batch_size
    assert sum(counting.sizes) > 500
    statuses = {r[0].split(",")[-2] for r in rows["deliveries"]}
    assert statuses == {"queued", "expired"}, statuses
    rules = {r[0].split(",")[3] for r in rows["deliveries"]}
    assert {"position_opened", "position_closed", "pnl_move", "buying_power_low",
            "option_expiry"} <= rules, rules
    queued = sum(1 for r in rows["deliveries"] if r[2] is not None)
    assert queued and len(rows["queue"]) == queued
    assert rows["notify_positions"] and rows["notify_quotes"] and rows["notify_accounts"]


def test_replay_in_batches_equals_live_per_event(conn, db_url, tmp_path):
    """Live applies one event at a time; a replay in batches rebuilds the same state and
    records and queues nothing new."""
    from producer.simulate import simulate

    end = datetime(2026, 11, 20, 21, 0, tzinfo=UTC)
    simulate(conn, days=2, seed=8, end=end)
    c = consumer(tmp_path, end, notify_buying_power_floor=10_000_000.0, notify_pnl_move_pct=1.0)
    run(dataclasses.replace(c, handle_batch=None), db_url)
    live = dump(conn)
    assert live["deliveries"]

    rewind(conn, c)
    counting = Counting(c.handle_batch)
    run(dataclasses.replace(c, handle_batch=counting), db_url, dataclasses.replace(CONFIG, batch_size=500))
    assert not counting.raised and max(counting.sizes) == 500
    assert dump(conn) == live


def test_edge_cases_in_one_batch(conn, db_url, tmp_path):
    """What the simulation rarely shows, all inside batches: a late older snapshot, a quote
    older than the one kept, a price hovering on a band edge (a dedupe key repeated within the
    batch), several positions closing at once (their order), a position closed and opened
    again, an option whose id is a held stock's symbol, a negative-zero price, buying power
    going under the floor, recovering and going under again, a non-JSON body's neighbours."""
    exp = date(2026, 11, 22)
    rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions(
        {"AAPL": ("10", "100"), "MSFT": ("2", "400"), "ZM": ("5", "60"), "abc": ("1", "5"),
         "TSLA": ("3", "200")}), fetched_at=at(0))
    rh.put(conn, eventlog.QUOTES, rh.quotes({"AAPL": "104", "MSFT": "390", "ZM": "30",
                                             "abc": "5.5", "TSLA": "1E+2"}),
           account=QUOTES_ACCOUNT, fetched_at=at(1))
    for i, price in enumerate(["106", "104", "106", "104", "111"]):
        rh.put(conn, eventlog.QUOTES, rh.quotes({"AAPL": price}), account=QUOTES_ACCOUNT,
               fetched_at=at(2 + i))
    rh.put(conn, eventlog.QUOTES, rh.quotes({"ZM": "-0.00"}), account=QUOTES_ACCOUNT, fetched_at=at(7))
    # A second quotes stream (another account) with an older quote: the newer price stays.
    rh.put(conn, eventlog.QUOTES, rh.quotes({"AAPL": "50"}), account="other", fetched_at=at(3))
    # Fetched before the last positions snapshot, committed after: ignored.
    rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions({"NFLX": ("1", "1")}), fetched_at=at(-5))
    rh.put(conn, eventlog.OPTION_POSITIONS, rh.option_positions(
        [rh.option_position("AAPL", "AAPL", exp, "200.0000", "250.0000"),
         rh.option_position("p2", "SPY", exp, "600.0000", "400.0000", position_type="short",
                            option_type="put")],
        {"AAPL": "2.50", "p2": "4.00"}), fetched_at=at(8))
    rh.put(conn, eventlog.OPTION_POSITIONS, rh.option_positions(
        [rh.option_position("p2", "SPY", exp, "600.0000", "400.0000", position_type="short",
                            option_type="put")],
        {"p2": "-0"}), fetched_at=at(9))
    for i, bp in enumerate(["5000", "900", "800", "1500", "-0.00", "10", None]):
        rh.put(conn, eventlog.ACCOUNT, rh.account(bp), fetched_at=at(10 + i))
    rh.put(conn, eventlog.PORTFOLIO, rh.portfolio("100.00", "90"), fetched_at=at(12))
    rh.put(conn, eventlog.PORTFOLIO, rh.portfolio("0", "-0.0"), fetched_at=at(11))
    # Three close at once (their alerts go out in key order), then AAPL comes back.
    rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions({"TSLA": ("3", "200")}), fetched_at=at(20))
    rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions(
        {"TSLA": ("3.0", "200.00"), "AAPL": ("1", "90")}), fetched_at=at(21))
    rh.put(conn, eventlog.QUOTES, rh.quotes({"AAPL": "99", "TSLA": "250"}), account=QUOTES_ACCOUNT,
           fetched_at=at(22))

    c = consumer(tmp_path, at(60), notify_pnl_move_pct=5.0, notify_buying_power_floor=1000.0)
    rows, counting = batch_then_per_event(conn, db_url, c)
    events = conn.execute("SELECT count(*) FROM staging_snapshots").fetchone()
    assert not counting.raised and counting.sizes == [events[0] if events else 0]
    keys = [r[0].split(",")[1] for r in rows["deliveries"] if ",log," in r[0]]
    closed = [k.split(":")[2] for k in keys if k.startswith("position_closed:")]
    assert closed == sorted(closed, key=lambda k: rank(conn, k)) and len(closed) == 4
    assert sum(k.startswith("buying_power_low:") for k in keys) == 2
    assert sum(k.startswith("pnl_move:5QR12345:AAPL:1:") for k in keys) == 1  # hovered twice
    [zero] = [r[0] for r in rows["deliveries"] if "pnl_move:5QR12345:ZM" in r[0] and ",log," in r[0]]
    assert "price $0.00" in zero
    assert any("Buying power $-0.00 is under" in r[0] for r in rows["deliveries"])


def test_a_poison_event_inside_a_batch(conn, db_url, tmp_path):
    """The batch handler gives up on a batch holding a bad payload; the runtime redoes it per
    event: the bad one is dead-lettered, the others applied, as without batches."""
    for i in range(5):
        rh.put(conn, eventlog.ACCOUNT, rh.account(str(500 + 1000 * (i % 2))), fetched_at=at(i))
    bad = rh.put(conn, eventlog.STOCK_POSITIONS, {"v": 1, "responses": {"positions": "not pages"}},
                 fetched_at=at(6))
    rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions({"AAPL": ("1", "1")}), fetched_at=at(7))
    c = consumer(tmp_path, at(60), notify_buying_power_floor=1000.0)
    counting = Counting(c.handle_batch)
    run(dataclasses.replace(c, handle_batch=counting), db_url)
    assert counting.raised  # the batch handler gave up: the runtime went one event at a time
    assert conn.execute("SELECT event_id FROM consumer_dead_letters").fetchall() == [(bad,)]
    with_batches = dump(conn, ids=False)
    assert len(with_batches["deliveries"]) == 2 * 4  # 3 times under the floor, AAPL opened
    conn.execute("TRUNCATE consumer_dead_letters")
    start_over(conn, c)
    run(dataclasses.replace(c, handle_batch=None), db_url)
    assert conn.execute("SELECT event_id FROM consumer_dead_letters").fetchall() == [(bad,)]
    assert dump(conn, ids=False) == with_batches


def test_a_number_out_of_the_batch_range_is_left_to_the_per_event_handler(conn, db_url, tmp_path):
    """A number PostgreSQL may refuse: the batch handler does not guess, the per-event
    handler decides (here: applied or dead-lettered, the same either way)."""
    rh.put(conn, eventlog.STOCK_POSITIONS, rh.stock_positions({"AAPL": ("1", "1")}), fetched_at=at(0))
    for i, price in enumerate(["2", "1E+950", "1E+5000", "3"]):
        rh.put(conn, eventlog.QUOTES, rh.quotes({"XYZ": price}), account=QUOTES_ACCOUNT,
               fetched_at=at(1 + i))
    c = consumer(tmp_path, at(60))
    counting = Counting(c.handle_batch)
    run(dataclasses.replace(c, handle_batch=counting), db_url)
    assert counting.raised
    with_batches = dump(conn, ids=False), conn.execute(
        "SELECT event_id FROM consumer_dead_letters ORDER BY 1").fetchall()
    assert with_batches[0]["notify_quotes"] == ['(XYZ,3,"2026-11-20 15:04:00+00")']
    conn.execute("TRUNCATE consumer_dead_letters")
    start_over(conn, c)
    run(dataclasses.replace(c, handle_batch=None), db_url)
    assert (dump(conn, ids=False), conn.execute(
        "SELECT event_id FROM consumer_dead_letters ORDER BY 1").fetchall()) == with_batches
