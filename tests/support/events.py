"""Insert test events the way the producer does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from schema.eventlog import append_snapshot


def insert(conn: psycopg.Connection[Any], payload: Any, *, kind: str = "test", account: str = "A1") -> int:
    return append_snapshot(
        conn, account=account, kind=kind, source="test", fetched_at=datetime.now(UTC), body=payload
    )


def insert_many(conn: psycopg.Connection[Any], payloads: list[Any], *, kind: str = "test") -> list[int]:
    with conn.transaction():
        return [insert(conn, p, kind=kind) for p in payloads]
