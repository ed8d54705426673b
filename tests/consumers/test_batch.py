"""Batch handlers (replay speed) leave exactly the tables, dead letters and NOTIFYs of `handle`.

Each consumer rebuilds a simulated multi-day history twice: once through its `handle_batch`
(big batches and small ones, so the batch boundaries fall everywhere) and once forced down the
per-event path (`handle_batch=None`). Every table is compared row for row as PostgreSQL prints
it (so ``1.50`` and ``1.5`` differ), and the batch handler must really have done the work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from brokersync.ops import rewind
from consumers import load
from consumers.cache import CACHE_CHANNEL
from consumers.runtime import Consumer, Event, RuntimeConfig
from schema.eventlog import ACCOUNT, OPTION_POSITIONS, PORTFOLIO, QUOTES, STOCK_POSITIONS
from schema.payloads import envelope
from tests.conftest import run_cli
from tests.consumers.support import add, rows, run

NAMES = ("positions", "balances", "cache_invalidation")


def _config(batch_size: int) -> RuntimeConfig:
    return RuntimeConfig(batch_size=batch_size, poll_interval=0.5, max_attempts=2, retry_backoff=0.01)


def _simulate(cli_env: dict[str, str]) -> None:
    r = run_cli(["simulate", "--days", "3", "--seed", "11", "--end", "2026-11-20T22:00:00+00:00"],
                cli_env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _text_tables(conn: psycopg.Connection[Any], consumer: Consumer) -> dict[str, list[str]]:
    out = {}
    for t in consumer.tables:
        q = sql.SQL("SELECT t::text FROM {} t ORDER BY 1").format(sql.Identifier(t))
        out[t] = [r[0] for r in conn.execute(q).fetchall()]
    return out


def _dead(conn: psycopg.Connection[Any], name: str) -> list[int]:
    return [r["event_id"] for r in rows(
        conn, "SELECT event_id FROM consumer_dead_letters WHERE consumer = %s ORDER BY event_id", name)]


class _Counting:
    """Wraps a batch handler: how many batches it applied and how many it refused."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.applied, self.raised = inner, 0, 0

    def __call__(self, conn: psycopg.Connection[Any], events: Sequence[Event]) -> None:
        try:
            self.inner(conn, events)
        except Exception:
            self.raised += 1
            raise
        self.applied += 1


def _rebuild(conn: psycopg.Connection[Any], db_url: str, consumer: Consumer,
             batch_size: int) -> tuple[dict[str, list[str]], list[int]]:
    conn.execute("DELETE FROM consumer_dead_letters WHERE consumer = %s", (consumer.name,))
    if rows(conn, "SELECT 1 FROM consumer_cursors WHERE consumer = %s", consumer.name):
        assert rewind(conn, consumer).full
    run(db_url, consumer, _config(batch_size))
    return _text_tables(conn, consumer), _dead(conn, consumer.name)


def _compare(conn: psycopg.Connection[Any], db_url: str, name: str) -> tuple[_Counting, list[int]]:
    """Rebuild per event, then with the batch handler at two batch sizes; all must agree."""
    real = load(name)
    assert real.handle_batch is not None
    per_event, dead = _rebuild(conn, db_url, dataclasses.replace(real, handle_batch=None), 500)
    assert any(per_event.values())
    counting = _Counting(real.handle_batch)
    batched = dataclasses.replace(real, handle_batch=counting)
    for size in (500, 7):
        tables, dead_b = _rebuild(conn, db_url, batched, size)
        for t in real.tables:
            assert tables[t] == per_event[t], f"{name}.{t} differs at batch size {size}"
        assert dead_b == dead
    assert counting.applied > 0
    return counting, dead


@pytest.mark.parametrize("name", NAMES)
def test_batch_handler_equals_per_event_over_a_simulated_history(
        name: str, db_url: str, conn: psycopg.Connection[Any], cli_env: dict[str, str]) -> None:
    _simulate(cli_env)
    counting, dead = _compare(conn, db_url, name)
    assert dead == []
    assert counting.raised == 0, "a clean history never falls back to per-event"


def _append_tail_with_poison(conn: psycopg.Connection[Any]) -> list[int]:
    """Re-append recent snapshots a few days later, with malformed ones in among them (raw text
    that is not JSON, and JSON missing required fields); return the malformed ids."""
    recent = rows(conn, """SELECT kind, account, fetched_at, payload FROM staging_snapshots
                           WHERE kind = ANY (%s) ORDER BY id DESC LIMIT 120""",
                  [STOCK_POSITIONS, OPTION_POSITIONS, QUOTES, ACCOUNT, PORTFOLIO])
    recent.reverse()
    middle = rows(conn, "SELECT min(fetched_at) + (max(fetched_at) - min(fetched_at)) / 2 AS t "
                        "FROM staging_snapshots")[0]["t"]
    account = next(r["account"] for r in recent if r["kind"] == PORTFOLIO)
    poison: list[int] = []
    for i, r in enumerate(recent):
        add(conn, r["kind"], r["payload"], r["fetched_at"] + timedelta(days=4), account=r["account"])
        if i == 40:
            for kind in (STOCK_POSITIONS, OPTION_POSITIONS, QUOTES, ACCOUNT, PORTFOLIO):
                poison.append(add(conn, kind, "<html>502 Bad Gateway</html>", middle, account=account))
        if i == 80:  # well-formed JSON, newer than everything, that no parser accepts
            later = r["fetched_at"] + timedelta(days=5)
            poison.append(add(conn, STOCK_POSITIONS, envelope(positions=[{"results": []}]), later,
                              account=account))
            poison.append(add(conn, PORTFOLIO, envelope(portfolio={"market_value": "1"}), later,
                              account=account))
    return poison


@pytest.mark.parametrize("name", NAMES)
def test_batch_handler_with_malformed_events_mid_batch(
        name: str, db_url: str, conn: psycopg.Connection[Any], cli_env: dict[str, str]) -> None:
    _simulate(cli_env)
    poison = _append_tail_with_poison(conn)
    counting, dead = _compare(conn, db_url, name)
    kinds = set(load(name).kinds)
    # cache_invalidation only hashes content: to it, only a body that is not JSON is malformed
    wanted = [r["id"] for r in rows(
        conn, "SELECT id, kind, payload IS NULL AS raw FROM staging_snapshots WHERE id = ANY (%s)",
        poison) if r["kind"] in kinds and (r["raw"] or name != "cache_invalidation")]
    assert wanted and set(wanted) <= set(dead), "the malformed events were dead-lettered"
    assert counting.raised > 0, "the batches holding them fell back to per-event"


def _notifications(listener: psycopg.Connection[Any], expected: int) -> list[str]:
    """The cache notifications delivered to ``listener``: ``expected`` of them, then any extra."""
    got = [n.payload for n in listener.notifies(timeout=30, stop_after=expected)
           if n.channel == CACHE_CHANNEL]
    got += [n.payload for n in listener.notifies(timeout=0.5) if n.channel == CACHE_CHANNEL]
    return got


def test_batch_cache_notify_sequence_equals_per_event(
        db_url: str, conn: psycopg.Connection[Any], cli_env: dict[str, str]) -> None:
    _simulate(cli_env)
    real = load("cache_invalidation")
    listener = psycopg.connect(db_url, autocommit=True)
    try:
        listener.execute(f"LISTEN {CACHE_CHANNEL}")
        sequences = []
        for consumer in (dataclasses.replace(real, handle_batch=None), real):
            _rebuild(conn, db_url, consumer, 500)
            bumps = rows(conn, "SELECT coalesce(sum(version), 0)::int AS n FROM cache_versions")[0]["n"]
            sequences.append(_notifications(listener, bumps))
            assert len(sequences[-1]) == bumps > 0
    finally:
        listener.close()
    assert sequences[0] == sequences[1]
