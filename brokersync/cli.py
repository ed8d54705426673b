"""The `brokersync` command line. Settings are built here, once, and passed down."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime

import orjson

from brokersync import exitcodes
from brokersync.db import Database, connect, is_connection_error
from brokersync.errors import BrokersyncError, ConfigError
from brokersync.logs import setup_logging
from brokersync.settings import Settings, load_settings
from brokersync.signals import Backoff, install_stop_handlers

log = logging.getLogger("brokersync")

# Packages that add their own subcommands: each module has register(subparsers).
COMMAND_MODULES: list[str] = ["brokersync.services", "consumers.cli", "consumers.notify_cli", "producer.cli"]

Command = Callable[[argparse.Namespace, Settings], int | None]


# ---- helpers -------------------------------------------------------------------------------


def wait_for_database(db: Database, stop: threading.Event, max_backoff: float = 30.0) -> str | None:
    """Connect and migrate, retrying with backoff while the database is unreachable."""
    from schema import migrate

    backoff = Backoff(0.5, max_backoff)
    while not stop.is_set():
        try:
            url = db.url()
            with connect(url, autocommit=True) as conn:
                applied = migrate(conn)
            if applied:
                log.info("applied migrations %s", ", ".join(applied))
            return url
        except BrokersyncError as exc:
            if not is_connection_error(exc):
                raise
            delay = backoff.next()
            log.warning("%s; retrying in %.1fs", exc, delay)
            stop.wait(delay)
    return None


def _parse_time(value: str) -> datetime:
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO time (e.g. 2026-11-20 or 2026-11-20T14:30:00+00:00)"
        ) from None
    if t.tzinfo is None:
        t = t.astimezone()  # local time, as a user types it
    return t


# ---- commands ------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from schema import migrate

    with Database(settings) as db, db.connect(autocommit=True) as conn:
        applied = migrate(conn)
        print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    return 0


def cmd_consumer(args: argparse.Namespace, settings: Settings) -> int:
    import consumers
    from consumers.runtime import Runner, RuntimeConfig

    consumer = consumers.load(args.name)
    stop = threading.Event()
    install_stop_handlers(stop)
    with Database(settings) as db:
        url = wait_for_database(db, stop, settings.reconnect_max_backoff)
        if url is None:
            return 0
        Runner(consumer, url, RuntimeConfig.from_settings(settings), stop).run()
    log.info("%s: stopped", consumer.name)
    return 0


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from brokersync.components import components
    from brokersync.supervisor import Supervisor, child_env

    stop = threading.Event()
    install_stop_handlers(stop)
    selected = components()
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {c.name for c in selected}
        if unknown:
            raise BrokersyncError(f"unknown component(s): {', '.join(sorted(unknown))}")
        selected = [c for c in selected if c.name in wanted]
    with Database(settings) as db:
        url = wait_for_database(db, stop, settings.reconnect_max_backoff)
        if url is None:
            return 0
        where = "embedded PostgreSQL in " + str(settings.data_dir / "pgdata") if db.is_embedded else db.display_url()
        log.info("database: %s", where)
        if not selected:
            log.warning("no components exist yet; nothing to run (waiting for Ctrl+C)")
        log.info("running %s; Ctrl+C stops everything", ", ".join(c.name for c in selected) or "nothing")
        return Supervisor(selected, child_env(url), stop).run()


def cmd_psql(args: argparse.Namespace, settings: Settings) -> int:
    from psycopg.conninfo import conninfo_to_dict

    from brokersync.embedded import bin_dir

    exe = shutil.which("psql") or str(bin_dir() / ("psql.exe" if os.name == "nt" else "psql"))
    extra = list(args.psql_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    with Database(settings) as db:
        params = conninfo_to_dict(db.url())
        env = dict(os.environ)
        # Pass the connection through PG* variables: no password on a command line.
        mapping = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
                   "dbname": "PGDATABASE", "sslmode": "PGSSLMODE"}
        for key, var in mapping.items():
            if params.get(key):
                env[var] = str(params[key])
        # Ctrl+C belongs to psql (it cancels the running query); we only wait for it.
        proc = subprocess.Popen([exe, *extra], env=env)
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return proc.wait()
        finally:
            signal.signal(signal.SIGINT, previous)


def _expected_consumers() -> list[str]:
    import consumers

    return consumers.names()


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from brokersync.ops import format_status, status

    with Database(settings) as db, db.connect(autocommit=True) as conn:
        from schema import pending

        todo = pending(conn)
        if todo:
            raise BrokersyncError(f"the schema is not migrated (pending: {', '.join(todo)}): run brokersync migrate")
        s = status(conn, _expected_consumers(), max_lag_s=args.max_lag, max_data_age_s=args.max_data_age)
    if args.json:
        sys.stdout.write(orjson.dumps(s, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_status(s))
    return 0 if s["healthy"] else exitcodes.RET_UNHEALTHY


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    import consumers
    from brokersync.ops import consumer_is_active, events_behind, rewind
    from consumers.runtime import Runner, RuntimeConfig
    from schema import migrate

    if args.name == "all":
        return _replay_all(args, settings)
    consumer = consumers.load(args.name)
    stop = threading.Event()
    install_stop_handlers(stop)
    with Database(settings) as db, db.connect(autocommit=True) as conn:
        migrate(conn)
        r = rewind(conn, consumer, from_id=args.from_id, since=args.since)
        if r.full:
            what = "rebuilding from the first event"
        elif r.moved:
            what = f"rewound to just before event {r.position[1] + 1}"
        else:
            what = "already before that point (not moved)"
        print(f"{consumer.name}: {what}; {r.events_to_apply} events to apply", file=sys.stderr)
        progress = Progress(consumer.name, r.events_to_apply)
        if consumer_is_active(conn, consumer.name):
            if args.no_wait:
                print(f"{consumer.name} is running and will apply them", file=sys.stderr)
                return 0
            while not stop.is_set():
                behind = events_behind(conn, consumer.name)
                progress.update(r.events_to_apply - behind)
                if behind == 0:
                    break
                stop.wait(0.5)
        else:
            runner = Runner(consumer, db.url(), RuntimeConfig.from_settings(settings), stop,
                            exit_when_idle=True, on_batch=progress.add)
            runner.run()
        progress.done()
    return 0


def _replay_all(args: argparse.Namespace, settings: Settings) -> int:
    """Rebuild every consumer at once: one `brokersync replay NAME` process each."""
    import consumers
    from brokersync.supervisor import child_env

    names = consumers.names()
    extra = (["--from-id", str(args.from_id)] if args.from_id is not None
             else ["--since", args.since.isoformat()] if args.since is not None else [])
    with Database(settings) as db:
        env = child_env(db.url())
        began = time.monotonic()
        procs = {name: subprocess.Popen([sys.executable, "-m", "brokersync", "replay", name, *extra],
                                        env=env) for name in names}
        codes = {name: p.wait() for name, p in procs.items()}
    failed = [f"{n} (exit {c})" for n, c in codes.items() if c != 0]
    print(f"replayed {len(names) - len(failed)} of {len(names)} consumers in "
          f"{time.monotonic() - began:.1f}s" + (f"; failed: {', '.join(failed)}" if failed else ""),
          file=sys.stderr)
    return exitcodes.RET_ERROR if failed else 0


class Progress:
    """A progress line on stderr: a bar on a terminal, a line every few seconds otherwise."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.count = label, max(total, 0), 0
        self.start = time.monotonic()
        self.last_print = 0.0
        self.tty = sys.stderr.isatty()

    def add(self, n: int) -> None:
        self.update(self.count + n)

    def update(self, count: int) -> None:
        self.count = count
        now = time.monotonic()
        if now - self.last_print < (0.2 if self.tty else 5.0):
            return
        self.last_print = now
        self._print(end="\r" if self.tty else "\n")

    def _print(self, end: str) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = self.count / elapsed
        frac = min(1.0, self.count / self.total) if self.total else 1.0
        bar = "#" * int(frac * 30)
        eta = (self.total - self.count) / rate if rate > 0 else 0
        sys.stderr.write(
            f"{self.label}: [{bar:<30}] {self.count}/{self.total} events "
            f"{frac:6.1%} {rate:,.0f} ev/s ETA {eta:,.0f}s{end}"
        )
        sys.stderr.flush()

    def done(self) -> None:
        self._print(end="\n")


def cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    from brokersync.ops import consumer_is_active, dlq_list, dlq_retry

    with Database(settings) as db, db.connect(autocommit=True) as conn:
        if args.dlq_command == "list":
            items = dlq_list(conn, args.consumer, args.all)
            if args.json:
                sys.stdout.write(orjson.dumps(items, option=orjson.OPT_INDENT_2).decode() + "\n")
                return 0
            if not items:
                print("no dead letters")
            for d in items:
                first = (d["error"] or "").strip().splitlines()[-1:] or [""]
                print(f"#{d['id']} {d['consumer']} event {d['event_id']} ({d['kind']}, {d['account']}) "
                      f"{d['state']}, {d['attempts']} attempts, last {d['last_failed_at']}: {first[0]}")
            return 0
        ids = list(args.ids)
        if not ids and not args.all and not args.consumer:
            raise BrokersyncError("say which dead letters to retry: IDs, --consumer NAME, or --all")
        done = dlq_retry(conn, ids, args.consumer)
        if not done:
            print("nothing to retry")
            return 0
        for name in sorted({c for _, c in done}):
            n = sum(1 for _, c in done if c == name)
            when = "now" if consumer_is_active(conn, name) else "when it next starts"
            print(f"{n} dead letter(s) queued for retry by {name} ({when})")
    return 0


def cmd_retention(args: argparse.Namespace, settings: Settings) -> int:
    from brokersync.ops import retention

    with Database(settings) as db, db.connect(autocommit=True) as conn:
        r = retention(conn, args.before, _expected_consumers(), delete=args.yes)
    print(f"snapshots fetched before {args.before.isoformat()}: {r.deletable} applied by every "
          f"consumer, {r.held_by_cursor} not yet applied (kept), {r.held_by_dead_letters} "
          f"held by dead letters (kept)")
    if args.yes:
        print(f"deleted {r.deleted} snapshots")
    else:
        print("dry run: nothing deleted; add --yes to delete them. A full replay afterwards "
              "rebuilds only from the snapshots that are kept.")
    return 0


# ---- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="brokersync",
        description="Mirror a brokerage account into PostgreSQL through an event log.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("migrate", help="apply pending schema migrations (idempotent)")
    s.set_defaults(func=cmd_migrate, component="migrate")

    s = sub.add_parser("up", help="run every component as its own process until Ctrl+C")
    s.add_argument("--only", help="comma-separated component names (default: all)")
    s.set_defaults(func=cmd_up, component="up")

    s = sub.add_parser("consumer", help="run one consumer (a service)")
    s.add_argument("name", help="consumer name, or module:ATTRIBUTE for a custom consumer")
    s.set_defaults(func=cmd_consumer, component=None)

    s = sub.add_parser("psql", help="psql on the configured database; arguments after -- pass through")
    s.add_argument("psql_args", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_psql, component="psql")

    s = sub.add_parser("status", help="consumers' lag and errors, dead letters, the producer's last cycle")
    s.add_argument("--json", action="store_true")
    s.add_argument("--max-lag", type=float, default=600.0, metavar="SECONDS",
                   help="unhealthy when a consumer's oldest pending event is older (default 600)")
    s.add_argument("--max-data-age", type=float, default=900.0, metavar="SECONDS",
                   help="unhealthy when the newest snapshot is older (default 900)")
    s.set_defaults(func=cmd_status, component="status")

    s = sub.add_parser("replay", help="rewind a consumer and rebuild its tables from the event log")
    s.add_argument("name", help="a consumer, or 'all' to rebuild every consumer at once (in parallel)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--from-id", type=int, metavar="N", help="re-apply events from id N on")
    g.add_argument("--since", type=_parse_time, metavar="TIME", help="re-apply events fetched at or after TIME")
    s.add_argument("--no-wait", action="store_true", help="when the consumer runs, return at once")
    s.set_defaults(func=cmd_replay, component="replay")

    s = sub.add_parser("dlq", help="dead letters: list, retry")
    dsub = s.add_subparsers(dest="dlq_command", required=True)
    d = dsub.add_parser("list", help="list dead letters (unresolved unless --all)")
    d.add_argument("--consumer")
    d.add_argument("--all", action="store_true", help="include resolved ones")
    d.add_argument("--json", action="store_true")
    d = dsub.add_parser("retry", help="ask the consumer to re-apply dead letters")
    d.add_argument("ids", nargs="*", type=int)
    d.add_argument("--consumer")
    d.add_argument("--all", action="store_true")
    s.set_defaults(func=cmd_dlq, component="dlq")

    s = sub.add_parser("retention", help="delete old snapshots every consumer has applied (dry run by default)")
    s.add_argument("--before", type=_parse_time, required=True, metavar="TIME",
                   help="snapshots fetched before TIME (ISO date or time)")
    s.add_argument("--yes", action="store_true", help="really delete (default: only count)")
    s.set_defaults(func=cmd_retention, component="retention")

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] | None = None
    if argv[:1] == ["psql"] and argv[1:2] not in (["-h"], ["--help"]):
        # everything after `psql` is psql's, with or without a `--` first
        passthrough, argv = argv[1:], ["psql"]
    args = parser.parse_args(argv)
    if passthrough is not None:
        args.psql_args = passthrough
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"brokersync: {exc}", file=sys.stderr)
        return exitcodes.RET_CONFIG
    component = args.component or f"{args.command}-{getattr(args, 'name', '')}".rstrip("-")
    setup_logging(component, settings)
    func: Command = args.func
    try:
        return func(args, settings) or 0
    except ConfigError as exc:
        log.error("%s", exc)
        return exitcodes.RET_CONFIG
    except BrokersyncError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:
        # Through the logger, not a bare traceback: redacted, and in the service's log file.
        log.exception("unexpected error")
        return exitcodes.RET_ERROR


def run() -> None:
    sys.exit(main())


__all__ = ["main", "build_parser", "wait_for_database", "Progress"]
