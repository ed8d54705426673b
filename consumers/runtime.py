"""The consumer runtime: apply the event log to a consumer's tables, exactly once, in order.

A consumer is a name, the kinds of snapshot it wants, and a handler. The runtime gives it:

* a durable cursor in ``consumer_cursors``; on start and after every reconnect it catches up
  from there. NOTIFY on ``brokersync_events`` only shortens the wait; a slow poll covers a lost
  notification.
* gap-safe reading: events are read in (tx_id, id) order and only below the oldest running
  transaction (``pg_snapshot_xmin``), so a row whose transaction commits after a later id's is
  never stepped over (see ``schema/migrations/0001_event_log.sql``).
* batches: one transaction per batch holds the handler's effects and the cursor's advance, so a
  crash at any instant leaves the tables as if every event before the cursor applied once.
* poison events: each event runs in a savepoint; a failing one is retried with backoff, then
  recorded in ``consumer_dead_letters`` and skipped. ``brokersync dlq retry`` re-applies it.
* reconnect with backoff on connection loss; a stop signal rolls back the batch in flight and
  returns promptly.
* one active instance per consumer name (a session advisory lock); a second instance waits as a
  standby and takes over when the first one's connection ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg import pq, sql

from brokersync.db import connect, is_connection_error
from brokersync.signals import Backoff
from schema.eventlog import CONTROL_CHANNEL, EVENTS_CHANNEL, log_ahead_of_server, parse_notice

log = logging.getLogger(__name__)

Handler = Callable[[psycopg.Connection[Any], "Event"], None]
ConnHook = Callable[[psycopg.Connection[Any]], None]
BatchHandler = Callable[[psycopg.Connection[Any], "Sequence[Event]"], None]

WAIT_SLICE = 1.0  # seconds: how often an idle wait checks the stop event (stop latency)
HELD_BACK_RECHECK = 0.02  # committed events held behind an older running transaction
HELD_BACK_WARN = 30.0  # seconds held back before saying which transaction holds them
HEARTBEAT_EVERY = 10.0
VACUUM_EVERY = 2000  # events applied between VACUUMs of the consumer's tables while catching up


@dataclass(frozen=True)
class Event:
    id: int
    tx_id: int
    account: str
    kind: str
    source: str
    fetched_at: datetime
    recorded_at: datetime
    cycle_id: int | None
    payload: Any
    raw_body: str | None

    @property
    def malformed(self) -> bool:
        return self.payload is None


@dataclass(frozen=True)
class Consumer:
    """What a consumer module exports as ``CONSUMER``."""

    name: str
    kinds: tuple[str, ...]  # empty: every kind
    handle: Handler
    # Empties the consumer's own tables before a full replay (rebuild from the first event).
    reset: ConnHook | None = None
    # Called once per session before the loop (e.g. to create test tables).
    setup: ConnHook | None = None
    # Called when the consumer is idle (caught up), at most every `tick_interval` seconds:
    # time-based work such as a daily summary or a staleness check.
    tick: ConnHook | None = None
    tick_interval: float = 60.0
    tables: tuple[str, ...] = ()  # the tables it owns, in dependency order
    description: str = ""
    # Optional: apply a whole batch at once (a replay's speed). It must have exactly the
    # effect of calling `handle` on each event in order; the runtime calls it first and, if
    # it raises, redoes the batch one `handle` per event (savepoints) to find the poison event.
    handle_batch: BatchHandler | None = None


@dataclass
class RuntimeConfig:
    batch_size: int = 500
    poll_interval: float = 30.0
    max_attempts: int = 4
    retry_backoff: float = 0.5
    reconnect_max_backoff: float = 30.0

    @classmethod
    def from_settings(cls, settings: Any) -> RuntimeConfig:
        return cls(
            batch_size=settings.consumer_batch_size,
            poll_interval=settings.consumer_poll_interval,
            max_attempts=settings.consumer_max_attempts,
            retry_backoff=settings.consumer_retry_backoff,
            reconnect_max_backoff=settings.reconnect_max_backoff,
        )


class _Stopped(Exception):
    """Raised inside a batch transaction to roll it back when a stop was requested."""


class HandlerError(Exception):
    """A handler broke the runtime's contract (e.g. swallowed a database error)."""


class _EventFailed(Exception):
    """An event failed in an optimistic batch: roll it back and redo the batch carefully."""


def advisory_key(name: str) -> str:
    return f"brokersync.consumer:{name}"


def _columns(alias: str = "") -> str:
    p = f"{alias}." if alias else ""
    return (
        f"{p}id, {p}tx_id::text::bigint, {p}account, {p}kind, {p}source, {p}fetched_at, "
        f"{p}recorded_at, {p}cycle_id, {p}payload, {p}raw_body"
    )


_EVENT_COLUMNS = _columns()


def _event(row: tuple[Any, ...]) -> Event:
    return Event(*row)


@dataclass
class Runner:
    consumer: Consumer
    url: str
    config: RuntimeConfig = field(default_factory=RuntimeConfig)
    stop: threading.Event = field(default_factory=threading.Event)
    # Return once caught up (replay in the foreground) instead of waiting for more.
    exit_when_idle: bool = False
    on_batch: Callable[[int], None] | None = None
    applied_total: int = 0
    _last_heartbeat: float = 0.0
    _check_retries: bool = True
    _last_tick: float = 0.0

    # ---- the outer loop: (re)connect with backoff --------------------------------------------
    def run(self) -> None:
        backoff = Backoff(0.5, self.config.reconnect_max_backoff)
        while not self.stop.is_set():
            try:
                self._session(backoff)
                return
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                delay = backoff.next()
                log.warning(
                    "%s: database connection lost (%s); reconnecting in %.1fs",
                    self.consumer.name, str(exc).strip().splitlines()[0] if str(exc) else type(exc).__name__, delay,
                )
                self._sleep(delay)

    def _sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True when stopped. In slices: on Windows a console control
        event does not interrupt a long Event.wait, so the stop handler would run late."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.stop.wait(min(0.5, remaining))
        return True

    def _session(self, backoff: Backoff) -> None:
        conn = connect(self.url, autocommit=True, application_name=f"brokersync:{self.consumer.name}")
        try:
            self._acquire_lock(conn)
            if self.stop.is_set():
                return
            conn.execute(f"LISTEN {EVENTS_CHANNEL}")
            conn.execute(f"LISTEN {CONTROL_CHANNEL}")
            if self.consumer.setup is not None:
                with conn.transaction():
                    self.consumer.setup(conn)
            self._register(conn)
            self._check_retries = True  # after every (re)connect
            log.info("%s: started (kinds: %s)", self.consumer.name, ", ".join(self.consumer.kinds) or "all")
            backoff.reset()
            self._loop(conn)
        finally:
            # closing a dead connection must not hide the real error
            with contextlib.suppress(Exception):
                conn.close()

    def _acquire_lock(self, conn: psycopg.Connection[Any]) -> None:
        said = False
        while not self.stop.is_set():
            got = conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (advisory_key(self.consumer.name),)
            ).fetchone()
            if got and got[0]:
                if said:
                    log.info("%s: the active instance is gone; taking over", self.consumer.name)
                return
            if not said:
                log.info("%s: another instance is active; waiting as a standby", self.consumer.name)
                said = True
            self._sleep(1.0)

    def _register(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            """INSERT INTO consumer_cursors (consumer, kinds, pid, host, heartbeat_at)
               VALUES (%s, %s, %s, %s, now())
               ON CONFLICT (consumer) DO UPDATE
               SET kinds = EXCLUDED.kinds, pid = EXCLUDED.pid, host = EXCLUDED.host,
                   heartbeat_at = now()""",
            (self.consumer.name, list(self.consumer.kinds), os.getpid(), socket.gethostname()),
        )
        self._last_heartbeat = time.monotonic()
        if log_ahead_of_server(conn):
            log.error(
                "%s: the event log's transaction ids are ahead of this server's (the database was "
                "restored into another server?): new events sort below the cursor and will not be "
                "read until the server's transaction counter passes them; see the README", self.consumer.name,
            )

    # ---- the inner loop: catch up, then wait for a NOTIFY or the poll ------------------------
    def _loop(self, conn: psycopg.Connection[Any]) -> None:
        since_vacuum = 0
        held_wait = HELD_BACK_RECHECK
        held_since: float | None = None
        while not self.stop.is_set():
            if self._check_retries:  # session start, a control NOTIFY, or the slow poll
                self._check_retries = False
                self._retry_requested(conn)
            applied, full, held_back = self._batch(conn)
            if self.stop.is_set():
                return
            since_vacuum += applied
            if since_vacuum >= VACUUM_EVERY:
                since_vacuum = 0
                self._vacuum(conn)
            if full or applied:
                continue  # more may be waiting: read again before sleeping
            if self.exit_when_idle and not held_back:
                return
            self._idle_work(conn)
            if not held_back:
                held_wait, held_since = HELD_BACK_RECHECK, None
                self._wait(conn, self.config.poll_interval)
                continue
            # Committed events wait behind an older transaction that is still open: recheck
            # soon, backing off to 1 s, and say who holds them when it lasts.
            now = time.monotonic()
            if held_since is None:
                held_since = now
            elif now - held_since > HELD_BACK_WARN:
                self._warn_held_back(conn)
                held_since = now
            self._wait(conn, held_wait)
            held_wait = min(1.0, held_wait * 2)

    def _warn_held_back(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute(
            """SELECT pid, application_name, state, now() - xact_start, left(query, 80)
               FROM pg_stat_activity WHERE backend_xid IS NOT NULL
               ORDER BY age(backend_xid) DESC LIMIT 1"""
        ).fetchone()
        who = (f"backend pid {row[0]} ({row[1] or 'no name'}, {row[2]}, open for {row[3]}): {row[4]!r}"
               if row else "an open transaction")
        log.warning("%s: committed events are held back behind %s; they are applied once it ends",
                    self.consumer.name, who)

    def _vacuum(self, conn: psycopg.Connection[Any]) -> None:
        """VACUUM the consumer's own tables while it catches up (a replay, a long outage).

        Handlers update the same few rows (a position, an account) for every event; at
        thousands of events a second autovacuum (one pass a minute) falls far behind, every
        scan walks thousands of dead row versions, and a replay slows to a crawl. Between
        batches the connection is in autocommit, so VACUUM can run; small tables take a
        millisecond or two.
        """
        for table in self.consumer.tables:
            try:  # not the owner (a shared server): VACUUM only warns, autovacuum will do
                conn.execute(sql.SQL("VACUUM {}").format(sql.Identifier(table)))
            except psycopg.Error as exc:
                if is_connection_error(exc):
                    raise
                log.debug("%s: VACUUM %s failed: %s", self.consumer.name, table, exc)

    def _idle_work(self, conn: psycopg.Connection[Any]) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_EVERY:
            conn.execute(
                "UPDATE consumer_cursors SET heartbeat_at = now(), pid = %s WHERE consumer = %s",
                (os.getpid(), self.consumer.name),
            )
            self._last_heartbeat = now
        if self.consumer.tick is not None and now - self._last_tick >= self.consumer.tick_interval:
            self._last_tick = now
            try:
                with conn.transaction():
                    self.consumer.tick(conn)
            except Exception as exc:
                if is_connection_error(exc):
                    raise
                log.exception("%s: periodic task failed", self.consumer.name)

    def _wait(self, conn: psycopg.Connection[Any], timeout: float) -> None:
        """Wait for a relevant notification, the poll timeout, or the stop event."""
        deadline = time.monotonic() + timeout
        kinds = set(self.consumer.kinds)
        while not self.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._check_retries = True  # the slow poll also covers a lost control NOTIFY
                return
            woke = False
            for n in conn.notifies(timeout=min(WAIT_SLICE, remaining)):
                if n.channel == EVENTS_CHANNEL:
                    notice = parse_notice(n.payload)
                    if notice is None or not kinds or notice.kind in kinds:
                        woke = True
                elif n.channel == CONTROL_CHANNEL and self._is_for_me(n.payload):
                    woke = self._check_retries = True
                if woke:
                    break
            if woke:
                return

    def _is_for_me(self, payload: str) -> bool:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return True
        return not isinstance(data, dict) or data.get("consumer") in (None, self.consumer.name)

    # ---- one batch: one transaction ---------------------------------------------------------
    def _batch(self, conn: psycopg.Connection[Any]) -> tuple[int, bool, bool]:
        """Apply up to batch_size events; return (applied, batch was full, events held back).

        Optimistic first: the whole batch runs without per-event savepoints (two round trips
        saved per event, which is most of a replay's cost). If any event fails, that attempt
        is rolled back whole and the same batch is run again carefully, one savepoint per
        event, to apply what precedes the failing event and hand that one to the poison path.
        """
        try:
            return self._batch_attempt(conn, careful=False)
        except _EventFailed:
            return self._batch_attempt(conn, careful=True)

    def _batch_attempt(self, conn: psycopg.Connection[Any], *, careful: bool) -> tuple[int, bool, bool]:
        name = self.consumer.name
        kinds = list(self.consumer.kinds)
        failed: tuple[Event, BaseException] | None = None
        applied = 0
        full = held_back = False
        try:
            with conn.transaction():
                cur = conn.execute(
                    "SELECT tx_id::text::bigint, last_id FROM consumer_cursors WHERE consumer = %s FOR UPDATE",
                    (name,),
                ).fetchone()
                assert cur is not None, "cursor row vanished"
                rows = conn.execute(
                    f"""SELECT {_EVENT_COLUMNS} FROM staging_snapshots
                        WHERE (tx_id, id) > (%s::text::xid8, %s)
                          AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
                          AND (cardinality(%s::text[]) = 0 OR kind = ANY (%s::text[]))
                        ORDER BY tx_id, id
                        LIMIT %s""",
                    (cur[0], cur[1], kinds, kinds, self.config.batch_size),
                ).fetchall()
                full = len(rows) == self.config.batch_size
                last: Event | None = None
                if not careful and self.consumer.handle_batch is not None and rows:
                    if self.stop.is_set():
                        raise _Stopped
                    events = [_event(row) for row in rows]
                    try:
                        self._apply_batch(conn, events)
                    except Exception as exc:
                        if is_connection_error(exc):
                            raise
                        raise _EventFailed from exc  # redo one event at a time
                    last, applied, rows = events[-1], len(events), []
                for row in rows:
                    if self.stop.is_set():
                        raise _Stopped
                    event = _event(row)
                    if careful:
                        try:
                            with conn.transaction():  # a savepoint per event
                                self._apply(conn, event)
                        except Exception as exc:
                            if is_connection_error(exc):
                                raise
                            failed = (event, exc)
                            break
                    else:
                        try:
                            self._apply(conn, event)
                        except Exception as exc:
                            if is_connection_error(exc):
                                raise
                            raise _EventFailed from exc  # rolls the attempt back
                    last = event
                    applied += 1
                if last is not None:
                    self._advance(conn, last, applied)
                if not full and failed is None:
                    held = conn.execute(
                        """SELECT EXISTS (SELECT 1 FROM staging_snapshots
                             WHERE (tx_id, id) > (%s::text::xid8, %s)
                               AND tx_id >= pg_snapshot_xmin(pg_current_snapshot())
                               AND (cardinality(%s::text[]) = 0 OR kind = ANY (%s::text[])))""",
                        (last.tx_id if last else cur[0], last.id if last else cur[1], kinds, kinds),
                    ).fetchone()
                    held_back = bool(held and held[0])
        except _Stopped:
            log.info("%s: stop requested; batch rolled back", name)
            return 0, False, False
        if applied:
            self.applied_total += applied
            if self.on_batch is not None:
                self.on_batch(applied)
        if failed is not None:
            self._poison(conn, *failed)
            return applied, True, False
        return applied, full, held_back

    def _apply(self, conn: psycopg.Connection[Any], event: Event) -> None:
        """Run the handler; fail loudly if it swallowed a database error.

        A handler that catches a database exception leaves the transaction aborted; releasing
        the savepoint or advancing the cursor would then fail with "current transaction is
        aborted" and the consumer would crash-loop on the batch. Raising here, inside the
        savepoint block, rolls the savepoint back and sends the event down the poison path.
        """
        self.consumer.handle(conn, event)
        if conn.info.transaction_status == pq.TransactionStatus.INERROR:
            raise HandlerError(
                f"the {self.consumer.name} handler caught a database error and carried on; "
                f"the transaction is aborted (let database errors propagate)"
            )

    def _apply_batch(self, conn: psycopg.Connection[Any], events: Sequence[Event]) -> None:
        assert self.consumer.handle_batch is not None
        self.consumer.handle_batch(conn, events)
        if conn.info.transaction_status == pq.TransactionStatus.INERROR:
            raise HandlerError(f"the {self.consumer.name} batch handler left the transaction aborted")

    def _advance(self, conn: psycopg.Connection[Any], last: Event, applied: int) -> None:
        conn.execute(
            """UPDATE consumer_cursors
               SET tx_id = %s::text::xid8, last_id = %s, applied_count = applied_count + %s,
                   last_applied_at = now(), updated_at = now()
               WHERE consumer = %s""",
            (last.tx_id, last.id, applied, self.consumer.name),
        )

    # ---- poison events ----------------------------------------------------------------------
    def _poison(self, conn: psycopg.Connection[Any], event: Event, exc: BaseException) -> None:
        name = self.consumer.name
        attempts = 1
        log.warning("%s: event %s (%s) failed: %s", name, event.id, event.kind, _short(exc))
        while attempts < self.config.max_attempts:
            delay = self.config.retry_backoff * (2 ** (attempts - 1))
            if self._sleep(delay):
                return  # the cursor stays before the event: the next run retries it
            try:
                with conn.transaction():
                    if not self._cursor_is_just_before(conn, event):
                        return  # rewound or moved meanwhile (replay): the loop re-reads
                    with conn.transaction():
                        self._apply(conn, event)
                    self._advance(conn, event, 1)
                log.info("%s: event %s applied on attempt %d", name, event.id, attempts + 1)
                self.applied_total += 1
                return
            except Exception as again:
                if is_connection_error(again):
                    raise
                attempts += 1
                exc = again
                log.warning("%s: event %s attempt %d failed: %s", name, event.id, attempts, _short(exc))
        error = _describe(exc)
        with conn.transaction():
            if not self._cursor_is_just_before(conn, event):
                return
            conn.execute(
                """INSERT INTO consumer_dead_letters (consumer, event_id, error, attempts)
                   VALUES (%s, %s, %s, %s)
                   ON CONFLICT (consumer, event_id) DO UPDATE
                   SET error = EXCLUDED.error, attempts = consumer_dead_letters.attempts + EXCLUDED.attempts,
                       last_failed_at = now(), retry_requested_at = NULL, resolved_at = NULL""",
                (name, event.id, error, attempts),
            )
            conn.execute(
                """UPDATE consumer_cursors
                   SET tx_id = %s::text::xid8, last_id = %s, updated_at = now(),
                       last_error = %s, last_error_at = now()
                   WHERE consumer = %s""",
                (event.tx_id, event.id, f"event {event.id}: {_short(exc)}", name),
            )
        log.error(
            "%s: event %s (%s, account %s) dead-lettered after %d attempts: %s "
            "(fix, then: brokersync dlq retry --consumer %s)",
            name, event.id, event.kind, event.account, attempts, _short(exc), name,
        )

    def _cursor_is_just_before(self, conn: psycopg.Connection[Any], event: Event) -> bool:
        """The cursor is still where it was when ``event`` failed (locks the cursor row)."""
        row = conn.execute(
            """SELECT c.tx_id::text::bigint, c.last_id,
                       (SELECT count(*) FROM staging_snapshots s
                         WHERE (s.tx_id, s.id) > (c.tx_id, c.last_id) AND (s.tx_id, s.id) < (%s::text::xid8, %s)
                           AND (cardinality(c.kinds) = 0 OR s.kind = ANY (c.kinds)))
                FROM consumer_cursors c WHERE c.consumer = %s FOR UPDATE""",
            (event.tx_id, event.id, self.consumer.name),
        ).fetchone()
        assert row is not None
        before = (row[0], row[1]) < (event.tx_id, event.id)
        return before and row[2] == 0

    # ---- dead letters whose retry was requested ---------------------------------------------
    def _retry_requested(self, conn: psycopg.Connection[Any]) -> None:
        rows = conn.execute(
            f"""SELECT d.id, {_columns("s")}
                FROM consumer_dead_letters d JOIN staging_snapshots s ON s.id = d.event_id
                WHERE d.consumer = %s AND d.retry_requested_at IS NOT NULL AND d.resolved_at IS NULL
                ORDER BY s.tx_id, s.id""",
            (self.consumer.name,),
        ).fetchall()
        for row in rows:
            dl_id, event = row[0], _event(row[1:])
            try:
                with conn.transaction():
                    # lock the dead letter and the cursor: a replay rewinding meanwhile waits
                    still = conn.execute(
                        "SELECT 1 FROM consumer_dead_letters WHERE id = %s AND resolved_at IS NULL FOR UPDATE",
                        (dl_id,),
                    ).fetchone()
                    conn.execute("SELECT 1 FROM consumer_cursors WHERE consumer = %s FOR UPDATE",
                                 (self.consumer.name,))
                    if not still:
                        continue
                    with conn.transaction():
                        self._apply(conn, event)
                    conn.execute(
                        "UPDATE consumer_dead_letters SET resolved_at = now() WHERE id = %s", (dl_id,)
                    )
                log.info("%s: dead letter %s (event %s) re-applied", self.consumer.name, dl_id, event.id)
            except Exception as exc:
                if is_connection_error(exc):
                    raise
                conn.execute(
                    """UPDATE consumer_dead_letters
                       SET attempts = attempts + 1, error = %s, last_failed_at = now(),
                           retry_requested_at = NULL
                       WHERE id = %s""",
                    (_describe(exc), dl_id),
                )
                log.error("%s: retry of dead letter %s failed again: %s", self.consumer.name, dl_id, _short(exc))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _describe(exc: BaseException) -> str:
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3)
    return "".join(tb)[-4000:]
