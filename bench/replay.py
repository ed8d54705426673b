"""Replay figures: rebuild the positions, balances, trade_history and cache_invalidation consumers
from a simulated history (`brokersync simulate --days N`), the way `brokersync replay NAME` does.

    from bench import replay
    replay.measure(days=365)   # {"replay_year_s": ..., "replay_events_per_s": ..., ...}

Uses BROKERSYNC_DATABASE_URL when set (the role needs CREATEDB), otherwise an embedded server in
a temporary folder. The simulation is not timed; the rebuild is: for each consumer, a full
rewind (its tables emptied) and a run until caught up, one consumer after the other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from brokersync.db import with_dbname

ROOT = Path(__file__).resolve().parent.parent
CONSUMERS = ("positions", "balances", "trade_history", "cache_invalidation", "notifications")
SIM_END = "2026-11-20T22:00:00+00:00"  # fixed, so every run replays the same history



def _simulate(url: str, days: float, work: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BROKERSYNC_")}
    env.update(BROKERSYNC_DATABASE_URL=url, BROKERSYNC_DATA_DIR=str(work / "data"))
    r = subprocess.run(
        [sys.executable, "-m", "brokersync", "simulate", "--days", str(days), "--seed", "1",
         "--end", SIM_END],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600,
    )
    if r.returncode != 0:
        raise RuntimeError(f"brokersync simulate failed: {r.stderr[-2000:]}")


def rebuild(url: str, batch_size: int = 500) -> dict[str, Any]:
    """Rebuild each consumer from the first event; return timings and event counts."""
    import consumers
    from brokersync.db import connect
    from brokersync.ops import rewind
    from consumers.runtime import Runner, RuntimeConfig

    out: dict[str, Any] = {"per_consumer_s": {}, "per_consumer_events": {}}
    total_s, total_events = 0.0, 0
    for name in CONSUMERS:
        consumer = consumers.load(name)
        with connect(url, autocommit=True) as conn:
            began = time.perf_counter()
            r = rewind(conn, consumer)
            runner = Runner(consumer, url, RuntimeConfig(batch_size=batch_size), threading.Event(),
                            exit_when_idle=True)
            runner.run()
            took = time.perf_counter() - began
            dead = conn.execute(
                "SELECT count(*) FROM consumer_dead_letters WHERE consumer = %s AND resolved_at IS NULL",
                (name,),
            ).fetchone()
        if runner.applied_total != r.events_to_apply or (dead and dead[0]):
            raise RuntimeError(f"{name}: applied {runner.applied_total} of {r.events_to_apply} events "
                               f"({dead[0] if dead else 0} dead letters)")
        out["per_consumer_s"][name] = round(took, 3)
        out["per_consumer_events"][name] = runner.applied_total
        total_s += took
        total_events += runner.applied_total
    out["replay_events"] = total_events
    out["replay_s"] = round(total_s, 3)
    out["replay_events_per_s"] = round(total_events / total_s, 1) if total_s else 0.0
    return out


def rebuild_parallel(url: str, work: Path) -> float:
    """Rebuild the four at once, each as `brokersync replay NAME` (its own process); wall seconds."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BROKERSYNC_")}
    env.update(BROKERSYNC_DATABASE_URL=url, BROKERSYNC_DATA_DIR=str(work / "data"))
    began = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "brokersync", "replay", name], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name in CONSUMERS]
    errors = [(name, p.communicate(timeout=3600)[1]) for name, p in zip(CONSUMERS, procs, strict=True)]
    took = time.perf_counter() - began
    failed = [f"{name}: {err[-500:]}" for (name, err), p in zip(errors, procs, strict=True) if p.returncode]
    if failed:
        raise RuntimeError("parallel replay failed: " + "; ".join(failed))
    return round(took, 3)


def measure(days: float = 365, parallel: bool = False) -> dict[str, Any]:
    """Simulate ``days`` of history in a scratch database, then time the rebuild of all four
    (one after the other; with ``parallel`` also all four at once as separate processes)."""
    work = Path(tempfile.mkdtemp(prefix="brokersync-bench-replay-"))
    embedded = None
    admin = os.environ.get("BROKERSYNC_DATABASE_URL")
    if not admin:
        from brokersync.embedded import EmbeddedServer

        embedded = EmbeddedServer(work / "pgdata")
        admin = embedded.start()
    name = f"bs_bench_replay_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = with_dbname(admin, name)
        from schema import migrate

        with psycopg.connect(url, autocommit=True) as c:
            migrate(c)
        _simulate(url, days, work)
        with psycopg.connect(url) as c:
            row = c.execute("SELECT count(*) FROM staging_snapshots").fetchone()
        result = rebuild(url)
        key = "replay_year_s" if days == 365 else f"replay_{days:g}d_s"
        extra = {f"{key[:-2]}_parallel_s": rebuild_parallel(url, work)} if parallel else {}
        return {
            **extra,
            key: result["replay_s"],
            "replay_events_per_s": result["replay_events_per_s"],
            "replay_log_events": row[0] if row else 0,
            "replay_days": days,
            "replay_per_consumer_s": result["per_consumer_s"],
            "replay_per_consumer_events": result["per_consumer_events"],
        }
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":  # python -m bench.replay [DAYS] [--parallel]
    import json

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    print(json.dumps(measure(float(args[0]) if args else 365, parallel="--parallel" in sys.argv),
                     indent=2))
