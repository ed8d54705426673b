"""`make bench`: every figure the issues set a target for, on this machine, in one run.

Prints a table and writes bench/results.json. Uses BROKERSYNC_DATABASE_URL when set (the role
needs CREATEDB), otherwise an embedded server in a temporary folder.

    python -m bench                 # everything
    python -m bench --quick         # shorter runs (smoke check of the harness)
    python -m bench --only e2e,raw  # a subset: raw, producer, e2e, replay
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench import pipeline
from brokersync.db import with_dbname

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TARGETS = {
    "e2e_p99_ms": ("<", 50),
    "replay_year_s": ("<", 60),
    "producer_cycle_s": ("<", 1.0),
    "broker_calls_per_cycle": ("<=", 8),
    "producer_rss_mb": ("<", 80),
    "consumer_rss_mb_max": ("<", 60),
    "idle_cpu_pct": ("<", 1.0),
}



class Server:
    def __init__(self) -> None:
        self.folder: Path | None = None
        self.embedded = None
        external = os.environ.get("BROKERSYNC_DATABASE_URL")
        if external:
            self.admin = external
        else:
            from brokersync.embedded import EmbeddedServer

            self.folder = Path(tempfile.mkdtemp(prefix="brokersync-bench-"))
            self.embedded = EmbeddedServer(self.folder / "pgdata")
            self.admin = self.embedded.start()
        self.created: list[str] = []

    def database(self, migrate: bool = True) -> str:
        name = f"bs_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin, autocommit=True) as c:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        url = with_dbname(self.admin, name)
        if migrate:
            from schema import migrate as run_migrations

            with psycopg.connect(url, autocommit=True) as c:
                run_migrations(c)
        return url

    def close(self) -> None:
        with psycopg.connect(self.admin, autocommit=True) as c:
            for name in self.created:
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if self.embedded is not None:
            self.embedded.stop()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def simulated_snapshots(server: Server, work: Path, days: int, limit: int) -> list[tuple[Any, ...]]:
    url = server.database()
    env = pipeline.scratch_env(url, work / "sim")
    r = subprocess.run([sys.executable, "-m", "brokersync", "simulate", "--days", str(days)],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"brokersync simulate failed: {r.stderr[-2000:]}")
    with psycopg.connect(url) as c:
        rows = c.execute(
            "SELECT account, kind, source, fetched_at, payload FROM staging_snapshots "
            "WHERE payload IS NOT NULL ORDER BY id LIMIT %s", (limit,)
        ).fetchall()
    return rows


def run(only: set[str], quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "when": datetime.now(UTC).isoformat()},
    }
    server = Server()
    work = Path(tempfile.mkdtemp(prefix="brokersync-bench-work-"))
    try:
        if "raw" in only:
            url = server.database()
            print("raw NOTIFY wake-up and insert rate ...", file=sys.stderr)
            results.update(pipeline.notify_latency(url, 500 if quick else 2000))
            results.update(pipeline.insert_rate(url, 500 if quick else 3000))
        if "producer" in only:
            print("producer cycle (100 ms simulated latency, 25 stock + 5 option positions) ...", file=sys.stderr)
            from bench import producer_cycle

            results.update(producer_cycle.measure())
        if "e2e" in only:
            n = 300 if quick else 1200
            print(f"end to end over {n} snapshots with every component running ...", file=sys.stderr)
            snaps = simulated_snapshots(server, work, 2 if quick else 6, n)
            url = server.database()
            env = pipeline.scratch_env(url, work / "e2e")
            e2e = pipeline.end_to_end(url, env, snaps, work / "e2e-logs",
                                      idle_window_s=10 if quick else 60)
            rss = e2e.pop("rss_mb")
            results["rss_mb"] = rss
            results.update(e2e)
            consumers = [v for k, v in rss.items() if k.startswith("consumer-") and "children" not in k]
            if consumers:
                results["consumer_rss_mb_max"] = max(consumers)
            if "producer" in rss:
                results.setdefault("producer_rss_mb", rss["producer"])
        if "replay" in only:
            days = 30 if quick else 365
            print(f"replay: rebuild every consumer from {days} simulated days ...", file=sys.stderr)
            from bench import replay

            results.update(replay.measure(days=days, parallel=True))
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)
    return results


def verdict(key: str, value: Any) -> str:
    if key not in TARGETS or not isinstance(value, int | float):
        return ""
    op, target = TARGETS[key]
    ok = value < target if op == "<" else value <= target
    return f"{op} {target}: {'ok' if ok else 'MISSED'}"


def print_table(results: dict[str, Any]) -> None:
    rows = []
    for key, value in results.items():
        if isinstance(value, dict):
            if key == "machine":
                continue
            for k, v in value.items():
                rows.append((f"{key}.{k}", v, ""))
        else:
            rows.append((key, value, verdict(key, value)))
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'value':>12}  target")
    for key, value, note in rows:
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown:>12}  {note}")


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default="raw,producer,e2e,replay")
    p.add_argument("--output", default=str(HERE / "results.json"))
    args = p.parse_args()
    t0 = time.monotonic()
    results = run(set(args.only.split(",")), args.quick)
    results["bench_wall_s"] = round(time.monotonic() - t0, 1)
    print_table(results)
    Path(args.output).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
