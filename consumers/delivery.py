"""Exactly-once notification delivery: record + enqueue in the consumer's transaction, then
check-and-mark around the send in the worker.

Why no relay and no "enqueue after commit"
------------------------------------------
The dramatiq-postgres broker keeps its queue in this same database (``dramatiq.queue``,
created by migration 0300). So the notifications consumer writes the delivery row AND the
dramatiq message in the one transaction that also advances its cursor (:func:`record`):

* enqueue after commit could lose a message (a crash between the commit and the enqueue) and
  would then need a relay to find it; enqueue before commit could send a message for an event
  whose transaction rolled back. Writing both in one transaction has neither window: either
  the event is applied, the delivery recorded and the message queued, or none of it happened.
* the message is only written when the delivery row is new (``INSERT ... ON CONFLICT
  (dedupe_key, sink) DO NOTHING RETURNING``). A replay re-derives the same dedupe keys, finds
  the rows, and queues nothing: old messages are never re-sent.

The insert uses the broker's own ENQUEUE statement (``dramatiq_postgres.broker.QUERIES``), so
the row and its ``pg_notify`` wake-up (sent at commit) are exactly what ``broker.enqueue``
writes.

The send (:func:`deliver`, run by the actor)
--------------------------------------------
One transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` the delivery row; if it is ``sent``,
acknowledge and stop; else send, then mark it ``sent`` (or record the error) and commit. The
crash windows:

1. consumer crashes before its commit: nothing was recorded or queued; the event is re-applied
   from the cursor and records it then.
2. worker crashes after claiming the message, before sending: the row lock dies with the
   connection (nothing committed); dramatiq-postgres requeues the message once the worker's
   heartbeat is older than ``BROKERSYNC_NOTIFY_WORKER_HEARTBEAT_TTL``; another worker sends it.
   Sent once.
3. the same delivery queued twice (a manual re-enqueue, a requeue while the first is running):
   the second run either skips a locked row (the first is sending it and will retry or be
   requeued if it fails) or finds ``sent`` and skips. Sent once.
4. worker crashes *during* the send, after the remote side accepted the message but before the
   commit: the row is not marked, so it is sent again. No system can close this window without
   the receiver's help; each sink carries a stable idempotency key for it (webhook
   ``Idempotency-Key`` header, email ``Message-ID``), so a receiver can drop the repeat.
   It is as narrow as one HTTP/SMTP exchange.
5. a send fails: the error and attempt count are committed on the row (status ``retrying``),
   and the actor raises so dramatiq's Retries middleware retries with exponential backoff; on
   the last retry, or on a permanent error (4xx, refused recipient), status becomes ``failed``
   with the error kept in ``last_error`` (``brokersync notify resend`` queues it again).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Json, Jsonb

from consumers.sinks import Outgoing, SinkError

log = logging.getLogger(__name__)

QUEUE = "notifications"


def actor_name(sink: str) -> str:
    return f"notify_{sink}"


@dataclass(frozen=True)
class Notification:
    """What a rule fires. ``key`` is deterministic (rule, account, subject, event id or day),
    so the same event or day always yields the same key."""

    rule: str
    account: str
    subject: str
    key: str
    title: str
    body: str
    occurred_at: datetime
    event_id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


def enqueue(conn: psycopg.Connection[Any], delivery_id: int, sink: str) -> str:
    """Queue the dramatiq message for one delivery on ``conn`` (inside the caller's transaction)."""
    # Imported here: the consumer process loads the broker's code only once it enqueues.
    import dramatiq
    from dramatiq_postgres.broker import QUERIES

    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=QUEUE, actor_name=actor_name(sink), args=(delivery_id,), kwargs={}, options={}
    )
    conn.execute(QUERIES.ENQUEUE, (QUEUE, message.message_id, Json(json.loads(message.encode())), 0))
    conn.execute(
        "UPDATE notification_deliveries SET message_id = %s WHERE id = %s",
        (message.message_id, delivery_id),
    )
    return message.message_id


def record(
    conn: psycopg.Connection[Any], n: Notification, sinks: tuple[str, ...], *, expired: bool = False
) -> list[int]:
    """Insert one delivery per sink and queue it; return the ids of the new ones.

    Already-recorded (key, sink) pairs are left alone. ``expired``: record the delivery as
    ``expired`` and queue nothing (an old event met during a first catch-up of history).
    """
    if not sinks:
        return []
    rows = conn.execute(
        """INSERT INTO notification_deliveries
               (dedupe_key, sink, rule, account, subject, title, body, data, event_id,
                occurred_at, status)
           SELECT %s, sink, %s, %s, %s, %s, %s, %s, %s, %s, %s
           FROM unnest(%s::text[]) WITH ORDINALITY AS s(sink, n)
           ORDER BY n
           ON CONFLICT (dedupe_key, sink) DO NOTHING
           RETURNING id, sink""",
        (n.key, n.rule, n.account, n.subject, n.title, n.body, Jsonb(n.data), n.event_id,
         n.occurred_at, "expired" if expired else "queued", list(sinks)),
    ).fetchall()
    if not expired:
        for delivery_id, sink in rows:
            enqueue(conn, int(delivery_id), sink)
    return [int(r[0]) for r in rows]


def record_many(
    conn: psycopg.Connection[Any], items: Sequence[tuple[Notification, bool]], sinks: tuple[str, ...]
) -> list[tuple[int, str, str]]:
    """:func:`record` for many notifications at once (``(notification, expired)`` pairs, in
    order); return (delivery id, dedupe key, sink) of the new rows, in insertion order.

    One statement inserts the rows in exactly the order :func:`record` called once per
    notification would (notification by notification, sink by sink), so the ids and the
    ON CONFLICT DO NOTHING outcome are the same, including a key repeated within the batch
    (the later row conflicts with the earlier one and is skipped). The new non-expired rows are
    then queued in id order, as :func:`record` queues them.
    """
    if not sinks or not items:
        return []
    ns = [n for n, _ in items]
    rows = conn.execute(
        """INSERT INTO notification_deliveries
               (dedupe_key, sink, rule, account, subject, title, body, data, event_id,
                occurred_at, status)
           SELECT v.key, s.sink, v.rule, v.account, v.subject, v.title, v.body, v.data::jsonb,
                  v.event_id, v.occurred_at, v.status
           FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                       %s::text[], %s::bigint[], %s::timestamptz[], %s::text[])
                WITH ORDINALITY AS v(key, rule, account, subject, title, body, data, event_id,
                                     occurred_at, status, n)
           CROSS JOIN unnest(%s::text[]) WITH ORDINALITY AS s(sink, m)
           ORDER BY v.n, s.m
           ON CONFLICT (dedupe_key, sink) DO NOTHING
           RETURNING id, dedupe_key, sink, status""",
        ([n.key for n in ns], [n.rule for n in ns], [n.account for n in ns],
         [n.subject for n in ns], [n.title for n in ns], [n.body for n in ns],
         [json.dumps(n.data) for n in ns], [n.event_id for n in ns],
         [n.occurred_at for n in ns], ["expired" if e else "queued" for _, e in items],
         list(sinks)),
    ).fetchall()
    rows.sort(key=lambda r: int(r[0]))
    enqueue_many(conn, [(int(r[0]), str(r[2])) for r in rows if r[3] != "expired"])
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


def enqueue_many(conn: psycopg.Connection[Any], deliveries: Sequence[tuple[int, str]]) -> None:
    """:func:`enqueue` for many (delivery id, sink) pairs, in order, in the caller's transaction:
    the broker's own ENQUEUE statement, pipelined (one round trip, not one per message)."""
    if not deliveries:
        return
    import dramatiq
    from dramatiq_postgres.broker import QUERIES

    messages: list[dramatiq.Message[Any]] = [
        dramatiq.Message(queue_name=QUEUE, actor_name=actor_name(sink), args=(delivery_id,),
                         kwargs={}, options={})
        for delivery_id, sink in deliveries
    ]
    with conn.cursor() as cur:
        cur.executemany(
            QUERIES.ENQUEUE,
            [(QUEUE, m.message_id, Json(json.loads(m.encode())), 0) for m in messages],
        )
    conn.execute(
        """UPDATE notification_deliveries d SET message_id = v.message_id
           FROM unnest(%s::bigint[], %s::uuid[]) AS v(id, message_id)
           WHERE d.id = v.id""",
        ([d for d, _ in deliveries], [m.message_id for m in messages]),
    )


_SELECT = """SELECT id, dedupe_key, sink, rule, account, subject, title, body, occurred_at, data,
                    status
             FROM notification_deliveries WHERE id = %s"""


def deliver(
    conn: psycopg.Connection[Any],
    delivery_id: int,
    send: Callable[[Outgoing], None],
    *,
    final: bool = False,
) -> str:
    """Send one delivery at most once (see the module docstring for the crash windows).

    Returns ``sent``, ``already sent``, ``busy`` (another worker holds it), ``missing`` or
    ``failed`` (permanent, or the last attempt). Raises :class:`SinkError` after recording a
    retryable failure, for dramatiq to retry.
    """
    error: SinkError | None = None
    with conn.transaction():
        row = conn.execute(_SELECT + " FOR UPDATE SKIP LOCKED", (delivery_id,)).fetchone()
        if row is None:
            exists = conn.execute(
                "SELECT 1 FROM notification_deliveries WHERE id = %s", (delivery_id,)
            ).fetchone()
            return "busy" if exists else "missing"
        if row[10] == "sent":
            return "already sent"
        message = Outgoing(
            id=row[0], dedupe_key=row[1], sink=row[2], rule=row[3], account=row[4],
            subject=row[5], title=row[6], body=row[7], occurred_at=row[8], data=row[9] or {},
        )
        try:
            send(message)
        except Exception as exc:
            error = exc if isinstance(exc, SinkError) else SinkError(f"{type(exc).__name__}: {exc}")
            status = "failed" if final or error.permanent else "retrying"
            conn.execute(
                """UPDATE notification_deliveries
                   SET status = %s, attempts = attempts + 1, last_attempt_at = now(),
                       last_error = %s
                   WHERE id = %s""",
                (status, str(error), delivery_id),
            )
        else:
            conn.execute(
                """UPDATE notification_deliveries
                   SET status = 'sent', attempts = attempts + 1, last_attempt_at = now(),
                       sent_at = now(), last_error = NULL
                   WHERE id = %s""",
                (delivery_id,),
            )
    if error is None:
        return "sent"
    if final or error.permanent:
        log.error("delivery %s (%s) failed for good: %s", delivery_id, message.sink, error)
        return "failed"
    log.warning("delivery %s (%s) failed, will retry: %s", delivery_id, message.sink, error)
    raise error


def resend(conn: psycopg.Connection[Any], ids: list[int], *, failed: bool) -> list[int]:
    """Queue deliveries again (by id, or every failed one); sent ones are never re-sent."""
    with conn.transaction():
        rows = conn.execute(
            """SELECT id, sink FROM notification_deliveries
               WHERE status <> 'sent'
                 AND (id = ANY (%s::bigint[]) OR (%s AND status = 'failed'))
               ORDER BY id FOR UPDATE""",
            (ids, failed),
        ).fetchall()
        for delivery_id, sink in rows:
            conn.execute(
                "UPDATE notification_deliveries SET status = 'queued' WHERE id = %s", (delivery_id,)
            )
            enqueue(conn, delivery_id, sink)
    return [int(r[0]) for r in rows]
