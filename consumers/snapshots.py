"""Superseded full-state snapshots: the fast path of a replay, and harmless when live.

A positions or account snapshot is the *full* state of its account, so once a newer snapshot of
the same account and kind exists in the event log (one that the consumer can apply), applying an
older one cannot change the final tables: the newer one overwrites it, whether it comes later
in the log or was applied already (a late, stale snapshot). A replay of a year of 5-minute
history therefore applies about one snapshot per account and kind instead of every one.

"Can apply" matters: if the newer snapshot is malformed it will be dead-lettered, and the older
one must then stay applied, exactly as live processing left it. So the newer snapshot's payload
is checked with the consumer's own parser before the older one is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg

from consumers.runtime import Event

LOOKAHEAD = 3  # newer snapshots examined for one that parses


def superseded(conn: psycopg.Connection[Any], event: Event, parses: Callable[[Any], object]) -> bool:
    """True when a newer snapshot (by fetched_at, then id) of this account and kind parses."""
    after = (event.fetched_at, event.id)
    for _ in range(LOOKAHEAD):
        row = conn.execute(
            """SELECT fetched_at, id, payload FROM staging_snapshots
               WHERE kind = %s AND account = %s AND fetched_at >= %s AND (fetched_at, id) > (%s, %s)
               ORDER BY fetched_at, id LIMIT 1""",
            (event.kind, event.account, after[0], after[0], after[1]),
        ).fetchone()
        if row is None:
            return False
        after = (row[0], row[1])
        if row[2] is None:
            continue
        try:
            parses(row[2])
        except ValueError:  # PayloadError and friends: that one will be dead-lettered
            continue
        return True
    return False


def superseded_many(conn: psycopg.Connection[Any],
                    checks: Sequence[tuple[Event, Callable[[int, Any], object]]],
                    known: Mapping[int, Any]) -> set[int]:
    """:func:`superseded` for many events at once: the ids of those it is True for.

    ``known`` maps event ids to payloads the caller holds already (its batch), so only the
    payloads of newer snapshots outside the batch travel. Each check is called with the newer
    snapshot's id and payload (so it can reuse what it knows of that snapshot) and, like the
    ``parses`` of :func:`superseded`, raises ``ValueError`` when that one cannot supersede.
    """
    if not checks:
        return set()
    rows = conn.execute(
        """SELECT e.ord, n.id, n.payload IS NULL
           FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::timestamptz[])
                WITH ORDINALITY AS e(id, kind, account, fetched_at, ord)
           CROSS JOIN LATERAL (
               SELECT s.id, s.fetched_at, s.payload FROM staging_snapshots s
               WHERE s.kind = e.kind AND s.account = e.account AND s.fetched_at >= e.fetched_at
                 AND (s.fetched_at, s.id) > (e.fetched_at, e.id)
               ORDER BY s.fetched_at, s.id LIMIT %s) n
           ORDER BY e.ord, n.fetched_at, n.id""",
        ([e.id for e, _ in checks], [e.kind for e, _ in checks], [e.account for e, _ in checks],
         [e.fetched_at for e, _ in checks], LOOKAHEAD),
    ).fetchall()
    payloads = dict(known)
    missing = sorted({nid for _, nid, is_null in rows if not is_null and nid not in payloads})
    if missing:
        payloads.update(conn.execute(
            "SELECT id, payload FROM staging_snapshots WHERE id = ANY (%s::bigint[])", (missing,)
        ).fetchall())
    newer: dict[int, list[tuple[int, bool]]] = {}
    for ord_, nid, is_null in rows:
        newer.setdefault(int(ord_), []).append((nid, is_null))
    out: set[int] = set()
    for i, (event, parses) in enumerate(checks, start=1):
        for nid, is_null in newer.get(i, ()):
            if is_null:
                continue
            try:
                parses(nid, payloads[nid])
            except ValueError:  # as in superseded(): that one will be dead-lettered
                continue
            out.add(event.id)
            break
    return out
