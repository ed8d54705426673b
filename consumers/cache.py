"""The cache_invalidation consumer, and the reader a dashboard uses to stay fresh.

Consumer: every snapshot maps to a cache key (``positions`` for stock and option positions and
quotes, ``balances`` for account and portfolio, ``trades`` for stock and option orders). When a
snapshot's *content* differs from the newest one of its kind and account (a SHA-256 of its
results, pagination links left out), the key's version for that account is bumped in
``cache_versions`` and, on commit, a notification is sent::

    NOTIFY brokersync_cache, '{"key": "positions", "account": "5QR12345", "version": 7,
                               "event_id": 123, "changed_at": "2026-11-20T15:00:00.000000Z"}'

Account ``"*"`` (quotes are market data, not an account's) means every account's entry for that
key. A snapshot older than the newest one seen for its kind and account changes nothing (the
domain consumers ignore it too). An orders snapshot is a delta, so an empty one changes nothing.
Versions derive from snapshot content only, so a replay gives the same versions.

Note: the version says the *source data* changed; the consumer that applies it (positions,
balances, trade_history) is a separate process and may apply it a few milliseconds later. A
reader that must see the applied rows can wait with :meth:`CacheReader.wait_applied`.

Reader::

    from consumers.cache import CacheReader

    with CacheReader(database_url) as cache:
        rows = cache.get("positions", "5QR12345",
                         lambda conn: conn.execute("SELECT * FROM positions WHERE account = %s",
                                                   ("5QR12345",)).fetchall())
        ...
        cache.poll()          # drop entries named by notifications that arrived meanwhile
        cache.poll(timeout=5) # or wait up to 5 s for one (e.g. in a refresh thread)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import orjson
import psycopg

from brokersync.db import connect
from consumers.parsing import content_hash, envelope_of
from consumers.runtime import Consumer, Event
from schema.eventlog import (
    ACCOUNT,
    OPTION_ORDERS,
    OPTION_POSITIONS,
    PORTFOLIO,
    QUOTES,
    STOCK_ORDERS,
    STOCK_POSITIONS,
)
from schema.payloads import PayloadError

CACHE_CHANNEL = "brokersync_cache"
ALL_ACCOUNTS = "*"
TABLES = ("cache_versions", "cache_content_hashes")

# Which cache key a snapshot kind feeds.
KEY_OF_KIND: dict[str, str] = {
    STOCK_POSITIONS: "positions",
    OPTION_POSITIONS: "positions",
    QUOTES: "positions",
    ACCOUNT: "balances",
    PORTFOLIO: "balances",
    STOCK_ORDERS: "trades",
    OPTION_ORDERS: "trades",
}
DELTA_KINDS = frozenset({STOCK_ORDERS, OPTION_ORDERS})
# The consumer that applies each key's data (for wait_applied).
CONSUMER_OF_KEY = {"positions": "positions", "balances": "balances", "trades": "trade_history"}


def snapshot_content(payload: Any) -> dict[str, Any]:
    """The snapshot's data without transport details: each paginated response's results."""
    if not isinstance(payload, dict) or not isinstance(payload.get("responses"), dict):
        raise PayloadError("payload is not a snapshot envelope ({'v': 1, 'responses': {...}})")
    out: dict[str, Any] = {}
    for name, value in payload["responses"].items():
        if isinstance(value, list) and all(isinstance(p, dict) and "results" in p for p in value):
            items: list[Any] = []
            for page in value:
                if not isinstance(page["results"], list):
                    raise PayloadError(f"a page of {name!r} has no results list")
                items.extend(page["results"])
            out[name] = items
        else:
            out[name] = value
    return out


def _is_empty_delta(kind: str, content: dict[str, Any]) -> bool:
    return kind in DELTA_KINDS and not content.get("orders")


def handle(conn: psycopg.Connection[Any], event: Event) -> None:
    key = KEY_OF_KIND.get(event.kind)
    if key is None:
        raise PayloadError(f"cache_invalidation does not handle kind {event.kind!r}")
    content = snapshot_content(envelope_of(event.payload, event.raw_body))
    if _is_empty_delta(event.kind, content):
        return
    digest = content_hash(content)
    # One statement: advance the kind's newest hash (a stale snapshot changes nothing), bump the
    # key's version when the hash differs from the previous one, and NOTIFY (sent on commit).
    conn.execute(
        """WITH old AS (
               SELECT content_hash FROM cache_content_hashes WHERE kind = %(kind)s AND account = %(a)s),
           up AS (
               INSERT INTO cache_content_hashes AS h (kind, account, content_hash, fetched_at)
               VALUES (%(kind)s, %(a)s, %(hash)s, %(t)s)
               ON CONFLICT (kind, account) DO UPDATE
               SET content_hash = EXCLUDED.content_hash, fetched_at = EXCLUDED.fetched_at
               WHERE h.fetched_at <= EXCLUDED.fetched_at
               RETURNING content_hash),
           changed AS (
               SELECT 1 FROM up WHERE NOT EXISTS (
                   SELECT 1 FROM old WHERE old.content_hash = up.content_hash)),
           v AS (
               INSERT INTO cache_versions AS v (cache_key, account, version, changed_at, event_id)
               SELECT %(key)s, %(a)s, 1, %(t)s, %(id)s FROM changed
               ON CONFLICT (cache_key, account) DO UPDATE
               SET version = v.version + 1, changed_at = greatest(v.changed_at, EXCLUDED.changed_at),
                   event_id = EXCLUDED.event_id
               RETURNING version, changed_at)
           SELECT pg_notify(%(channel)s, json_build_object(
                      'key', %(key)s::text, 'account', %(a)s::text, 'version', v.version,
                      'event_id', %(id)s::bigint,
                      'changed_at', to_char(v.changed_at AT TIME ZONE 'UTC',
                                            'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text)
           FROM v""",
        {"kind": event.kind, "a": event.account, "hash": digest, "t": event.fetched_at,
         "key": key, "id": event.id, "channel": CACHE_CHANNEL},
    )


def handle_batch(conn: psycopg.Connection[Any], events: Sequence[Event]) -> None:
    """The effect of :func:`handle` on each event in order, in three statements.

    The hashes are compared in Python against the batch's running state (read once), the final
    hashes and versions are written once, and the bumps are notified in order with the very
    payload :func:`handle` sends (built by the same SQL expression).
    """
    work: list[tuple[Event, str, str]] = []
    for event in events:  # everything that can fail first: a bad event sends the batch to handle()
        key = KEY_OF_KIND.get(event.kind)
        if key is None:
            raise PayloadError(f"cache_invalidation does not handle kind {event.kind!r}")
        content = snapshot_content(envelope_of(event.payload, event.raw_body))
        if _is_empty_delta(event.kind, content):
            continue
        work.append((event, key, content_hash(content)))
    if not work:
        return
    kinds = sorted({(e.kind, e.account) for e, _, _ in work})
    keys = sorted({(k, e.account) for e, k, _ in work})
    hashes: dict[tuple[str, str], tuple[str, datetime]] = {
        (k, a): (h, t) for k, a, h, t in conn.execute(
            """SELECT h.kind, h.account, h.content_hash, h.fetched_at
               FROM cache_content_hashes h
               JOIN unnest(%s::text[], %s::text[]) AS w(kind, account)
                 ON h.kind = w.kind AND h.account = w.account""",
            ([k for k, _ in kinds], [a for _, a in kinds]),
        )
    }
    versions: dict[tuple[str, str], tuple[int, datetime, int]] = {
        (k, a): (v, t, i) for k, a, v, t, i in conn.execute(
            """SELECT v.cache_key, v.account, v.version, v.changed_at, v.event_id
               FROM cache_versions v
               JOIN unnest(%s::text[], %s::text[]) AS w(cache_key, account)
                 ON v.cache_key = w.cache_key AND v.account = w.account""",
            ([k for k, _ in keys], [a for _, a in keys]),
        )
    }
    touched_hashes: set[tuple[str, str]] = set()
    touched_versions: set[tuple[str, str]] = set()
    bumps: list[tuple[str, str, int, int, datetime]] = []
    for event, key, digest in work:
        hk = (event.kind, event.account)
        old = hashes.get(hk)
        if old is not None and not old[1] <= event.fetched_at:
            continue  # stale: changes nothing
        hashes[hk] = (digest, event.fetched_at)
        touched_hashes.add(hk)
        if old is not None and old[0] == digest:
            continue
        vk = (key, event.account)
        was = versions.get(vk)
        if was is None:
            now = (1, event.fetched_at, event.id)
        else:  # greatest(): the first argument wins a tie, as in SQL
            now = (was[0] + 1, event.fetched_at if event.fetched_at > was[1] else was[1], event.id)
        versions[vk] = now
        touched_versions.add(vk)
        bumps.append((key, event.account, now[0], event.id, now[1]))
    h_rows = [(k, a, *hashes[(k, a)]) for k, a in sorted(touched_hashes)]
    conn.execute(
        """INSERT INTO cache_content_hashes AS h (kind, account, content_hash, fetched_at)
           SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[])
           ON CONFLICT (kind, account) DO UPDATE
           SET content_hash = EXCLUDED.content_hash, fetched_at = EXCLUDED.fetched_at""",
        [list(c) for c in zip(*h_rows, strict=True)],
    )
    if not bumps:
        return
    v_rows = [(k, a, *versions[(k, a)]) for k, a in sorted(touched_versions)]
    conn.execute(
        """INSERT INTO cache_versions AS v (cache_key, account, version, changed_at, event_id)
           SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::timestamptz[],
                                %s::bigint[])
           ON CONFLICT (cache_key, account) DO UPDATE
           SET version = EXCLUDED.version, changed_at = EXCLUDED.changed_at,
               event_id = EXCLUDED.event_id""",
        [list(c) for c in zip(*v_rows, strict=True)],
    )
    # In order: a function scan returns the array's elements in order, and nothing sorts them.
    # The bumps travel as one JSON text (far cheaper to send than five arrays).
    conn.execute(
        """SELECT pg_notify(%s, json_build_object(
                      'key', b.key::text, 'account', b.account::text, 'version', b.version,
                      'event_id', b.event_id::bigint,
                      'changed_at', to_char(b.changed_at AT TIME ZONE 'UTC',
                                            'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text)
           FROM json_to_recordset(%s::json)
                AS b(key text, account text, version bigint, event_id bigint,
                     changed_at timestamptz)""",
        (CACHE_CHANNEL, orjson.dumps([
            {"key": k, "account": a, "version": v, "event_id": i, "changed_at": t.isoformat()}
            for k, a, v, i, t in bumps]).decode()),
    )


def reset(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"TRUNCATE {', '.join(TABLES)}")


CONSUMER = Consumer(
    name="cache_invalidation",
    kinds=tuple(KEY_OF_KIND),
    handle=handle,
    handle_batch=handle_batch,
    reset=reset,
    tables=TABLES,
    description=f"Bumps cache versions when data changes and notifies {CACHE_CHANNEL}",
)


# ---- the reader ---------------------------------------------------------------------------------

T = TypeVar("T")
Loader = Callable[[psycopg.Connection[Any]], T]


class CacheReader:
    """An in-process cache that drops entries when ``brokersync_cache`` says their data changed.

    Entries are keyed by (cache key, account). ``LISTEN`` starts before anything is loaded, so
    no invalidation can fall between a load and the next :meth:`poll`. Not thread-safe: use one
    reader per thread (it owns one database connection).
    """

    def __init__(self, url: str) -> None:
        self.conn = connect(url, autocommit=True, application_name="brokersync:cache-reader")
        self.conn.execute(f"LISTEN {CACHE_CHANNEL}")
        self._entries: dict[tuple[str, str], Any] = {}
        self.versions: dict[tuple[str, str], int] = {
            (str(k), str(a)): int(v)
            for k, a, v in self.conn.execute("SELECT cache_key, account, version FROM cache_versions")
        }
        self.last_event_id: dict[tuple[str, str], int] = {}

    # -- cache --
    def get(self, key: str, account: str, loader: Loader[T]) -> T:
        """The cached value, or ``loader(conn)`` stored until a notification drops it."""
        self.poll()
        entry = (key, account)
        if entry not in self._entries:
            self._entries[entry] = loader(self.conn)
        value: T = self._entries[entry]
        return value

    def cached(self, key: str, account: str) -> bool:
        return (key, account) in self._entries

    def poll(self, timeout: float = 0.0) -> int:
        """Apply pending notifications (waiting up to ``timeout`` for the first); return drops."""
        notices = list(self.conn.notifies(timeout=timeout, stop_after=1)) if timeout > 0 else []
        notices += list(self.conn.notifies(timeout=0))
        dropped = 0
        for n in notices:
            if n.channel != CACHE_CHANNEL:
                continue
            try:
                data = orjson.loads(n.payload)
            except orjson.JSONDecodeError:
                data = None
            if not isinstance(data, dict):  # unreadable: drop everything, never serve stale
                dropped += len(self._entries)
                self._entries.clear()
                continue
            key, account = str(data.get("key")), str(data.get("account"))
            self.versions[(key, account)] = int(data.get("version") or 0)
            self.last_event_id[(key, account)] = int(data.get("event_id") or 0)
            doomed = [e for e in self._entries
                      if e[0] == key and (account == ALL_ACCOUNTS or e[1] == account)]
            for e in doomed:
                del self._entries[e]
            dropped += len(doomed)
        return dropped

    def wait_applied(self, key: str, account: str, timeout: float = 5.0) -> bool:
        """Wait until the consumer of ``key`` has applied the last change notified for it."""
        event_id = self.last_event_id.get((key, account)) or self.last_event_id.get((key, ALL_ACCOUNTS))
        if not event_id:
            return True
        q = """SELECT (c.tx_id, c.last_id) >= (s.tx_id, s.id)
               FROM consumer_cursors c, staging_snapshots s WHERE c.consumer = %s AND s.id = %s"""
        deadline = time.monotonic() + timeout
        while True:
            row = self.conn.execute(q, (CONSUMER_OF_KEY[key], event_id)).fetchone()
            if row and row[0]:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
