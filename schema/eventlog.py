"""Appending to and reading the event log; the one module both sides share.

The producer appends with :func:`append_snapshot`; the consumer runtime reads with the
queries in ``consumers.runtime``. Kinds are plain strings listed in :data:`KINDS`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ValidationError

# Snapshot kinds the producer writes (one row = one fetch of one kind for one account).
STOCK_POSITIONS = "stock_positions"
OPTION_POSITIONS = "option_positions"
QUOTES = "quotes"
ACCOUNT = "account"
PORTFOLIO = "portfolio"
STOCK_ORDERS = "stock_orders"
OPTION_ORDERS = "option_orders"
KINDS = (STOCK_POSITIONS, OPTION_POSITIONS, QUOTES, ACCOUNT, PORTFOLIO, STOCK_ORDERS, OPTION_ORDERS)

EVENTS_CHANNEL = "brokersync_events"
CONTROL_CHANNEL = "brokersync_control"


class EventNotice(BaseModel):
    """The NOTIFY payload on ``brokersync_events``: a wake-up, never the data."""

    id: int
    kind: str
    account: str


def parse_notice(payload: str) -> EventNotice | None:
    """Parse a NOTIFY payload; ``None`` when malformed (the caller just wakes up)."""
    try:
        return EventNotice.model_validate_json(payload)
    except ValidationError:
        return None


def log_ahead_of_server(conn: psycopg.Connection[Any]) -> bool:
    """True when stored tx_ids are beyond this server's next transaction id.

    That happens when the database was restored into another cluster (pg_dump/restore keeps the
    old ids; pg_upgrade keeps the counter and is fine): new events would sort below every
    cursor and never be read.
    """
    row = conn.execute(
        "SELECT coalesce(max(tx_id) >= pg_snapshot_xmax(pg_current_snapshot()), false) "
        "FROM staging_snapshots"
    ).fetchone()
    return bool(row and row[0])


def append_snapshot(
    conn: psycopg.Connection[Any],
    *,
    account: str,
    kind: str,
    source: str,
    fetched_at: datetime,
    body: bytes | str | Any,
    cycle_id: int | None = None,
) -> int:
    """Append one raw snapshot; return its id.

    ``body`` is the broker's response: bytes/str are parsed as JSON and kept verbatim in
    ``raw_body`` when they are not valid JSON (a malformed payload is logged, never dropped);
    any other object is stored as JSON.
    """
    payload: Any
    raw: str | None = None
    if isinstance(body, bytes | str):
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
            raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    else:
        payload = body
    row = conn.execute(
        """INSERT INTO staging_snapshots (account, kind, source, fetched_at, cycle_id, payload, raw_body)
           VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        (account, kind, source, fetched_at, cycle_id,
         Jsonb(payload) if payload is not None or raw is None else None, raw),
    ).fetchone()
    assert row is not None
    return int(row[0])
