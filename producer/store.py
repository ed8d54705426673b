"""Writing a cycle to the database: one transaction per cycle.

The cycle row, its snapshots, the order watermarks they justify and newly fetched
instruments commit together, so a crash never leaves snapshots without their cycle or a
watermark ahead of the orders it skipped. With ``skip_identical`` a snapshot whose content
equals the previous one of its kind and account is not appended; its kind's outcome says
``unchanged`` and the cycle row's time shows that the state still held then.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from producer.cycles import CycleResult, content_hash
from producer.instruments import InstrumentCache
from schema.eventlog import append_snapshot

log = logging.getLogger(__name__)


class LastHashes:
    """Content hash of the newest snapshot per (kind, account), for skip-identical."""

    def __init__(self) -> None:
        self.hashes: dict[tuple[str, str], str] = {}

    def load(self, conn: psycopg.Connection[Any], source: str) -> None:
        rows = conn.execute(
            """SELECT DISTINCT ON (kind, account) kind, account, payload, raw_body
               FROM staging_snapshots WHERE source = %s
               ORDER BY kind, account, fetched_at DESC, id DESC""", (source,)).fetchall()
        for kind, account, payload, raw in rows:
            body = payload if payload is not None else raw.encode()
            self.hashes[(kind, account)] = content_hash(body)


def load_watermarks(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], str]:
    rows = conn.execute(
        """SELECT account, kind, to_char(updated_gte AT TIME ZONE 'UTC',
                  'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') FROM producer_order_watermarks""").fetchall()
    return {(a, k): w for a, k, w in rows}


def apply_skip_identical(result: CycleResult, hashes: LastHashes) -> None:
    """Drop snapshots identical to the previous one of their kind and account."""
    kept = []
    for snap in result.snapshots:
        h = content_hash(snap.body)
        key = (snap.kind, snap.account)
        if hashes.hashes.get(key) == h:
            o = result.outcomes[snap.kind]
            o.snapshots -= 1
            if o.status == "ok":
                o.status = "unchanged" if o.snapshots == 0 else "ok"
            o.accounts[snap.account] = "unchanged"
            continue
        hashes.hashes[key] = h
        kept.append(snap)
    result.snapshots = kept


def save_cycle(conn: psycopg.Connection[Any], result: CycleResult, cache: InstrumentCache) -> int:
    """Store one cycle (row, snapshots, watermarks, instruments); return the cycle id."""
    with conn.transaction():
        row = conn.execute(
            """INSERT INTO producer_cycle_runs (started_at, finished_at, source, status, outcomes,
                   snapshots, broker_calls, error, host, pid, clock_drift_s, shape_drift)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (result.started_at, result.finished_at, result.source, result.status,
             Jsonb({k: o.to_json() for k, o in sorted(result.outcomes.items())}),
             len(result.snapshots), result.broker_calls, result.error, socket.gethostname(),
             os.getpid(), result.clock_drift, Jsonb(result.shape_drift)),
        ).fetchone()
        assert row is not None
        cycle_id = int(row[0])
        for snap in result.snapshots:
            append_snapshot(conn, account=snap.account, kind=snap.kind, source=result.source,
                            fetched_at=snap.fetched_at, body=snap.body, cycle_id=cycle_id)
        for (account, kind), since in result.watermarks.items():
            conn.execute(
                """INSERT INTO producer_order_watermarks (account, kind, updated_gte, updated_at)
                   VALUES (%s, %s, %s, now()) ON CONFLICT (account, kind) DO UPDATE
                   SET updated_gte = EXCLUDED.updated_gte, updated_at = now()""",
                (account, kind, _parse(since)))
        cache.flush(conn)
    return cycle_id


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
