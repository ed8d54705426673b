"""Helpers for the consumer tests: append snapshots, run a consumer until idle, replay it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from brokersync.ops import rewind
from consumers.runtime import Consumer, Runner, RuntimeConfig
from schema.eventlog import append_snapshot
from tests.consumers.payloads import ACCOUNT

FAST = RuntimeConfig(batch_size=50, poll_interval=0.5, max_attempts=2, retry_backoff=0.01)


def add(conn: psycopg.Connection[Any], kind: str, body: Any, at: datetime,
        account: str = ACCOUNT) -> int:
    """Append one snapshot the way the producer does (body: an envelope, or raw text)."""
    return append_snapshot(conn, account=account, kind=kind, source="test", fetched_at=at, body=body)


def run(db_url: str, consumer: Consumer, config: RuntimeConfig = FAST) -> int:
    """Run the consumer until it has applied everything; return how many events it applied."""
    runner = Runner(consumer, db_url, config, exit_when_idle=True)
    runner.run()
    return runner.applied_total


def table(conn: psycopg.Connection[Any], name: str) -> list[tuple[Any, ...]]:
    """Every row of a table, in a stable order."""
    rows = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(name))).fetchall()
    return sorted(rows, key=repr)


def tables(conn: psycopg.Connection[Any], consumer: Consumer) -> dict[str, list[tuple[Any, ...]]]:
    return {t: table(conn, t) for t in consumer.tables}


def replay(conn: psycopg.Connection[Any], db_url: str, consumer: Consumer) -> dict[str, list[tuple[Any, ...]]]:
    """Rebuild the consumer's tables from the first event (what `brokersync replay` does)."""
    r = rewind(conn, consumer)
    assert r.full
    run(db_url, consumer)
    return tables(conn, consumer)


def one(conn: psycopg.Connection[Any], query: str, *args: Any) -> dict[str, Any]:
    cur = conn.execute(query, args)
    row = cur.fetchone()
    assert row is not None, f"no row for {query} {args}"
    assert cur.description is not None
    return {d.name: v for d, v in zip(cur.description, row, strict=True)}


def rows(conn: psycopg.Connection[Any], query: str, *args: Any) -> list[dict[str, Any]]:
    cur = conn.execute(query, args)
    assert cur.description is not None
    names = [d.name for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
