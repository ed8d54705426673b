"""Commands: ``brokersync worker`` and ``brokersync notify test|list|resend``."""

from __future__ import annotations

import argparse
import sys
import threading
from datetime import UTC, datetime
from typing import Any

from brokersync.db import Database
from brokersync.settings import Settings
from brokersync.signals import install_stop_handlers


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from brokersync.cli import wait_for_database
    from consumers.sinks import check_settings
    from consumers.worker import run_worker

    check_settings(settings)  # before connecting: a config error exits 78 at once
    stop = threading.Event()
    install_stop_handlers(stop)
    with Database(settings) as db:
        url = wait_for_database(db, stop, settings.reconnect_max_backoff)
        if url is None:
            return 0
        return run_worker(settings, url, stop)


def cmd_notify(args: argparse.Namespace, settings: Settings) -> int:
    if args.notify_command == "test":
        return _test(args, settings)
    from consumers.delivery import resend

    with Database(settings) as db, db.connect(autocommit=True) as conn:
        if args.notify_command == "resend":
            if not args.ids and not args.failed:
                print("say which deliveries to resend: IDS or --failed", file=sys.stderr)
                return 2
            done = resend(conn, list(args.ids), failed=args.failed)
            print(f"queued again: {', '.join(map(str, done))}" if done else "nothing to resend")
            return 0
        rows = conn.execute(
            """SELECT id, created_at, sink, status, attempts, rule, account, title, last_error
               FROM notification_deliveries ORDER BY id DESC LIMIT %s""",
            (args.limit,),
        ).fetchall()
        if not rows:
            print("no notifications yet")
        for r in reversed(rows):
            err = f"  error: {r[8].splitlines()[0][:80]}" if r[8] else ""
            print(f"#{r[0]} {r[1]:%Y-%m-%d %H:%M} {r[2]:<8} {r[3]:<8} x{r[4]} {r[5]} [{r[6]}] {r[7]}{err}")
    return 0


def _test(args: argparse.Namespace, settings: Settings) -> int:
    """Send one message through a sink directly (no queue, no database): checks the settings."""
    from consumers.sinks import Outgoing, SinkError, build_sink, check_settings

    check_settings(settings)
    now = datetime.now(UTC)
    message = Outgoing(
        id=0, dedupe_key=f"test:{now.isoformat()}", sink=args.sink, rule="test", account="*",
        subject="test", title="brokersync test notification",
        body=f"If you can read this, the {args.sink} sink works ({now:%Y-%m-%d %H:%M:%S} UTC).",
        occurred_at=now,
    )
    try:
        build_sink(args.sink, settings).send(message)
    except SinkError as exc:
        print(f"{args.sink}: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"{args.sink}: sent")
    return 0


def register(sub: Any) -> None:
    from consumers.sinks import SINKS

    s = sub.add_parser("worker", help="deliver notifications (dramatiq worker on the PostgreSQL broker)")
    s.set_defaults(func=cmd_worker, component="worker")

    s = sub.add_parser("notify", help="notifications: test a sink, list deliveries, resend")
    nsub = s.add_subparsers(dest="notify_command", required=True)
    t = nsub.add_parser("test", help="send a test message through one sink, now")
    t.add_argument("sink", choices=SINKS)
    ls = nsub.add_parser("list", help="the latest deliveries")
    ls.add_argument("--limit", type=int, default=20)
    r = nsub.add_parser("resend", help="queue failed (or given) deliveries again; sent ones never")
    r.add_argument("ids", nargs="*", type=int)
    r.add_argument("--failed", action="store_true", help="every delivery whose status is failed")
    s.set_defaults(func=cmd_notify, component="notify")
