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

from collections.abc import Callable
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
