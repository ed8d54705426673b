"""The service's cycle logic against the database, with the simulated broker on a fixed clock."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from brokersync.db import configure
from producer.service import Producer
from producer.sim import SimBroker
from producer.simworld import SimWorld
from schema.eventlog import KINDS
from tests.producer.conftest import make_settings

T = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)  # a Saturday: the world stands still


def producer(tmp_path: Path, **env: str) -> Producer:
    settings = make_settings(tmp_path, **env)
    broker = SimBroker(SimWorld(1, datetime(2026, 11, 20, tzinfo=UTC)), clock=lambda: T)
    return Producer(settings, threading.Event(), transport=broker)


def test_skip_identical_survives_a_restart(tmp_path: Path, db_url: str, conn: psycopg.Connection[Any]) -> None:
    results = []
    with psycopg.connect(db_url, autocommit=True) as c:
        configure(c)
        for cycles in (3, 1):  # the second producer reads the previous hashes from the database
            p = producer(tmp_path, BROKERSYNC_PRODUCER_SKIP_IDENTICAL="true")
            try:
                p.load_state(c)
                results += [p.cycle(c, set(KINDS)) for _ in range(cycles)]
            finally:
                p.close()
    first, second, third, restarted = results
    assert len(first.snapshots) == 13
    # the first orders fetch is the whole history, the next ones are deltas from the watermark
    assert {s.kind for s in second.snapshots} <= {"stock_orders", "option_orders"}
    for r in (third, restarted):
        assert r.snapshots == [] and r.status == "ok"
        assert {o.status for o in r.outcomes.values()} == {"unchanged"}
    stored = conn.execute("SELECT count(*) FROM staging_snapshots").fetchone()
    assert stored == (13 + len(second.snapshots),)
    # the cycle rows still show each fetch happened: that is how time passes for replay
    unchanged = conn.execute("""SELECT count(*) FROM producer_kind_outcomes r
                                JOIN producer_cycle_runs c ON c.id = r.cycle_id
                                WHERE r.status = 'unchanged' AND c.id IN (
                                    SELECT id FROM producer_cycle_runs ORDER BY id DESC LIMIT 2)""").fetchone()
    assert unchanged == (2 * len(KINDS),)


def test_without_skip_every_fetch_is_appended(tmp_path: Path, db_url: str, conn: psycopg.Connection[Any]) -> None:
    p = producer(tmp_path)
    with psycopg.connect(db_url, autocommit=True) as c:
        configure(c)
        try:
            p.load_state(c)
            p.cycle(c, set(KINDS))
            p.cycle(c, set(KINDS))
        finally:
            p.close()
    assert conn.execute("SELECT count(*) FROM staging_snapshots").fetchone() == (26,)


def test_a_stop_during_a_cycle_stores_nothing(tmp_path: Path, db_url: str, conn: psycopg.Connection[Any]) -> None:
    settings = make_settings(tmp_path)
    stop = threading.Event()
    broker = SimBroker(SimWorld(1, datetime(2026, 11, 20, tzinfo=UTC)), clock=lambda: T, latency=0.3,
                       sleep=lambda s: None if stop.wait(s) else None)
    p = Producer(settings, stop, transport=broker)
    calls_started = threading.Event()
    real_get = broker.get

    def get(*args: Any) -> Any:
        calls_started.set()
        return real_get(*args)

    broker.get = get  # type: ignore[method-assign]
    timer = threading.Thread(target=lambda: calls_started.wait(30) and stop.set())
    timer.start()
    try:
        assert p.run(db_url) is None
    finally:
        timer.join()
        p.close()
    assert broker.calls > 0  # the cycle had begun
    assert conn.execute("SELECT count(*) FROM producer_cycle_runs").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM staging_snapshots").fetchone() == (0,)
