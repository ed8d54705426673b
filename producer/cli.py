"""The producer's subcommands: `producer`, `login`, `simulate`."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from brokersync.settings import Settings


def _positive(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be greater than 0")
    return v


def _time(value: str) -> datetime:
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO time (e.g. 2026-11-20T16:00:00+00:00)") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def cmd_producer(args: argparse.Namespace, settings: Settings) -> int:
    from producer.main import run_producer

    return run_producer(args, settings)


def cmd_login(args: argparse.Namespace, settings: Settings) -> int:
    from producer.logincmd import run_login

    return run_login(args, settings, sys.stdin)


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from producer.simulate import run_simulate

    return run_simulate(args, settings)


def register(sub: Any) -> None:
    s = sub.add_parser("producer", help="poll the broker on schedule into the event log (a service)")
    s.add_argument("--once", action="store_true",
                   help="run one full cycle (every kind) and exit: 0 when every fetch succeeded")
    s.add_argument("--interval", type=_positive, metavar="SECONDS",
                   help="main interval (positions, quotes, account, portfolio); "
                        "default BROKERSYNC_PRODUCER_INTERVAL")
    s.set_defaults(func=cmd_producer, component="producer")

    s = sub.add_parser("login", help="log in to Robinhood interactively and store the session")
    s.set_defaults(func=cmd_login, component="login")

    s = sub.add_parser("simulate", help="write N days of simulated history into the event log, fast")
    s.add_argument("--days", type=_positive, required=True, help="days of history (fractions allowed)")
    s.add_argument("--seed", type=int, help="simulation seed (default BROKERSYNC_SIM_SEED)")
    s.add_argument("--interval", type=_positive, default=300.0, metavar="SECONDS",
                   help="main interval while the market is open (default 300)")
    s.add_argument("--closed-interval", type=_positive, default=3600.0, metavar="SECONDS",
                   help="main interval while the market is closed (default 3600)")
    s.add_argument("--no-market-hours", action="store_true",
                   help="poll at --interval around the clock")
    s.add_argument("--end", type=_time, help="end of the history (default: now)")
    s.add_argument("--keep-identical", action="store_true",
                   help="also append snapshots identical to the previous one of their kind and "
                        "account (by default they are skipped and recorded as 'unchanged')")
    s.set_defaults(func=cmd_simulate, component="simulate")
