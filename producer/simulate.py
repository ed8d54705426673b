"""`brokersync simulate --days N`: N days of simulated history, written fast.

An accelerated clock drives the simulated broker through the same fetch code as the
service (same envelopes, same schedule), with no latency, faults or rate limit; snapshots
and cycle rows carry the simulated times (``fetched_at``, ``started_at``) and are written
with COPY in batches (one transaction per batch, so consumers can start early).

Cadence (the defaults): every 300 s while the US market is open (09:30-16:00 New York,
Monday-Friday: 78 cycles a day), every 3600 s while it is closed; orders every 3600 s. A
cycle fetches one snapshot per kind and account: stock positions, option positions, account
and portfolio for two accounts plus one quotes snapshot (9), plus stock and option orders
for two accounts (4) in the cycles where orders are due. By default a snapshot identical to
the previous one of its kind and account is not appended (its cycle row says 'unchanged'):
prices stand still while the market is closed, and positions change only on fills. Seed 1,
365 days: about 27,300 cycles and 87,700 snapshots (360 MB of JSON, ~165 MB on disk).
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import socket
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg

from brokersync.cli import wait_for_database
from brokersync.db import Database, connect
from brokersync.settings import Settings
from brokersync.signals import install_stop_handlers
from producer.client import BrokerClient, RetryPolicy
from producer.cycles import CycleResult, Fetcher
from producer.instruments import InstrumentCache
from producer.ratelimit import Unlimited
from producer.schedule import Schedule
from producer.sim import SimBroker
from producer.simworld import SimWorld
from producer.store import LastHashes, apply_skip_identical

log = logging.getLogger("producer")

BATCH_CYCLES = 2000


class Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def now(self) -> datetime:
        return self.t


def _jsonb_text(body: dict[str, Any] | bytes) -> tuple[str | None, str | None]:
    if isinstance(body, bytes):
        return None, body.decode("utf-8", "replace")
    return orjson.dumps(body).decode(), None


class HistoryWriter:
    """Buffers cycles and writes them with COPY, in a thread of its own.

    Generating a batch (Python) and storing the previous one (mostly PostgreSQL) overlap;
    at most two batches are in memory. An error in the writer is raised by the next
    :meth:`add` or by :meth:`close`.
    """

    def __init__(self, conn: psycopg.Connection[Any], cache: InstrumentCache) -> None:
        self.conn, self.cache = conn, cache
        self.buffer: list[CycleResult] = []
        self.cycles = self.snapshots = self.bytes = 0
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.queue: queue.Queue[list[CycleResult] | None] = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self._write(batch)
                except BaseException as exc:  # handed to the generating thread
                    self.error = exc

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def add(self, result: CycleResult) -> None:
        self.buffer.append(result)
        if len(self.buffer) >= BATCH_CYCLES:
            self._check()
            self.queue.put(self.buffer)
            self.buffer = []

    def close(self) -> None:
        if self.buffer:
            self.queue.put(self.buffer)
            self.buffer = []
        self.queue.put(None)
        self.thread.join()
        self._check()

    def _write(self, batch: list[CycleResult]) -> None:
        conn = self.conn
        with conn.transaction():
            ids = [r[0] for r in conn.execute(
                "SELECT nextval(pg_get_serial_sequence('producer_cycle_runs', 'id')) "
                "FROM generate_series(1, %s)", (len(batch),))]
            with conn.cursor().copy(
                """COPY producer_cycle_runs (id, started_at, finished_at, source, status, outcomes,
                       snapshots, broker_calls, error, host, pid, shape_drift) FROM STDIN""") as cp:
                for cid, r in zip(ids, batch, strict=True):
                    cp.write_row((cid, r.started_at, r.finished_at, r.source, r.status,
                                  orjson.dumps({k: o.to_json() for k, o in sorted(r.outcomes.items())}).decode(),
                                  len(r.snapshots), r.broker_calls, r.error, self.host, self.pid,
                                  orjson.dumps(r.shape_drift).decode()))
            with conn.cursor().copy(
                """COPY staging_snapshots (account, kind, source, fetched_at, cycle_id, payload, raw_body)
                   FROM STDIN""") as cp:
                for cid, r in zip(ids, batch, strict=True):
                    for s in r.snapshots:
                        payload, raw = _jsonb_text(s.body)
                        self.bytes += len(payload or raw or "")
                        cp.write_row((s.account, s.kind, r.source, s.fetched_at, cid, payload, raw))
                        self.snapshots += 1
            self.cache.flush(conn)
        self.cycles += len(batch)


def simulate(conn: psycopg.Connection[Any], *, days: float, seed: int, end: datetime,
             interval: float = 300.0, closed_interval: float = 3600.0, market_hours: bool = True,
             orders_interval: float = 3600.0, skip_identical: bool = False,
             stop: threading.Event | None = None, progress: bool = False) -> dict[str, Any]:
    """Write the history; return counts. Same arguments, same rows (ids and recorded_at aside)."""
    stop = stop or threading.Event()
    start = end - timedelta(days=days)
    clock = Clock(start)
    broker = SimBroker(SimWorld(seed, start), clock=clock.now, encode=False)
    client = BrokerClient(broker, Unlimited(), RetryPolicy(attempts=1, backoff=0.0), stop, check_clock=False)
    cache = InstrumentCache()
    cache.load(conn)
    fetcher = Fetcher(client, cache, concurrency=1, check_shapes=False)  # our own shapes
    schedule = Schedule(interval, orders_interval, market_hours, closed_interval)
    hashes = LastHashes() if skip_identical else None
    writer = HistoryWriter(conn, cache)
    began = time.monotonic()
    t = start
    last_print = began
    while t < end and not stop.is_set():
        clock.t = t
        due = schedule.due(t)
        if due:
            result = fetcher.run(due)
            if hashes is not None:
                apply_skip_identical(result, hashes)
            fetcher.watermarks.update(result.watermarks)
            schedule.record(due, {k for k, o in result.outcomes.items() if o.status == "failed"}, t)
            writer.add(result)
        step = max(1.0, schedule.wait_seconds(t))
        t += timedelta(seconds=step)
        if progress and time.monotonic() - last_print > 2:
            last_print = time.monotonic()
            done = (t - start) / (end - start)
            print(f"simulate: {min(done, 1):6.1%} ({t:%Y-%m-%d}), {writer.cycles + len(writer.buffer)} cycles",
                  file=sys.stderr)
    writer.close()
    return {"cycles": writer.cycles, "snapshots": writer.snapshots, "payload_bytes": writer.bytes,
            "start": start.isoformat(), "end": min(t, end).isoformat(), "seed": seed,
            "seconds": round(time.monotonic() - began, 2)}


def run_simulate(args: argparse.Namespace, settings: Settings) -> int:
    stop = threading.Event()
    install_stop_handlers(stop)
    end = args.end or datetime.now(UTC)
    seed = settings.sim_seed if args.seed is None else args.seed
    with Database(settings) as db:
        url = wait_for_database(db, stop, settings.reconnect_max_backoff)
        if url is None:
            return 0
        with connect(url, autocommit=True, application_name="brokersync-simulate") as conn:
            stats = simulate(conn, days=args.days, seed=seed, end=end, interval=args.interval,
                             closed_interval=args.closed_interval,
                             market_hours=not args.no_market_hours, skip_identical=not args.keep_identical,
                             stop=stop, progress=sys.stderr.isatty())
    print(f"simulated {stats['start']} .. {stats['end']} (seed {seed}): {stats['cycles']} cycles, "
          f"{stats['snapshots']} snapshots, {stats['payload_bytes'] / 1e6:.1f} MB of JSON "
          f"in {stats['seconds']:.1f}s")
    return 0
