"""Run a consumer Runner in a background thread, as a test would a service."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from consumers.runtime import Consumer, Runner, RuntimeConfig

FAST = RuntimeConfig(batch_size=100, poll_interval=1.0, max_attempts=3, retry_backoff=0.01, reconnect_max_backoff=0.5)


@contextmanager
def running(consumer: Consumer, url: str, config: RuntimeConfig = FAST) -> Iterator[Runner]:
    runner = Runner(consumer, url, config)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            runner.run()
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield runner
    finally:
        runner.stop.set()
        thread.join(15)
        assert not thread.is_alive(), "runner did not stop"
        if errors:
            raise errors[0]


def cursor(conn: psycopg.Connection[Any], name: str = "ledger") -> int:
    row = conn.execute("SELECT last_id FROM consumer_cursors WHERE consumer = %s", (name,)).fetchone()
    return int(row[0]) if row else 0


def behind(conn: psycopg.Connection[Any], name: str = "ledger") -> int | None:
    row = conn.execute("SELECT events_behind FROM consumer_lag WHERE consumer = %s", (name,)).fetchone()
    return int(row[0]) if row else None


def caught_up(conn: psycopg.Connection[Any], name: str = "ledger") -> bool:
    return behind(conn, name) == 0
