"""Exactly-once delivery: check-and-mark, retries with backoff, duplicates, the worker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from brokersync.settings import Settings
from consumers.delivery import Notification, deliver, enqueue, record, resend
from consumers.sinks import Outgoing, SinkError
from consumers.worker import run_worker
from tests.notifications.servers import http_sink
from tests.notifications.support import deliveries, make_settings, queued_messages
from tests.support.wait import wait_until


def notification(n: int = 1) -> Notification:
    return Notification(
        rule="position_opened", account="5QR12345", subject=f"SYM{n}", key=f"position_opened:5QR12345:SYM{n}:{n}",
        title=f"Position opened: SYM{n}", body=f"SYM{n}: 1 at average cost $1.00",
        occurred_at=datetime.now(UTC), event_id=None,
    )


def record_one(conn: psycopg.Connection[Any], n: int = 1, sinks: tuple[str, ...] = ("webhook",)) -> list[int]:
    with conn.transaction():
        return record(conn, notification(n), sinks)


def test_record_is_idempotent_per_key_and_sink(conn):
    first = record_one(conn, 1, ("log", "webhook"))
    again = record_one(conn, 1, ("log", "webhook", "email"))
    assert len(first) == 2 and len(again) == 1  # only the new sink is new
    assert [d["sink"] for d in deliveries(conn)] == ["log", "webhook", "email"]
    assert len(queued_messages(conn)) == 3


def test_record_rolls_back_with_the_transaction(conn):
    with pytest.raises(RuntimeError), conn.transaction():
        record(conn, notification(1), ("webhook",))
        raise RuntimeError("the consumer's batch failed")
    assert deliveries(conn) == [] and queued_messages(conn) == []


def test_the_delivery_step_run_twice_sends_once(conn):
    [delivery_id] = record_one(conn)
    with http_sink() as server:
        from consumers.sinks import WebhookSink

        sink = WebhookSink(server.url, timeout=5)
        assert deliver(conn, delivery_id, sink.send) == "sent"
        assert deliver(conn, delivery_id, sink.send) == "already sent"
    assert len(server.requests) == 1
    [d] = deliveries(conn)
    assert (d["status"], d["attempts"], d["last_error"]) == ("sent", 1, None)


def test_a_delivery_in_progress_elsewhere_is_skipped(conn, db_url):
    """A duplicate message meets the row locked by the worker that is sending it."""
    [delivery_id] = record_one(conn)
    sent: list[Outgoing] = []
    inside = threading.Event()
    release = threading.Event()

    def slow_send(m: Outgoing) -> None:
        inside.set()
        release.wait(10)
        sent.append(m)

    result: list[str] = []
    with psycopg.connect(db_url, autocommit=True) as other:
        t = threading.Thread(target=lambda: result.append(deliver(other, delivery_id, slow_send)))
        t.start()
        assert inside.wait(10)
        assert deliver(conn, delivery_id, sent.append) == "busy"
        release.set()
        t.join(10)
    assert result == ["sent"] and len(sent) == 1
    assert deliver(conn, delivery_id, sent.append) == "already sent"


def test_failures_are_recorded_retryable_then_final(conn):
    [delivery_id] = record_one(conn)

    def down(m: Outgoing) -> None:
        raise SinkError("webhook: HTTP 503: busy")

    with pytest.raises(SinkError):
        deliver(conn, delivery_id, down)
    [d] = deliveries(conn)
    assert (d["status"], d["attempts"], d["last_error"]) == ("retrying", 1, "webhook: HTTP 503: busy")
    assert deliver(conn, delivery_id, down, final=True) == "failed"
    [d] = deliveries(conn)
    assert (d["status"], d["attempts"]) == ("failed", 2)

    def refused(m: Outgoing) -> None:
        raise SinkError("webhook: HTTP 404: gone", permanent=True)

    [other] = record_one(conn, 2)
    assert deliver(conn, other, refused) == "failed"  # permanent: no retry
    assert deliveries(conn, id=other)[0]["status"] == "failed"

    # `brokersync notify resend --failed` queues both again; a sent one never.
    assert resend(conn, [], failed=True) == [delivery_id, other]
    assert {d["status"] for d in deliveries(conn)} == {"queued"}


@contextmanager
def worker(settings: Settings, url: str) -> Iterator[threading.Thread]:
    stop = threading.Event()
    codes: list[int] = []
    t = threading.Thread(target=lambda: codes.append(run_worker(settings, url, stop)), daemon=True)
    t.start()
    try:
        yield t
    finally:
        stop.set()
        t.join(30)
        assert not t.is_alive(), "worker did not stop"
    assert codes == [0]


def statuses(conn: psycopg.Connection[Any]) -> list[tuple[str, int]]:
    return [(d["status"], d["attempts"]) for d in deliveries(conn)]


def test_worker_retries_with_backoff_until_sent(conn, db_url, tmp_path):
    with http_sink(script=[503, 502]) as server:
        s = make_settings(tmp_path, notify_sinks="webhook", notify_webhook_url=server.url,
                          notify_min_backoff=0.05, notify_max_backoff=0.2, notify_max_retries=4)
        record_one(conn, 1)
        with worker(s, db_url):
            wait_until(lambda: statuses(conn) == [("sent", 3)], timeout=30, what="sent after retries")
        assert len(server.requests) == 3
    assert queued_messages(conn) == []


def test_worker_records_the_final_failure(conn, db_url, tmp_path):
    with http_sink(status=500) as server:
        s = make_settings(tmp_path, notify_sinks="webhook", notify_webhook_url=server.url,
                          notify_min_backoff=0.05, notify_max_backoff=0.1, notify_max_retries=2)
        record_one(conn, 1)
        with worker(s, db_url):
            wait_until(lambda: statuses(conn) == [("failed", 3)], timeout=30, what="final failure")
    [d] = deliveries(conn)
    assert d["last_error"].startswith("webhook: HTTP 500")
    assert len(server.requests) == 3  # the first try and two retries, then it stops


def test_duplicate_messages_for_one_delivery_send_once(conn, db_url, tmp_path):
    with http_sink() as server:
        s = make_settings(tmp_path, notify_sinks="webhook", notify_webhook_url=server.url)
        ids = record_one(conn, 1) + record_one(conn, 2)
        with conn.transaction():  # the same deliveries enqueued again, twice
            for _ in range(2):
                for i in ids:
                    enqueue(conn, i, "webhook")
        assert len(queued_messages(conn)) == 6
        with worker(s, db_url):
            wait_until(lambda: queued_messages(conn) == [], timeout=30, what="queue drained")
        assert sorted(b["key"] for b in server.bodies()) == sorted(d["dedupe_key"] for d in deliveries(conn))
    assert statuses(conn) == [("sent", 1), ("sent", 1)]
