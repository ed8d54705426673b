"""The instrument cache: instrument URL -> raw instrument object, kept in the database.

Positions and orders name instruments by URL; symbols come from ``/instruments/{id}/`` (and
``/options/instruments/{id}/``). Those objects practically never change, so each is fetched
once, stored in ``producer_instruments`` and read from memory afterwards: a steady-state
cycle makes no instrument calls, and neither does a restarted producer.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb


class InstrumentCache:
    def __init__(self) -> None:
        self._items: dict[str, dict[str, Any]] = {}
        self._new: dict[str, tuple[str, dict[str, Any], datetime]] = {}
        self._lock = threading.Lock()

    def load(self, conn: psycopg.Connection[Any]) -> int:
        rows = conn.execute("SELECT url, payload FROM producer_instruments").fetchall()
        with self._lock:
            for url, payload in rows:
                self._items[url] = payload
        return len(rows)

    def get(self, url: str) -> dict[str, Any] | None:
        return self._items.get(url)

    def missing(self, urls: set[str]) -> list[str]:
        return sorted(u for u in urls if u not in self._items)

    def put(self, url: str, kind: str, payload: dict[str, Any], fetched_at: datetime) -> None:
        with self._lock:
            self._items[url] = payload
            self._new[url] = (kind, payload, fetched_at)

    def symbol(self, url: str) -> str | None:
        item = self._items.get(url)
        if item is None:
            return None
        value = item.get("symbol") or item.get("chain_symbol")
        return value if isinstance(value, str) else None

    def pending(self) -> int:
        return len(self._new)

    def flush(self, conn: psycopg.Connection[Any]) -> int:
        """Store instruments fetched since the last flush (in the caller's transaction)."""
        with self._lock:
            new, self._new = self._new, {}
        if not new:
            return 0
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO producer_instruments (url, kind, symbol, payload, fetched_at)
                   VALUES (%s, %s, %s, %s, %s)
                   ON CONFLICT (url) DO UPDATE SET payload = EXCLUDED.payload,
                       symbol = EXCLUDED.symbol, fetched_at = EXCLUDED.fetched_at""",
                [(url, kind, payload.get("symbol") or payload.get("chain_symbol"), Jsonb(payload), at)
                 for url, (kind, payload, at) in new.items()],
            )
        return len(new)
