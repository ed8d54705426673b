"""A test consumer whose effects expose every runtime mistake.

Events of kind ``test`` carry ``{"key": str, "amount": int}``. The handler records the event in
``test_ledger`` (primary key: event id, so a double apply within a table fails loudly) and adds
the amount to ``test_totals`` (not idempotent on purpose: an event applied twice shows up as a
wrong total). ``{"poison": true}`` raises unless the event id is in ``test_fixes`` (the "fix");
``{"sleep": s}`` makes the handler slow so a test can kill the process mid-batch.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from consumers.runtime import Consumer, Event


def setup(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        """CREATE TABLE IF NOT EXISTS test_ledger (
               event_id bigint PRIMARY KEY, key text NOT NULL, amount bigint NOT NULL,
               fetched_at timestamptz NOT NULL);
           CREATE TABLE IF NOT EXISTS test_totals (key text PRIMARY KEY, total bigint NOT NULL);
           CREATE TABLE IF NOT EXISTS test_fixes (event_id bigint PRIMARY KEY)"""
    )


def handle(conn: psycopg.Connection[Any], event: Event) -> None:
    p = event.payload
    if not isinstance(p, dict):
        raise ValueError(f"payload is not an object: {event.raw_body!r:.40}")
    if p.get("sleep"):
        time.sleep(float(p["sleep"]))
    if p.get("poison"):
        fixed = conn.execute("SELECT 1 FROM test_fixes WHERE event_id = %s", (event.id,)).fetchone()
        if not fixed:
            raise ValueError(f"poison event {event.id}")
    conn.execute(
        "INSERT INTO test_ledger (event_id, key, amount, fetched_at) VALUES (%s, %s, %s, %s)",
        (event.id, p["key"], int(p["amount"]), event.fetched_at),
    )
    conn.execute(
        """INSERT INTO test_totals (key, total) VALUES (%s, %s)
           ON CONFLICT (key) DO UPDATE SET total = test_totals.total + EXCLUDED.total""",
        (p["key"], int(p["amount"])),
    )


def reset(conn: psycopg.Connection[Any]) -> None:
    setup(conn)
    conn.execute("TRUNCATE test_ledger, test_totals")


CONSUMER = Consumer(
    name="ledger", kinds=("test",), handle=handle, reset=reset, setup=setup,
    tables=("test_ledger", "test_totals"), description="test consumer",
)
SPEC = "tests.support.ledger:CONSUMER"
