"""`brokersync producer`: the service entry point (one cycle with ``--once``).

Exit codes: 0 on a clean stop or a fully successful ``--once`` cycle,
``RET_FETCH_FAILED`` (6) when ``--once`` had a failed fetch, 78 on a configuration error.
"""

from __future__ import annotations

import argparse
import logging
import threading

from brokersync import exitcodes
from brokersync.cli import wait_for_database
from brokersync.db import Database
from brokersync.settings import Settings
from brokersync.signals import install_stop_handlers

log = logging.getLogger("producer")


def run_producer(args: argparse.Namespace, settings: Settings) -> int:
    from producer.service import Producer

    stop = threading.Event()
    install_stop_handlers(stop)
    with Database(settings) as db:
        url = wait_for_database(db, stop, settings.reconnect_max_backoff)
        if url is None:
            return exitcodes.RET_OK
        producer = Producer(settings, stop, interval=args.interval)
        try:
            result = producer.run(url, once=args.once)
        finally:
            producer.close()
    if args.once:
        if result is None:  # stopped before the cycle finished
            return exitcodes.RET_OK
        return exitcodes.RET_OK if result.status == "ok" else exitcodes.RET_FETCH_FAILED
    log.info("producer: stopped")
    return exitcodes.RET_OK
