"""The consumer runtime against a real PostgreSQL: ordering, gaps, poison events, reconnects."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg

from brokersync.db import configure
from consumers.runtime import Runner
from tests.support import ledger
from tests.support.events import insert, insert_many
from tests.support.runner import FAST, caught_up, cursor, running
from tests.support.wait import wait_until


def totals(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return dict(conn.execute("SELECT key, total FROM test_totals ORDER BY key").fetchall())


def ledger_ids(conn: psycopg.Connection[Any]) -> list[int]:
    return [r[0] for r in conn.execute("SELECT event_id FROM test_ledger ORDER BY event_id")]


def test_applies_every_event_once_in_batches(conn, db_url):
    ids = insert_many(conn, [{"key": f"k{i % 3}", "amount": i} for i in range(250)])
    with running(ledger.CONSUMER, db_url):
        wait_until(lambda: cursor(conn) == ids[-1], what="catch-up")
    assert ledger_ids(conn) == ids
    assert totals(conn) == {f"k{j}": sum(i for i in range(250) if i % 3 == j) for j in range(3)}
    row = conn.execute("SELECT applied_count, kinds FROM consumer_cursors WHERE consumer='ledger'").fetchone()
    assert row == (250, ["test"])


def test_other_kinds_are_not_delivered(conn, db_url):
    insert(conn, {"key": "a", "amount": 1}, kind="positions_like")
    ids = insert_many(conn, [{"key": "a", "amount": 2}])
    with running(ledger.CONSUMER, db_url):
        wait_until(lambda: cursor(conn) == ids[-1])
    assert totals(conn) == {"a": 2}


def test_out_of_order_commits_skip_nothing(conn, db_url):
    """Writer A takes the lower id but commits after writer B: the consumer must not step over it."""
    a = psycopg.connect(db_url)
    b = psycopg.connect(db_url)
    configure(a)
    configure(b)
    with running(ledger.CONSUMER, db_url):
        id_a = insert(a, {"key": "a", "amount": 1})  # a transaction is open on `a`
        id_b = insert(b, {"key": "b", "amount": 10})
        b.commit()
        assert id_a < id_b
        # B's row is committed and visible; a reader using `id > cursor` would apply it now and
        # move its cursor past id_a. Give the consumer every chance to do that.
        time.sleep(1.0)
        assert totals(conn) == {}, "applied an event while a lower id was still in flight"
        a.commit()
        wait_until(lambda: totals(conn) == {"a": 1, "b": 10}, what="both events")
    assert ledger_ids(conn) == [id_a, id_b]
    a.close()
    b.close()


def test_many_concurrent_writers_out_of_order(conn, db_url):
    """Eight writers commit after random delays while the consumer runs live."""
    rng = random.Random(7)
    delays = [[rng.random() * 0.05 for _ in range(25)] for _ in range(8)]
    written: list[int] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        with psycopg.connect(db_url) as w:
            configure(w)
            for i, d in enumerate(delays[n]):
                eid = insert(w, {"key": f"w{n}", "amount": i + 1})
                time.sleep(d)  # hold the transaction open: commits interleave out of id order
                w.commit()
                with lock:
                    written.append(eid)

    with running(ledger.CONSUMER, db_url):
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: len(ledger_ids(conn)) == 200, what="all 200 events")
    assert sorted(written) == ledger_ids(conn)
    assert totals(conn) == {f"w{n}": sum(range(1, 26)) for n in range(8)}


def test_reconnects_after_backend_terminated(conn, db_url):
    first = insert_many(conn, [{"key": "x", "amount": 1}] * 5)
    with running(ledger.CONSUMER, db_url):
        wait_until(lambda: cursor(conn) == first[-1])
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'brokersync:ledger'"
        ).fetchone()
        assert killed and killed[0] >= 1
        second = insert_many(conn, [{"key": "x", "amount": 100}] * 3)
        wait_until(lambda: cursor(conn) == second[-1], what="catch-up after reconnect")
    assert totals(conn) == {"x": 305}


def test_catches_up_on_start_after_missed_notifies(conn, db_url):
    ids = insert_many(conn, [{"key": "late", "amount": 2}] * 7)  # nobody is listening
    with running(ledger.CONSUMER, db_url):
        wait_until(lambda: cursor(conn) == ids[-1])
    assert totals(conn) == {"late": 14}


def test_slow_poll_covers_a_lost_notification(conn, db_url):
    with running(ledger.CONSUMER, db_url):
        wait_until(lambda: conn.execute("SELECT 1 FROM consumer_cursors").fetchone())
        conn.execute("ALTER TABLE staging_snapshots DISABLE TRIGGER staging_snapshots_notify")
        eid = insert(conn, {"key": "quiet", "amount": 3})  # no NOTIFY at all
        wait_until(lambda: cursor(conn) == eid, timeout=10, what="the periodic poll")
    assert totals(conn) == {"quiet": 3}


def test_poison_event_is_retried_dead_lettered_and_skipped(conn, db_url):
    ids = insert_many(conn, [{"key": "p", "amount": 1}, {"key": "p", "amount": 2, "poison": True},
                             {"key": "p", "amount": 4}])
    malformed = ledger_bad = None
    with conn.transaction():
        from datetime import UTC, datetime

        from schema.eventlog import append_snapshot

        ledger_bad = append_snapshot(conn, account="A1", kind="test", source="test",
                                     fetched_at=datetime.now(UTC), body=b"{not json")
    malformed = ledger_bad
    with running(ledger.CONSUMER, db_url):
        wait_until(lambda: cursor(conn) == malformed, what="moving past the poison events")
    assert totals(conn) == {"p": 5}
    dead = conn.execute(
        "SELECT event_id, attempts, state FROM dead_letters WHERE consumer='ledger' ORDER BY event_id"
    ).fetchall()
    assert dead == [(ids[1], FAST.max_attempts, "dead"), (malformed, FAST.max_attempts, "dead")]
    raw = conn.execute("SELECT raw_body, malformed FROM event_log JOIN staging_snapshots USING (id) WHERE id = %s",
                       (malformed,)).fetchone()
    assert raw == ("{not json", True), "the malformed body is kept verbatim in the log"
    err = conn.execute("SELECT last_error FROM consumer_cursors WHERE consumer='ledger'").fetchone()
    assert err and f"event {malformed}" in err[0]


def test_standby_waits_then_takes_over(conn, db_url):
    first = Runner(ledger.CONSUMER, db_url, FAST)
    second = Runner(ledger.CONSUMER, db_url, FAST)
    t1 = threading.Thread(target=first.run, daemon=True)
    t1.start()
    wait_until(lambda: conn.execute("SELECT 1 FROM consumer_cursors").fetchone())
    t2 = threading.Thread(target=second.run, daemon=True)
    t2.start()
    ids = insert_many(conn, [{"key": "s", "amount": 1}] * 20)
    wait_until(lambda: cursor(conn) == ids[-1])
    assert first.applied_total == 20 and second.applied_total == 0
    first.stop.set()
    t1.join(10)
    more = insert_many(conn, [{"key": "s", "amount": 1}] * 5)
    wait_until(lambda: cursor(conn) == more[-1], what="the standby taking over")
    second.stop.set()
    t2.join(10)
    assert second.applied_total == 5
    assert totals(conn) == {"s": 25}
    assert conn.execute("SELECT count(*) FROM consumer_dead_letters").fetchone() == (0,)


def test_stop_during_a_batch_rolls_it_back(conn, db_url):
    ids = insert_many(conn, [{"key": "z", "amount": 1, "sleep": 0.02}] * 100)
    runner = Runner(ledger.CONSUMER, db_url, FAST)
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    wait_until(lambda: runner.applied_total == 0 and conn.execute(
        "SELECT 1 FROM pg_stat_activity WHERE application_name='brokersync:ledger' AND state like 'idle in transaction%'"
    ).fetchone(), what="a batch in progress")
    time.sleep(0.3)
    runner.stop.set()
    t.join(5)
    assert not t.is_alive()
    assert cursor(conn) == 0 and totals(conn) == {}, "a stopped batch leaves nothing behind"
    with running(ledger.CONSUMER, db_url):
        wait_until(lambda: cursor(conn) == ids[-1])
    assert totals(conn) == {"z": 100}


def test_caught_up_helper_sees_lag(conn, db_url):
    insert_many(conn, [{"key": "l", "amount": 1}] * 3)
    with running(ledger.CONSUMER, db_url):
        wait_until(lambda: caught_up(conn))
    insert(conn, {"key": "l", "amount": 1})
    assert not caught_up(conn)


def _swallowing_handler(conn, event):
    ledger.handle(conn, event)
    if event.payload.get("swallow"):
        try:  # noqa: SIM105 - the bad handler this test is about
            conn.execute("SELECT 1 / 0")  # a database error the handler hides, then returns
        except psycopg.Error:
            pass


SWALLOWING = ledger.Consumer(name="ledger", kinds=("test",), handle=_swallowing_handler,
                             reset=ledger.reset, setup=ledger.setup, tables=ledger.CONSUMER.tables)


def test_a_handler_that_swallows_a_database_error_is_dead_lettered_not_crash_looping(conn, db_url):
    ids = insert_many(conn, [{"key": "h", "amount": 1}, {"key": "h", "amount": 2, "swallow": True},
                             {"key": "h", "amount": 4}])
    with running(SWALLOWING, db_url):
        wait_until(lambda: cursor(conn) == ids[-1], what="moving past the event")
    assert totals(conn) == {"h": 5}
    (error,) = conn.execute("SELECT error FROM consumer_dead_letters WHERE event_id = %s", (ids[1],)).fetchone()
    assert "caught a database error" in error


def test_a_statement_error_is_the_events_fault_not_a_lost_connection(conn, db_url):
    def handler(c, event):
        if event.payload.get("cancel"):
            c.execute("SET LOCAL statement_timeout = '10ms'")
            c.execute("SELECT pg_sleep(1)")  # QueryCanceled: an OperationalError, not a lost connection
        ledger.handle(c, event)

    consumer = ledger.Consumer(name="ledger", kinds=("test",), handle=handler, setup=ledger.setup)
    ids = insert_many(conn, [{"key": "c", "amount": 1, "cancel": True}, {"key": "c", "amount": 2}])
    with running(consumer, db_url):
        wait_until(lambda: cursor(conn) == ids[-1], what="moving past the cancelled event")
    assert totals(conn) == {"c": 2}
    assert conn.execute("SELECT event_id FROM consumer_dead_letters").fetchall() == [(ids[0],)]


def test_replay_from_a_later_point_never_moves_a_lagging_cursor_forward(conn, db_url):
    from brokersync.ops import rewind

    ids = insert_many(conn, [{"key": "f", "amount": 1}] * 10)
    ledger.setup(conn)
    r = rewind(conn, ledger.CONSUMER, from_id=ids[5])  # the consumer has applied nothing yet
    assert not r.moved and cursor(conn) == 0
    with running(ledger.CONSUMER, db_url):
        wait_until(lambda: cursor(conn) == ids[-1])
    assert totals(conn) == {"f": 10}, "nothing between the old cursor and the replay point was skipped"
    r = rewind(conn, ledger.CONSUMER, from_id=ids[5])
    assert r.moved and r.events_to_apply == 5


def test_batch_handler_applies_whole_batches_and_falls_back_for_a_poison_event(conn, db_url):
    calls: list[int] = []

    def handle_batch(c, events):
        calls.append(len(events))
        for e in events:  # same effect as handle() per event, in order
            ledger.handle(c, e)

    consumer = ledger.Consumer(name="ledger", kinds=("test",), handle=ledger.handle,
                               handle_batch=handle_batch, setup=ledger.setup)
    payloads = [{"key": "b", "amount": 1}] * 150
    payloads[120] = {"key": "b", "amount": 1000, "poison": True}
    ids = insert_many(conn, payloads)
    with running(consumer, db_url):
        wait_until(lambda: cursor(conn) == ids[-1], what="all batches")
    assert totals(conn) == {"b": 149}
    assert calls[0] == 100, "the first batch went through the batch handler whole"
    assert conn.execute("SELECT event_id FROM consumer_dead_letters").fetchall() == [(ids[120],)]
