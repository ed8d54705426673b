"""`make chaos`: inject faults while history streams through the whole pipeline; lose nothing.

Each trial, on a private embedded PostgreSQL server (it must own the server to restart it):

1. `brokersync up` runs every component (the producer, each consumer, the worker) under the
   supervisor, plus a SECOND producer, so two producers append at once;
2. a streamer re-inserts simulated history one snapshot per transaction, mixing in malformed
   payloads (bodies that are not JSON) for kinds some consumer reads;
3. meanwhile, at random moments: SIGKILL a random component (the supervisor restarts it),
   SIGKILL the second producer and start it again, restart PostgreSQL (`pg_ctl restart -m
   immediate`: a crash and recovery);
4. when the stream ends and every consumer has caught up and every notification is delivered,
   the pipeline is stopped and each consumer's tables are compared with a clean replay of the
   same log (`brokersync replay NAME`); the dead letters must be exactly the malformed events
   (per consumer that reads their kind); no notification may appear twice in the sink.

Prints trials run, faults injected, events checked and mismatches (must be 0).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Report:
    trials: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    events_checked: int = 0
    malformed: int = 0
    notifications: int = 0
    mismatches: list[str] = field(default_factory=list)

    def line(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        return (f"trials run: {self.trials}; faults injected: {sum(self.faults.values())} ({faults}); "
                f"events checked: {self.events_checked} ({self.malformed} malformed, "
                f"{self.notifications} notifications sent); mismatches: {len(self.mismatches)}")


class PrivateServer:
    def __init__(self) -> None:
        from brokersync.embedded import EmbeddedServer, _server_user, bin_dir

        self.folder = Path(tempfile.mkdtemp(prefix="brokersync-chaos-"))
        self.pgdata = self.folder / "pgdata"
        self.server = EmbeddedServer(self.pgdata)
        self.admin = self.server.start()
        self.user = _server_user()
        self.pg_ctl = str(bin_dir() / "pg_ctl")

    def restart(self) -> None:
        kwargs: dict[str, Any] = {"user": self.user} if self.user else {}
        # never capture pg_ctl's output: the new postmaster inherits the pipe and the call hangs
        subprocess.run([self.pg_ctl, "-D", str(self.pgdata), "-w", "-m", "immediate",
                        "-l", str(self.pgdata / "log"), "restart"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=60, **kwargs)

    def database(self) -> str:
        from brokersync.db import with_dbname

        name = f"chaos_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin, autocommit=True) as c:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return with_dbname(self.admin, name)

    def close(self) -> None:
        self.server.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def cli_env(url: str, data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BROKERSYNC_")}
    env.update(
        BROKERSYNC_DATABASE_URL=url,
        BROKERSYNC_DATA_DIR=str(data),
        BROKERSYNC_CONSUMER_POLL_INTERVAL="2",
        BROKERSYNC_CONSUMER_MAX_ATTEMPTS="2",
        BROKERSYNC_CONSUMER_RETRY_BACKOFF="0.05",
        BROKERSYNC_RECONNECT_MAX_BACKOFF="1",
        BROKERSYNC_PRODUCER_INTERVAL="2",
        BROKERSYNC_NOTIFY_SINKS="log",
        BROKERSYNC_NOTIFY_LOG_PATH=str(data / "notifications.jsonl"),
        BROKERSYNC_NOTIFY_MIN_BACKOFF="0.1",
        BROKERSYNC_NOTIFY_MAX_BACKOFF="1",
        # send for the streamed (older) history too, and often: the "sent once" check needs traffic
        BROKERSYNC_NOTIFY_MAX_EVENT_AGE_HOURS="100000",
        BROKERSYNC_NOTIFY_PNL_MOVE_PCT="1",
        BROKERSYNC_NOTIFY_OPTION_PNL_MOVE_PCT="2",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def brokersync(args: list[str], env: dict[str, str], log: Path | None = None, **kw: Any) -> subprocess.Popen[bytes]:
    if sys.platform == "win32":
        kw["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        kw.pop("start_new_session", None)
    if log is None:
        return subprocess.Popen([sys.executable, "-m", "brokersync", *args], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, **kw)
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "brokersync", *args], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, **kw)


def interrupt(proc: subprocess.Popen[bytes]) -> None:
    """Ask for a graceful stop: SIGINT, or CTRL_BREAK on Windows (what NSSM sends)."""
    if sys.platform == "win32":
        proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
    else:
        proc.send_signal(signal.SIGINT)


def history(server: PrivateServer, work: Path, days: float, seed: int) -> list[tuple[Any, ...]]:
    url = server.database()
    r = subprocess.run([sys.executable, "-m", "brokersync", "simulate", "--days", str(days), "--seed", str(seed)],
                       env=cli_env(url, work / "sim"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"simulate failed: {r.stderr[-2000:]}")
    with psycopg.connect(url) as c:
        return c.execute("SELECT account, kind, source, fetched_at, payload FROM staging_snapshots "
                         "WHERE payload IS NOT NULL ORDER BY id").fetchall()


def subscriptions() -> dict[str, tuple[str, ...]]:
    import consumers

    return {name: consumers.load(name).kinds for name in consumers.names()}


def dump(conn: psycopg.Connection[Any], tables: tuple[str, ...]) -> dict[str, list[str]]:
    out = {}
    for t in tables:
        rows = conn.execute(sql.SQL("SELECT t::text FROM {} t ORDER BY 1").format(sql.Identifier(t))).fetchall()
        out[t] = [r[0] for r in rows]
    return out


def wait_settled(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as c:
                behind = c.execute("SELECT coalesce(sum(events_behind), 0) FROM consumer_lag").fetchone()
                pending = c.execute("SELECT count(*) FROM notification_deliveries "
                                    "WHERE status IN ('queued', 'retrying')").fetchone()
                if behind == (0,) and pending == (0,):
                    return True
        except psycopg.OperationalError:
            pass
        time.sleep(0.5)
    return False


def trial(n: int, server: PrivateServer, snaps: list[tuple[Any, ...]], work: Path, rng: random.Random,
          report: Report, duration: float, verbose: bool) -> None:
    import consumers

    url = server.database()
    data = work / f"trial{n}"
    data.mkdir(parents=True)
    env = cli_env(url, data)
    subs = subscriptions()
    subscribed_kinds = sorted({k for kinds in subs.values() for k in kinds})
    mig = subprocess.run([sys.executable, "-m", "brokersync", "migrate"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert mig.returncode == 0, mig.stderr

    up = brokersync(["up"], env, data / "up.log", start_new_session=True)
    producer2 = brokersync(["producer"], env, data / "producer2.log")
    malformed: dict[int, str] = {}
    stop_stream = threading.Event()
    stream_error: list[BaseException] = []

    def stream() -> None:
        start = rng.randrange(0, max(1, len(snaps) - 1))
        i = start
        try:
            while not stop_stream.is_set():
                try:
                    with psycopg.connect(url, autocommit=True, connect_timeout=5) as c:
                        while not stop_stream.is_set():
                            account, kind, source, fetched_at, payload = snaps[i % len(snaps)]
                            if rng.random() < 0.03:
                                k = rng.choice(subscribed_kinds)
                                row = c.execute(
                                    "INSERT INTO staging_snapshots (account, kind, source, fetched_at, raw_body) "
                                    "VALUES (%s, %s, 'chaos', now(), %s) RETURNING id",
                                    (account, k, "{\"results\": [truncated"),
                                ).fetchone()
                                assert row is not None
                                malformed[row[0]] = k
                            else:
                                c.execute(
                                    "INSERT INTO staging_snapshots (account, kind, source, fetched_at, payload) "
                                    "VALUES (%s, %s, %s, %s, %s)",
                                    (account, kind, source, fetched_at, Jsonb(payload)),
                                )
                            i += 1
                            time.sleep(0.02)
                except psycopg.OperationalError:
                    time.sleep(0.3)  # PostgreSQL is restarting: the row was not committed
        except BaseException as exc:
            stream_error.append(exc)

    streamer = threading.Thread(target=stream, daemon=True)
    time.sleep(3)  # components start
    streamer.start()
    end = time.monotonic() + duration
    restarted_pg = False
    while time.monotonic() < end:
        time.sleep(rng.uniform(0.5, 2.0))
        fault = rng.choice(["kill_component", "kill_component", "kill_component", "restart_producer2", "restart_postgres"])
        if fault == "restart_postgres" and restarted_pg:
            fault = "kill_component"
        if fault == "kill_component":
            children = psutil.Process(up.pid).children()
            if not children:
                continue
            victim = rng.choice(children)
            try:
                name = " ".join(victim.cmdline()[3:])
                victim.kill()  # SIGKILL; TerminateProcess on Windows
                if verbose:
                    print(f"  trial {n}: SIGKILL {name}", file=sys.stderr)
            except psutil.NoSuchProcess:
                continue
        elif fault == "restart_producer2":
            producer2.kill()
            producer2.wait()
            producer2 = brokersync(["producer"], env, data / "producer2.log")
        else:
            server.restart()
            restarted_pg = True
            if verbose:
                print(f"  trial {n}: PostgreSQL restarted (immediate)", file=sys.stderr)
        report.faults[fault] += 1
    stop_stream.set()
    streamer.join(30)
    if stream_error:
        raise stream_error[0]

    interrupt(producer2)
    producer2.wait(30)
    settled = wait_settled(url, 120)
    interrupt(up)
    try:
        up.wait(60)
    except subprocess.TimeoutExpired:
        up.kill()
        report.mismatches.append(f"trial {n}: brokersync up did not stop on SIGINT")
    if not settled:
        report.mismatches.append(f"trial {n}: consumers did not catch up / deliveries still pending")
    # The supervised producer may have appended a last cycle while everything stopped: let each
    # consumer finish those events (the same runtime, in this process) before comparing.
    from consumers.runtime import Runner, RuntimeConfig

    for name in subs:
        Runner(consumers.load(name), url, RuntimeConfig(max_attempts=2, retry_backoff=0.05),
               exit_when_idle=True).run()

    with psycopg.connect(url, autocommit=True) as c:
        # dead letters == the malformed events, per consumer reading their kind
        expected = {(name, eid) for eid, kind in malformed.items() for name, kinds in subs.items()
                    if not kinds or kind in kinds}
        actual = set(c.execute("SELECT consumer, event_id FROM consumer_dead_letters").fetchall())
        for item in sorted(expected - actual):
            report.mismatches.append(f"trial {n}: malformed event not dead-lettered: {item}")
        for item in sorted(actual - expected):
            err = c.execute("SELECT left(error, 300) FROM consumer_dead_letters WHERE consumer=%s AND event_id=%s",
                            item).fetchone()
            report.mismatches.append(f"trial {n}: a good event was dead-lettered: {item}: {err[0] if err else ''}")
        for kinds in subs.values():
            row = c.execute("SELECT count(*) FROM staging_snapshots WHERE cardinality(%s::text[]) = 0 "
                            "OR kind = ANY(%s::text[])", (list(kinds), list(kinds))).fetchone()
            report.events_checked += int(row[0]) if row else 0
        live = {name: dump(c, consumers.load(name).tables) for name in subs}

    for name in subs:
        r = subprocess.run([sys.executable, "-m", "brokersync", "replay", name], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            report.mismatches.append(f"trial {n}: replay {name} failed: {r.stderr[-500:]}")
            continue
        with psycopg.connect(url, autocommit=True) as c:
            rebuilt = dump(c, consumers.load(name).tables)
        for table, rows in live[name].items():
            if rows != rebuilt[table]:
                only_live = sorted(set(rows) - set(rebuilt[table]))[:2]
                only_replay = sorted(set(rebuilt[table]) - set(rows))[:2]
                report.mismatches.append(
                    f"trial {n}: {name}.{table} differs from a clean replay ({len(rows)} live rows, "
                    f"{len(rebuilt[table])} replayed); live only: {only_live}; replay only: {only_replay}")

    sink = data / "notifications.jsonl"
    keys = Counter()
    if sink.exists():
        for line in sink.read_bytes().splitlines():
            keys[orjson.loads(line)["key"]] += 1
    for key, count in keys.items():
        if count > 1:
            report.mismatches.append(f"trial {n}: notification {key} sent {count} times")
    report.trials += 1
    report.malformed += len(malformed)
    report.notifications += sum(keys.values())
    if verbose:
        print(f"trial {n}: {len(malformed)} malformed events, {sum(keys.values())} notifications; "
              f"{report.line()}", file=sys.stderr)


def run(trials: int, duration: float, seed: int, verbose: bool = True) -> Report:
    report = Report()
    rng = random.Random(seed)
    server = PrivateServer()
    work = Path(tempfile.mkdtemp(prefix="brokersync-chaos-work-"))
    try:
        snaps = history(server, work, days=3, seed=seed)
        for n in range(1, trials + 1):
            trial(n, server, snaps, work, rng, report, duration, verbose)
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)
    return report


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of faults per trial")
    p.add_argument("--seed", type=int, default=int(time.time()))
    args = p.parse_args()
    print(f"chaos: {args.trials} trials of {args.duration:.0f}s, seed {args.seed}", file=sys.stderr)
    report = run(args.trials, args.duration, args.seed)
    print(report.line())
    for m in report.mismatches:
        print("MISMATCH", m)
    return 0 if not report.mismatches else 1


if __name__ == "__main__":
    sys.exit(main())
