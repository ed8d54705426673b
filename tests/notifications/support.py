"""Helpers shared by the notification tests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from brokersync.settings import Settings, load_settings
from consumers.sinks import Outgoing


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings as the entry point builds them, without reading this machine's environment."""
    base: dict[str, Any] = {"data_dir": tmp_path / "data", "notify_daily_summary_time": "off"}
    base.update(overrides)
    return load_settings(environ={}, env_file=None, **base)


def outgoing(sink: str = "webhook", key: str = "rule:acct:subject:1", **kw: Any) -> Outgoing:
    values: dict[str, Any] = dict(
        id=1, dedupe_key=key, sink=sink, rule="position_opened", account="5QR12345",
        subject="AAPL", title="Position opened: AAPL", body="AAPL: 10 at average cost $150.00",
        occurred_at=datetime(2026, 11, 20, 15, 0, tzinfo=UTC), data={"quantity": "10"},
    )
    values.update(kw)
    return Outgoing(**values)


def deliveries(conn: psycopg.Connection[Any], **where: Any) -> list[dict[str, Any]]:
    clause = " AND ".join(f"{k} = %s" for k in where) or "true"
    cur = conn.execute(
        f"""SELECT id, dedupe_key, sink, rule, account, subject, title, body, status, attempts,
                   last_error, event_id, message_id
            FROM notification_deliveries WHERE {clause} ORDER BY id""",
        tuple(where.values()),
    )
    cols = [d.name for d in cur.description or []]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def queued_messages(conn: psycopg.Connection[Any]) -> list[tuple[str, int, str]]:
    """(actor name, delivery id, state) of every message in the dramatiq queue."""
    rows = conn.execute(
        """SELECT message->>'actor_name', (message->'args'->>0)::bigint, state::text
           FROM dramatiq.queue ORDER BY position"""
    ).fetchall()
    return [(r[0], int(r[1]), r[2]) for r in rows]
