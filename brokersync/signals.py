"""Stop signals: SIGINT, SIGTERM and, on Windows, CTRL_C / CTRL_BREAK (as NSSM sends them).

Handlers only set an event; loops wait on it with timeouts.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger(__name__)


def install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum: int, frame: Any) -> None:
        if not stop.is_set():
            log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    if hasattr(signal, "SIGBREAK"):  # Windows: CTRL_BREAK_EVENT, what NSSM sends after Ctrl+C
        signal.signal(signal.SIGBREAK, handler)
    if hasattr(signal, "SIGHUP"):  # the terminal closed: stop cleanly instead of dying mid-batch
        signal.signal(signal.SIGHUP, handler)


class Backoff:
    """Exponential backoff with a cap: 0.5, 1, 2, 4 ... max seconds."""

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2**self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
