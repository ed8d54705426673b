"""Whole-pipeline figures: raw NOTIFY wake-up, raw insert rate, end-to-end latency, idle CPU, RSS.

End-to-end: every component runs as its own process (the producer, each consumer, the worker),
exactly as `brokersync up` runs them. Realistic snapshots (from `brokersync simulate` in a scratch
database) are re-inserted one transaction at a time; a trigger in the bench database stamps
`clock_timestamp()` on every cursor advance, so each snapshot's latency is the time from its
commit to the moment the last consumer subscribed to its kind advanced past it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg.types.json import Jsonb

ROOT = Path(__file__).resolve().parent.parent

PROGRESS_SQL = """
CREATE TABLE IF NOT EXISTS bench_progress (consumer text, last_id bigint, at timestamptz);
CREATE OR REPLACE FUNCTION bench_progress() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.last_id IS DISTINCT FROM OLD.last_id THEN
    INSERT INTO bench_progress VALUES (NEW.consumer, NEW.last_id, clock_timestamp());
  END IF;
  RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS bench_progress ON consumer_cursors;
CREATE TRIGGER bench_progress AFTER UPDATE ON consumer_cursors
  FOR EACH ROW EXECUTE FUNCTION bench_progress();
"""


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


# ---- raw PostgreSQL reference figures ------------------------------------------------------


def notify_latency(url: str, n: int = 2000) -> dict[str, float]:
    """LISTEN wake-up latency of the server itself, for reference."""
    received: dict[int, float] = {}
    ready = threading.Event()

    def listen() -> None:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("LISTEN bench_raw")
            ready.set()
            for note in c.notifies(timeout=60):
                received[int(note.payload)] = time.perf_counter()
                if len(received) >= n:
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    ready.wait(10)
    sent: dict[int, float] = {}
    with psycopg.connect(url, autocommit=True) as c:
        for i in range(n):
            sent[i] = time.perf_counter()
            c.execute(f"NOTIFY bench_raw, '{i}'")
            time.sleep(0.001)
    t.join(30)
    lat = [(received[i] - sent[i]) * 1000 for i in sent if i in received]
    return {"notify_p50_ms": pct(lat, 50), "notify_p99_ms": pct(lat, 99)}


def insert_rate(url: str, n: int = 3000) -> dict[str, float]:
    """Rows per second into the staging table: one commit per row, and batched in one commit."""
    body = {"v": 1, "responses": {"account": {"account_number": "BENCH", "cash": "100.00"}}}
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("ALTER TABLE staging_snapshots DISABLE TRIGGER staging_snapshots_notify")
        try:
            t0 = time.perf_counter()
            for _ in range(n):
                c.execute(
                    "INSERT INTO staging_snapshots (account, kind, source, fetched_at, payload) "
                    "VALUES ('BENCH', 'bench', 'bench', now(), %s)", (Jsonb(body),),
                )
            single = n / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            with c.transaction(), c.cursor() as cur:
                cur.executemany(
                    "INSERT INTO staging_snapshots (account, kind, source, fetched_at, payload) "
                    "VALUES ('BENCH', 'bench', 'bench', now(), %s)", [(Jsonb(body),)] * (n * 3),
                )
            batched = n * 3 / (time.perf_counter() - t0)
        finally:
            c.execute("ALTER TABLE staging_snapshots ENABLE TRIGGER staging_snapshots_notify")
    return {"insert_rows_per_s": single, "insert_batched_rows_per_s": batched}


# ---- the whole pipeline --------------------------------------------------------------------


@dataclass
class Pipeline:
    url: str
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, components: list[tuple[str, tuple[str, ...]]], log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        for name, args in components:
            with open(log_dir / f"{name}.log", "wb") as out:  # the child keeps its own descriptor
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "brokersync", *args], env=self.env, cwd=ROOT,
                    stdout=out, stderr=subprocess.STDOUT,
                )

    def stop(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(2)
        for name, p in self.procs.items():
            try:
                codes[name] = p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                codes[name] = None
        return codes

    def tree(self, name: str) -> list[psutil.Process]:
        p = psutil.Process(self.procs[name].pid)
        return [p, *p.children(recursive=True)]

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for name in self.procs:
            try:
                procs = self.tree(name)
                main = procs[0].memory_info().rss / 2**20
                out[name] = round(main, 1)
                if len(procs) > 1:
                    out[name + " (with children)"] = round(sum(p.memory_info().rss for p in procs) / 2**20, 1)
            except psutil.NoSuchProcess:
                out[name] = float("nan")
        return out

    def cpu_by_component(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in self.procs:
            total = 0.0
            for p in self.tree(name):
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.NoSuchProcess:
                    pass
            out[name] = total
        return out


def wait_caught_up(url: str, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as c:
        while time.monotonic() < deadline:
            row = c.execute("SELECT coalesce(sum(events_behind), 0), count(*) FROM consumer_lag").fetchone()
            if row and row[0] == 0 and row[1] > 0:
                return True
            time.sleep(0.2)
    return False


def end_to_end(url: str, env: dict[str, str], snapshots: list[tuple[Any, ...]], log_dir: Path,
               rate_per_s: float = 40.0, idle_window_s: float = 60.0) -> dict[str, Any]:
    """Run every component, inject snapshots one commit at a time, measure; then idle CPU."""
    from brokersync.components import components

    comps = [(c.name, c.args) for c in components()]
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(PROGRESS_SQL)
    pipe = Pipeline(url, env)
    pipe.start(comps, log_dir)
    result: dict[str, Any] = {}
    try:
        # let every consumer register and catch up with the producer's first cycle
        time.sleep(3)
        wait_caught_up(url, 60)
        commits: dict[int, float] = {}
        kinds_of: dict[int, str] = {}
        with psycopg.connect(url, autocommit=True) as c:
            interval = 1.0 / rate_per_s
            next_at = time.monotonic()
            for account, kind, source, fetched_at, payload in snapshots:
                with c.transaction():
                    row = c.execute(
                        "INSERT INTO staging_snapshots (account, kind, source, fetched_at, payload) "
                        "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                        (account, kind, source, fetched_at, Jsonb(payload)),
                    ).fetchone()
                assert row is not None
                commits[row[0]] = time.time()
                kinds_of[row[0]] = kind
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
        caught = wait_caught_up(url, 120)
        with psycopg.connect(url, autocommit=True) as c:
            subs = {name: set(kinds) for name, kinds in c.execute("SELECT consumer, kinds FROM consumer_cursors")}
            progress: dict[str, list[tuple[int, float]]] = {}
            for consumer, last_id, at in c.execute(
                "SELECT consumer, last_id, extract(epoch FROM at)::float8 FROM bench_progress ORDER BY at"
            ):
                progress.setdefault(consumer, []).append((last_id, at))
        lat: list[float] = []
        per: dict[str, list[float]] = {}
        missing = 0
        for eid, t_commit in commits.items():
            applied = []
            for consumer, kinds in subs.items():
                if kinds and kinds_of[eid] not in kinds:
                    continue
                at = next((a for (last, a) in progress.get(consumer, []) if last >= eid), None)
                if at is None:
                    missing += 1
                    continue
                applied.append(at)
                per.setdefault(consumer, []).append((at - t_commit) * 1000)
            if applied:
                lat.append((max(applied) - t_commit) * 1000)
        result["e2e_by_consumer_p99_ms"] = {k: round(pct(v, 99), 2) for k, v in per.items()}
        result.update(
            e2e_p50_ms=pct(lat, 50), e2e_p99_ms=pct(lat, 99), e2e_max_ms=max(lat) if lat else None,
            e2e_snapshots=len(lat), e2e_missing=missing, e2e_caught_up=caught,
        )
        result["rss_mb"] = pipe.rss_mb()
        # idle: nothing to do (the producer's next cycle is minutes away)
        time.sleep(2)
        c0, t0 = pipe.cpu_by_component(), time.monotonic()
        time.sleep(idle_window_s)
        c1, t1 = pipe.cpu_by_component(), time.monotonic()
        by = {k: round((c1[k] - c0.get(k, 0.0)) / (t1 - t0) * 100, 3) for k in c1}
        result["idle_cpu_pct"] = round(sum(by.values()), 3)
        result["idle_cpu_pct_by_component"] = by
        result["idle_window_s"] = idle_window_s
    finally:
        result["exit_codes"] = pipe.stop()
    return result


def scratch_env(url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BROKERSYNC_")}
    env.update(BROKERSYNC_DATABASE_URL=url, BROKERSYNC_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    return env
