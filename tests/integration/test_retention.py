"""Retention: the one way rows leave the event log, and only rows every consumer applied."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from brokersync.errors import BrokersyncError
from brokersync.ops import retention
from schema.eventlog import append_snapshot
from tests.support import ledger
from tests.support.runner import cursor, running
from tests.support.wait import wait_until


def add(conn, payload, days_ago: float) -> int:
    return append_snapshot(conn, account="A1", kind="test", source="test",
                           fetched_at=datetime.now(UTC) - timedelta(days=days_ago), body=payload)


def test_deletes_only_what_every_consumer_applied(conn, db_url):
    old_ok = [add(conn, {"key": "a", "amount": 1}, 40) for _ in range(3)]
    old_poison = add(conn, {"key": "a", "amount": 1, "poison": True}, 40)
    recent = add(conn, {"key": "a", "amount": 1}, 1)
    with running(ledger.CONSUMER, db_url):
        wait_until(lambda: cursor(conn) == recent)
    late_old = add(conn, {"key": "a", "amount": 1}, 40)  # old fetch time, not applied yet

    with pytest.raises(BrokersyncError, match="never ran"):
        retention(conn, datetime.now(UTC) - timedelta(days=30), ["ledger", "positions"], delete=False)

    cutoff = datetime.now(UTC) - timedelta(days=30)
    dry = retention(conn, cutoff, ["ledger"], delete=False)
    assert (dry.deletable, dry.held_by_cursor, dry.held_by_dead_letters, dry.deleted) == (3, 1, 1, 0)
    assert conn.execute("SELECT count(*) FROM staging_snapshots").fetchone() == (6,)

    done = retention(conn, cutoff, ["ledger"], delete=True)
    assert done.deleted == 3
    left = [r[0] for r in conn.execute("SELECT id FROM staging_snapshots ORDER BY id")]
    assert left == [old_poison, recent, late_old]
    assert not set(old_ok) & set(left)
    # the append-only guard is back on outside the retention transaction
    with pytest.raises(Exception, match="append-only"):
        conn.execute("DELETE FROM staging_snapshots")


def test_a_log_restored_from_another_server_is_reported(conn):
    from brokersync.ops import log_ahead_of_server, status

    add(conn, {"key": "a", "amount": 1}, 0)
    assert not log_ahead_of_server(conn)
    # what pg_dump/restore into a younger cluster leaves behind: ids beyond this server's counter
    conn.execute(
        "INSERT INTO staging_snapshots (tx_id, account, kind, source, fetched_at, payload) "
        "VALUES ('900000000', 'A1', 'test', 'test', now(), '{}')"
    )
    assert log_ahead_of_server(conn)
    s = status(conn, [], max_lag_s=600, max_data_age_s=900)
    assert not s["healthy"] and any("ahead of this server" in p for p in s["problems"])
