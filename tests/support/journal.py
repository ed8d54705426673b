"""Test consumers like ``ledger`` but with their own names and tables, to run several at once.

``JOURNAL_A`` and ``JOURNAL_B`` record every ``test`` event in ``test_journal_a`` /
``test_journal_b`` (primary key: event id, so a double apply fails loudly) and keep a running
sum per key (not idempotent on purpose: an event applied twice shows up as a wrong total).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from consumers.runtime import Consumer, Event


def _make(suffix: str) -> Consumer:
    rows = sql.Identifier(f"test_journal_{suffix}")
    sums = sql.Identifier(f"test_journal_{suffix}_sums")

    def setup(conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            sql.SQL(
                """CREATE TABLE IF NOT EXISTS {} (event_id bigint PRIMARY KEY, key text NOT NULL,
                       amount bigint NOT NULL);
                   CREATE TABLE IF NOT EXISTS {} (key text PRIMARY KEY, total bigint NOT NULL)"""
            ).format(rows, sums)
        )

    def handle(conn: psycopg.Connection[Any], event: Event) -> None:
        p = event.payload
        if not isinstance(p, dict):
            raise ValueError(f"payload is not an object: {event.raw_body!r:.40}")
        conn.execute(
            sql.SQL("INSERT INTO {} (event_id, key, amount) VALUES (%s, %s, %s)").format(rows),
            (event.id, p["key"], int(p["amount"])),
        )
        conn.execute(
            sql.SQL(
                """INSERT INTO {0} (key, total) VALUES (%s, %s)
                   ON CONFLICT (key) DO UPDATE SET total = {0}.total + EXCLUDED.total"""
            ).format(sums),
            (p["key"], int(p["amount"])),
        )

    def reset(conn: psycopg.Connection[Any]) -> None:
        setup(conn)
        conn.execute(sql.SQL("TRUNCATE {}, {}").format(rows, sums))

    return Consumer(
        name=f"journal-{suffix}", kinds=("test",), handle=handle, reset=reset, setup=setup,
        tables=(f"test_journal_{suffix}", f"test_journal_{suffix}_sums"),
        description=f"test consumer journal-{suffix}",
    )


JOURNAL_A = _make("a")
JOURNAL_B = _make("b")
SPEC_A = "tests.support.journal:JOURNAL_A"
SPEC_B = "tests.support.journal:JOURNAL_B"
