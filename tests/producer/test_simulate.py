"""`brokersync simulate`: history written with COPY, deterministic from the seed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from brokersync.db import configure
from producer.simulate import simulate
from schema import migrate

END = datetime(2026, 11, 20, tzinfo=UTC)  # a Friday


def history(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as c:
        configure(c)
        return c.execute("""SELECT s.kind, s.account, s.fetched_at, s.payload::text, r.started_at
                            FROM staging_snapshots s JOIN producer_cycle_runs r ON r.id = s.cycle_id
                            ORDER BY s.fetched_at, s.kind, s.account""").fetchall()


def test_same_seed_same_history(db_url: str, empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as c:
        migrate(c)
    stats = []
    for url in (db_url, empty_db_url):
        with psycopg.connect(url, autocommit=True) as c:
            configure(c)
            stats.append(simulate(c, days=1.5, seed=11, end=END))
    assert stats[0]["snapshots"] == stats[1]["snapshots"] > 0
    a, b = history(db_url), history(empty_db_url)
    assert a == b
    assert all(fetched == started for _, _, fetched, _, started in a)  # simulated time on both


def test_skip_identical_keeps_changes_only(conn: psycopg.Connection[Any]) -> None:
    stats = simulate(conn, days=2, seed=2, end=END, skip_identical=True)
    rows = conn.execute("""SELECT kind, account, payload FROM staging_snapshots ORDER BY kind, account, fetched_at, id""").fetchall()
    assert len(rows) == stats["snapshots"]
    for (k1, a1, p1), (k2, a2, p2) in zip(rows, rows[1:], strict=False):
        if (k1, a1) == (k2, a2):
            assert p1 != p2, f"{k1}/{a1}: two identical snapshots in a row"
    # a skipped fetch is still on its cycle row, as 'unchanged'
    unchanged = conn.execute("""SELECT count(*) FROM producer_kind_outcomes WHERE status = 'unchanged'""").fetchone()
    assert unchanged is not None and unchanged[0] > 0
    outcomes = conn.execute("SELECT count(*) FROM producer_cycle_runs").fetchone()
    assert outcomes is not None and outcomes[0] == stats["cycles"]
