"""Producer figures: one cycle's wall time and broker calls, and the service's resident memory.

    python -m bench.producer_cycle      # prints the figures as JSON

Setting (the issue's): the simulated broker with 100 ms latency on every call, 25 stock
positions (20 in the individual account, 5 in the IRA) and 5 option positions, steady state
(instrument cache warm, accounts known). A cycle is measured in process, wall clock, from the
first request to the commit of the cycle row and its snapshots. The rate limiter runs at its
default (60/min, burst 10) and is topped up before each measured cycle, as the 300 s between
real cycles would. Memory: the RSS of a real `brokersync producer` process (same latency)
after it has run a few cycles.

Uses BROKERSYNC_DATABASE_URL when set (the role needs CREATEDB), otherwise an embedded server
in a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from brokersync.db import with_dbname

ROOT = Path(__file__).resolve().parent.parent
LATENCY = 0.1
EPOCH = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)  # a Monday, market open



def cycles(url: str, work: Path, steady_cycles: int = 10) -> dict[str, Any]:
    from brokersync.db import connect
    from brokersync.settings import load_settings
    from producer.ratelimit import RateLimiter
    from producer.schedule import MAIN_KINDS
    from producer.service import Producer
    from producer.sim import SimBroker
    from producer.simworld import SimWorld
    from schema.eventlog import KINDS

    settings = load_settings({"BROKERSYNC_DATA_DIR": str(work / "data")}, env_file=None)
    stop = threading.Event()
    world = SimWorld(settings.sim_seed, EPOCH)
    broker = SimBroker(world, clock=lambda: EPOCH, latency=LATENCY)
    producer = Producer(settings, stop, transport=broker)
    limiter = producer.client.limiter
    assert isinstance(limiter, RateLimiter)
    stocks = sum(len(a.positions) for a in world.accounts.values())
    options = sum(len(a.option_positions) for a in world.accounts.values())
    try:
        with connect(url, autocommit=True) as conn:
            producer.load_state(conn)
            t0 = time.perf_counter()
            cold = producer.cycle(conn, set(KINDS))
            assert cold is not None
            cold_s = time.perf_counter() - t0
            times, calls = [], []
            for _ in range(steady_cycles):
                limiter.tokens = limiter.capacity  # the 300 s between real cycles refill the bucket
                t0 = time.perf_counter()
                r = producer.cycle(conn, set(MAIN_KINDS))
                assert r is not None
                times.append(time.perf_counter() - t0)
                calls.append(r.broker_calls)
                assert r.status == "ok", r.error
            limiter.tokens = limiter.capacity
            t0 = time.perf_counter()
            hourly = producer.cycle(conn, set(KINDS))
            assert hourly is not None
            hourly_s = time.perf_counter() - t0
    finally:
        producer.close()
    return {
        "producer_cycle_s": round(statistics.median(times), 3),
        "producer_cycle_max_s": round(max(times), 3),
        "broker_calls_per_cycle": max(calls),
        "producer_hourly_cycle_s": round(hourly_s, 3),
        "producer_hourly_cycle_calls": hourly.broker_calls,
        "producer_cold_cycle_s": round(cold_s, 3),
        "producer_cold_cycle_calls": cold.broker_calls,
        "producer_positions": {"stock": stocks, "option": options},
        "producer_sim_latency_s": LATENCY,
    }


def service_rss(url: str, work: Path, wait_cycles: int = 4) -> dict[str, Any]:
    import psutil

    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BROKERSYNC_")}
    env.update(BROKERSYNC_DATABASE_URL=url, BROKERSYNC_DATA_DIR=str(work / "svc"),
               BROKERSYNC_SIM_LATENCY=str(LATENCY), BROKERSYNC_PRODUCER_RATE_LIMIT="6000",
               PYTHONUNBUFFERED="1")
    flags = subprocess.CREATE_NEW_PROCESS_GROUP if sys.platform == "win32" else 0  # type: ignore[attr-defined]
    proc = subprocess.Popen([sys.executable, "-m", "brokersync", "producer", "--interval", "1"],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            creationflags=flags)
    try:
        deadline = time.monotonic() + 120
        with psycopg.connect(url, autocommit=True) as c:
            while True:
                row = c.execute("SELECT count(*) FROM producer_cycle_runs WHERE source = 'simulated' "
                                "AND pid = %s", (proc.pid,)).fetchone()
                if row and row[0] >= wait_cycles:
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("brokersync producer did not run its cycles: "
                                       + (proc.stderr.read()[-2000:] if proc.stderr else b"").decode())
                time.sleep(0.2)
        rss = psutil.Process(proc.pid).memory_info().rss / 2**20
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.CTRL_BREAK_EVENT if sys.platform == "win32" else signal.SIGINT)  # type: ignore[attr-defined]
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {"producer_rss_mb": round(rss, 1), "producer_exit_code": proc.returncode}


def measure() -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="brokersync-bench-producer-"))
    embedded = None
    admin = os.environ.get("BROKERSYNC_DATABASE_URL")
    if not admin:
        from brokersync.embedded import EmbeddedServer

        embedded = EmbeddedServer(work / "pgdata")
        admin = embedded.start()
    names = [f"bs_bench_producer_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        urls = []
        for name in names:
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            url = with_dbname(admin, name)
            from schema import migrate

            with psycopg.connect(url, autocommit=True) as c:
                migrate(c)
            urls.append(url)
        out = cycles(urls[0], work)
        out.update(service_rss(urls[1], work))
        return out
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            for name in names:
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":  # python -m bench.producer_cycle
    import json

    print(json.dumps(measure(), indent=2))
