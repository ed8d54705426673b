"""Operations on the event log from the command line: status, replay, dead letters, retention."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import psycopg

from brokersync.errors import BrokersyncError
from consumers.runtime import Consumer, advisory_key
from schema.eventlog import CONTROL_CHANNEL, log_ahead_of_server

# ---- status --------------------------------------------------------------------------------


def consumer_is_active(conn: psycopg.Connection[Any], name: str) -> bool:
    """Some process holds the consumer's advisory lock (an active instance is running)."""
    row = conn.execute(
        """SELECT EXISTS (SELECT 1 FROM pg_locks
             WHERE locktype = 'advisory' AND objsubid = 1 AND granted
               AND ((classid::bigint << 32) | objid::bigint) = hashtextextended(%s, 0))""",
        (advisory_key(name),),
    ).fetchone()
    return bool(row and row[0])


def _iso(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, timedelta):
        return round(v.total_seconds(), 3)
    return v


def status(
    conn: psycopg.Connection[Any],
    expected_consumers: list[str],
    *,
    max_lag_s: float,
    max_data_age_s: float,
) -> dict[str, Any]:
    problems: list[str] = []
    consumers_out = []
    rows = conn.execute(
        """SELECT consumer, cursor_id, events_behind, oldest_pending_age, applied_count,
                  last_applied_at, heartbeat_at, dead_letters, last_error, last_error_at
           FROM consumer_lag ORDER BY consumer"""
    ).fetchall()
    seen = set()
    for r in rows:
        name = r[0]
        seen.add(name)
        active = consumer_is_active(conn, name)
        item = {
            "consumer": name,
            "active": active,
            "cursor_id": r[1],
            "events_behind": r[2],
            "oldest_pending_s": _iso(r[3]),
            "applied_count": r[4],
            "last_applied_at": _iso(r[5]),
            "heartbeat_at": _iso(r[6]),
            "dead_letters": r[7],
            "last_error": r[8],
            "last_error_at": _iso(r[9]),
        }
        consumers_out.append(item)
        if r[3] is not None and r[3].total_seconds() > max_lag_s:
            problems.append(f"consumer {name} is {r[2]} events behind (oldest {r[3]} old)")
        if r[7]:
            problems.append(f"consumer {name} has {r[7]} dead letter(s): brokersync dlq list")
        if not active and name in expected_consumers:
            problems.append(f"consumer {name} is not running")
    for name in expected_consumers:
        if name not in seen:
            problems.append(f"consumer {name} has never run")

    cycle = conn.execute(
        """SELECT id, started_at, finished_at, status, source, snapshots, broker_calls, error
           FROM producer_cycle_runs ORDER BY id DESC LIMIT 1"""
    ).fetchone()
    producer = None
    if cycle is not None:
        producer = {
            "cycle_id": cycle[0],
            "started_at": _iso(cycle[1]),
            "finished_at": _iso(cycle[2]),
            "status": cycle[3],
            "source": cycle[4],
            "snapshots": cycle[5],
            "broker_calls": cycle[6],
            "error": cycle[7],
        }
        if cycle[3] in ("failed", "partial"):
            problems.append(f"the producer's last cycle (#{cycle[0]}) {cycle[3]}: {cycle[7] or ''}".strip())
    if log_ahead_of_server(conn):
        problems.append(
            "the event log's transaction ids are ahead of this server's (restored from another "
            "server with pg_dump?): consumers would not read new events; see README, Missing"
        )
    age_row = conn.execute(
        "SELECT now() - max(fetched_at), count(*), max(id) FROM staging_snapshots"
    ).fetchone()
    assert age_row is not None
    data_age = age_row[0]
    if data_age is not None and data_age.total_seconds() > max_data_age_s:
        problems.append(f"newest snapshot is {data_age} old")
    if age_row[1] == 0:
        problems.append("the event log is empty (has the producer run?)")
    dead = conn.execute(
        "SELECT count(*) FROM consumer_dead_letters WHERE resolved_at IS NULL"
    ).fetchone()
    return {
        "healthy": not problems,
        "problems": problems,
        "consumers": consumers_out,
        "producer_last_cycle": producer,
        "events": age_row[1],
        "log_head_id": age_row[2],
        "data_age_s": _iso(data_age),
        "dead_letters": dead[0] if dead else 0,
    }


def format_status(s: dict[str, Any]) -> str:
    lines = []
    lines.append(f"event log: {s['events']} snapshots, head id {s['log_head_id']}, newest data age "
                 f"{_fmt_s(s['data_age_s'])}")
    p = s["producer_last_cycle"]
    if p:
        lines.append(f"producer: last cycle #{p['cycle_id']} {p['status']} at {p['started_at']} "
                     f"({p['snapshots']} snapshots, {p['broker_calls']} broker calls)"
                     + (f" error: {p['error']}" if p["error"] else ""))
    else:
        lines.append("producer: no cycle recorded yet")
    lines.append(f"{'consumer':<22} {'state':<8} {'cursor':>9} {'behind':>7} {'dead':>5}  last error")
    for c in s["consumers"]:
        state = "active" if c["active"] else "down"
        err = (c["last_error"] or "").splitlines()[0][:60] if c["last_error"] else ""
        lines.append(f"{c['consumer']:<22} {state:<8} {c['cursor_id']:>9} {c['events_behind']:>7} "
                     f"{c['dead_letters']:>5}  {err}")
    lines.append(f"dead letters: {s['dead_letters']}")
    lines.append("healthy" if s["healthy"] else "UNHEALTHY:\n  " + "\n  ".join(s["problems"]))
    return "\n".join(lines)


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "n/a"
    if v < 120:
        return f"{v:.0f}s"
    if v < 7200:
        return f"{v / 60:.0f}min"
    return f"{v / 3600:.1f}h"


# ---- replay --------------------------------------------------------------------------------


@dataclass
class Rewind:
    consumer: str
    full: bool
    position: tuple[int, int]
    events_to_apply: int
    moved: bool = True


def rewind(
    conn: psycopg.Connection[Any],
    consumer: Consumer,
    *,
    from_id: int | None = None,
    since: datetime | None = None,
) -> Rewind:
    """Move a consumer's cursor back; with neither bound, empty its tables and start over.

    Runs in one transaction holding the cursor row, so it never interleaves with a batch of a
    running instance of the consumer; that instance simply continues from the new position.
    """
    full = from_id is None and since is None
    with conn.transaction():
        conn.execute(
            """INSERT INTO consumer_cursors (consumer, kinds) VALUES (%s, %s)
               ON CONFLICT (consumer) DO NOTHING""",
            (consumer.name, list(consumer.kinds)),
        )
        current_row = conn.execute(
            "SELECT tx_id::text::bigint, last_id FROM consumer_cursors WHERE consumer = %s FOR UPDATE",
            (consumer.name,),
        ).fetchone()
        assert current_row is not None
        current = (int(current_row[0]), int(current_row[1]))
        if full:
            if consumer.reset is None:
                raise BrokersyncError(
                    f"consumer {consumer.name} cannot be rebuilt from scratch (no reset); "
                    f"use --from-id or --since"
                )
            consumer.reset(conn)
            position = (0, 0)
        else:
            where, arg = ("id >= %s", from_id) if from_id is not None else ("fetched_at >= %s", since)
            row = conn.execute(
                f"""SELECT tx_id::text::bigint, id FROM staging_snapshots WHERE {where}
                    ORDER BY tx_id, id LIMIT 1""",
                (arg,),
            ).fetchone()
            if row is None:
                raise BrokersyncError("no event at or after that point; nothing to replay")
            # Never forward: a consumer still behind that point keeps its cursor (moving it
            # would skip the events in between), and the current cursor is below any
            # transaction still in flight, so nothing uncommitted is stepped over either.
            position = min(current, (int(row[0]), int(row[1]) - 1))
        conn.execute(
            """UPDATE consumer_cursors
               SET tx_id = %s::text::xid8, last_id = %s, updated_at = now(),
                   replay_started_at = now(),
                   replay_target_id = (SELECT max(id) FROM staging_snapshots),
                   last_error = NULL, last_error_at = NULL
               WHERE consumer = %s""",
            (position[0], position[1], consumer.name),
        )
        if full:
            # A rebuild starts clean: old dead letters will be met again (and re-recorded).
            conn.execute(
                "DELETE FROM consumer_dead_letters WHERE consumer = %s AND resolved_at IS NULL",
                (consumer.name,),
            )
        behind = events_behind(conn, consumer.name)
        conn.execute("SELECT pg_notify(%s, %s)",
                     (CONTROL_CHANNEL, orjson.dumps({"consumer": consumer.name, "op": "rewind"}).decode()))
    return Rewind(consumer.name, full, position, behind, moved=full or position < current)


def events_behind(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute("SELECT events_behind FROM consumer_lag WHERE consumer = %s", (name,)).fetchone()
    return int(row[0]) if row else 0


# ---- dead letters --------------------------------------------------------------------------


def dlq_list(conn: psycopg.Connection[Any], consumer: str | None, include_resolved: bool) -> list[dict[str, Any]]:
    rows = conn.execute(
        """SELECT id, consumer, event_id, kind, account, attempts, state, last_failed_at, error
           FROM dead_letters
           WHERE (%s::text IS NULL OR consumer = %s) AND (%s OR resolved_at IS NULL)
           ORDER BY id""",
        (consumer, consumer, include_resolved),
    ).fetchall()
    keys = ["id", "consumer", "event_id", "kind", "account", "attempts", "state", "last_failed_at", "error"]
    return [{k: _iso(v) for k, v in zip(keys, r, strict=True)} for r in rows]


def dlq_retry(conn: psycopg.Connection[Any], ids: list[int], consumer: str | None) -> list[tuple[int, str]]:
    with conn.transaction():
        rows = conn.execute(
            """UPDATE consumer_dead_letters SET retry_requested_at = now()
               WHERE resolved_at IS NULL
                 AND (cardinality(%s::bigint[]) = 0 OR id = ANY (%s::bigint[]))
                 AND (%s::text IS NULL OR consumer = %s)
               RETURNING id, consumer""",
            (ids, ids, consumer, consumer),
        ).fetchall()
        for name in sorted({r[1] for r in rows}):
            conn.execute("SELECT pg_notify(%s, %s)",
                         (CONTROL_CHANNEL, orjson.dumps({"consumer": name, "op": "retry"}).decode()))
    return [(int(r[0]), str(r[1])) for r in rows]


# ---- retention -----------------------------------------------------------------------------


@dataclass
class Retention:
    deletable: int
    held_by_cursor: int
    held_by_dead_letters: int
    deleted: int


def retention(
    conn: psycopg.Connection[Any], before: datetime, consumers: list[str], *, delete: bool
) -> Retention:
    """Delete snapshots fetched before ``before`` that every consumer has already applied.

    The one documented way rows leave the event log. A snapshot stays while any consumer's
    cursor has not passed it, or while an unresolved dead letter points at it. A full replay
    afterwards rebuilds only from what is kept.
    """
    with conn.transaction():
        # Every known consumer must have a cursor: one that never ran has applied nothing.
        # FOR SHARE: a concurrent rewind (replay) waits, so no row it needs is deleted under it
        known = {r[0] for r in conn.execute("SELECT consumer FROM consumer_cursors FOR SHARE")}
        missing = [c for c in consumers if c not in known]
        if missing:
            raise BrokersyncError(
                f"consumer(s) {', '.join(missing)} never ran: they have not applied these "
                f"snapshots yet; run them first (or brokersync up)"
            )
        rows = conn.execute(
            """WITH old AS (
                   SELECT s.id,
                          EXISTS (SELECT 1 FROM consumer_cursors c
                                   WHERE (cardinality(c.kinds) = 0 OR s.kind = ANY (c.kinds))
                                     AND (s.tx_id, s.id) > (c.tx_id, c.last_id)) AS unapplied,
                          EXISTS (SELECT 1 FROM consumer_dead_letters d
                                   WHERE d.event_id = s.id AND d.resolved_at IS NULL) AS dead
                   FROM staging_snapshots s WHERE s.fetched_at < %s)
               SELECT count(*) FILTER (WHERE NOT unapplied AND NOT dead),
                      count(*) FILTER (WHERE unapplied),
                      count(*) FILTER (WHERE dead AND NOT unapplied)
               FROM old""",
            (before,),
        ).fetchone()
        assert rows is not None
        deleted = 0
        if delete and rows[0]:
            conn.execute("SET LOCAL brokersync.retention = 'on'")
            conn.execute(
                """DELETE FROM consumer_dead_letters d USING staging_snapshots s
                   WHERE d.event_id = s.id AND d.resolved_at IS NOT NULL AND s.fetched_at < %s""",
                (before,),
            )
            cur = conn.execute(
                """DELETE FROM staging_snapshots s
                   WHERE s.fetched_at < %s
                     AND NOT EXISTS (SELECT 1 FROM consumer_cursors c
                                      WHERE (cardinality(c.kinds) = 0 OR s.kind = ANY (c.kinds))
                                        AND (s.tx_id, s.id) > (c.tx_id, c.last_id))
                     AND NOT EXISTS (SELECT 1 FROM consumer_dead_letters d WHERE d.event_id = s.id)""",
                (before,),
            )
            deleted = cur.rowcount
    return Retention(int(rows[0]), int(rows[1]), int(rows[2]), deleted)
